"""`gradlab demo` (the main job) end to end on a tiny random BERT: four runs, one budget."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

import gradlab
from gradlab.cli import main
from gradlab.run import NoGradientDataError


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the trainer sets threads=1 for the whole process
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_demo_trains_four_runs_on_the_same_batches_and_writes_figures(tmp_path, tiny_overrides,
                                                                     capsys):
    config = tmp_path / "demo.yaml"
    values = {k: v for k, v in tiny_overrides.items() if k != "runs_dir"}
    config.write_text(yaml.safe_dump({**values, "eval_every": 2}))
    runs_dir, out = tmp_path / "demo-runs", tmp_path / "figures"
    assert main(["demo", "--config", str(config), "--runs-dir", str(runs_dir),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round_robin" in printed and "wrote" in printed
    table = pd.read_csv(runs_dir / "results.csv")
    steps = tiny_overrides["steps"]
    assert list(table["method"]) == ["sum", "round_robin", "pcgrad",
                                     "frozen encoder (heads only)"]
    assert list(table["steps"]) == [steps, 3 * steps, steps, steps]
    assert "frozen encoder (heads only)" in printed
    for name in ("sum", "round_robin", "pcgrad", "frozen"):
        losses = gradlab.load_run(runs_dir / name).losses()
        assert losses.groupby("task")["step"].nunique().to_dict() == {
            "sst": steps, "para": steps, "sts": steps}  # every task saw `steps` batches
    assert table["score"].between(0, 1).all()
    assert (out / "compare.png").is_file() and (out / "compare.pdf").is_file()
    assert "pcgrad" in pd.read_csv(out / "compare.csv")["method"].tolist()
    assert "full dev sets at the end" in printed
    for name in ("sum", "round_robin", "pcgrad"):  # dev curves: evaluated during training
        evals = gradlab.load_run(runs_dir / name).evals()
        assert evals.groupby("task")["step"].nunique().min() == steps // 2
    # probes at the same batches per task in every run: round-robin probes every 3 x 2 steps
    probed = {name: sorted(gradlab.load_run(runs_dir / name).cosines(source="probe")["step"]
                           .unique()) for name in ("sum", "round_robin")}
    assert probed["sum"] == list(range(0, steps + 1, 2))
    assert probed["round_robin"] == [3 * s for s in probed["sum"]]
    frozen = gradlab.load_run(runs_dir / "frozen")  # the baseline: heads only, no Gramians
    assert frozen.config["freeze_encoder"] and frozen.method == "frozen"
    assert frozen.blocks == []
    with pytest.raises(NoGradientDataError, match="freeze_encoder=true"):
        frozen.cosines()  # says why: no shared gradient, not "set log_train_gramians"
    _assert_encoder_unchanged(runs_dir / "frozen", tiny_overrides)
    assert table.loc[3, "score"] != table.loc[0, "score"]  # fine-tuning changed something
    compared = pd.read_csv(out / "compare.csv")
    assert {"sum", "pcgrad", "round_robin", "frozen"} <= set(compared["method"])
    pngs = {p.stem for p in out.glob("*.png")}
    expected = {"compare", "training_curves", "training_loss", *(
        f"{kind}_{p}" for kind in ("cosine_probe", "conflict_rate_probe", "cosine_distribution")
        for p in ("sst-para", "sst-sts", "para-sts")), *(
        f"{kind}_{n}" for kind in ("conflicts", "gradient_arrows")
        for n in ("sum", "round_robin", "pcgrad"))}  # fmt: skip
    assert expected <= pngs, sorted(expected - pngs)
    assert {p.stem for p in out.glob("*.pdf")} == pngs


def _assert_encoder_unchanged(run_dir, overrides):
    """The run's last checkpoint holds the encoder it started from, bit for bit."""
    from safetensors.torch import load_file

    from gradlab.build import build_model

    model, _ = build_model(overrides["encoder"], ["sst", "para", "sts"],
                           tiny_encoder=overrides["tiny_encoder"], seed=0)
    saved = load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))
    start = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    assert start and set(start) <= set(saved)
    for key, value in start.items():
        assert torch.equal(saved[key], value), key


@pytest.mark.slow
def test_figures_command_on_a_tiny_real_run(tmp_path, tiny_overrides, capsys):
    handle = gradlab.train(None, name="pcgrad", method="pcgrad", **tiny_overrides)
    out = tmp_path / "figures"
    assert main(["figures", str(handle.path), "--out", str(out), "--width", "acl-column"]) == 0
    pngs = {p.stem for p in out.glob("*.png")}
    expected = {"conflicts", "training_curves", "training_loss", "cosine_train", "cosine_probe",
                "conflict_rate", "projection_rate", "task_weights", "s_conflict",
                "cosine_distribution", "gradient_norms", "magnitude_similarity",
                "condition_number", "gradient_arrows", "gradient_arrows_pair",
                "layer_heatmap_sst-para", "layer_heatmap_sst-sts", "layer_heatmap_para-sts"}
    assert expected <= pngs, sorted(expected - pngs)
    assert {p.stem for p in out.glob("*.pdf")} == pngs


@pytest.mark.slow
def test_demo_again_refuses_then_resumes_or_starts_over(tmp_path, tiny_overrides, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in tiny_overrides.items()
                                      if k != "runs_dir"}))
    runs_dir = tmp_path / "demo-runs"
    common = ["demo", "--config", str(config), "--runs-dir", str(runs_dir), "--no-figures"]
    assert main(common) == 0
    first = pd.read_csv(runs_dir / "results.csv")
    capsys.readouterr()
    assert main(common) == 2  # refused, naming both ways on
    assert "--resume" in capsys.readouterr().err
    (runs_dir / "pcgrad" / "metrics.json").unlink()  # as if killed before the end
    assert main([*common, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "sum: finished before, kept" in printed and "pcgrad: finished" not in printed
    again = pd.read_csv(runs_dir / "results.csv")
    pd.testing.assert_frame_equal(again.drop(columns="wall time (s)"),
                                  first.drop(columns="wall time (s)"))
    assert main([*common, "--force"]) == 0
    assert "finished before" not in capsys.readouterr().out
