"""gradlab.store_reader: the queries of a run store, and the live status from the run lock."""

from __future__ import annotations

import doctest
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradlab import rundir, store_reader
from gradlab.methods._base import ProjectionEvent
from gradlab.run import load_run
from gradlab.store import RunWriter, StoreReader, run_status

REPO = Path(__file__).resolve().parents[1]
TASKS = ["sst", "para"]
BLOCKS = [("layer.0", 4), ("layer.1", 4)]


def new_writer(run_dir: Path, **kwargs) -> RunWriter:
    return RunWriter(run_dir, name=run_dir.name, config={}, tasks=TASKS, blocks=BLOCKS,
                     method="pcgrad", seed=0, schedule="joint", **kwargs)


def test_module_docstring_example_runs():
    assert doctest.testmod(store_reader).failed == 0


def test_queries_return_the_logged_rows(tmp_path):
    G = np.stack([np.diag([1.0, 2.0]), np.diag([3.0, 4.0])])
    with new_writer(tmp_path / "r") as w:
        w.log_scalars(0, {"loss": 0.5}, task="sst")
        w.log_scalars(0, {"lr": 0.1})
        w.log_gramians(0, "train", G, ["layer.0", "layer.1"], TASKS)
        w.log_gramians(0, "train", 2 * G, ["layer.0", "layer.1"], TASKS)  # re-logged: last wins
        w.log_gramians(1, "probe", G, ["layer.0", "layer.1"], TASKS[::-1])
        w.log_weights(0, "train", "pcgrad", [1.0, 0.5], TASKS)
        w.log_projections(0, [ProjectionEvent(i=0, j=1, coefficient=0.25, cosine=-0.5)], TASKS)
        w.log_eval(0, "dev", "sst", {"accuracy": 0.4})
        w.log_counterfactual(1, "mgda", TASKS, np.ones(2), np.zeros(2))
    reader = StoreReader(tmp_path / "r")
    assert reader.meta()["method"] == "pcgrad" and reader.status() == "finished"
    assert reader.losses().values.tolist() == [[0, "sst", 0.5]]
    assert reader.scalars(["lr"]).values.tolist() == [[0, "lr", "", 0.1]]
    assert sorted(reader.distinct("gramians", "source")) == ["probe", "train"]
    assert reader.progress() == (2, 1)
    assert reader.weights(["train"]).values.tolist() == [["train", 0, "", "sst", 1.0],
                                                         ["train", 0, "", "para", 0.5]]
    assert reader.projections().values.tolist() == [[0, "", "sst", "para", 0.25, -0.5]]
    assert reader.projected_pairs().values.tolist() == [[0, "sst", "para"]]
    assert sorted(reader.train_step_tasks().values.tolist()) == [[0, "sst"]]
    assert reader.evals(["dev"]).values.tolist() == [[0, "dev", "sst", "accuracy", 0.4]]
    cf = reader.counterfactuals()
    assert list(cf.columns) == ["step", "counterfactual", "task", "weight", "predicted_delta",
                                "measured_delta"]
    assert cf["measured_delta"].isna().all()
    series = reader.gramians(["train", "probe"], ["encoder"])
    assert [(s.source, s.block, s.tasks, s.steps.tolist()) for s in series] == [
        ("train", "encoder", TASKS, [0]), ("probe", "encoder", TASKS[::-1], [1])]
    np.testing.assert_array_equal(series[0].G[0], 2 * G.sum(0))
    tasks, G0 = reader.gramian_at(0, "train", "layer.1")
    assert tasks == TASKS
    np.testing.assert_array_equal(G0, 2 * G[1])
    assert reader.gramian_at(5, "train", "layer.1") is None
    assert reader.gramian_steps("probe", "layer.0") == [1]
    assert reader.gramians([], ["encoder"]) == []


def test_distinct_refuses_what_is_not_a_column(tmp_path):
    new_writer(tmp_path / "r").close()
    with pytest.raises(ValueError, match="no column 'x; DROP' in run-store table 'scalars'"):
        StoreReader(tmp_path / "r").distinct("scalars", "x; DROP")


def test_status_follows_the_writer_in_this_process(tmp_path):
    w = new_writer(tmp_path / "r")
    assert run_status(tmp_path / "r") == "running" and rundir.is_locked(tmp_path / "r")
    w.close("failed")
    assert run_status(tmp_path / "r") == "failed" and not rundir.is_locked(tmp_path / "r")


TRAINER_LIKE = r"""
import sys, time
import numpy as np
from pathlib import Path
from gradlab.rundir import RunLock
from gradlab.store import RunWriter

run_dir = Path(sys.argv[1])
with RunLock(run_dir):  # as the trainer does: the run lock first, then the writer inside it
    w = RunWriter(run_dir, name="victim", config={}, tasks=["sst", "para"],
                  blocks=[("layer.0", 4), ("layer.1", 4)], method="sum", seed=0,
                  schedule="joint", commit_every=1)
    w.log_scalars(0, {"loss": 1.0}, task="sst")
    w.flush()
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(not rundir.LOCKS_SUPPORTED, reason="no flock on this platform")
def test_a_killed_writer_process_flips_from_running_to_dead(tmp_path):
    run_dir = tmp_path / "victim"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", TRAINER_LIKE, str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        run = load_run(run_dir)
        assert run.status == "running" and rundir.is_locked(run_dir)
        assert "status='running'" in repr(run)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not rundir.is_locked(run_dir)
    assert run.status == "dead" and run_status(run_dir) == "dead"  # re-read on every access
    assert run.reader.meta()["status"] == "running"  # what the dead writer left behind
    assert len(run.losses()) == 1
    # resuming makes it live again; closing it records the end
    w = RunWriter(run_dir, name="victim", config={}, tasks=TASKS, blocks=BLOCKS, method="sum",
                  seed=0, schedule="joint", resume=True)
    assert run.status == "running"
    w.close()
    assert run.status == "finished"
