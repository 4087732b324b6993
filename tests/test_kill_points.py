"""Kill points: a real ``gradlab train`` SIGKILLed right after each of its writes, then continued
with the documented command, ends exactly as the uninterrupted run.

Every write a run makes (each rename, each checkpoint file, each linked checkpoint folder)
is a write point of `gradlab.rundir.write_point`. For each configuration below, an
uninterrupted run counts them; then, for every N, a run is killed right after its N-th
write and continued: ``gradlab train --resume RUN`` when the folder holds a config.yaml,
else ``gradlab train`` again (the folder holds no run yet). Its parameters (``last`` and
``best``, ``torch.equal``), its store (every table, as multisets), its checkpoints table
and the checkpoint folders must equal the uninterrupted run's. For two kills just after a
checkpoint save's commit point, the resume (which finishes that save) is killed in turn
after each of its writes, and resumed again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from helpers_kill import run_cli
from safetensors.torch import load_file
from test_resume import store_rows

from gradlab.store import run_status

pytestmark = pytest.mark.slow

#: name -> config changes of the tiny run
CASES = {
    # evaluations between checkpoints: a best saved alone before any last (whole state), one
    # saved after a last (weights only) and a last whose unit drops an older best's optimizer
    # state; the tokenization cache written (and renamed) by the run itself
    "periodic": {"steps": 8, "eval_every": 2, "checkpoint_every": 4, "keep_checkpoints": 1,
                 "tokenization_cache": "<runs>/tokens"},
    "final-only": {"steps": 8, "eval_every": 0, "checkpoint_every": 0},
}


def _values(runs_dir: Path, name: str, changes: dict) -> dict:
    changes = {k: v.replace("<runs>", str(runs_dir)) if isinstance(v, str) else v
               for k, v in changes.items()}
    return tiny_config(runs_dir, **{
        "name": name, "runs_dir": str(runs_dir), "train_limit": 48, "dev_limit": 16,
        "max_length": 24, "eval_batch_size": 16, "probe_every": 4, "method": "pcgrad",
        **changes})


def _argv(values: dict) -> list[str]:
    return ["train", *(f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
                       for k, v in values.items())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """Per case: the uninterrupted run's folder and its write points, in order."""
    out = {}
    for case, changes in CASES.items():
        runs = tmp_path_factory.mktemp(f"reference-{case}")
        write_log = runs / "writes.txt"
        code = run_cli(_argv(_values(runs, "run", changes)), log=runs / "out.txt",
                       write_log=write_log)
        assert code == 0, (runs / "out.txt").read_text()
        out[case] = (runs / "run", write_log.read_text().splitlines())
    return out


def _points(case: str) -> list[tuple[str, int]]:
    return [(case, n) for n in range(1, _COUNTS[case] + 1)]


#: the write points of each case's uninterrupted run (checked by the first test). A change in
#: how a run writes changes these counts: update them, and every new point is then killed.
#: Were 28 and 14 (periodic then evaluated every 4 steps, without a tokenization cache).
#: Now periodic: 6 tokenization cache renames (train and dev of three tasks), config 2, 10
#: SQLite transactions (killed before their COMMIT), 4 evaluations (killed with their rows
#: buffered), saves at steps 2 (best alone: 8), 4 and 8 (13 each: 3 files written, 3 linked,
#: manifest, commit, renames, the older best's optimizer state dropped at step 4, cleanup), 1
#: rotation, metrics.json 2. final-only: 14 + 7 transactions + 1 evaluation + 2 (a point per
#: linked file, was one per linked folder).
_COUNTS = {"periodic": 59, "final-only": 24}


@pytest.mark.parametrize("case", list(CASES))
def test_the_kill_points_cover_every_write_of_the_run(uninterrupted, case):
    reference, writes = uninterrupted[case]
    assert len(writes) == _COUNTS[case], "\n".join(writes)
    assert any("commit.json" in w for w in writes)  # checkpoint saves are among them
    for kind in ("open transaction", "evaluating step", "linked"):  # issue 14's harness gaps
        assert any(kind in w for w in writes), kind
    if case == "periodic":  # the tokenization cache, and a last dropping best's train state
        assert sum("/tokens/" in w for w in writes) == 6
        assert any(w.endswith("best/train_state.safetensors") and " removed " in w
                   for w in writes)


