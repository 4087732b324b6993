"""gradlab.train(..., background=True): a real training process on a tiny random BERT, read
through its handle (progress, wait, stop, errors), and its end when its parent dies."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gradlab
from gradlab.background import BackgroundTraining
from gradlab.rundir import RunLockedError

pytestmark = pytest.mark.slow  # each test starts Python processes that import torch


def _until(condition, timeout=300.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_progress_advances_and_wait_returns_the_finished_run(tiny_overrides):
    job = gradlab.train(None, background=True, **{**tiny_overrides, "steps": 12})
    assert isinstance(job, BackgroundTraining) and not job.done
    assert job.path.parent == Path(tiny_overrides["runs_dir"]) and job.name.startswith("sum-joint-")
    seen = []
    while not job.done:
        p = job.progress
        assert p.steps == 12 and 0 <= p.step <= 12 and p.status in ("starting", "running",
                                                                    "finished")
        seen.append(p.step)
        time.sleep(0.05)
    run = job.wait(timeout=60)
    assert run.status == "finished" and run.name == job.name
    assert sorted(run.losses()["step"].unique()) == list(range(12))
    final = job.progress
    assert (final.step, final.fraction, final.status) == (12, 1.0, "finished")
    assert seen == sorted(seen)  # never goes back
    assert f"name={job.name!r}" in repr(job) and "12/12 steps (100%)" in repr(job)
    control = job.log_file.parent  # config, log and stop request: removed with the handle
    assert control.is_dir()
    del job
    gc.collect()
    assert not control.exists()


def test_stop_leaves_a_resumable_run_that_ends_as_an_uninterrupted_one(tiny_overrides):
    values = {**tiny_overrides, "steps": 60, "eval_every": 7, "method": "pcgrad"}
    job = gradlab.train(None, background=True, **values)
    live = job.run  # waits for the store
    assert live.status == "running"
    # its first seconds: train rows so far, an empty frame before the first step, no error
    assert list(live.cosines(source="train").columns)[-3:] == ["task_a", "task_b", "value"]
    _until(lambda: job.progress.step >= 3, what="three steps")
    # a live writer's folder is never replaced, in this process or by another one
    with pytest.raises(RunLockedError, match="being trained by another process"):
        gradlab.train(None, name=job.name, overwrite=True, **values)
    with pytest.raises(RunLockedError):
        gradlab.train(None, name=job.name, overwrite=True, background=True, **values)
    run = job.stop(timeout=120)
    stopped_at = job.progress.step
    assert run.status == "stopped" and stopped_at < 60
    assert (job.path / "checkpoints" / "last" / "state.json").is_file()
    resumed = gradlab.train(None, name=job.name, resume=True, **values).load()
    reference = gradlab.train(None, name="reference", **values).load()
    assert resumed.status == "finished"
    a, b = resumed.losses(), reference.losses()
    np.testing.assert_array_equal(a["step"], b["step"])
    np.testing.assert_array_equal(a["value"], b["value"])  # bit for bit on CPU
    pd_eval = resumed.evals()["value"].to_numpy(), reference.evals()["value"].to_numpy()
    np.testing.assert_array_equal(*pd_eval)


def test_the_training_error_comes_back_with_its_type_and_message(tiny_overrides, tmp_path):
    values = {**tiny_overrides, "data_dir": str(tmp_path / "no-data-here"), "steps": 2}
    with pytest.raises(Exception) as here:  # noqa: PT011 - the type is what is compared
        gradlab.train(None, name="foreground", **values)
    job = gradlab.train(None, name="background", background=True, **values)
    with pytest.raises(type(here.value)) as there:
        job.wait(timeout=300)
    assert str(there.value) == str(here.value) and "no-data-here" in str(there.value)
    assert "Traceback" in str(there.value.__cause__)  # the training process's traceback
    assert job.done and job.progress.status in ("exited", "failed")


def test_the_training_ends_when_the_process_that_started_it_dies(tiny_overrides, tmp_path):
    """A notebook kernel that dies takes its background trainings with it (Linux)."""
    if sys.platform != "linux":
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    values = {**tiny_overrides, "steps": 100000, "name": "orphan"}
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import gradlab
        job = gradlab.train(None, background=True, **{values!r})
        job.run  # its store exists: it is training
        print(job.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the kernel dies
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, env=env)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    pid = int(parent.stdout.split()[0])

    def ended() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie (not yet reaped by init) has ended too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    _until(ended, timeout=30, what=f"training process {pid} to end")
    run_dir = Path(values["runs_dir"]) / "orphan"
    _until(lambda: gradlab.load_run(run_dir).status == "dead", timeout=10, what="status dead")
