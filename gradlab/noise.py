"""The noise study: how much of a raw gradient cosine is sampling noise, per batch size.

For each batch size b, each of ``rounds`` rounds draws K ``replicates`` independent batches of
b training examples per task, computes their K*T gradients with the model in eval mode
(dropout off; the model does not change between rounds) and keeps the per-block Gramians
[B, K*T, K*T]. `gradlab.calibration` then pools the rounds of one batch size into:

- raw_cos: the mean raw cosine of two batch gradients of different tasks (what a user sees);
- within_cos: the mean cosine of two batches of the same task (the reliability of one batch
  gradient: its signal share);
- expected_cos: cos(mu_i, mu_j) of the expected task gradients, corrected for the noise
  (it should not depend on b);
- b_noise: the noise scale tr(Sigma_i) / |mu_i|^2 in examples (McCandlish et al. 2018);
- predicted_raw_cos / predicted_within_cos: the noise model's raw cosine at every batch size
  b', rho_ij sqrt(s_i(b') s_j(b')) with s_i(b') = 1 / (1 + B_i / b'), from the estimates at
  b (``fit_batch_size``); set against the measured raw cosine at b' it checks the model.

Every value has a jackknife interval (over replicate batches when K >= 3, else over rounds)
and is NaN with a ``reason`` where it is undetermined (|mu_i|^2's interval reaches 0).

    >>> study = gradlab.noise_study("configs/demo.yaml", batch_sizes=(16,), rounds=15,
    ...                             replicates=4)                      # doctest: +SKIP
    >>> study.table.query("quantity == 'expected_cos'")                # doctest: +SKIP
    >>> study.figure()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradlab import calibration
from gradlab.calibration import format_interval
from gradlab.probing import LoadedModel, _batch, _task_gradients, gradient_engine, load_model

__all__ = ["NoiseStudy", "noise_study"]

#: columns of `NoiseStudy.table`
COLUMNS = ("batch_size", "fit_batch_size", "kind", "name", "task_i", "task_j", "quantity",
           "estimate", "lo", "hi", "n", "level", "units", "reason")


@dataclass
class NoiseStudy:
    """What `noise_study` measured.

    table: tidy frame, one row per batch size x task or pair x quantity (`COLUMNS`);
    gramians: batch size -> per-block replicate Gramians [S, B, K*T, K*T] (replicate-major);
    losses: batch size -> [S, K, T]; info: model source, seed, timings.
    """

    tasks: list[str]
    batch_sizes: list[int]
    replicates: int
    rounds: int
    level: float
    table: pd.DataFrame
    gramians: dict[int, np.ndarray]
    losses: dict[int, np.ndarray]
    block_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def figure(self, **kwargs):
        """The noise-study figure (`gradlab.plot._noise.noise_study_figure`)."""
        from gradlab.plot._noise import noise_study_figure

        return noise_study_figure(self.table, **kwargs)

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write noise_study.csv (the table), gramians.npz and info.json into folder ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"table": out / "noise_study.csv", "gramians": out / "gramians.npz",
                 "info": out / "info.json"}
        self.table.to_csv(paths["table"], index=False)
        np.savez(paths["gramians"], tasks=np.array(self.tasks), block_names=np.array(
            self.block_names), batch_sizes=np.array(self.batch_sizes),
            **{f"gramians_b{b}": g for b, g in self.gramians.items()},
            **{f"losses_b{b}": v for b, v in self.losses.items()})
        paths["info"].write_text(json.dumps(self.info, indent=2, default=str) + "\n",
                                 encoding="utf-8")
        return paths

    def summary(self, batch_size: int | None = None) -> pd.DataFrame:
        """Wide view: one row per batch size and task pair i-j with the raw cosine, the
        within-task cosines of i and j and the expected cosine as "estimate [lo, hi]"."""
        rows = []
        t = self.table[self.table.fit_batch_size.isna()]
        for b in self.batch_sizes if batch_size is None else [batch_size]:
            sel = t[t.batch_size == b]
            within = sel[sel.quantity == "within_cos"].set_index("name")
            for pair in sel[sel.kind == "pair"].name.unique():
                p = sel[sel.name == pair].set_index("quantity")
                a, c = pair.split("-", 1)
                rows.append({"batch_size": b, "pair": pair,
                             "raw_cos": format_interval(p.loc["raw_cos"]),
                             "within_cos_i": format_interval(within.loc[a]),
                             "within_cos_j": format_interval(within.loc[c]),
                             "expected_cos": format_interval(p.loc["expected_cos"]),
                             "reason": p.loc["expected_cos", "reason"]})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return (f"NoiseStudy(tasks={self.tasks}, batch_sizes={self.batch_sizes}, "
                f"replicates={self.replicates}, rounds={self.rounds}, rows={len(self.table)})")


def noise_study(model: LoadedModel | str | Path | Any = None,
                batch_sizes: Sequence[int] = (1, 4, 16, 64), *, rounds: int = 8,
                replicates: int = 4, seed: int = 0, level: float = 0.95,
                blocks: str | Sequence[str] = "layers", split: str = "train",
                fit_batch_size: int | None = None, progress: bool = True,
                **overrides: Any) -> NoiseStudy:
    """Raw, within-task and expected cosines per batch size, with intervals and the noise-model
    fit (see the module docstring).

    model: a `LoadedModel` or what `gradlab.load_model` takes (checkpoint or run folder,
    config file, TrainConfig, None: the default config), with ``overrides`` (config keys,
    e.g. data_dir, train_limit). batch_sizes: examples per batch; rounds: S rounds of fresh
    batches per batch size; replicates: K >= 2 batches per task per round (K >= 3 gives
    intervals over replicate batches, else over rounds, which needs S >= 2). seed: which
    batches are drawn (a batch size's S*K batches of a task are disjoint while the data
    lasts). fit_batch_size: whose estimates `figure` draws the noise model from (default: the
    largest); the table holds the predictions from every batch size.
    """
    from tqdm.auto import tqdm

    from gradlab.build import split_from_config as load_split

    sizes = _check(batch_sizes, rounds, replicates, level)
    loaded = load_model(model, **overrides)
    cfg, net = loaded.config, loaded.model
    tasks, K, T = list(net.tasks), replicates, len(net.tasks)
    t0 = time.perf_counter()
    data = {t: load_split(cfg, t, split, loaded.tokenizer).tokenized for t in tasks}
    for t in tasks:
        if len(data[t]) < K * max(sizes):
            raise ValueError(f"task {t!r} has {len(data[t])} {split} examples, fewer than "
                             f"replicates x batch size = {K * max(sizes)}")
    engine, block_kind = gradient_engine(net, blocks, rows=K * T)
    t_setup = time.perf_counter() - t0
    gramians, losses, seconds = {}, {}, {}
    bar = tqdm(total=len(sizes) * rounds, desc="noise study", unit="round", disable=not progress)
    for b in sizes:
        draws = {t: _Draws(len(data[t]), seed, b, t) for t in tasks}
        per_round, round_losses = [], []
        t1 = time.perf_counter()
        for _ in range(rounds):
            index = {t: draws[t].take(K * b).reshape(K, b) for t in tasks}
            batches = [(t, _batch(loaded, data[t], index[t][a])) for a in range(K) for t in tasks]
            loss, G = _task_gradients(net, batches, engine)
            per_round.append(G)
            round_losses.append(loss.reshape(K, T))
            bar.set_postfix(batch_size=b)
            bar.update()
        seconds[b] = time.perf_counter() - t1
        gramians[b] = np.stack(per_round)  # [S, B, K*T, K*T]
        losses[b] = np.stack(round_losses)
    bar.close()
    table = study_table({b: g.sum(1) for b, g in gramians.items()}, tasks, level=level)
    info = {"source": loaded.source, "encoder": cfg.encoder, "seed": seed, "config_seed": cfg.seed,
            "batch_sizes": sizes, "rounds": rounds, "replicates": K, "level": level,
            "blocks": block_kind, "split": split, "fit_batch_size": fit_batch_size or max(sizes),
            "max_length": cfg.max_length, "num_params": engine.num_params,
            "setup_s": round(t_setup, 2), "gradient_s": {b: round(s, 2) for b, s in
                                                        seconds.items()}}
    return NoiseStudy(tasks, sizes, K, rounds, level, table, gramians, losses,
                      list(engine.block_names), info)


def study_table(gramians: dict[int, np.ndarray], tasks: Sequence[str], *, level: float = 0.95
                ) -> pd.DataFrame:
    """The noise-study table from replicate Gramians [S, K*T, K*T] per batch size."""
    sizes = sorted(gramians)
    frames = []
    for b in sizes:
        G = gramians[b]
        pairs = calibration.pair_frame(G, tasks, level=level)
        frames.append(pairs.assign(batch_size=b, kind="pair", name=pairs.pair))
        per_task = calibration.task_frame(G, tasks, batch_size=b, level=level)
        frames.append(per_task.assign(batch_size=b, kind="task", name=per_task.task,
                                      task_i=per_task.task, task_j=per_task.task))
        pred = calibration.predicted_cosine_frame(G, tasks, batch_size=b, batch_sizes=sizes,
                                                  level=level)
        same = pred.task_i == pred.task_j
        frames.append(pred.assign(
            fit_batch_size=b, kind=np.where(same, "task", "pair"),
            name=np.where(same, pred.task_i, pred.pair),
            quantity=np.where(same, "predicted_within_cos", "predicted_raw_cos")))
    table = pd.concat(frames, ignore_index=True)
    table["fit_batch_size"] = table["fit_batch_size"].astype("Int64")
    table["batch_size"] = table["batch_size"].astype("int64")
    return table[list(COLUMNS)]


# --- private helpers ---------------------------------------------------------------------------


class _Draws:
    """Seeded example indices of one task and batch size: disjoint until the data runs out,
    then a fresh permutation (a draw never repeats an example within itself)."""

    def __init__(self, n: int, seed: int, batch_size: int, task: str) -> None:
        self.n = n
        self.rng = np.random.default_rng([seed, batch_size, zlib.crc32(task.encode())])
        self.order = self.rng.permutation(n)
        self.pos = 0

    def take(self, k: int) -> np.ndarray:
        if self.pos + k > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        out = self.order[self.pos:self.pos + k]
        self.pos += k
        return out


def _check(batch_sizes, rounds, replicates, level) -> list[int]:
    problems = []
    sizes = [batch_sizes] if isinstance(batch_sizes, int) else list(batch_sizes)
    if not sizes or not all(isinstance(b, int | np.integer) and not isinstance(b, bool) and b >= 1
                            for b in sizes):
        problems.append(f"batch_sizes must be positive ints, found {batch_sizes!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        problems.append(f"rounds must be a positive int, found {rounds!r}")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 2:
        problems.append(f"replicates must be an int >= 2 (independent batches per task), "
                        f"found {replicates!r}")
    elif isinstance(rounds, int) and replicates == 2 and rounds < 2:
        problems.append("replicates=2 with rounds=1 gives no interval: use replicates >= 3 or "
                        "rounds >= 2")
    if not 0 < level < 1:
        problems.append(f"level must be in (0, 1), found {level!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return sorted({int(b) for b in sizes})

