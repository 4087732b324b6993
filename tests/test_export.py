"""Exports: Parquet files equal the frames; TensorBoard events hold the scalars."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers_runs import make_synthetic_run

from gradlab.cli import main
from gradlab.run import load_run


def test_parquet_round_trip(tmp_path):
    run = load_run(make_synthetic_run(tmp_path / "r", steps=30))
    out = run.to_parquet(tmp_path / "pq")
    back = pd.read_parquet(out / "cosines.parquet")
    pd.testing.assert_frame_equal(back.reset_index(drop=True),
                                  run.cosines().reset_index(drop=True), check_dtype=False)


def test_tensorboard_mirror(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = make_synthetic_run(tmp_path / "r", steps=30)
    assert main(["export", str(run_dir), "--tensorboard", str(tmp_path / "tb"),
                 "--parquet", str(tmp_path / "pq")]) == 0
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "loss/sst" in tags and "cosine/probe/sst-para" in tags
    losses = load_run(run_dir).losses()
    sst = losses[losses["task"] == "sst"].sort_values("step")
    events = acc.Scalars("loss/sst")
    assert [e.step for e in events] == sst["step"].tolist()
    assert [e.value for e in events] == pytest.approx(sst["value"].tolist(), rel=1e-6)


def test_export_needs_a_target(tmp_path, capsys):
    run_dir = make_synthetic_run(tmp_path / "r", steps=5)
    assert main(["export", str(run_dir)]) == 2
    assert "--parquet" in capsys.readouterr().err
