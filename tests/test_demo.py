"""`gradlab demo` (the main job) end to end on a tiny random BERT: three runs, one budget."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

import gradlab
from gradlab.cli import main


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the trainer sets threads=1 for the whole process
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_demo_trains_three_runs_on_the_same_batches_and_writes_figures(tmp_path, tiny_overrides,
                                                                      capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in tiny_overrides.items()
                                      if k != "runs_dir"}))
    runs_dir, out = tmp_path / "demo-runs", tmp_path / "figures"
    assert main(["demo", "--config", str(config), "--runs-dir", str(runs_dir),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round_robin" in printed and "wrote" in printed
    table = pd.read_csv(runs_dir / "results.csv")
    steps = tiny_overrides["steps"]
    assert list(table["method"]) == ["sum", "round_robin", "pcgrad"]
    assert list(table["steps"]) == [steps, 3 * steps, steps]
    for name in ("sum", "round_robin", "pcgrad"):
        losses = gradlab.load_run(runs_dir / name).losses()
        assert losses.groupby("task")["step"].nunique().to_dict() == {
            "sst": steps, "para": steps, "sts": steps}  # every task saw `steps` batches
    assert table["score"].between(0, 1).all()
    assert (out / "compare.png").is_file() and (out / "compare.pdf").is_file()
    assert "pcgrad" in pd.read_csv(out / "compare.csv")["method"].tolist()
