"""A run read as tidy DataFrames: `load_run(path) -> Run` (several: `gradlab.runs.load_runs`).

The store holds raw facts; every statistic here is computed at read time by `gradlab.stats`,
one vectorised call per (source, block) over the stacked Gramians [N, T, T]. Every accessor
re-reads the store through its `gradlab.store_reader.StoreReader` (which owns the SQL), so a
notebook sees the rows a running trainer has committed since the last call.

Calibrated statistics (`expected_cosines`, `within_task_cosines`, `noise_scale`) come from
the replicate probes' Gramians [K*T, K*T] through `gradlab.calibration`, pooled over a window
of probe steps, with columns estimate, lo, hi (jackknife interval), n and a reason where
undetermined; the raw accessors (`cosines`, ...) read the [T, T] Gramians as before.

Frames are long-form, identity columns first (run, method, seed, schedule). Unordered task
pairs are named "a-b" in task order ("sst-para"), ordered PCGrad pairs "i→j" ("sst→para").

One rule for Gramian sources ("train", "probe") in every Gramian accessor: a source the run
logs gives its rows so far, which may be an empty frame with the accessor's columns (a live
run before its first step or probe); a source the run's config means it never logs raises
`NoGradientDataError` naming the config keys to set ("train": schedule=joint and
log_train_gramians=true; "probe": probe_every > 0). With ``source=None`` (every source
logged) the error comes only when the run logs no source at all.

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

import functools
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradlab import stats
from gradlab.run_calibrated import CalibratedAccessors
from gradlab.run_examples import ExampleAccessors
from gradlab.run_frames import (
    COLUMNS,
    IDENTITY,
    empty,
    finish,
    gradient_sources,
    pair_frame,
    step_frame,
    task_frame,
    update_frame,
    write_parquet,
)
from gradlab.store_reader import GramianSeries, StoreReader
from gradlab.store_schema import ENCODER, SOURCES, StoreError, store_file

__all__ = ["IDENTITY", "NoGradientDataError", "Run", "Runs", "load_run",  # noqa: F822
           "load_runs"]  # Runs, load_runs: see __getattr__


class NoGradientDataError(ValueError):
    """The run's config means it never logs the Gramians asked for; the message names the
    config keys that would log them."""


def load_run(path: Path | str) -> Run:
    """Open the run in ``path`` (a run directory or its ``run.sqlite``) read-only."""
    return Run(path)


class Run(CalibratedAccessors, ExampleAccessors):
    """One run store read as tidy DataFrames (see the module docstring and `load_run`).

    Gramian sources follow one rule: rows so far (possibly none) for a source the run logs,
    `NoGradientDataError` naming the config keys for a source its config never logs.

    Attributes: name, path (run directory), store_file, reader (its `StoreReader`), config
    (dict), tasks, blocks (block names in encoder order, without 'encoder'; none for a frozen
    encoder), block_numel, method ("frozen" for a frozen-encoder run), seed, schedule; status
    is re-read on every access.
    """

    def __init__(self, path: Path | str):
        self.store_file = store_file(path)
        self.path = self.store_file.parent
        self.reader = StoreReader(self.store_file)
        meta = self.reader.meta()
        missing = [k for k in ("tasks", "blocks", "method", "seed", "schedule") if k not in meta]
        if missing:
            raise StoreError(f"{self.store_file} lacks run metadata {missing}", self.store_file)
        self.name: str = meta.get("name") or self.path.name
        self.tasks: list[str] = json.loads(meta["tasks"])
        blocks = json.loads(meta["blocks"])
        self.blocks: list[str] = [b for b, _ in blocks]
        self.block_numel: dict[str, int] = {b: int(n) for b, n in blocks}
        self.config: dict[str, Any] = json.loads(meta.get("config", "{}"))
        # a frozen-encoder run (heads only) is compared as its own variant, "frozen": with
        # no shared gradients its method (always "sum", as its config says) did nothing
        self.method: str = "frozen" if self.config.get("freeze_encoder") else meta["method"]
        self.seed: int = int(meta["seed"])
        self.schedule: str = meta["schedule"]

    @property
    def status(self) -> str:
        """'running' while a process holds the run lock and writes the run; 'dead' when the
        store says running but nobody holds the lock (killed or crashed: resume it);
        'finished' | 'failed' | 'stopped' as the writer recorded on closing
        (`gradlab.store_reader.RUN_STATUSES`)."""
        return self.reader.status()

    # -- Gramian statistics --------------------------------------------------------------------

    def cosines(self, source: str | None = None, blocks: str | Sequence[str] | None = None
                ) -> pd.DataFrame:
        """Pairwise cosines per step and block (stats.cosines); NaN where a norm is 0."""
        groups = self._gramians(source, blocks)
        return self._finish("cosines", [_pairs(g, stats.cosines(g.G)) for g in groups])

    def norms(self, source: str | None = None, blocks: str | Sequence[str] | None = None
              ) -> pd.DataFrame:
        """Task gradient norms ‖g_i‖ per step and block (stats.task_norms)."""
        groups = self._gramians(source, blocks)
        return self._finish("norms", [task_frame(g.source, g.block, g.tasks, g.steps,
                                                 stats.task_norms(g.G)) for g in groups])

    def conflicts(self, source: str | None = None, window: int = 50,
                  blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Conflict indicator (cos < 0; PCGrad Def. 1) and its rolling rate over ``window``
        steps per (source, block, pair), NaN steps skipped (stats.rolling_rate)."""
        stats.rolling_rate(np.zeros(0), window)  # validates window
        groups = self._gramians(source, blocks)
        frames = [_pairs(g, stats.conflict(g.G), "conflict") for g in groups]
        df = pd.concat(frames, ignore_index=True) if frames else empty("conflicts")
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
        frames = [_pairs(g, stats.magnitude_similarity(g.G)) for g in groups]
        return self._finish("magnitude_similarity", frames)

    def curvature_measure(self, source: str | None = None,
                          blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Curvature bounding measure per pair (PCGrad Def. 5,
        stats.curvature_bounding_measure)."""
        groups = self._gramians(source, blocks)
        frames = [_pairs(g, stats.curvature_bounding_measure(g.G)) for g in groups]
        return self._finish("curvature_measure", frames)

    def condition_number(self, source: str | None = None,
                         blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Condition number σ_max/σ_min of the task gradients (stats.condition_number)."""
        groups = self._gramians(source, blocks)
        frames = [step_frame(g.source, g.block, g.steps, stats.condition_number(g.G))
                  for g in groups]
        return self._finish("condition_number", frames)

    def s_conflict(self, S: float = 0.0, source: str | None = None,
                   blocks: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Recon's S-conflict score (Shi et al. 2023, arXiv:2302.11289) per (source, block,
        pair): count = steps with cos < S, steps = steps with a defined cosine, share =
        count / steps. Recon's layer score is the sum of count over a block's pairs."""
        stats.s_conflict_count(np.zeros(0), S)  # validates S
        groups = self._gramians(source, blocks)
        frames = [_pairs(g, stats.cosines(g.G)) for g in groups]
        df = pd.concat(frames, ignore_index=True) if frames else empty("cosines")
        rows = []
        for (source_, block, pair), part in df.groupby(["source", "block", "pair"], sort=False):
            cos = part["value"].to_numpy(float)
            count, steps = stats.s_conflict_count(cos, S), int(np.count_nonzero(~np.isnan(cos)))
            rows.append((source_, block, pair, count, steps, count / steps if steps else np.nan))
        out = pd.DataFrame(rows, columns=list(COLUMNS["s_conflict"]))
        return self._finish("s_conflict", [out])

    # -- method behaviour ----------------------------------------------------------------------

    def projections(self) -> pd.DataFrame:
        """Raw PCGrad projection events: task_i's gradient projected off task_j's."""
        df = self.reader.projections()
        df.insert(2, "pair", df["task_i"] + "→" + df["task_j"])
        return self._finish("projections", [df])

    def projection_rate(self, window: int = 50) -> pd.DataFrame:
        """Per ordered pair of the step's tasks and train step where the method ran (train
        weights logged): projected = 1 if task_i was projected off task_j (in any block), else
        0; rate = its rolling mean over ``window`` steps. A step's tasks are those with a
        logged loss (the weights also list inactive tasks, at 0), else those weighted."""
        stats.rolling_rate(np.zeros(0), window)  # validates window
        active = self.reader.train_step_tasks()
        events = self.reader.projected_pairs()
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
        return self._finish("weights", [self.reader.weights(sources)])

    def update_stats(self) -> pd.DataFrame:
        """Statistics of the update d the method applied, from the train Gramians and weights:
        metric update_norm (‖d‖), cos_update_task (cos(d, g_i) per task), cos_update_mean
        (cos(d, mean_i g_i)). Blockwise weights [B, T] use the block Gramians (the update
        Gramian sums over blocks, stats.blockwise_update_gramian)."""
        w = self.reader.weights(["train"])
        whole, blockwise = w[w["block"] == ""], w[w["block"] != ""]
        groups = self._load_gramians(["train"], [*self.blocks, ENCODER]) if len(w) else []
        blockwise_steps = np.unique(blockwise["step"].to_numpy())
        frames = []
        for g in groups:  # one weight vector per step: the whole-encoder Gramian
            if g.block == ENCODER:
                steps = np.setdiff1d(np.intersect1d(g.steps, whole["step"].to_numpy()),
                                     blockwise_steps)
                Gu = stats.update_gramian(g.G[_rows(g, steps)],
                                          _dense_weights(whole, steps, g.tasks))
                frames.append(update_frame(steps, g.tasks, stats.update_statistics(Gu)))
        task_sets = dict.fromkeys(tuple(g.tasks) for g in groups if g.block != ENCODER)
        for tasks in task_sets if len(blockwise_steps) else ():  # weights [B, T] per step
            per_block = [g for g in groups if g.block != ENCODER and tuple(g.tasks) == tasks]
            steps = functools.reduce(np.intersect1d, [g.steps for g in per_block],
                                     blockwise_steps)
            if not len(steps):
                continue
            G = np.stack([g.G[_rows(g, steps)] for g in per_block], axis=1)  # [N, B, T, T]
            W = np.stack([_dense_weights(blockwise[blockwise["block"] == g.block], steps,
                                         g.tasks) for g in per_block], axis=1)  # [N, B, T]
            Gu = stats.blockwise_update_gramian(G, W)
            frames.append(update_frame(steps, list(tasks), stats.update_statistics(Gu)))
        df = pd.concat(frames, ignore_index=True) if frames else empty("update_stats")
        df = df.sort_values("step", kind="stable", ignore_index=True)
        return self._finish("update_stats", [df])

    # -- logged facts --------------------------------------------------------------------------

    def losses(self) -> pd.DataFrame:
        """Training losses per step and task (scalars named 'loss')."""
        return self._finish("losses", [self.reader.losses()])

    def scalars(self, name: str | None = None) -> pd.DataFrame:
        """Logged scalars (loss, lr, update_norm, step_time, ...); task '' when global."""
        names = self._check_present("scalar", name, "scalars", "name")
        return self._finish("scalars", [self.reader.scalars(names)])

    def evals(self, split: str | None = "dev") -> pd.DataFrame:
        """Evaluation metrics per step, split, task ('overall': mean, score) and metric."""
        splits = self._check_present("split", split, "evals", "split")
        return self._finish("evals", [self.reader.evals(splits)])

    def counterfactuals(self) -> pd.DataFrame:
        """What other methods would have done on probe steps: their weights, the predicted
        first-order loss change -lr (G w)_i and, when a virtual step ran, the measured one."""
        return self._finish("counterfactuals", [self.reader.counterfactuals()])

    # -- raw Gramians --------------------------------------------------------------------------

    def gramian(self, step: int, source: str = "train", block: str = ENCODER
                ) -> tuple[list[str], np.ndarray]:
        """(tasks, G [T, T]) logged at ``step``; tasks in run order."""
        sources, blocks = self._gramian_sources(source), self._check_blocks(block)
        found = self.reader.gramian_at(step, sources[0], blocks[0])
        if found is None:
            steps = self.reader.gramian_steps(sources[0], blocks[0])
            logged = f"steps logged: {_summarise(steps)}" if steps else "none logged yet"
            raise ValueError(f"run {self.name!r} has no {source!r} Gramian of block {block!r} "
                             f"at step {step}; {logged}")
        tasks, G = self._to_run_order(found[0], found[1][None])
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
        return write_parquet(self, directory)

    def __repr__(self) -> str:
        n, last = self.reader.progress()
        return (f"Run(name={self.name!r}, method={self.method!r}, seed={self.seed}, "
                f"schedule={self.schedule!r}, steps_logged={n}, last_step={last}, "
                f"status={self.status!r})")

    # -- internals -----------------------------------------------------------------------------

    def _check_source(self, source: str | None, table: str) -> list[str]:
        """Sources to read; an error names the source asked for and those logged."""
        present = sorted(self.reader.distinct(table, "source"), key=_source_order)
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
        present = self.reader.distinct(table, column)
        if value is None:
            return present
        if present and value not in present:
            raise ValueError(f"run {self.name!r} has no {what} {value!r}; {what}s logged: "
                             f"{sorted(present)}")
        return [value]

    def _gramians(self, source: str | None, blocks: str | Sequence[str] | None
                  ) -> list[GramianSeries]:
        return self._load_gramians(self._gramian_sources(source), self._check_blocks(blocks))

    def _gramian_sources(self, source: str | None) -> list[str]:
        """The Gramian sources to read, by the rule of the module docstring."""
        present = sorted(self.reader.distinct("gramians", "source"), key=_source_order)
        never = gradient_sources(self.schedule, self.config)
        if source is None:
            if not present and all(never.get(s) for s in SOURCES):
                reasons = {never[s] for s in SOURCES}
                raise NoGradientDataError(
                    f"run {self.name!r} logs no gradient data: " + (reasons.pop() if len(
                        reasons) == 1 else "; ".join(f"{s}: {never[s]}" for s in SOURCES)))
            return present
        if source not in SOURCES and source not in present:
            raise ValueError(f"unknown source {source!r}; sources are {list(SOURCES)}")
        if source not in present and never.get(source):
            raise NoGradientDataError(f"run {self.name!r} never logs {source!r} Gramians: "
                                      f"{never[source]}")
        return [source]

    def _load_gramians(self, sources: list[str], blocks: list[str]) -> list[GramianSeries]:
        """The Gramians of each (source, block, task set) [N, T, T], tasks in run order,
        sorted by source, block (encoder order) and first step."""
        groups = []
        for g in self.reader.gramians(sources, blocks):
            tasks, G = self._to_run_order(g.tasks, g.G)
            groups.append(replace(g, tasks=tasks, G=G))
        block_order = {b: k for k, b in enumerate([*self.blocks, ENCODER])}
        groups.sort(key=lambda g: (_source_order(g.source), block_order[g.block], g.steps[0]))
        return groups

    def _to_run_order(self, tasks: list[str], G: np.ndarray) -> tuple[list[str], np.ndarray]:
        order = {t: k for k, t in enumerate(self.tasks)}
        perm = sorted(range(len(tasks)), key=lambda i: (order.get(tasks[i], len(order)), tasks[i]))
        return [tasks[i] for i in perm], G[:, perm][:, :, perm]

    def _finish(self, kind: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
        identity = {"run": self.name, "method": self.method, "seed": self.seed,
                    "schedule": self.schedule}
        return finish(kind, frames, identity)


def __getattr__(name: str) -> Any:
    # Runs and load_runs live in gradlab.runs (which imports this module); kept importable here.
    if name in ("Runs", "load_runs"):
        from gradlab import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'gradlab.run' has no attribute {name!r}")


def _pairs(g: GramianSeries, M: np.ndarray, value: str = "value") -> pd.DataFrame:
    return pair_frame(g.source, g.block, g.tasks, g.steps, M, value)


def _dense_weights(rows: pd.DataFrame, steps: np.ndarray, tasks: list[str]) -> np.ndarray:
    """[len(steps), T] weights from long rows (step, task, value); absent tasks weigh 0."""
    W = np.zeros((len(steps), len(tasks)))
    rows = rows[rows["step"].isin(steps) & rows["task"].isin(tasks)]
    col = {t: k for k, t in enumerate(tasks)}
    W[np.searchsorted(steps, rows["step"].to_numpy()),
      rows["task"].map(col).to_numpy(int)] = rows["value"].to_numpy(float)
    return W


def _rows(g: GramianSeries, steps: np.ndarray) -> np.ndarray:
    return np.searchsorted(g.steps, steps)


def _source_order(source: str) -> tuple[int, str]:
    return (SOURCES.index(source) if source in SOURCES else len(SOURCES), source)


def _summarise(steps: Sequence[int]) -> str:
    steps = list(steps)
    if len(steps) <= 12:
        return str(steps)
    head = ", ".join(map(str, steps[:5]))
    tail = ", ".join(map(str, steps[-3:]))
    return f"{len(steps)} steps [{head}, ..., {tail}]"
