"""Writing a run store: `RunWriter` appends one run's raw facts to ``<run>/run.sqlite``.

WAL mode lets a notebook read while the trainer writes; rows are committed in batches, one
transaction each, so a run killed at any instant leaves a file that opens and holds every
step up to the last commit. Tables: `gradlab.store_schema`; reading: `gradlab.store_reader`;
both re-exported by `gradlab.store`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradlab.rundir import RunLock, write_point
from gradlab.store_reader import read_meta
from gradlab.store_schema import (
    COLUMNS,
    ENCODER,
    SCHEMA,
    SCHEMA_VERSION,
    SOURCES,
    STATUSES,
    STORE_FILENAME,
    StoreError,
    check_choice,
    check_names,
)

if TYPE_CHECKING:  # only attributes are read; importing it would pull torch into every reader
    from gradlab.methods._base import ProjectionEvent

__all__ = ["RunWriter"]

_INSERT = {
    table: f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in COLUMNS.items()
}


class RunWriter:
    """Appends one run's raw facts to ``run_dir/run.sqlite`` in batched transactions.

    Rows are buffered and committed in one transaction every ``commit_every`` distinct steps
    (or once ``commit_seconds`` have passed), always at a step boundary, and on `flush` /
    `close`; a reader therefore only ever sees whole steps. While open it holds the run lock
    (`gradlab.rundir.RunLock`, shared with a lock this process already holds on the folder),
    so readers can tell a live run from a dead one. ``resume=True`` reopens an existing store
    of the same tasks and blocks (call `truncate_after` with the checkpoint step). Usable as a
    context manager: an exception closes it with status 'failed' ('stopped' for
    KeyboardInterrupt).
    """

    def __init__(self, run_dir: Path | str, *, name: str, config: dict[str, Any],
                 tasks: Sequence[str], blocks: Sequence[tuple[str, int]], method: str, seed: int,
                 schedule: str, commit_every: int = 25, commit_seconds: float = 5.0,
                 resume: bool = False):
        check_names("tasks", tasks)
        block_list = [(str(b), int(n)) for b, n in blocks]
        if block_list:  # none: a frozen encoder (no shared gradients, no Gramians)
            check_names("blocks", [b for b, _ in block_list], reserved=(ENCODER, ""))
        if isinstance(commit_every, bool) or int(commit_every) != commit_every or commit_every < 1:
            raise ValueError(f"commit_every must be an integer >= 1, got {commit_every!r}")
        if not commit_seconds >= 0:
            raise ValueError(f"commit_seconds must be >= 0, got {commit_seconds!r}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_FILENAME
        self.name = name
        self.tasks = list(tasks)
        self.blocks = block_list
        self.method = method
        self.commit_every = int(commit_every)
        self.commit_seconds = float(commit_seconds)
        self._block_names = [b for b, _ in block_list]
        self._rows: dict[str, list[tuple]] = {table: [] for table in COLUMNS}
        self._pending_steps: set[int] = set()
        self._current_step: int | None = None
        self._last_commit = time.monotonic()
        self._conn: sqlite3.Connection | None = None

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create run folder {self.run_dir}: {e.strerror or e}",
                             self.run_dir) from e
        exists = self.path.exists()
        if exists and not resume:
            raise StoreError(
                f"a run store already exists at {self.path}; pass resume=True to continue it "
                "or choose another run name", self.path)
        if resume and not exists:
            raise StoreError(f"cannot resume: no run store at {self.path}", self.path)
        self._lock = RunLock(self.run_dir)
        try:
            self._lock.__enter__()  # released by close(); raises RunLockedError when held
        except OSError as e:
            raise StoreError(f"cannot lock the run folder {self.run_dir}: {e.strerror or e}",
                             self.run_dir) from e

        meta = {
            "name": name,
            "config": json.dumps(config, sort_keys=True, default=str),
            "tasks": json.dumps(self.tasks),
            "blocks": json.dumps([list(b) for b in block_list]),
            "method": method,
            "seed": str(int(seed)),
            "schedule": schedule,
            "gradlab_version": _gradlab_version(),
            "status": "running",
        }
        try:
            self._conn = self._connect()
            if resume and self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                    ).fetchone() is None:
                resume = False  # killed inside its creating transaction: empty, so start anew
            if resume:
                self._check_resumable()
                meta["resumed_at"] = _now()
                del meta["name"]
                self._write_meta(meta, schema=True)  # tables added since it was created
            else:
                # Schema and meta in one transaction: a reader never sees a store without meta.
                meta.update(schema_version=SCHEMA_VERSION, created_at=_now())
                self._write_meta(meta, schema=True)
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._lock.__exit__(None, None, None)
            raise

    # -- logging -----------------------------------------------------------------------------

    def log_scalars(self, step: int, values: dict[str, float], task: str = "") -> None:
        """One row per name: ('loss', 0.7) with task 'sst'; task '' for global scalars."""
        step = self._note_step(step)
        self._rows["scalars"].extend((step, str(k), task, _float(v)) for k, v in values.items())

    def log_gramians(self, step: int, source: str, block_gramians: np.ndarray,
                     block_names: Sequence[str], tasks: Sequence[str]) -> None:
        """Per-block Gramians [B, T, T] of every block, plus block 'encoder' = their sum."""
        check_choice("source", source, SOURCES)
        G = np.asarray(block_gramians, dtype="<f8")
        tasks = self._check_tasks(tasks)
        block_names = list(block_names)
        T = len(tasks)
        if G.shape != (len(block_names), T, T):
            raise ValueError(
                f"block_gramians must have shape [B={len(block_names)}, T={T}, T={T}] for "
                f"{len(block_names)} block names and tasks {tasks}, got {G.shape}")
        if sorted(block_names) != sorted(self._block_names):
            raise ValueError(
                f"block_names must name every block of the run once {self._block_names} "
                f"(the 'encoder' Gramian is their sum), got {block_names}")
        step = self._note_step(step)
        tasks_json = json.dumps(tasks)
        rows = self._rows["gramians"]
        for name, g in zip(block_names, G, strict=True):
            rows.append((step, source, name, tasks_json, np.ascontiguousarray(g).tobytes()))
        encoder = np.ascontiguousarray(G.sum(axis=0), dtype="<f8")
        rows.append((step, source, ENCODER, tasks_json, encoder.tobytes()))

    def log_replicate_gramians(self, step: int, block_gramians: np.ndarray,
                               block_names: Sequence[str], tasks: Sequence[str],
                               replicates: int) -> None:
        """A probe's per-block Gramians [B, K*T, K*T] of K replicate batches per task (rows
        replicate-major: row a*T + i is replicate a of task i), plus block 'encoder' = their
        sum. Replicate 0's [T, T] block is what `log_gramians(step, "probe", ...)` logs."""
        tasks = self._check_tasks(tasks)
        if isinstance(replicates, bool) or int(replicates) != replicates or replicates < 1:
            raise ValueError(f"replicates must be an integer >= 1, got {replicates!r}")
        G = np.asarray(block_gramians, dtype="<f8")
        block_names = list(block_names)
        n = int(replicates) * len(tasks)
        if G.shape != (len(block_names), n, n):
            raise ValueError(
                f"block_gramians must have shape [B={len(block_names)}, K*T={n}, K*T={n}] for "
                f"{len(block_names)} blocks, K={replicates} and tasks {tasks}, got {G.shape}")
        if sorted(block_names) != sorted(self._block_names):
            raise ValueError(f"block_names must name every block of the run once "
                             f"{self._block_names}, got {block_names}")
        step = self._note_step(step)
        tasks_json = json.dumps(tasks)
        rows = self._rows["replicate_gramians"]
        for name, g in zip(block_names, G, strict=True):
            rows.append((step, name, tasks_json, int(replicates),
                         np.ascontiguousarray(g).tobytes()))
        encoder = np.ascontiguousarray(G.sum(axis=0), dtype="<f8")
        rows.append((step, ENCODER, tasks_json, int(replicates), encoder.tobytes()))

    def log_example_gramians(self, step: int, block_gramians: np.ndarray,
                             block_names: Sequence[str], ids: Sequence[str],
                             tasks: Sequence[str], losses: Sequence[float]) -> None:
        """An example probe's per-block Gramians [B, N, N] of N examples' per-example
        gradients (`gradlab.per_example`), plus block 'encoder' = their sum. ids, tasks
        (each a task of the run), losses: [N], the rows' examples in order."""
        G = np.asarray(block_gramians, dtype="<f8")
        block_names = list(block_names)
        ids, tasks = [str(i) for i in ids], [str(t) for t in tasks]
        losses = [_float(v) for v in np.asarray(losses, dtype=float).reshape(-1)]
        n = len(ids)
        if G.shape != (len(block_names), n, n) or len(tasks) != n or len(losses) != n:
            raise ValueError(
                f"block_gramians must have shape [B={len(block_names)}, N, N] with N={n} ids, "
                f"tasks and losses, got {G.shape}, {len(tasks)} tasks and {len(losses)} losses")
        unknown = sorted({t for t in tasks} - set(self.tasks))
        if unknown or not n:
            raise ValueError(f"tasks must be tasks of the run {self.tasks} (N >= 1), got "
                             f"{unknown or tasks}")
        extra = [b for b in block_names if b not in self._block_names]
        if extra or len(set(block_names)) != len(block_names) or not block_names:
            raise ValueError(f"block_names must be distinct blocks of the run "
                             f"{self._block_names}, got {block_names}")
        step = self._note_step(step)
        meta = (json.dumps(ids), json.dumps(tasks), json.dumps(losses))
        rows = self._rows["example_gramians"]
        for name, g in zip(block_names, G, strict=True):
            rows.append((step, name, *meta, np.ascontiguousarray(g).tobytes()))
        encoder = np.ascontiguousarray(G.sum(axis=0), dtype="<f8")
        rows.append((step, ENCODER, *meta, encoder.tobytes()))

    def log_weights(self, step: int, source: str, method: str, weights: np.ndarray,
                    tasks: Sequence[str], block_names: Sequence[str] | None = None) -> None:
        """Task weights [T] (block '') or blockwise weights [B, T] (one row per block, task)."""
        check_choice("source", source, SOURCES)
        tasks = self._check_tasks(tasks)
        w = np.asarray(weights, dtype=float)
        if w.ndim == 1 and w.shape == (len(tasks),):
            per_block = [("", w)]
        elif w.ndim == 2 and block_names is not None and w.shape == (len(block_names), len(tasks)):
            unknown = [b for b in block_names if b not in self._block_names]
            if unknown:
                raise ValueError(f"unknown block names {unknown}; blocks: {self._block_names}")
            per_block = list(zip(block_names, w, strict=True))
        else:
            raise ValueError(
                f"weights must have shape [T={len(tasks)}] or [B, T] with B = len(block_names) "
                f"(block_names={block_names}), got {w.shape}")
        step = self._note_step(step)
        self._rows["weights"].extend(
            (step, source, method, block, task, _float(v))
            for block, row in per_block
            for task, v in zip(tasks, row, strict=True)
        )

    def log_projections(self, step: int, events: Sequence[ProjectionEvent],
                        tasks: Sequence[str]) -> None:
        """PCGrad projection events; event.i / event.j index ``tasks``; block '' when None."""
        tasks = self._check_tasks(tasks)
        for e in events:
            if not (0 <= e.i < len(tasks) and 0 <= e.j < len(tasks)):
                raise ValueError(f"projection event {e} indexes outside tasks {tasks}")
        step = self._note_step(step)
        self._rows["projections"].extend(
            (step, e.block or "", tasks[e.i], tasks[e.j], _float(e.coefficient), _float(e.cosine))
            for e in events)

    def log_eval(self, step: int, split: str, task: str, metrics: dict[str, float]) -> None:
        """One row per metric of one task (or task 'overall') on one split."""
        step = self._note_step(step)
        if not any(row[0] == step for row in self._rows["evals"]):
            write_point(f"evaluating step {step} (kill point: rows of an evaluation buffered)")
        self._rows["evals"].extend(
            (step, split, task, str(m), _float(v)) for m, v in metrics.items())

    def log_counterfactual(self, step: int, method: str, tasks: Sequence[str],
                           weights: np.ndarray, predicted: np.ndarray,
                           measured: np.ndarray | None = None) -> None:
        """What ``method`` would have done at this step: weights [T], predicted ΔL [T],
        measured ΔL [T] (None unless a virtual step ran)."""
        tasks = self._check_tasks(tasks)
        T = len(tasks)
        arrays = {"weights": weights, "predicted": predicted,
                  "measured": np.full(T, np.nan) if measured is None else measured}
        arrays = {k: np.asarray(v, dtype=float) for k, v in arrays.items()}
        for k, v in arrays.items():
            if v.shape != (T,):
                raise ValueError(f"{k} must have shape [T={T}], got {v.shape}")
        step = self._note_step(step)
        self._rows["counterfactuals"].extend(
            (step, method, task, _float(w), _float(p), _float(m))
            for task, w, p, m in zip(tasks, *arrays.values(), strict=True))

    def log_checkpoint(self, step: int, kind: str, path: Path | str) -> None:
        step = self._note_step(step)
        self._rows["checkpoints"].append((step, kind, str(path), _now()))

    # -- transactions ------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit every buffered row in one transaction."""
        self._require_open()
        n = sum(len(rows) for rows in self._rows.values())
        if n:
            with self._transaction(f"could not write {n} rows to {self.path}") as conn:
                for table, rows in self._rows.items():
                    if rows:
                        conn.executemany(_INSERT[table], rows)
            for rows in self._rows.values():
                rows.clear()
        self._pending_steps.clear()
        self._last_commit = time.monotonic()

    def truncate_after(self, step: int) -> None:
        """Delete every row (stored or buffered) with a step after ``step`` (resume point)."""
        self._require_open()
        step = int(step)
        for rows in self._rows.values():
            rows[:] = [r for r in rows if r[0] <= step]
        self.flush()
        self._current_step = None
        with self._transaction(f"could not truncate {self.path} after step {step}") as conn:
            for table in COLUMNS:
                conn.execute(f"DELETE FROM {table} WHERE step > ?", (step,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('truncated_after', ?)", (str(step),))

    def close(self, status: str = "finished") -> None:
        """Commit what is buffered, record ``status`` and close the file (idempotent)."""
        check_choice("status", status, STATUSES)
        if self._conn is None:
            return
        try:
            self.flush()
            self._write_meta({"status": status, "ended_at": _now()})
        finally:
            self._conn.close()
            self._conn = None
            self._lock.__exit__(None, None, None)

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("finished")
        elif self._conn is not None:
            try:
                self.close("stopped" if issubclass(exc_type, KeyboardInterrupt) else "failed")
            except StoreError:
                pass  # keep the original exception

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"RunWriter(path={str(self.path)!r}, commit_every={self.commit_every}, {state})"

    # -- internals ---------------------------------------------------------------------------

    def _note_step(self, step: int) -> int:
        """Commit the buffered steps when a new step starts and the batch is full or old."""
        if isinstance(step, bool) or int(step) != step:
            raise TypeError(f"step must be an integer, got {step!r}")
        step = int(step)
        self._require_open()
        if step != self._current_step:
            due = (len(self._pending_steps) >= self.commit_every
                   or time.monotonic() - self._last_commit >= self.commit_seconds)
            if self._pending_steps and due:
                self.flush()
            self._current_step = step
        self._pending_steps.add(step)
        return step

    def _check_tasks(self, tasks: Sequence[str]) -> list[str]:
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown or len(set(tasks)) != len(tasks) or not tasks:
            raise ValueError(f"tasks must be distinct tasks of the run {self.tasks}, got {tasks}")
        return tasks

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the writer of {self.path} is closed", self.path)
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open run store {self.path} for writing: {e}",
                             self.path) from e
        if mode.lower() != "wal":
            conn.close()
            raise StoreError(f"{self.path}: the file system does not support SQLite's WAL mode "
                             f"(journal_mode={mode})", self.path)
        return conn

    def _check_resumable(self) -> None:
        meta = read_meta(self._conn, self.path)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"cannot resume {self.path}: run-store schema version "
                f"{meta.get('schema_version')!r}, this gradlab writes {SCHEMA_VERSION!r}",
                self.path)
        stored_tasks = json.loads(meta.get("tasks", "[]"))
        stored_blocks = [tuple(b) for b in json.loads(meta.get("blocks", "[]"))]
        problems = []
        if stored_tasks != self.tasks:
            problems.append(f"tasks {stored_tasks} != {self.tasks}")
        if stored_blocks != [tuple(b) for b in self.blocks]:
            problems.append(f"blocks {stored_blocks} != {self.blocks}")
        if problems:
            raise StoreError(f"cannot resume {self.path}: " + "; ".join(problems), self.path)

    def _write_meta(self, meta: dict[str, str], schema: bool = False) -> None:
        with self._transaction(f"could not write metadata to {self.path}") as conn:
            for statement in SCHEMA if schema else ():
                conn.execute(statement)
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                             list(meta.items()))

    @contextlib.contextmanager
    def _transaction(self, failure: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; on a SQLite error roll back and raise StoreError
        "<failure>: <error>"."""
        conn = self._require_open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            write_point(f"open transaction on {self.path} (kill point: not yet committed)")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.rollback()
            raise StoreError(f"{failure}: {e}", self.path) from e


def _float(v: Any) -> float | None:
    # NaN is stored as SQL NULL (SQLite's own conversion); None stays None.
    return None if v is None else float(v)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _gradlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradlab")
    except PackageNotFoundError:
        import gradlab

        return str(getattr(gradlab, "__version__", "unknown"))
