"""A run read as tidy DataFrames: `load_run(path) -> Run`, `load_runs(paths) -> Runs`.

The store holds raw facts; every statistic here is computed at read time by `gradlab.stats`,
one vectorised call per (source, block) over the stacked Gramians [N, T, T]. Every accessor
re-reads the store through a fresh read-only connection, so a notebook sees the rows a running
trainer has committed since the last call.

Frames are long-form, identity columns first (run, method, seed, schedule). Unordered task
pairs are named "a-b" in task order ("sst-para"), ordered PCGrad pairs "i→j" ("sst→para").

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from gradlab.store import RunWriter
    >>> run_dir = Path(tempfile.mkdtemp()) / "demo"
    >>> J = np.array([[1.0, 0.0], [-1.0, 1.0]])  # two tasks' gradients on the only block
    >>> with RunWriter(run_dir, name="demo", config={}, tasks=["sst", "para"],
    ...                blocks=[("layer.0", 2)], method="sum", seed=0, schedule="joint") as w:
    ...     w.log_gramians(0, "train", (J @ J.T)[None], ["layer.0"], ["sst", "para"])
    >>> run = load_run(run_dir)
    >>> run.cosines(blocks="encoder")[["run", "step", "pair", "value"]].round(4)
        run  step      pair   value
    0  demo     0  sst-para -0.7071
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradlab import stats
from gradlab.store import (
    ENCODER,
    SOURCES,
    STORE_FILENAME,
    StoreError,
    open_store_readonly,
    read_meta,
    store_file,
)

__all__ = ["IDENTITY", "Run", "Runs", "load_run", "load_runs"]

IDENTITY = ("run", "method", "seed", "schedule")

_INT_COLUMNS = {"step", "seed", "count", "steps"}
_FLOAT_COLUMNS = {
    "value", "conflict", "conflict_rate", "share", "coefficient", "cosine", "projected", "rate",
    "weight", "predicted_delta", "measured_delta",
}
_COLUMNS = {
    "cosines": ("source", "step", "block", "pair", "task_a", "task_b", "value"),
    "norms": ("source", "step", "block", "task", "value"),
    "conflicts": ("source", "step", "block", "pair", "task_a", "task_b", "conflict",
                  "conflict_rate"),
    "magnitude_similarity": ("source", "step", "block", "pair", "task_a", "task_b", "value"),
    "curvature_measure": ("source", "step", "block", "pair", "task_a", "task_b", "value"),
    "condition_number": ("source", "step", "block", "value"),
    "s_conflict": ("source", "block", "pair", "count", "steps", "share"),
    "projections": ("step", "block", "pair", "task_i", "task_j", "coefficient", "cosine"),
    "projection_rate": ("step", "pair", "task_i", "task_j", "projected", "rate"),
    "weights": ("source", "step", "block", "task", "value"),
    "update_stats": ("step", "metric", "task", "value"),
    "losses": ("step", "task", "value"),
    "scalars": ("step", "name", "task", "value"),
    "evals": ("step", "split", "task", "metric", "value"),
    "counterfactuals": ("step", "counterfactual", "task", "weight", "predicted_delta",
                        "measured_delta"),
}


def load_run(path: Path | str) -> Run:
    """Open the run in ``path`` (a run directory or its ``run.sqlite``) read-only."""
    return Run(path)


def load_runs(paths: Iterable[Path | str | Run] | Path | str) -> Runs:
    """Open several runs; their accessors return the concatenation (identity columns tell
    them apart). ``paths`` is a list of run directories / store files / `Run` objects, or one
    folder: a run directory, or a folder whose subfolders are run directories."""
    if isinstance(paths, (str, Path)):
        root = Path(paths)
        if store_file(root).is_file():
            paths = [root]
        elif root.is_dir():
            paths = sorted(d for d in root.iterdir() if (d / STORE_FILENAME).is_file())
            if not paths:
                raise StoreError(f"no run stores ({STORE_FILENAME}) in {root} or its subfolders",
                                 root)
        else:
            raise StoreError(f"no run store or runs folder at {root}", root)
    runs = [p if isinstance(p, Run) else load_run(p) for p in paths]
    return Runs(runs)


@dataclass
class _Gramians:
    """The Gramians of one (source, block, task set), tasks in run order."""

    source: str
    block: str
    tasks: list[str]
    steps: np.ndarray  # [N] int, ascending, unique
    G: np.ndarray  # [N, T, T]


class Run:
    """One run store read as tidy DataFrames (see the module docstring and `load_run`).

    Attributes: name, path (run directory), store_file, config (dict), tasks, blocks (block
    names in encoder order, without 'encoder'), block_numel, method, seed, schedule; status is
    re-read on every access.
    """

    def __init__(self, path: Path | str):
        self.store_file = store_file(path)
        self.path = self.store_file.parent
        meta = self._meta()
        missing = [k for k in ("tasks", "blocks", "method", "seed", "schedule") if k not in meta]
        if missing:
            raise StoreError(f"{self.store_file} lacks run metadata {missing}", self.store_file)
        self.name: str = meta.get("name") or self.path.name
        self.tasks: list[str] = json.loads(meta["tasks"])
        blocks = json.loads(meta["blocks"])
        self.blocks: list[str] = [b for b, _ in blocks]
        self.block_numel: dict[str, int] = {b: int(n) for b, n in blocks}
        self.config: dict[str, Any] = json.loads(meta.get("config", "{}"))
        self.method: str = meta["method"]
        self.seed: int = int(meta["seed"])
        self.schedule: str = meta["schedule"]

    @property
    def status(self) -> str:
        """'running' | 'finished' | 'failed' | 'stopped' (a killed run stays 'running')."""
        return self._meta().get("status", "unknown")

    # -- Gramian statistics --------------------------------------------------------------------

    def cosines(self, source: str | None = None, blocks: str | Sequence[str] | None = None
                ) -> pd.DataFrame:
        """Pairwise cosines per step and block (stats.cosines); NaN where a norm is 0."""
        groups = self._gramians(source, blocks)
        return self._finish("cosines", [_pair_frame(g, stats.cosines(g.G)) for g in groups])

    def norms(self, source: str | None = None, blocks: str | Sequence[str] | None = None
              ) -> pd.DataFrame:
        """Task gradient norms ‖g_i‖ per step and block (stats.task_norms)."""
        groups = self._gramians(source, blocks)
        return self._finish("norms", [_task_frame(g, stats.task_norms(g.G)) for g in groups])

    def conflicts(self, source: str | None = None, window: int = 50,
                  blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Conflict indicator (cos < 0; PCGrad Def. 1) and its rolling rate over ``window``
        steps per (source, block, pair), NaN steps skipped (stats.rolling_rate)."""
        stats.rolling_rate(np.zeros(0), window)  # validates window
        groups = self._gramians(source, blocks)
        frames = [_pair_frame(g, stats.conflict(g.G), "conflict") for g in groups]
        df = pd.concat(frames, ignore_index=True) if frames else _empty("conflicts")
        rate = np.full(len(df), np.nan)
        values, steps = df["conflict"].to_numpy(float), df["step"].to_numpy()
        for idx in df.groupby(["source", "block", "pair"], sort=False).indices.values():
            idx = idx[np.argsort(steps[idx], kind="stable")]
            rate[idx] = stats.rolling_rate(values[idx], window, steps[idx])
        df["conflict_rate"] = rate
        return self._finish("conflicts", [df])

    def magnitude_similarity(self, source: str | None = None,
                             blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Gradient magnitude similarity per pair (PCGrad Def. 2, stats.magnitude_similarity)."""
        groups = self._gramians(source, blocks)
        frames = [_pair_frame(g, stats.magnitude_similarity(g.G)) for g in groups]
        return self._finish("magnitude_similarity", frames)

    def curvature_measure(self, source: str | None = None,
                          blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Curvature bounding measure per pair (PCGrad Def. 5,
        stats.curvature_bounding_measure)."""
        groups = self._gramians(source, blocks)
        frames = [_pair_frame(g, stats.curvature_bounding_measure(g.G)) for g in groups]
        return self._finish("curvature_measure", frames)

    def condition_number(self, source: str | None = None,
                         blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Condition number σ_max/σ_min of the task gradients (stats.condition_number)."""
        groups = self._gramians(source, blocks)
        frames = [_step_frame(g, stats.condition_number(g.G)) for g in groups]
        return self._finish("condition_number", frames)

    def s_conflict(self, S: float = 0.0, source: str | None = None,
                   blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Recon's S-conflict score (Shi et al. 2023, arXiv:2302.11289) per (source, block,
        pair): count = steps with cos < S, steps = steps with a defined cosine, share =
        count / steps. Recon's layer score is the sum of count over a block's pairs."""
        stats.s_conflict_count(np.zeros(0), S)  # validates S
        groups = self._gramians(source, blocks)
        frames = [_pair_frame(g, stats.cosines(g.G)) for g in groups]
        df = pd.concat(frames, ignore_index=True) if frames else _empty("cosines")
        rows = []
        for (source_, block, pair), part in df.groupby(["source", "block", "pair"], sort=False):
            cos = part["value"].to_numpy(float)
            count, steps = stats.s_conflict_count(cos, S), int(np.count_nonzero(~np.isnan(cos)))
            rows.append((source_, block, pair, count, steps, count / steps if steps else np.nan))
        out = pd.DataFrame(rows, columns=list(_COLUMNS["s_conflict"]))
        return self._finish("s_conflict", [out])

    # -- method behaviour ----------------------------------------------------------------------

    def projections(self) -> pd.DataFrame:
        """Raw PCGrad projection events: task_i's gradient projected off task_j's."""
        df = self._query("SELECT step, block, task_i, task_j, coefficient, cosine "
                         "FROM projections ORDER BY step, rowid")
        df.insert(2, "pair", df["task_i"] + "→" + df["task_j"])
        return self._finish("projections", [df])

    def projection_rate(self, window: int = 50) -> pd.DataFrame:
        """Per ordered pair of the step's tasks and train step where the method ran (train
        weights logged): projected = 1 if task_i was projected off task_j (in any block), else
        0; rate = its rolling mean over ``window`` steps. A step's tasks are those with a
        logged loss (the weights also list inactive tasks, at 0), else those weighted."""
        stats.rolling_rate(np.zeros(0), window)  # validates window
        ran = "SELECT step FROM weights WHERE source = 'train'"
        active = self._query(
            f"SELECT DISTINCT step, task FROM scalars WHERE name = 'loss' AND step IN ({ran}) "
            f"UNION SELECT DISTINCT step, task FROM weights WHERE source = 'train' AND step NOT IN "
            f"(SELECT step FROM scalars WHERE name = 'loss')")
        events = self._query("SELECT DISTINCT step, task_i, task_j FROM projections")
        pairs = active.merge(active, on="step", suffixes=("_i", "_j"))
        pairs = pairs[pairs["task_i"] != pairs["task_j"]]
        pairs = pairs.merge(events.assign(projected=1.0), how="left",
                            on=["step", "task_i", "task_j"])
        pairs["projected"] = pairs["projected"].fillna(0.0)
        order = {t: k for k, t in enumerate(self.tasks)}
        pairs = pairs.assign(_i=pairs["task_i"].map(order), _j=pairs["task_j"].map(order))
        pairs = pairs.sort_values(["step", "_i", "_j"], kind="stable", ignore_index=True)
        pairs.insert(1, "pair", pairs["task_i"] + "→" + pairs["task_j"])
        rate = np.full(len(pairs), np.nan)
        steps, projected = pairs["step"].to_numpy(), pairs["projected"].to_numpy(float)
        for idx in pairs.groupby("pair", sort=False).indices.values():
            rate[idx] = stats.rolling_rate(projected[idx], window, steps[idx])
        pairs["rate"] = rate
        return self._finish("projection_rate", [pairs])

    def weights(self, source: str | None = "train") -> pd.DataFrame:
        """Effective task weights; block '' for whole-update weights (None: every source)."""
        sources = self._check_source(source, "weights")
        df = self._query(
            f"SELECT source, step, block, task, value FROM weights WHERE source IN "
            f"({_marks(sources)}) ORDER BY step, rowid", sources)
        return self._finish("weights", [df])

    def update_stats(self) -> pd.DataFrame:
        """Statistics of the update d the method applied, from the train Gramians and weights:
        metric update_norm (‖d‖), cos_update_task (cos(d, g_i) per task), cos_update_mean
        (cos(d, mean_i g_i)). Blockwise weights [B, T] use the block Gramians (the update
        Gramian sums over blocks, stats.update_gramian)."""
        w = self._query("SELECT step, block, task, value FROM weights WHERE source = 'train' "
                        "ORDER BY step, rowid")
        whole, blockwise = w[w["block"] == ""], w[w["block"] != ""]
        groups = self._load_gramians(["train"], [*self.blocks, ENCODER]) if len(w) else []
        blockwise_steps = np.unique(blockwise["step"].to_numpy())
        augmented: list[tuple[np.ndarray, list[str], np.ndarray]] = []  # steps, tasks, Ĝ
        for g in groups:
            if g.block != ENCODER:
                continue
            steps = np.setdiff1d(np.intersect1d(g.steps, whole["step"].to_numpy()),
                                 blockwise_steps)
            W = _dense_weights(whole, steps, g.tasks)
            augmented.append((steps, g.tasks, stats.update_gramian(g.G[_rows(g, steps)], W)))
        task_sets = {tuple(g.tasks) for g in groups if g.block != ENCODER}
        for tasks in task_sets if len(blockwise_steps) else ():
            per_block = [g for g in groups if g.block != ENCODER and tuple(g.tasks) == tasks]
            if not per_block:
                continue
            steps = blockwise_steps
            for g in per_block:
                steps = np.intersect1d(steps, g.steps)
            total = 0.0
            for g in per_block:
                W = _dense_weights(blockwise[blockwise["block"] == g.block], steps, g.tasks)
                total = total + stats.update_gramian(g.G[_rows(g, steps)], W)
            if len(steps):
                augmented.append((steps, list(tasks), total))
        frames = [_update_frame(steps, tasks, Gu) for steps, tasks, Gu in augmented]
        df = pd.concat(frames, ignore_index=True) if frames else _empty("update_stats")
        df = df.sort_values("step", kind="stable", ignore_index=True)
        return self._finish("update_stats", [df])

    # -- logged facts --------------------------------------------------------------------------

    def losses(self) -> pd.DataFrame:
        """Training losses per step and task (scalars named 'loss')."""
        df = self._query("SELECT step, task, value FROM scalars WHERE name = 'loss' "
                         "ORDER BY step, rowid")
        return self._finish("losses", [df])

    def scalars(self, name: str | None = None) -> pd.DataFrame:
        """Logged scalars (loss, lr, update_norm, step_time, ...); task '' when global."""
        names = self._check_present("scalar", name, "scalars", "name")
        df = self._query(f"SELECT step, name, task, value FROM scalars WHERE name IN "
                         f"({_marks(names)}) ORDER BY step, rowid", names)
        return self._finish("scalars", [df])

    def evals(self, split: str | None = "dev") -> pd.DataFrame:
        """Evaluation metrics per step, split, task ('overall': mean, score) and metric."""
        splits = self._check_present("split", split, "evals", "split")
        df = self._query(f"SELECT step, split, task, metric, value FROM evals WHERE split IN "
                         f"({_marks(splits)}) ORDER BY step, rowid", splits)
        return self._finish("evals", [df])

    def counterfactuals(self) -> pd.DataFrame:
        """What other methods would have done on probe steps: their weights, the predicted
        first-order loss change -lr (G w)_i and, when a virtual step ran, the measured one."""
        df = self._query("SELECT step, method AS counterfactual, task, weight, predicted_delta, "
                         "measured_delta FROM counterfactuals ORDER BY step, rowid")
        return self._finish("counterfactuals", [df])

    # -- raw Gramians --------------------------------------------------------------------------

    def gramian(self, step: int, source: str = "train", block: str = ENCODER
                ) -> tuple[list[str], np.ndarray]:
        """(tasks, G [T, T]) logged at ``step``; tasks in run order."""
        sources, blocks = self._check_source(source, "gramians"), self._check_blocks(block)
        with self._connect() as conn:
            row = conn.execute(
                "SELECT tasks, data FROM gramians WHERE source = ? AND block = ? AND step = ? "
                "ORDER BY rowid DESC LIMIT 1", (sources[0], blocks[0], int(step))).fetchone()
            if row is None:
                steps = [s for (s,) in conn.execute(
                    "SELECT DISTINCT step FROM gramians WHERE source = ? AND block = ? "
                    "ORDER BY step", (sources[0], blocks[0]))]
        if row is None:
            logged = f"steps logged: {_summarise(steps)}" if steps else "none logged yet"
            raise ValueError(f"run {self.name!r} has no {source!r} Gramian of block {block!r} "
                             f"at step {step}; {logged}")
        tasks = json.loads(row[0])
        G = self._decode(row[1], len(tasks))
        tasks, G = self._to_run_order(tasks, G)
        return tasks, G[0]

    def gramian_series(self, source: str = "train", block: str = ENCODER
                       ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(steps [N], tasks, G [N, T, T]) of one source and block. When the task set varies
        between steps, tasks is the run's and absent tasks' rows and columns are NaN."""
        groups = self._gramians(source, block)
        T = len(self.tasks)
        if not groups:
            return np.zeros(0, dtype=np.int64), list(self.tasks), np.zeros((0, T, T))
        if len(groups) == 1:
            return groups[0].steps, groups[0].tasks, groups[0].G
        steps = np.unique(np.concatenate([g.steps for g in groups]))
        out = np.full((len(steps), T, T), np.nan)
        for g in groups:
            idx = [self.tasks.index(t) for t in g.tasks]
            out[np.ix_(np.searchsorted(steps, g.steps), idx, idx)] = g.G
        return steps, list(self.tasks), out

    # -- export and display --------------------------------------------------------------------

    def to_parquet(self, directory: Path | str) -> Path:
        """Write one Parquet file per accessor (cosines.parquet, ...) into ``directory``."""
        return _write_parquet(self, directory)

    def __repr__(self) -> str:
        with self._connect() as conn:
            n, last = conn.execute(
                "SELECT COUNT(*), MAX(step) FROM (SELECT step FROM scalars UNION "
                "SELECT step FROM gramians UNION SELECT step FROM weights)").fetchone()
        return (f"Run(name={self.name!r}, method={self.method!r}, seed={self.seed}, "
                f"schedule={self.schedule!r}, steps_logged={n}, last_step={last}, "
                f"status={self.status!r})")

    # -- internals -----------------------------------------------------------------------------

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(open_store_readonly(self.store_file))

    def _meta(self) -> dict[str, str]:
        with self._connect() as conn:
            return read_meta(conn, self.store_file)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self._connect() as conn:
            return pd.read_sql_query(sql, conn, params=list(params))

    def _present(self, table: str, column: str) -> list[str]:
        with self._connect() as conn:
            return [v for (v,) in conn.execute(f"SELECT DISTINCT {column} FROM {table}")]

    def _check_source(self, source: str | None, table: str) -> list[str]:
        """Sources to read; an error names the source asked for and those logged."""
        present = sorted(self._present(table, "source"), key=_source_order)
        if source is None:
            return present
        if source not in SOURCES and source not in present:
            raise ValueError(f"unknown source {source!r}; sources are {list(SOURCES)}")
        if present and source not in present:
            raise ValueError(f"run {self.name!r} has no {source!r} rows in {table}; sources "
                             f"logged: {present}")
        return [source]

    def _check_blocks(self, blocks: str | Sequence[str] | None) -> list[str]:
        known = [*self.blocks, ENCODER]
        if blocks is None:
            return known
        asked = [blocks] if isinstance(blocks, str) else list(blocks)
        unknown = [b for b in asked if b not in known]
        if unknown:
            raise ValueError(f"unknown block(s) {unknown} in run {self.name!r}; blocks: {known}")
        return list(dict.fromkeys(asked))

    def _check_present(self, what: str, value: str | None, table: str, column: str) -> list[str]:
        present = self._present(table, column)
        if value is None:
            return present
        if present and value not in present:
            raise ValueError(f"run {self.name!r} has no {what} {value!r}; {what}s logged: "
                             f"{sorted(present)}")
        return [value]

    def _gramians(self, source: str | None, blocks: str | Sequence[str] | None
                  ) -> list[_Gramians]:
        return self._load_gramians(self._check_source(source, "gramians"),
                                   self._check_blocks(blocks))

    def _load_gramians(self, sources: list[str], blocks: list[str]) -> list[_Gramians]:
        """Stack the Gramians of each (source, block, task set) into [N, T, T]."""
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
        groups = []
        for (source, block, tasks_json), (steps, datas) in collected.items():
            tasks = json.loads(tasks_json)
            G = self._decode(b"".join(datas), len(tasks))
            steps = np.asarray(steps, dtype=np.int64)
            order = np.argsort(steps, kind="stable")
            steps, G = steps[order], G[order]
            last = np.r_[steps[1:] != steps[:-1], True]  # a re-logged step: keep the last row
            tasks, G = self._to_run_order(tasks, G[last])
            groups.append(_Gramians(source, block, tasks, steps[last], G))
        block_order = {b: k for k, b in enumerate([*self.blocks, ENCODER])}
        groups.sort(key=lambda g: (_source_order(g.source), block_order[g.block], g.steps[0]))
        return groups

    def _decode(self, data: bytes, T: int) -> np.ndarray:
        try:
            return np.frombuffer(data, dtype="<f8").reshape(-1, T, T).astype(np.float64)
        except ValueError as e:
            raise StoreError(f"{self.store_file}: a Gramian row is not float64 [{T}, {T}]",
                             self.store_file) from e

    def _to_run_order(self, tasks: list[str], G: np.ndarray) -> tuple[list[str], np.ndarray]:
        order = {t: k for k, t in enumerate(self.tasks)}
        perm = sorted(range(len(tasks)), key=lambda i: (order.get(tasks[i], len(order)), tasks[i]))
        return [tasks[i] for i in perm], G[:, perm][:, :, perm]

    def _finish(self, kind: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else _empty(kind)
        df = df[list(_COLUMNS[kind])]
        df = df.astype({c: "int64" for c in df.columns if c in _INT_COLUMNS})
        df = df.astype({c: "float64" for c in df.columns if c in _FLOAT_COLUMNS})
        identity = {"run": self.name, "method": self.method, "seed": self.seed,
                    "schedule": self.schedule}
        for k, column in enumerate(IDENTITY):
            df.insert(k, column, identity[column])
        return df.astype({"seed": "int64"})


class Runs:
    """Several runs: the same accessors, returning the runs' frames concatenated.

    A source, block, split or scalar name is read from the runs that have it (asking for the
    'train' source skips round-robin runs); asking for one no run has is an error.
    """

    def __init__(self, runs: Sequence[Run]):
        """``runs``: the `Run` objects, names unique (see `load_runs`)."""
        self.runs: list[Run] = list(runs)
        if not self.runs:
            raise ValueError("load_runs: no runs given")
        names = [r.name for r in self.runs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"load_runs: run names must be unique, got duplicates {duplicates}")

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)

    def __getitem__(self, key: int | str) -> Run:
        if isinstance(key, str):
            for run in self.runs:
                if run.name == key:
                    return run
            raise KeyError(f"no run named {key!r}; runs: {[r.name for r in self.runs]}")
        return self.runs[key]

    def __repr__(self) -> str:
        items = ", ".join(f"{r.name} ({r.method}, seed {r.seed})" for r in self.runs)
        return f"Runs({len(self.runs)} runs: {items})"

    def cosines(self, source=None, blocks=None) -> pd.DataFrame:
        return self._concat("cosines", source=source, blocks=blocks)

    def norms(self, source=None, blocks=None) -> pd.DataFrame:
        return self._concat("norms", source=source, blocks=blocks)

    def conflicts(self, source=None, window=50, blocks=None) -> pd.DataFrame:
        return self._concat("conflicts", source=source, window=window, blocks=blocks)

    def magnitude_similarity(self, source=None, blocks=None) -> pd.DataFrame:
        return self._concat("magnitude_similarity", source=source, blocks=blocks)

    def curvature_measure(self, source=None, blocks=None) -> pd.DataFrame:
        return self._concat("curvature_measure", source=source, blocks=blocks)

    def condition_number(self, source=None, blocks=None) -> pd.DataFrame:
        return self._concat("condition_number", source=source, blocks=blocks)

    def s_conflict(self, S=0.0, source=None, blocks=None) -> pd.DataFrame:
        return self._concat("s_conflict", S=S, source=source, blocks=blocks)

    def projections(self) -> pd.DataFrame:
        return self._concat("projections")

    def projection_rate(self, window=50) -> pd.DataFrame:
        return self._concat("projection_rate", window=window)

    def weights(self, source="train") -> pd.DataFrame:
        return self._concat("weights", source=source)

    def update_stats(self) -> pd.DataFrame:
        return self._concat("update_stats")

    def losses(self) -> pd.DataFrame:
        return self._concat("losses")

    def scalars(self, name=None) -> pd.DataFrame:
        return self._concat("scalars", name=name)

    def evals(self, split="dev") -> pd.DataFrame:
        return self._concat("evals", split=split)

    def counterfactuals(self) -> pd.DataFrame:
        return self._concat("counterfactuals")

    def to_parquet(self, directory: Path | str) -> Path:
        """Write one Parquet file per accessor, each the concatenation over the runs."""
        return _write_parquet(self, directory)

    def _concat(self, accessor: str, **kwargs: Any) -> pd.DataFrame:
        # (keyword, table, column) of the names a run may lack
        table = "weights" if accessor == "weights" else "gramians"
        checks = {"source": (table, "source"), "split": ("evals", "split"),
                  "name": ("scalars", "name")}
        frames, seen = [], {}
        for run in self.runs:
            run_kwargs = dict(kwargs)
            skip = False
            for key, (tbl, col) in checks.items():
                if kwargs.get(key) is not None:
                    present = run._present(tbl, col)
                    seen.setdefault(key, set()).update(present)
                    skip = skip or (bool(present) and kwargs[key] not in present)
            if kwargs.get("blocks") is not None:
                asked = kwargs["blocks"]
                asked = [asked] if isinstance(asked, str) else list(asked)
                known = [*run.blocks, ENCODER]
                seen.setdefault("blocks", set()).update(known)
                run_kwargs["blocks"] = [b for b in asked if b in known]
                skip = skip or not run_kwargs["blocks"]
            if not skip:
                frames.append(getattr(run, accessor)(**run_kwargs))
        for key, present in seen.items():
            asked = kwargs[key]
            asked = [asked] if isinstance(asked, str) else list(asked)
            missing = [a for a in asked if a not in present]
            if present and missing:
                raise ValueError(f"none of the {len(self.runs)} runs has {key} {missing}; "
                                 f"present: {sorted(present)}")
        if not frames:
            return self.runs[0]._finish(accessor, [])
        return pd.concat(frames, ignore_index=True)


def _write_parquet(obj: Run | Runs, directory: Path | str) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    calls = {name: {} for name in _COLUMNS}
    calls["weights"] = {"source": None}
    calls["evals"] = {"split": None}
    for name, kwargs in calls.items():
        getattr(obj, name)(**kwargs).to_parquet(out / f"{name}.parquet", index=False)
    return out


def _pair_frame(g: _Gramians, M: np.ndarray, value: str = "value") -> pd.DataFrame:
    """Long form of the upper triangle of M [N, T, T]: one row per step and pair a-b."""
    ia, ib = np.triu_indices(len(g.tasks), 1)
    n, p = len(g.steps), len(ia)
    task_a, task_b = np.array(g.tasks, dtype=object)[ia], np.array(g.tasks, dtype=object)[ib]
    return pd.DataFrame({
        "source": g.source, "step": np.repeat(g.steps, p), "block": g.block,
        "pair": np.tile(task_a + "-" + task_b, n), "task_a": np.tile(task_a, n),
        "task_b": np.tile(task_b, n), value: M[:, ia, ib].reshape(-1),
    })


def _task_frame(g: _Gramians, V: np.ndarray) -> pd.DataFrame:
    T = len(g.tasks)
    return pd.DataFrame({"source": g.source, "step": np.repeat(g.steps, T), "block": g.block,
                         "task": np.tile(np.array(g.tasks, dtype=object), len(g.steps)),
                         "value": V.reshape(-1)})


def _step_frame(g: _Gramians, v: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"source": g.source, "step": g.steps, "block": g.block, "value": v})


def _update_frame(steps: np.ndarray, tasks: list[str], Gu: np.ndarray) -> pd.DataFrame:
    """update_stats rows from the Gramian Gu [N, T+1, T+1] of (g_1 .. g_T, d)."""
    T, n = len(tasks), len(steps)
    d = np.zeros(T + 1)
    d[T] = 1.0
    mean = np.r_[np.full(T, 1.0 / T), 0.0]
    norm = stats.update_norm(Gu, d)
    cos_task = stats.update_task_cosines(Gu, d)[:, :T]
    cos_mean = stats.combination_cosine(Gu, d, mean)
    parts = [
        pd.DataFrame({"step": steps, "metric": "update_norm", "task": "", "value": norm}),
        pd.DataFrame({"step": np.repeat(steps, T), "metric": "cos_update_task",
                      "task": np.tile(np.array(tasks, dtype=object), n),
                      "value": cos_task.reshape(-1)}),
        pd.DataFrame({"step": steps, "metric": "cos_update_mean", "task": "", "value": cos_mean}),
    ]
    return pd.concat(parts, ignore_index=True).sort_values("step", kind="stable")


def _dense_weights(rows: pd.DataFrame, steps: np.ndarray, tasks: list[str]) -> np.ndarray:
    """[len(steps), T] weights from long rows (step, task, value); absent tasks weigh 0."""
    W = np.zeros((len(steps), len(tasks)))
    rows = rows[rows["step"].isin(steps) & rows["task"].isin(tasks)]
    col = {t: k for k, t in enumerate(tasks)}
    W[np.searchsorted(steps, rows["step"].to_numpy()),
      rows["task"].map(col).to_numpy(int)] = rows["value"].to_numpy(float)
    return W


def _rows(g: _Gramians, steps: np.ndarray) -> np.ndarray:
    return np.searchsorted(g.steps, steps)


def _empty(kind: str) -> pd.DataFrame:
    columns = _COLUMNS[kind]
    return pd.DataFrame({
        c: pd.Series(dtype="int64" if c in _INT_COLUMNS else
                     "float64" if c in _FLOAT_COLUMNS else object) for c in columns})


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _source_order(source: str) -> tuple[int, str]:
    return (SOURCES.index(source) if source in SOURCES else len(SOURCES), source)


def _summarise(steps: Sequence[int]) -> str:
    steps = list(steps)
    if len(steps) <= 12:
        return str(steps)
    head = ", ".join(map(str, steps[:5]))
    tail = ", ".join(map(str, steps[-3:]))
    return f"{len(steps)} steps [{head}, ..., {tail}]"
