"""Reading a run store: read-only connections, its metadata, its live status and its queries.

Every SQL query that reads a run lives here (`StoreReader`); `gradlab.run` turns the rows into
statistics and tidy frames. Each call opens a fresh read-only connection, so a reader sees
the rows a running trainer has committed since its last call and never blocks the writer.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from gradlab.store import RunWriter
    >>> run_dir = Path(tempfile.mkdtemp()) / "demo"
    >>> with RunWriter(run_dir, name="demo", config={}, tasks=["sst", "para"],
    ...                blocks=[("layer.0", 2)], method="sum", seed=0, schedule="joint") as w:
    ...     w.log_scalars(0, {"loss": 0.7}, task="sst")
    >>> reader = StoreReader(run_dir)
    >>> reader.losses()
       step task  value
    0     0  sst    0.7
    >>> run_status(run_dir)
    'finished'
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradlab import rundir
from gradlab.store_schema import COLUMNS, SCHEMA_VERSION, StoreError, store_file

__all__ = ["RUN_STATUSES", "ExampleProbe", "GramianSeries", "ReplicateSeries", "StoreReader",
           "open_store_readonly", "read_meta", "run_status"]

#: What `run_status` (and `Run.status`) report. 'running': a process holds the run lock and
#: writes the run; 'dead': the store says running but no process holds the lock (the writer
#: was killed, crashed, or died of a full disk; resume it with `gradlab train --resume`);
#: 'finished', 'failed' (an error ended it), 'stopped' (KeyboardInterrupt): what the writer
#: recorded when it closed; 'unknown': a store without a recorded status.
RUN_STATUSES = ("running", "dead", "finished", "failed", "stopped", "unknown")


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


def run_status(path: Path | str) -> str:
    """The status of the run in ``path`` (run directory or store file), one of `RUN_STATUSES`.

    The recorded status, except that a run recorded as 'running' is 'dead' when no process
    holds its run lock (`gradlab.rundir.is_locked`): a killed writer never records an end.
    Raises `StoreError` when there is no readable store.
    """
    with contextlib.closing(open_store_readonly(path)) as conn:
        status = read_meta(conn, store_file(path)).get("status", "unknown")
    return _live(status, store_file(path).parent)


def _live(status: str, run_dir: Path) -> str:
    if status == "running" and rundir.LOCKS_SUPPORTED and not rundir.is_locked(run_dir):
        return "dead"
    return status


@dataclass
class GramianSeries:
    """The Gramians of one (source, block, task set) as logged: tasks in logged order."""

    source: str
    block: str
    tasks: list[str]
    steps: np.ndarray  # [N] int64, ascending, unique (a re-logged step keeps its last row)
    G: np.ndarray  # [N, T, T] float64


@dataclass
class ReplicateSeries:
    """The replicate Gramians of one (block, task set, K): rows replicate-major (row a*T + i
    is replicate a of task i)."""

    block: str
    tasks: list[str]
    replicates: int
    steps: np.ndarray  # [N] int64, ascending, unique
    G: np.ndarray  # [N, K*T, K*T] float64


@dataclass
class ExampleProbe:
    """One example probe as stored: its step, the N examples (ids, tasks, losses [N]) and
    the per-example Gramians [B, N, N] of ``blocks`` (block names as logged, 'encoder' last)."""

    step: int
    ids: list[str]
    tasks: list[str]
    losses: np.ndarray  # [N] float64
    blocks: list[str]
    G: np.ndarray  # [B, N, N] float64


class StoreReader:
    """The queries of one run store; every method reads through a fresh read-only connection.

    Frames come back in logging order (``ORDER BY step, rowid``) with the store's column
    names; NaN values read back as NaN.
    """

    def __init__(self, path: Path | str):
        self.store_file = store_file(path)

    def meta(self) -> dict[str, str]:
        """The meta table (see `read_meta`)."""
        with self._connect() as conn:
            return read_meta(conn, self.store_file)

    def status(self) -> str:
        """The live status (see `run_status`)."""
        return _live(self.meta().get("status", "unknown"), self.store_file.parent)

    def distinct(self, table: str, column: str) -> list[Any]:
        """The distinct values of ``column`` in ``table`` (e.g. the sources of 'gramians')."""
        if column not in COLUMNS.get(table, ()):
            raise ValueError(f"no column {column!r} in run-store table {table!r}")
        with self._connect() as conn:
            return [v for (v,) in conn.execute(f"SELECT DISTINCT {column} FROM {table}")]

    def progress(self) -> tuple[int, int | None]:
        """(number of steps with any logged row, last such step or None)."""
        with self._connect() as conn:
            return conn.execute(
                "SELECT COUNT(*), MAX(step) FROM (SELECT step FROM scalars UNION "
                "SELECT step FROM gramians UNION SELECT step FROM weights)").fetchone()

    # -- Gramians ------------------------------------------------------------------------------

    def gramians(self, sources: Sequence[str], blocks: Sequence[str]) -> list[GramianSeries]:
        """Every logged Gramian of ``sources`` x ``blocks``, stacked per (source, block, task
        set) in order of first appearance."""
        if not sources or not blocks:
            return []
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT step, source, block, tasks, data FROM gramians WHERE source IN "
                f"({_marks(sources)}) AND block IN ({_marks(blocks)}) ORDER BY rowid",
                [*sources, *blocks]).fetchall()
        collected: dict[tuple[str, str, str], tuple[list[int], list[bytes]]] = {}
        for step, source, block, tasks, data in rows:
            steps, datas = collected.setdefault((source, block, tasks), ([], []))
            steps.append(step)
            datas.append(data)
        series = []
        for (source, block, tasks_json), (steps, datas) in collected.items():
            tasks = json.loads(tasks_json)
            G = self._decode(b"".join(datas), len(tasks))
            steps = np.asarray(steps, dtype=np.int64)
            order = np.argsort(steps, kind="stable")
            steps, G = steps[order], G[order]
            last = np.r_[steps[1:] != steps[:-1], True]  # a re-logged step: keep the last row
            series.append(GramianSeries(source, block, tasks, steps[last], G[last]))
        return series

    def gramian_at(self, step: int, source: str, block: str
                   ) -> tuple[list[str], np.ndarray] | None:
        """(tasks in logged order, G [T, T]) last logged at ``step``, or None."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT tasks, data FROM gramians WHERE source = ? AND block = ? AND step = ? "
                "ORDER BY rowid DESC LIMIT 1", (source, block, int(step))).fetchone()
        if row is None:
            return None
        tasks = json.loads(row[0])
        return tasks, self._decode(row[1], len(tasks))[0]

    def gramian_steps(self, source: str, block: str) -> list[int]:
        """The steps with a Gramian of ``source`` and ``block``, ascending."""
        with self._connect() as conn:
            return [s for (s,) in conn.execute(
                "SELECT DISTINCT step FROM gramians WHERE source = ? AND block = ? ORDER BY step",
                (source, block))]

    def replicate_gramians(self, blocks: Sequence[str]) -> list[ReplicateSeries]:
        """Every logged replicate Gramian of ``blocks``, stacked per (block, task set, K) in
        order of first appearance (none in a store written before replicate probes)."""
        if not blocks:
            return []
        with self._connect() as conn:
            try:
                rows = conn.execute(
                    f"SELECT step, block, tasks, replicates, data FROM replicate_gramians "
                    f"WHERE block IN ({_marks(blocks)}) ORDER BY rowid", list(blocks)).fetchall()
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):
                    return []
                raise
        collected: dict[tuple[str, str, int], tuple[list[int], list[bytes]]] = {}
        for step, block, tasks, replicates, data in rows:
            steps, datas = collected.setdefault((block, tasks, int(replicates)), ([], []))
            steps.append(step)
            datas.append(data)
        series = []
        for (block, tasks_json, K), (steps, datas) in collected.items():
            tasks = json.loads(tasks_json)
            G = self._decode(b"".join(datas), K * len(tasks))
            steps = np.asarray(steps, dtype=np.int64)
            order = np.argsort(steps, kind="stable")
            steps, G = steps[order], G[order]
            last = np.r_[steps[1:] != steps[:-1], True]  # a re-logged step: keep the last row
            series.append(ReplicateSeries(block, tasks, K, steps[last], G[last]))
        return series

    def example_probes(self, step: int | None = None) -> list[ExampleProbe]:
        """Every logged example probe (only those of ``step`` when given), by step (none in
        a store written before example probes)."""
        where, params = ("WHERE step = ?", [int(step)]) if step is not None else ("", [])
        with self._connect() as conn:
            try:
                rows = conn.execute(
                    f"SELECT step, block, ids, tasks, losses, data FROM example_gramians "
                    f"{where} ORDER BY step, rowid", params).fetchall()
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):
                    return []
                raise
        collected: dict[int, tuple[tuple[str, str, str], dict[str, bytes]]] = {}
        for s, block, ids, tasks, losses, data in rows:
            meta, blocks = collected.setdefault(s, ((ids, tasks, losses), {}))
            if meta != (ids, tasks, losses):  # a re-logged step: keep the last probe
                meta, blocks = collected[s] = ((ids, tasks, losses), {})
            blocks[block] = data  # a re-logged block: the last row wins
        probes = []
        for s, ((ids, tasks, losses), blocks) in sorted(collected.items()):
            n = len(json.loads(ids))
            G = np.stack([self._decode(data, n)[0] for data in blocks.values()])
            probes.append(ExampleProbe(int(s), json.loads(ids), json.loads(tasks),
                                       np.array(json.loads(losses), dtype=np.float64),
                                       list(blocks), G))
        return probes

    # -- logged facts --------------------------------------------------------------------------

    def weights(self, sources: Sequence[str]) -> pd.DataFrame:
        """[source, step, block, task, value] of ``sources``."""
        return self._query(f"SELECT source, step, block, task, value FROM weights WHERE source "
                           f"IN ({_marks(sources)}) ORDER BY step, rowid", sources)

    def projections(self) -> pd.DataFrame:
        """[step, block, task_i, task_j, coefficient, cosine]: PCGrad projection events."""
        return self._query("SELECT step, block, task_i, task_j, coefficient, cosine "
                           "FROM projections ORDER BY step, rowid")

    def projected_pairs(self) -> pd.DataFrame:
        """[step, task_i, task_j]: the ordered pairs projected at a step (any block)."""
        return self._query("SELECT DISTINCT step, task_i, task_j FROM projections")

    def train_step_tasks(self) -> pd.DataFrame:
        """[step, task]: the tasks of each step where the method ran (train weights logged):
        those with a logged loss, else (no loss logged at that step) those weighted."""
        ran = "SELECT step FROM weights WHERE source = 'train'"
        return self._query(
            f"SELECT DISTINCT step, task FROM scalars WHERE name = 'loss' AND step IN ({ran}) "
            f"UNION SELECT DISTINCT step, task FROM weights WHERE source = 'train' AND step NOT IN "
            f"(SELECT step FROM scalars WHERE name = 'loss')")

    def losses(self) -> pd.DataFrame:
        """[step, task, value] of the scalars named 'loss'."""
        return self._query("SELECT step, task, value FROM scalars WHERE name = 'loss' "
                           "ORDER BY step, rowid")

    def scalars(self, names: Sequence[str]) -> pd.DataFrame:
        """[step, name, task, value] of the scalars ``names``."""
        return self._query(f"SELECT step, name, task, value FROM scalars WHERE name IN "
                           f"({_marks(names)}) ORDER BY step, rowid", names)

    def evals(self, splits: Sequence[str]) -> pd.DataFrame:
        """[step, split, task, metric, value] of ``splits``."""
        return self._query(f"SELECT step, split, task, metric, value FROM evals WHERE split IN "
                           f"({_marks(splits)}) ORDER BY step, rowid", splits)

    def counterfactuals(self) -> pd.DataFrame:
        """[step, counterfactual, task, weight, predicted_delta, measured_delta]."""
        return self._query("SELECT step, method AS counterfactual, task, weight, "
                           "predicted_delta, measured_delta FROM counterfactuals "
                           "ORDER BY step, rowid")

    # -- internals -----------------------------------------------------------------------------

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(open_store_readonly(self.store_file))

    def _query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self._connect() as conn:
            return pd.read_sql_query(sql, conn, params=list(params))

    def _decode(self, data: bytes, T: int) -> np.ndarray:
        try:
            return np.frombuffer(data, dtype="<f8").reshape(-1, T, T).astype(np.float64)
        except ValueError as e:
            raise StoreError(f"{self.store_file}: a Gramian row is not float64 [{T}, {T}]",
                             self.store_file) from e

    def __repr__(self) -> str:
        return f"StoreReader({str(self.store_file)!r})"


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))
