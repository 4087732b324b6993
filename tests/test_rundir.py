"""gradlab.rundir: the run lock (re-entrant per process, probed by is_locked), atomic writes."""

from __future__ import annotations

import doctest
import sqlite3
import threading
import time

import numpy as np
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


# --- kill points (the SIGKILLs themselves: tests/test_kill_points.py) --------------------------


def test_write_points_are_logged_when_asked_and_free_otherwise(tmp_path, monkeypatch):
    log = tmp_path / "writes.txt"
    monkeypatch.delenv("GRADLAB_KILL_AFTER", raising=False)
    monkeypatch.delenv("GRADLAB_WRITE_LOG", raising=False)
    rundir.write_atomic(tmp_path / "a.txt", "a")
    assert not log.exists()
    monkeypatch.setenv("GRADLAB_WRITE_LOG", str(log))
    rundir.write_atomic(tmp_path / "b.txt", "b")
    lines = log.read_text().splitlines()
    assert [line.split(" ", 2)[1] for line in lines] == ["wrote", "replace"]
    assert lines[1].endswith(f"-> {tmp_path / 'b.txt'}")


class _Killed(Exception):
    pass


def test_the_store_kill_point_is_inside_the_open_transaction(tmp_path, monkeypatch):
    """Killed at the store's kill point, a transaction's rows are not committed: the point
    sits between the statements and COMMIT (with SIGKILL, SQLite discards them the same)."""
    from gradlab import store_writer
    from gradlab.store import RunWriter

    writer = RunWriter(tmp_path / "run", name="run", config={}, tasks=["sst"],
                       blocks=[("layer.0", 4)], method="sum", seed=0, schedule="joint")
    writer.log_scalars(1, {"loss": 1.0}, task="sst")
    writer.flush()
    points = []

    def write_point(what: str) -> None:
        points.append(what)
        if what.startswith("open transaction"):
            raise _Killed

    monkeypatch.setattr(store_writer, "write_point", write_point)
    writer.log_scalars(2, {"loss": 2.0}, task="sst")
    with pytest.raises(_Killed):
        writer.flush()
    con = sqlite3.connect(tmp_path / "run" / "run.sqlite")
    assert con.execute("SELECT step FROM scalars").fetchall() == [(1,)]
    con.close()
    assert points == [f"open transaction on {tmp_path / 'run' / 'run.sqlite'} "
                      "(kill point: not yet committed)"]


def test_an_evaluation_is_one_kill_point_and_the_tokenization_cache_rename_one(tmp_path,
                                                                              monkeypatch):
    from gradlab import data_tokenize, store_writer
    from gradlab.store import RunWriter

    points = []
    monkeypatch.setattr(store_writer, "write_point", points.append)
    writer = RunWriter(tmp_path / "run", name="run", config={}, tasks=["sst", "para"],
                       blocks=[("layer.0", 4)], method="sum", seed=0, schedule="joint")
    points.clear()
    for task in ("sst", "para", "overall"):
        writer.log_eval(4, "dev", task, {"accuracy": 0.5})
    assert points == ["evaluating step 4 (kill point: rows of an evaluation buffered)"]
    writer.close()
    monkeypatch.setenv("GRADLAB_WRITE_LOG", str(tmp_path / "writes.txt"))
    tokenized = data_tokenize._frozen("sst", "class", [np.arange(3, dtype=np.int32)],
                                      [np.array([0, 3])], np.array([1]))
    data_tokenize._save_npz(tmp_path / "cache" / "sst-x.npz", ("k",), tokenized)
    lines = (tmp_path / "writes.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"-> {tmp_path / 'cache' / 'sst-x.npz'}")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["sst-x.npz"]


def test_a_store_killed_inside_its_creating_transaction_is_resumed_as_new(tmp_path,
                                                                          monkeypatch):
    """Found by the kill point inside transactions: the empty SQLite file such a kill leaves
    made ``--resume`` fail ('no such table: meta') and ``train`` refuse the folder."""
    from gradlab import store_writer
    from gradlab.store import RunWriter, open_store_readonly

    def killed(what: str) -> None:
        raise _Killed

    options = dict(name="run", config={}, tasks=["sst"], blocks=[("layer.0", 4)],
                   method="sum", seed=0, schedule="joint")
    monkeypatch.setattr(store_writer, "write_point", killed)
    with pytest.raises(_Killed):
        RunWriter(tmp_path / "run", **options)
    monkeypatch.undo()
    assert (tmp_path / "run" / "run.sqlite").is_file()
    writer = RunWriter(tmp_path / "run", resume=True, **options)
    writer.log_scalars(0, {"loss": 1.0}, task="sst")
    writer.close()
    con = open_store_readonly(tmp_path / "run")
    assert dict(con.execute("SELECT key, value FROM meta").fetchall())["status"] == "finished"
    con.close()
