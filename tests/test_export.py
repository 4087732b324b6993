"""Exports: Parquet files equal the frames; TensorBoard events hold the scalars."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers_runs import make_synthetic_run

from gradlab.cli import main
from gradlab.export import to_tensorboard
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


def _events(logdir):
    """{tag: [(step, value), ...]} of every scalar TensorBoard reads from ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def test_tensorboard_re_export_shows_each_point_once(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = make_synthetic_run(tmp_path / "r", steps=30)
    logdir = tmp_path / "tb"
    other = logdir / "events.out.tfevents.1.host.other"  # not gradlab's: left alone
    logdir.mkdir()
    other.write_bytes(b"")
    assert main(["export", str(run_dir), "--tensorboard", str(logdir)]) == 0
    first = _events(logdir)
    assert main(["export", str(run_dir), "--tensorboard", str(logdir)]) == 0
    again = _events(logdir)
    assert again == first
    sst = again["loss/sst"]
    assert [step for step, _ in sst] == list(range(30))  # each step once, not twice
    assert other.exists()
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == []  # no staging left
    assert len(list(logdir.glob("events.out.tfevents.*.gradlab"))) == 1


def test_tensorboard_holds_norms_block_cosines_weights_and_projection_rates(tmp_path):
    pytest.importorskip("tensorboard")
    run = load_run(make_synthetic_run(tmp_path / "r", steps=30))
    to_tensorboard(run, tmp_path / "tb")
    events = _events(tmp_path / "tb")

    def same(tag, frame, column="value"):
        frame = frame.sort_values("step")
        assert [s for s, _ in events[tag]] == frame["step"].tolist(), tag
        assert [v for _, v in events[tag]] == pytest.approx(frame[column].tolist(), rel=1e-5)

    norms = run.norms(source="train")
    same("norm/train/sts", norms[(norms.block == "encoder") & (norms.task == "sts")])
    same("norm_block/probe/layer.1/sst",
         run.norms(source="probe").query("block == 'layer.1' and task == 'sst'"))
    cos = run.cosines(source="train")
    same("cosine_block/train/embeddings/para-sts",
         cos[(cos.block == "embeddings") & (cos.pair == "para-sts")])
    w = run.weights()
    same("weight/train/para", w[w.task == "para"])
    rate = run.projection_rate(window=50)
    same("projection_rate/sst->sts", rate[rate.pair == "sst→sts"], "rate")
    assert not [t for t in events if "block" in t and "/encoder/" in t]


def test_tensorboard_blockwise_weights_and_runs_without_projections(tmp_path):
    pytest.importorskip("tensorboard")
    layerwise = load_run(make_synthetic_run(tmp_path / "lw", method="pcgrad_layerwise",
                                            steps=12))
    events = _events(to_tensorboard(layerwise, tmp_path / "tb_lw"))
    w = layerwise.weights()
    part = w[(w.block == "layer.0") & (w.task == "sst")]
    assert [s for s, _ in events["weight_block/train/layer.0/sst"]] == part["step"].tolist()
    rr = load_run(make_synthetic_run(tmp_path / "rr", method="sum", schedule="round_robin",
                                     steps=12))
    events = _events(to_tensorboard(rr, tmp_path / "tb_rr"))
    assert not [t for t in events if t.startswith(("projection_rate/", "cosine/train"))]
    assert "cosine/probe/sst-para" in events and "norm/probe/sts" in events


def test_export_needs_a_target(tmp_path, capsys):
    run_dir = make_synthetic_run(tmp_path / "r", steps=5)
    assert main(["export", str(run_dir)]) == 2
    assert "--parquet" in capsys.readouterr().err
