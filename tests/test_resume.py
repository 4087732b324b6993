"""Resuming a run: a crashed or killed run, continued, ends bit for bit as the uninterrupted one.

The in-process tests crash the training loop through its private ``_after_step`` hook; the slow test
kills a real ``gradlab train`` process with SIGKILL at a random step and resumes it with
``gradlab train --resume``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_config
from safetensors.torch import load_file

import gradlab
from gradlab import checkpoint as ckpt
from gradlab.checkpoint import CheckpointError
from gradlab.cli import main
from gradlab.config import load_config


class Crash(Exception):
    """Stands in for a crash in the middle of a run."""


def config(runs_dir: Path, name: str, **changes) -> dict:
    """A tiny pcgrad run (its task orders come from a generator that must round-trip) with
    periodic checkpoints, evaluation and probes, one thread (bit-exact, fast on a busy box)."""
    return tiny_config(runs_dir, **{
        "name": name, "runs_dir": str(runs_dir), "train_limit": 48, "dev_limit": 16,
        "max_length": 24, "steps": 10, "eval_every": 3, "eval_batch_size": 16,
        "checkpoint_every": 2, "keep_checkpoints": 2, "method": "pcgrad", **changes})


def crash_at(step: int):
    def hook(done: int, model) -> None:
        if done == step:
            raise Crash(f"crash after step {step}")
    return hook


def run_until_crash(values: dict, step: int) -> None:
    with pytest.raises(Crash):
        gradlab.train(None, _after_step=crash_at(step), **values)


def resume(values: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return gradlab.train(None, resume=True, **values)


# --- comparing runs -------------------------------------------------------------------------

_NONDETERMINISTIC = ("step_time", "wall_time")


def store_rows(run_dir: Path) -> dict[str, list[tuple]]:
    """Every logged fact of a run, sorted, without timings and file paths."""
    con = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
    try:
        rows = {
            "scalars": con.execute(
                "SELECT step, name, task, value FROM scalars WHERE name NOT IN (?, ?)",
                _NONDETERMINISTIC).fetchall(),
            "gramians": con.execute("SELECT step, source, block, tasks, data FROM gramians"
                                    ).fetchall(),
            "weights": con.execute("SELECT * FROM weights").fetchall(),
            "projections": con.execute("SELECT * FROM projections").fetchall(),
            "evals": con.execute("SELECT * FROM evals").fetchall(),
            "counterfactuals": con.execute("SELECT * FROM counterfactuals").fetchall(),
            "checkpoints": con.execute("SELECT step, kind FROM checkpoints").fetchall(),
        }
    finally:
        con.close()
    return {table: sorted(r, key=repr) for table, r in rows.items()}


def assert_same_run(resumed: Path, reference: Path, checkpoints: bool = True) -> None:
    a = load_file(str(resumed / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(reference / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ: {different}"
    rows_a, rows_b = store_rows(resumed), store_rows(reference)
    for table in rows_b:
        if table != "checkpoints" or checkpoints:
            assert rows_a[table] == rows_b[table], f"table {table} differs"
    # no duplicated or missing steps: one loss per task and step, one Gramian per block
    steps = load_config(reference / "config.yaml").steps
    losses = [(s, t) for s, n, t, _ in rows_a["scalars"] if n == "loss"]
    assert sorted(losses) == sorted((s, t) for s in range(steps) for t in ("sst", "para", "sts"))
    train = [(s, b) for s, src, b, _, _ in rows_a["gramians"] if src == "train"]
    assert len(train) == len(set(train)) and {s for s, _ in train} == set(range(steps))
    meta = dict(sqlite3.connect(resumed / "run.sqlite").execute("SELECT * FROM meta"))
    assert meta["status"] == "finished"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return gradlab.train(None, **config(runs, "reference")).path


# --- in process ---------------------------------------------------------------------------


@pytest.mark.parametrize("crash_after", [0, 5])
def test_crashed_run_resumes_exactly(tmp_path, reference, crash_after):
    values = config(tmp_path, "crashed")
    run_until_crash(values, crash_after)
    if crash_after == 5:
        assert ckpt.read_state(tmp_path / "crashed" / "checkpoints" / "last")["step"] == 4
        assert gradlab.load_run(tmp_path / "crashed").status == "failed"
    if crash_after == 0:  # no checkpoint yet: the run starts again at step 0
        with pytest.warns(RuntimeWarning, match="has no checkpoint"):
            handle = gradlab.train(None, resume=True, **values)
    else:
        handle = resume(values)
    assert_same_run(handle.path, reference)
    assert handle.load().status == "finished"


def test_twice_crashed_run_resumed_from_the_cli(tmp_path, reference, capsys):
    values = config(tmp_path, "twice")
    run_until_crash(values, 3)
    with pytest.raises(Crash):
        gradlab.train(None, resume=True, _after_step=crash_at(7), **values)
    assert ckpt.read_state(tmp_path / "twice" / "checkpoints" / "last")["step"] == 6
    assert main(["train", "--resume", str(tmp_path / "twice"), "progress=false"]) == 0
    assert json.loads(capsys.readouterr().out)["run"].endswith("twice")
    assert_same_run(tmp_path / "twice", reference)


def test_checkpoint_layout_and_rotation(reference):
    folder = reference / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best", "last", "step-10", "step-8"]
    for name in ckpt.FILES:  # last shares step-10's files (hard links, no extra disk space)
        assert os.path.samefile(folder / "last" / name, folder / "step-10" / name)
    con = sqlite3.connect(reference / "run.sqlite")
    rows = con.execute("SELECT step, kind FROM checkpoints WHERE kind != 'best'").fetchall()
    assert rows == [(s, k) for s in (2, 4, 6, 8, 10) for k in (f"step-{s}", "last")]
    state = ckpt.read_state(folder / "last")
    assert state["step"] == 10 and state["saves"][-2:] == ["step-10", "last"]
    assert set(state["methods"]) == {"method", "counterfactual.sum", "counterfactual.mean",
                                     "counterfactual.pcgrad"}
    _, tensors, _ = ckpt.load_checkpoint(folder / "last")
    # both PCGrad generators (the run's and the probes') round-trip
    assert {"method.generator", "counterfactual.pcgrad.generator"} <= set(tensors)


def test_resume_falls_back_to_an_older_checkpoint_when_last_is_corrupt(tmp_path, reference):
    values = config(tmp_path, "corrupt")
    run_until_crash(values, 7)  # last = step-6; step-4 and step-6 kept
    last = tmp_path / "corrupt" / "checkpoints" / "last" / "model.safetensors"
    os.unlink(last)  # a hard link: break it before writing, step-6 must stay intact
    last.write_bytes(b"\x00" * 100)
    with pytest.warns(RuntimeWarning, match=r"skipping unreadable checkpoint.*resuming from"):
        handle = gradlab.train(None, resume=True, **values)
    assert_same_run(handle.path, reference)


def test_without_periodic_checkpoints_a_run_resumes_from_best(tmp_path, reference):
    values = config(tmp_path, "best-only", checkpoint_every=0)
    run_until_crash(values, 5)
    folder = tmp_path / "best-only" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["best"]
    assert ckpt.read_state(folder / "best")["step"] == 3
    handle = resume(values)
    assert_same_run(handle.path, reference, checkpoints=False)
    best = [row for row in store_rows(reference)["checkpoints"] if row[1] == "best"]
    assert store_rows(handle.path)["checkpoints"] == sorted([*best, (10, "last")], key=repr)


def test_interrupted_checkpoint_swap_is_recovered(tmp_path, reference):
    values = config(tmp_path, "swap")
    run_until_crash(values, 5)
    folder = tmp_path / "swap" / "checkpoints"
    # killed between the two renames of a swap: the old last moved aside, the new one complete
    os.replace(folder / "last", folder / ".old-last-999")
    shutil.copytree(folder / ".old-last-999", folder / ".tmp-last-999")
    (folder / ".tmp-step-8-999").mkdir()  # and a half-written folder of a later save
    with pytest.warns(RuntimeWarning, match="restored .*last from .tmp-last-999"):
        handle = gradlab.train(None, resume=True, **values)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert_same_run(handle.path, reference)


# --- checkpoint folder mechanics (no training) ----------------------------------------------


def _fake_checkpoint(path: Path, step: int) -> Path:
    return ckpt.save_checkpoint(path, model_state={"w": torch.full((2,), float(step))},
                                tensors={}, state={"step": step})


def test_save_checkpoint_replaces_atomically_and_keeps_the_old_on_failure(tmp_path,
                                                                          monkeypatch):
    path = _fake_checkpoint(tmp_path / "last", 1)
    _fake_checkpoint(path, 2)
    assert ckpt.read_state(path)["step"] == 2
    import gradlab.checkpoint as module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last.*No space"):
        _fake_checkpoint(path, 3)
    assert ckpt.read_state(path)["step"] == 2  # the last good one is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_recover_checkpoints_prefers_the_complete_new_folder(tmp_path):
    old = _fake_checkpoint(tmp_path / ".old-last-1", 4)
    new = _fake_checkpoint(tmp_path / ".tmp-last-1", 6)
    half = tmp_path / ".tmp-best-2"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    actions = ckpt.recover_checkpoints(tmp_path)
    assert ckpt.read_state(tmp_path / "last")["step"] == 6
    assert not old.exists() and not new.exists() and not half.exists()
    assert not (tmp_path / "best").exists()  # nothing complete to restore it from
    assert any("restored" in a for a in actions)
    # no swap in progress: nothing happens
    assert ckpt.recover_checkpoints(tmp_path) == []


def test_save_step_is_all_or_none(tmp_path, monkeypatch):
    def save(step: int) -> list[Path]:
        return ckpt.save_step(tmp_path, ["best", f"step-{step}", "last"],
                              model_state={"w": torch.full((2,), float(step))}, tensors={},
                              state={"step": step})

    save(2)
    for name in ckpt.FILES:  # one set of files, linked
        assert os.path.samefile(tmp_path / "best" / name, tmp_path / "last" / name)
    real = ckpt.replace
    # killed just before the commit point: none of step 4's checkpoints exist
    monkeypatch.setattr(ckpt, "replace", lambda src, dst: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        save(4)
    monkeypatch.setattr(ckpt, "replace", real)
    assert ckpt.recover_checkpoints(tmp_path) == [f"removed the uncommitted save "
                                                  f"{tmp_path / '.save-4'}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last", "step-2"]
    assert {ckpt.read_state(tmp_path / k)["step"] for k in ("best", "last")} == {2}
    # killed after the commit point, between two renames: all of step 4's are finished
    calls = []

    def crash_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the commit, old best aside, new best in, then killed
            raise Crash()
        real(src, dst)

    monkeypatch.setattr(ckpt, "replace", crash_on_second_rename)
    with pytest.raises(Crash):
        save(4)
    monkeypatch.setattr(ckpt, "replace", real)
    assert ckpt.read_state(tmp_path / "best")["step"] == 4
    assert ckpt.read_state(tmp_path / "last")["step"] == 2 and not (tmp_path / "step-4").exists()
    actions = ckpt.recover_checkpoints(tmp_path)
    assert any("completed the save of" in a for a in actions)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last", "step-2", "step-4"]
    assert {ckpt.read_state(tmp_path / k)["step"] for k in ("best", "last", "step-4")} == {4}
    # a manifest gradlab did not write commits nothing
    (tmp_path / ".save-6").mkdir()
    (tmp_path / ".commit.json").write_text('{"stage": "../x", "kinds": ["last"]}')
    assert "ignored the unreadable" in ckpt.recover_checkpoints(tmp_path)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last", "step-2", "step-4"]


def test_rotation_keeps_the_newest_and_drops_a_redone_future(tmp_path):
    for step in (2, 4, 6, 8):
        _fake_checkpoint(tmp_path / f"step-{step}", step)
    removed = ckpt.rotate_checkpoints(tmp_path, keep=2, step=6)
    assert sorted(p.name for p in removed) == ["step-2", "step-8"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4", "step-6"]


def test_latest_checkpoint_picks_the_newest_readable(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "none") is None
    _fake_checkpoint(tmp_path / "step-4", 4)
    _fake_checkpoint(tmp_path / "last", 6)
    path, (_, _, state) = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "last" and state["step"] == 6
    (tmp_path / "last" / "state.json").write_text("{garbage")
    with pytest.warns(RuntimeWarning, match="state.json is corrupt"):
        path, _ = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step-4"
    (tmp_path / "step-4" / "train_state.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint.*step-4"):
        ckpt.latest_checkpoint(tmp_path)


# --- refusals -------------------------------------------------------------------------------


def test_existing_run_is_refused_before_any_loading(tmp_path, reference, monkeypatch):
    import gradlab.build as build

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the folder was checked")

    monkeypatch.setattr(build, "build_model", must_not_load)
    values = config(reference.parent, "reference")
    with pytest.raises(FileExistsError, match=r"reference already exists.*--resume.*another"):
        gradlab.train(None, **values)
    with pytest.raises(FileNotFoundError, match="cannot resume: the run folder .*nowhere"):
        gradlab.train(None, resume=True, **config(tmp_path, "nowhere"))


def test_resume_refuses_a_different_config_naming_every_difference(reference):
    values = config(reference.parent, "reference", tasks=["sst", "sts"], lr=1e-3)
    with pytest.raises(CheckpointError, match=r"different run configuration.*tasks: the run has "
                                              r"\['sst', 'para', 'sts'\], the config "
                                              r"\['sst', 'sts'\]; lr: the run has 5e-05, the "
                                              r"config 0.001"):
        gradlab.train(None, resume=True, **values)


def test_a_run_is_trained_by_one_process_at_a_time(reference):
    fcntl = pytest.importorskip("fcntl")
    with open(reference / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="being trained by another process"):
            gradlab.train(None, resume=True, **config(reference.parent, "reference"))


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    values = config(tmp_path, "done", steps=4, eval_every=0)
    first = gradlab.train(None, **values)
    before = store_rows(first.path)
    again = resume(values)
    assert store_rows(again.path) == before
    assert again.metrics == first.metrics


# --- a real process, killed ------------------------------------------------------------------


def _cli_args(values: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
            for k, v in values.items()]


def _logged_step(store: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=0.1)
        try:
            return con.execute("SELECT max(step) FROM scalars").fetchone()[0] or -1
        finally:
            con.close()
    except sqlite3.Error:
        return -1


@pytest.mark.slow
def test_sigkilled_run_resumes_exactly(tmp_path):
    values = config(tmp_path, "killed", steps=16)
    kill_at = random.Random().randrange(2, 12)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    code = "import sys; from gradlab.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "train", *_cli_args(values)],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    store = tmp_path / "killed" / "run.sqlite"
    deadline = time.monotonic() + 300
    try:
        while _logged_step(store) < kill_at:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the run did not reach the kill step"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    killed = gradlab.load_run(tmp_path / "killed")  # the store opens after a kill
    assert killed.status == "dead", f"the run ended before the kill at step {kill_at}"
    resumed_from = ckpt.read_state(tmp_path / "killed" / "checkpoints" / "last")["step"]
    assert resumed_from < 16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["train", "--resume", str(tmp_path / "killed"), "progress=false"]) == 0
        reference = gradlab.train(None, **config(tmp_path, "uninterrupted", steps=16))
    print(f"killed once step {kill_at} was logged; resumed from step {resumed_from}")
    assert_same_run(tmp_path / "killed", reference.path)


# --- kills between the writes of a run (the kill-point harness: tests/test_kill_points.py) ---


def test_a_crash_between_the_checkpoints_of_one_step_loses_none_of_them(tmp_path,
                                                                        monkeypatch):
    # eval and checkpoint only at the final step: best and last are one unit there. A crash
    # after best is in place but before last is must still end with both (before: resumed
    # from best at the final step and never wrote last).
    values = config(tmp_path, "unit", eval_every=0, checkpoint_every=0, steps=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = gradlab.train(None, **{**values, "name": "unit-reference"}).path
    real = ckpt.replace

    def crash_before_last(src, dst):
        if Path(dst).name == "last":
            raise Crash(f"killed before {src} -> {dst}")
        real(src, dst)

    monkeypatch.setattr(ckpt, "replace", crash_before_last)
    with pytest.raises(Crash), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gradlab.train(None, **values)
    monkeypatch.setattr(ckpt, "replace", real)
    folder = tmp_path / "unit" / "checkpoints"
    assert (folder / "best").is_dir() and not (folder / "last").exists()
    with pytest.warns(RuntimeWarning, match="completed the save of .*last"):
        handle = resume(values)
    assert sorted(p.name for p in folder.iterdir()) == ["best", "last"]
    assert_same_run(handle.path, reference)


def test_a_folder_left_before_the_config_was_renamed_is_trained_again(tmp_path):
    values = config(tmp_path, "early", steps=2, eval_every=0, checkpoint_every=0)
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    (run_dir / ".lock").touch()
    (run_dir / ".config.yaml.tmp4242").write_text("name: early\n")  # killed before the rename
    handle = gradlab.train(None, **values)
    assert handle.load().status == "finished"
    assert not (run_dir / ".config.yaml.tmp4242").exists()
    with pytest.raises(FileExistsError, match="already exists"):  # a real run is still refused
        gradlab.train(None, **values)


def test_leftovers_of_a_kill_are_cleaned_when_the_run_continues(tmp_path):
    # killed after its final step-4 was saved, before it rotated step-2 away and before it
    # renamed its metrics.json: the resumed run removes both
    values = config(tmp_path, "left", steps=4, eval_every=0, checkpoint_every=2,
                    keep_checkpoints=1)
    first = gradlab.train(None, **values)
    folder = first.path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best", "last", "step-4"]
    shutil.copytree(folder / "step-4", folder / "step-2")
    (first.path / ".metrics.json.tmp999").write_text("{}")
    with sqlite3.connect(first.path / "run.sqlite") as con:
        con.execute("UPDATE meta SET value = 'running' WHERE key = 'status'")
    before = store_rows(first.path)
    again = resume(values)
    assert sorted(p.name for p in folder.iterdir()) == ["best", "last", "step-4"]
    assert not (first.path / ".metrics.json.tmp999").exists()
    assert store_rows(again.path) == before
