"""gradlab.rundir: the run lock (re-entrant per process, probed by is_locked), atomic writes."""

from __future__ import annotations

import doctest
import threading
import time

import pytest

from gradlab import rundir
from gradlab.rundir import RunLock, RunLockedError, is_locked

fcntl = pytest.importorskip("fcntl")


def test_module_docstring_examples_run():
    assert doctest.testmod(rundir).failed == 0


def test_is_locked_creates_nothing(tmp_path):
    assert not is_locked(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    (tmp_path / "plain").mkdir()
    assert not is_locked(tmp_path / "plain") and not (tmp_path / "plain" / ".lock").exists()


def test_the_lock_is_re_entrant_within_a_process(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir) as outer:
        assert is_locked(run_dir)
        with RunLock(run_dir) as inner:  # e.g. a RunWriter opened inside the trainer's lock
            assert inner.file is outer.file
        assert is_locked(run_dir)  # the inner exit does not release the outer lock
        (run_dir / "kept").write_text("x")
    assert not is_locked(run_dir)
    with RunLock(run_dir):  # free again
        pass


def test_another_holder_is_refused_with_run_locked_error(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "_ACQUIRE_SECONDS", 0.1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a") as held:  # another open file: flock treats it as a rival
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert is_locked(run_dir)
        with pytest.raises(RunLockedError, match=f"{run_dir} is being trained by another"):
            RunLock(run_dir).__enter__()
        assert issubclass(RunLockedError, RuntimeError)
    assert not is_locked(run_dir)


def test_a_status_probe_never_makes_a_starting_run_fail(tmp_path):
    # is_locked takes a shared lock for an instant; a RunLock starting in that instant waits
    # for it instead of reporting a rival trainer.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    probe = open(run_dir / ".lock", "a")  # noqa: SIM115 - released by the timer
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    release = threading.Timer(0.2, probe.close)
    release.start()
    start = time.monotonic()
    try:
        with RunLock(run_dir):
            waited = time.monotonic() - start
    finally:
        release.join()
    assert 0.15 < waited < rundir._ACQUIRE_SECONDS


def test_a_folder_made_by_another_process_between_the_check_and_mkdir_is_taken(
        tmp_path, monkeypatch):
    # two sweeps reach a new run at once: both see no folder, one mkdir wins; the other must go
    # on to the lock, not fail with "File exists" (seen with two real sweep processes)
    from pathlib import Path

    from gradlab.rundir import RunLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()  # the other process won the race
    real_is_dir = Path.is_dir
    seen = []

    def stale_is_dir(self):
        if self == run_dir and not seen:
            seen.append(self)
            return False  # what this process saw before the other made it
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", stale_is_dir)
    with RunLock(run_dir) as lock:
        assert not lock.created
    assert seen
