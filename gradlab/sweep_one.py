"""One point of a sweep: skip, resume or (re)start its run under the run lock.

`gradlab.sweep.run_sweep` calls `_run_one` for each run it planned; the run lock decides
who trains a run when several sweeps share a runs folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradlab.sweep import SweepRun

FAILED_DIR = "_failed"  # where a run folder that cannot be resumed is moved


def _run_one(run: SweepRun, runs_dir: Path, prefix: str) -> dict[str, Any]:
    """Skip, resume, or (re)start one run; its results row.

    The run lock decides who trains a run: a run whose lock another process holds (e.g. a
    second ``gradlab sweep`` on the same folder) is running there and is skipped, never
    moved or trained twice; this process holds the lock from its decision to the run's end.
    """
    from gradlab.rundir import RunLock, RunLockedError

    run_dir = runs_dir / run.name
    row: dict[str, Any] = {"run": run.name, **run.point, "seed": run.seed,
                           "variant": run.variant, "error": ""}
    if _status(run_dir) == "finished":
        print(f"{prefix} skipped (finished)", flush=True)
        return {**row, "action": "skipped", **_finished_row(run_dir)}
    locks: list[RunLock] = []
    try:
        _lock(run_dir, locks)
        return _run_locked(run, run_dir, runs_dir, prefix, row, locks)
    except RunLockedError:
        print(f"{prefix} skipped: running in another process (it holds the run lock)",
              flush=True)
        return {**row, "action": "skipped", "status": "running",
                "error": "running in another process"}
    finally:
        for lock in locks:
            lock.__exit__(None, None, None)


def _run_locked(run: SweepRun, run_dir: Path, runs_dir: Path, prefix: str,
                row: dict[str, Any], locks: list) -> dict[str, Any]:
    """`_run_one` once this process holds the run lock."""
    from gradlab.checkpoint import CheckpointError
    from gradlab.training import train

    status = _status(run_dir)
    if status == "finished":  # another process finished it before we took the lock
        print(f"{prefix} skipped (finished)", flush=True)
        return {**row, "action": "skipped", **_finished_row(run_dir)}
    if status == "running":  # recorded as running, yet nobody else holds its lock
        status = "dead"
    action = "ran"
    resume = False
    if status is not None:
        if _has_checkpoint(run_dir, prefix):
            action, resume = "resumed", True
        else:
            moved = _move_aside(run_dir, runs_dir, locks)
            print(f"{prefix} unfinished ({status}) without a checkpoint: moved to {moved}",
                  flush=True)
            action = "restarted"
    print(f"{prefix} {'resuming' if resume else 'training'}", flush=True)
    try:
        try:
            train(run.config, resume=resume)
        except CheckpointError as err:  # an unusable checkpoint: start over
            moved = _move_aside(run_dir, runs_dir, locks)
            print(f"{prefix} cannot resume ({err}); moved to {moved}, restarting", flush=True)
            action = "restarted"
            train(run.config)
    except Exception as err:  # noqa: BLE001 - recorded; the sweep goes on
        from gradlab.rundir import RunLockedError

        if isinstance(err, RunLockedError):
            raise
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        print(f"{prefix} FAILED {message}\n{traceback.format_exc(limit=3)}", flush=True)
        return {**row, "action": action, "status": "failed", "error": message}
    return {**row, "action": action, **_finished_row(run_dir)}


def _lock(run_dir: Path, locks: list) -> None:
    """Take the run lock of ``run_dir`` (RunLockedError when another process holds it)."""
    from gradlab.rundir import RunLock

    lock = RunLock(run_dir)
    lock.__enter__()
    locks.append(lock)


def _has_checkpoint(run_dir: Path, prefix: str) -> bool:
    """Whether the run has a checkpoint to resume from (last, best or step-N), once the
    checkpoint saves a kill interrupted are finished or undone."""
    from gradlab.checkpoint import recover_checkpoints

    folder = run_dir / "checkpoints"
    for action in recover_checkpoints(folder):
        print(f"{prefix} {action}", flush=True)
    return folder.is_dir() and any(
        (p / "state.json").is_file() for p in folder.iterdir()
        if p.name in ("last", "best") or re.fullmatch(r"step-\d+", p.name))


def _status(run_dir: Path) -> str | None:
    """None (no run in the folder), the store's recorded status ('finished', 'running',
    ...), or 'unreadable'. Whether a 'running' run is alive is the run lock's to say."""
    from gradlab.rundir import holds_run

    if not run_dir.is_dir() or not holds_run(run_dir):
        return None if not run_dir.exists() or run_dir.is_dir() else "unreadable"
    from gradlab.store import StoreError, open_store_readonly, read_meta

    try:
        with contextlib.closing(open_store_readonly(run_dir, timeout=1.0)) as conn:
            return read_meta(conn, run_dir).get("status", "unknown")
    except StoreError:
        return "unreadable"


def _move_aside(run_dir: Path, runs_dir: Path, locks: list) -> Path:
    """Move the locked run folder to ``_failed/``, then lock its name afresh."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = runs_dir / FAILED_DIR / f"{run_dir.name}.failed-{stamp}"
    k = 1
    while target.exists():
        target = runs_dir / FAILED_DIR / f"{run_dir.name}.failed-{stamp}-{k}"
        k += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run_dir, target)  # the lock file moves with it: release it, lock the new folder
    while locks:
        locks.pop().__exit__(None, None, None)
    _lock(run_dir, locks)
    return target


def _finished_row(run_dir: Path) -> dict[str, Any]:
    """status, wall_time and "<task>.<metric>" columns of a finished run."""
    metrics, wall = {}, math.nan
    try:
        data = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        metrics, wall = data["metrics"], data.get("wall_time", math.nan)
    except (OSError, ValueError, KeyError):
        # killed between closing its store and writing metrics.json: read the store
        from gradlab.run import load_run

        run = load_run(run_dir)
        evals = run.evals(split=None)
        evals = evals[evals["split"] == "dev"]
        last = evals[evals["step"] == evals["step"].max()]
        for r in last.itertuples(index=False):
            metrics.setdefault(r.task, {})[r.metric] = r.value
        scalars = run.scalars()
        walls = scalars.loc[scalars["name"] == "wall_time", "value"]
        wall = float(walls.iloc[-1]) if len(walls) else math.nan
    flat = {f"{task}.{name}": value for task, values in metrics.items()
            for name, value in values.items()}
    return {"status": "finished", "wall_time": wall, **flat}
