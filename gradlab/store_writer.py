"""The run store: one SQLite file ``run.sqlite`` per run directory, written by `RunWriter`.

It holds raw facts only (config, scalars, per-block Gramians, weights, projection events,
evals, counterfactuals, checkpoints); every statistic is derived at read time by
`gradlab.stats` (see `gradlab.run`). WAL mode lets a notebook read while the trainer writes;
rows are committed in batches, one transaction each, so a run killed at any instant leaves a
file that opens and holds every step up to the last commit.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> run_dir = Path(tempfile.mkdtemp()) / "demo"
    >>> with RunWriter(run_dir, name="demo", config={}, tasks=["sst", "para"],
    ...                blocks=[("layer.0", 10)], method="sum", seed=0,
    ...                schedule="joint") as writer:
    ...     writer.log_scalars(0, {"loss": 0.7}, task="sst")
    >>> conn = open_store_readonly(run_dir)
    >>> conn.execute("SELECT step, name, task, value FROM scalars").fetchall()
    [(0, 'loss', 'sst', 0.7)]
    >>> conn.close()
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # only attributes are read; importing it would pull torch into every reader
    from gradlab.methods._base import ProjectionEvent

__all__ = [
    "SCHEMA_VERSION",
    "SOURCES",
    "STATUSES",
    "STORE_FILENAME",
    "RunWriter",
    "StoreError",
    "open_store_readonly",
    "read_meta",
    "resolve_run_dir",
    "store_file",
]

SCHEMA_VERSION = "1"
STORE_FILENAME = "run.sqlite"
SOURCES = ("train", "probe")
STATUSES = ("running", "finished", "failed", "stopped")
ENCODER = "encoder"  # the pseudo-block whose Gramian is the sum of the block Gramians

_COLUMNS: dict[str, tuple[str, ...]] = {
    "scalars": ("step", "name", "task", "value"),
    "gramians": ("step", "source", "block", "tasks", "data"),
    "weights": ("step", "source", "method", "block", "task", "value"),
    "projections": ("step", "block", "task_i", "task_j", "coefficient", "cosine"),
    "evals": ("step", "split", "task", "metric", "value"),
    "counterfactuals": ("step", "method", "task", "weight", "predicted_delta", "measured_delta"),
    "checkpoints": ("step", "kind", "path", "created_at"),
}
_TYPES = {
    "step": "INTEGER", "value": "REAL", "coefficient": "REAL", "cosine": "REAL",
    "weight": "REAL", "predicted_delta": "REAL", "measured_delta": "REAL", "data": "BLOB",
}
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)",
    *(
        f"CREATE TABLE IF NOT EXISTS {table}("
        + ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in cols)
        + ")"
        for table, cols in _COLUMNS.items()
    ),
    *(f"CREATE INDEX IF NOT EXISTS {t}_step ON {t}(step)" for t in _COLUMNS),
    "CREATE INDEX IF NOT EXISTS gramians_series ON gramians(source, block, step)",
]
_INSERT = {
    table: f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in _COLUMNS.items()
}


class StoreError(Exception):
    """A run store that cannot be created, written or read; the message names the file."""

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


def resolve_run_dir(runs_root: Path | str, name: str) -> Path:
    """The directory of run ``name`` inside ``runs_root``, refusing names that would escape it.

    A run name is one path component: not empty, not '.' or '..', no '/' or '\\', not absolute.
    """
    if not isinstance(name, str):
        raise TypeError(f"run name must be a str, got {type(name).__name__} {name!r}")
    bad = (
        not name.strip()
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", "\0"))
        or Path(name).is_absolute()
        or Path(name).name != name
    )
    if bad:
        raise ValueError(
            f"invalid run name {name!r}: it must be a single folder name inside {str(runs_root)!r} "
            "(not empty, no '/' or '\\', not '.' or '..', not an absolute path)"
        )
    root = Path(runs_root)
    run_dir = root / name
    if run_dir.resolve().parent != root.resolve():
        raise ValueError(f"invalid run name {name!r}: {run_dir} resolves outside {root}")
    return run_dir


def store_file(path: Path | str) -> Path:
    """The ``run.sqlite`` of a run directory, or ``path`` itself when it names a file."""
    path = Path(path)
    return path if path.suffix == ".sqlite" or path.is_file() else path / STORE_FILENAME


class RunWriter:
    """Appends one run's raw facts to ``run_dir/run.sqlite`` in batched transactions.

    Rows are buffered and committed in one transaction every ``commit_every`` distinct steps
    (or once ``commit_seconds`` have passed), always at a step boundary, and on `flush` /
    `close`; a reader therefore only ever sees whole steps. ``resume=True`` reopens an
    existing store of the same tasks and blocks (call `truncate_after` with the checkpoint
    step). Usable as a context manager: an exception closes it with status 'failed'
    ('stopped' for KeyboardInterrupt).
    """

    def __init__(
        self,
        run_dir: Path | str,
        *,
        name: str,
        config: dict[str, Any],
        tasks: Sequence[str],
        blocks: Sequence[tuple[str, int]],
        method: str,
        seed: int,
        schedule: str,
        commit_every: int = 25,
        commit_seconds: float = 5.0,
        resume: bool = False,
    ):
        _check_names("tasks", tasks)
        block_list = [(str(b), int(n)) for b, n in blocks]
        _check_names("blocks", [b for b, _ in block_list], reserved=(ENCODER, ""))
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
        self._rows: dict[str, list[tuple]] = {table: [] for table in _COLUMNS}
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
        self._conn = self._connect()
        try:
            if resume:
                self._check_resumable()
                meta["resumed_at"] = _now()
                del meta["name"]
                self._write_meta(meta)
            else:
                # Schema and meta in one transaction: a reader never sees a store without meta.
                meta.update(schema_version=SCHEMA_VERSION, created_at=_now())
                self._write_meta(meta, schema=True)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # -- logging -----------------------------------------------------------------------------

    def log_scalars(self, step: int, values: dict[str, float], task: str = "") -> None:
        """One row per name: ('loss', 0.7) with task 'sst'; task '' for global scalars."""
        step = self._note_step(step)
        self._rows["scalars"].extend((step, str(k), task, _float(v)) for k, v in values.items())

    def log_gramians(
        self,
        step: int,
        source: str,
        block_gramians: np.ndarray,
        block_names: Sequence[str],
        tasks: Sequence[str],
    ) -> None:
        """Per-block Gramians [B, T, T] of every block, plus block 'encoder' = their sum."""
        _check_choice("source", source, SOURCES)
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

    def log_weights(
        self,
        step: int,
        source: str,
        method: str,
        weights: np.ndarray,
        tasks: Sequence[str],
        block_names: Sequence[str] | None = None,
    ) -> None:
        """Task weights [T] (block '') or blockwise weights [B, T] (one row per block, task)."""
        _check_choice("source", source, SOURCES)
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
        self._rows["evals"].extend(
            (step, split, task, str(m), _float(v)) for m, v in metrics.items())

    def log_counterfactual(
        self,
        step: int,
        method: str,
        tasks: Sequence[str],
        weights: np.ndarray,
        predicted: np.ndarray,
        measured: np.ndarray | None = None,
    ) -> None:
        """What ``method`` would have done at this step: weights [T], predicted ΔL [T],
        measured ΔL [T] (None unless a virtual step ran)."""
        tasks = self._check_tasks(tasks)
        T = len(tasks)
        arrays = {"weights": weights, "predicted": predicted}
        if measured is not None:
            arrays["measured"] = measured
        arrays = {k: np.asarray(v, dtype=float) for k, v in arrays.items()}
        for k, v in arrays.items():
            if v.shape != (T,):
                raise ValueError(f"{k} must have shape [T={T}], got {v.shape}")
        measured_arr = arrays.get("measured", np.full(T, np.nan))
        step = self._note_step(step)
        self._rows["counterfactuals"].extend(
            (step, method, task, _float(w), _float(p), _float(m))
            for task, w, p, m in zip(
                tasks, arrays["weights"], arrays["predicted"], measured_arr, strict=True)
        )

    def log_checkpoint(self, step: int, kind: str, path: Path | str) -> None:
        step = self._note_step(step)
        self._rows["checkpoints"].append((step, kind, str(path), _now()))

    # -- transactions ------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit every buffered row in one transaction."""
        conn = self._require_open()
        n = sum(len(rows) for rows in self._rows.values())
        if n:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for table, rows in self._rows.items():
                    if rows:
                        conn.executemany(_INSERT[table], rows)
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.rollback()
                raise StoreError(f"could not write {n} rows to {self.path}: {e}", self.path) from e
            for rows in self._rows.values():
                rows.clear()
        self._pending_steps.clear()
        self._last_commit = time.monotonic()

    def truncate_after(self, step: int) -> None:
        """Delete every row (stored or buffered) with a step after ``step`` (resume point)."""
        conn = self._require_open()
        step = int(step)
        for rows in self._rows.values():
            rows[:] = [r for r in rows if r[0] <= step]
        self.flush()
        self._current_step = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            for table in _COLUMNS:
                conn.execute(f"DELETE FROM {table} WHERE step > ?", (step,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('truncated_after', ?)", (str(step),))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.rollback()
            raise StoreError(f"could not truncate {self.path} after step {step}: {e}",
                             self.path) from e

    def close(self, status: str = "finished") -> None:
        """Commit what is buffered, record ``status`` and close the file (idempotent)."""
        _check_choice("status", status, STATUSES)
        if self._conn is None:
            return
        try:
            self.flush()
            self._write_meta({"status": status, "ended_at": _now()})
        finally:
            self._conn.close()
            self._conn = None

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
        conn = self._require_open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA if schema else ():
                conn.execute(statement)
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                             list(meta.items()))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.rollback()
            raise StoreError(f"could not write metadata to {self.path}: {e}", self.path) from e


def open_store_readonly(path: Path | str, *, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to a run store (a run directory or its .sqlite file).

    Opens with a ``mode=ro`` URI, so it never writes the run and works while a `RunWriter`
    appends; retries for up to ``timeout`` seconds while the file is busy. Raises `StoreError`
    naming the file when it is missing, not a SQLite database, not a gradlab run store, or of
    a schema version this gradlab cannot read.
    """
    file = store_file(path)
    if not file.is_file():
        where = f"{file}" if file.parent.exists() else f"{file} (folder {file.parent} not found)"
        raise StoreError(f"no run store at {where}", file)
    uri = "file:" + urllib.parse.quote(str(file.resolve())) + "?mode=ro"
    deadline = time.monotonic() + timeout
    while True:
        conn = None
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=min(timeout, 1.0))
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            break
        except sqlite3.OperationalError as e:
            if conn is not None:
                conn.close()
            busy = getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY,
                                                            sqlite3.SQLITE_LOCKED)
            if busy and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            if "no such table" in str(e):
                raise StoreError(f"{file} is not a gradlab run store (no meta table)", file) from e
            raise StoreError(f"cannot read run store {file}: {e}", file) from e
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"{file} is corrupt or not a SQLite database: {e}", file) from e
    if row is None or row[0] != SCHEMA_VERSION:
        conn.close()
        found = "none" if row is None else repr(row[0])
        raise StoreError(f"{file} has run-store schema version {found}; this gradlab reads "
                         f"version {SCHEMA_VERSION!r}", file)
    return conn


def read_meta(conn: sqlite3.Connection, path: Path | str = "") -> dict[str, str]:
    """The meta table as a dict of strings (keys: name, tasks, blocks, config, status, ...)."""
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot read the metadata of run store {path}: {e}", path or None) from e


def _check_names(what: str, names: Sequence[str], reserved: Sequence[str] = ()) -> None:
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or n in reserved]
    if not names or bad or len(set(names)) != len(names):
        extra = f" other than {list(reserved)}" if reserved else ""
        raise ValueError(f"{what} must be distinct non-empty strings{extra}, got {names}")


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


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