@pytest.mark.parametrize(("case", "kill_after"), [p for c in CASES for p in _points(c)])
def test_a_run_killed_after_any_write_resumes_to_the_identical_result(tmp_path, uninterrupted,
                                                                      case, kill_after):
    reference, writes = uninterrupted[case]
    values = _values(tmp_path, "run", CASES[case])
    log = tmp_path / "out.txt"
    assert run_cli(_argv(values), log=log, kill_after=kill_after) == -9, log.read_text()
    run_dir = tmp_path / "run"
    if (run_dir / "config.yaml").is_file():
        if _store_created(run_dir):
            assert run_status(run_dir) in ("dead", "finished")
        argv = ["train", "--resume", str(run_dir), "progress=false"]
    else:  # killed before the run wrote its config: nothing of it to resume
        argv = _argv(values)
    code = run_cli(argv, log=log)
    assert code == 0, f"killed after write {kill_after} ({writes[kill_after - 1]}):\n" \
                      + log.read_text()
    _assert_identical(run_dir, reference)


def _store_created(run_dir: Path) -> bool:
    """True when run.sqlite exists and its first transaction (schema and meta) committed; a
    kill inside that transaction leaves an empty SQLite file, which ``--resume`` recreates."""
    if not (run_dir / "run.sqlite").is_file():
        return False
    con = sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'"
                           ).fetchone()[0] == 1
    finally:
        con.close()


#: (case, the write its first run is killed after) -> the write points of the resumed run: a
#: committed checkpoint save it finishes, then the rest of the run
_RESUME_COUNTS = {("final-only", 15): 13, ("periodic", 48): 15}


def _kill_then(tmp_path: Path, case: str, first: int, **resume) -> tuple[Path, int]:
    """Kill a run after its ``first`` write, then resume it (with ``run_cli`` options)."""
    values = _values(tmp_path, "run", CASES[case])
    log = tmp_path / "out.txt"
    assert run_cli(_argv(values), log=log, kill_after=first) == -9, log.read_text()
    run_dir = tmp_path / "run"
    code = run_cli(["train", "--resume", str(run_dir), "progress=false"], log=log, **resume)
    return run_dir, code


@pytest.mark.parametrize(("case", "first"), list(_RESUME_COUNTS))
def test_the_kill_points_cover_every_write_of_a_resume(tmp_path, uninterrupted, case, first):
    write_log = tmp_path / "writes.txt"
    run_dir, code = _kill_then(tmp_path, case, first, write_log=write_log)
    assert code == 0, (tmp_path / "out.txt").read_text()
    writes = write_log.read_text().splitlines()
    assert len(writes) == _RESUME_COUNTS[case, first], "\n".join(writes)
    _assert_identical(run_dir, uninterrupted[case][0])


@pytest.mark.parametrize(("case", "first", "second"),
                         [(c, f, n) for (c, f), count in _RESUME_COUNTS.items()
                          for n in range(1, count + 1)])
def test_a_resume_killed_after_any_write_resumes_again_to_the_identical_result(
        tmp_path, uninterrupted, case, first, second):
    run_dir, code = _kill_then(tmp_path, case, first, kill_after=second)
    assert code == -9, (tmp_path / "out.txt").read_text()
    log = tmp_path / "out.txt"
    code = run_cli(["train", "--resume", str(run_dir), "progress=false"], log=log)
    assert code == 0, log.read_text()
    _assert_identical(run_dir, uninterrupted[case][0])


def _assert_identical(run_dir: Path, reference: Path) -> None:
    folders = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == folders
    for kind in folders:
        a = load_file(str(run_dir / "checkpoints" / kind / "model.safetensors"))
        b = load_file(str(reference / "checkpoints" / kind / "model.safetensors"))
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"checkpoints/{kind}: parameters differ: {different}"
    rows, expected = store_rows(run_dir), store_rows(reference)
    for table in expected:
        assert rows[table] == expected[table], f"table {table} differs"
    assert run_status(run_dir) == "finished"
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.startswith(".")
                 and p.name != ".lock"]
    assert not leftovers
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == json.loads(
        (reference / "metrics.json").read_text())["metrics"]
    assert os.path.isfile(run_dir / "config.yaml")
