"""`Run`'s calibrated accessors: statistics of the replicate probes' Gramians [K*T, K*T]
(`gradlab.calibration`), pooled over a window of probe steps, with jackknife intervals.

A mixin of `gradlab.run.Run`: it reads through the run's ``reader`` and uses its
``tasks``, ``blocks``, ``config``, ``_check_blocks``, ``_gramian_sources`` and
``_finish``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from gradlab import calibration
from gradlab.store_reader import ReplicateSeries
from gradlab.store_schema import ENCODER

__all__ = ["CalibratedAccessors"]


class CalibratedAccessors:
    """expected_cosines, within_task_cosines, noise_scale and raw_cosine_spread of a run (see
    `gradlab.run`)."""

    def expected_cosines(self, window: int | None = 5, blocks: str | Sequence[str] | None = None,
                         level: float = 0.95, units: str = "auto") -> pd.DataFrame:
        """Cosine of the expected task gradients cos(mu_i, mu_j) per pair, from the replicate
        probes (`gradlab.calibration.pair_frame`, quantity "expected_cos"), pooled over a
        trailing window of ``window`` probe steps [first_step, step] (None: all probes, one
        row per block and pair), with a jackknife interval [lo, hi] at ``level`` over
        ``units`` (replicates when K >= 3, else probe steps). NaN with a ``reason`` where it
        is undetermined (K < 2, or an |mu|^2 whose interval reaches 0)."""
        return self._calibrated("expected_cosines", "expected_cos", window, blocks, level,
                                units)

    def within_task_cosines(self, window: int | None = 5,
                            blocks: str | Sequence[str] | None = None, level: float = 0.95,
                            units: str = "auto") -> pd.DataFrame:
        """Mean cosine of two independent probe batches of the same task (the signal share a
        raw cosine is attenuated by; `gradlab.calibration.task_frame`, "within_cos"), pooled
        and with intervals as in `expected_cosines`."""
        return self._calibrated("within_task_cosines", "within_cos", window, blocks, level,
                                units, batch_size=self._probe_batch_size())

    def noise_scale(self, window: int | None = 5, blocks: str | Sequence[str] | None = None,
                    level: float = 0.95, units: str = "auto",
                    batch_size: int | None = None) -> pd.DataFrame:
        """Gradient noise scale B_noise = tr(Sigma) / |mu|^2 per task, in examples (McCandlish
        et al. 2018; `gradlab.calibration.task_frame`, "b_noise"), pooled and with intervals
        as in `expected_cosines`. batch_size: the probe batch size (None: the run's
        ``probe_batch_size``)."""
        return self._calibrated("noise_scale", "b_noise", window, blocks, level, units,
                                batch_size=batch_size or self._probe_batch_size())

    def raw_cosine_spread(self, window: int | None = 5,
                          blocks: str | Sequence[str] | None = None, level: float = 0.95,
                          units: str = "auto") -> pd.DataFrame:
        """Standard deviation of one raw cross-task cosine between probe batches per pair
        (`gradlab.calibration.pair_frame`, "raw_cos_sd"): a raw cosine lies within +- z times
        it if the expected cosine were 0 (the noise-only band). Pooled as `expected_cosines`."""
        return self._calibrated("raw_cosine_spread", "raw_cos_sd", window, blocks, level, units)

    def _probe_batch_size(self) -> int:
        from gradlab.config import stored_probe_size

        return stored_probe_size(self.config)

    def _calibrated(self, kind: str, quantity: str, window: int | None,
                    blocks: str | Sequence[str] | None, level: float, units: str,
                    **options: Any) -> pd.DataFrame:
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window < 1):
            raise ValueError(f"window must be a number of probe steps >= 1 or None (all), "
                             f"got {window!r}")
        per_task = kind not in ("expected_cosines", "raw_cosine_spread")
        frame = calibration.task_frame if per_task else calibration.pair_frame
        frames = []
        for g in self._replicate_gramians(blocks):
            S = len(g.steps)
            for end in ([S - 1] if window is None else range(S)):
                start = 0 if window is None else max(0, end - window + 1)
                df = frame(g.G[start:end + 1], g.tasks, level=level, units=units, **options)
                df = df[df["quantity"] == quantity].drop(columns="quantity")
                if not per_task:
                    df = df.rename(columns={"task_i": "task_a", "task_j": "task_b"})
                frames.append(df.assign(step=g.steps[end], first_step=g.steps[start],
                                        block=g.block))
        return self._finish(kind, frames)

    def _replicate_gramians(self, blocks: str | Sequence[str] | None) -> list[ReplicateSeries]:
        """The replicate Gramians [N, K*T, K*T] of each block, tasks in run order, sorted by
        block (encoder order) and first step."""
        self._gramian_sources("probe")  # a run that never probes says which key to set
        groups = []
        for g in self.reader.replicate_gramians(self._check_blocks(blocks)):
            tasks, G = _replicates_to_run_order(self.tasks, g.tasks, g.replicates, g.G)
            groups.append(replace(g, tasks=tasks, G=G))
        block_order = {b: k for k, b in enumerate([*self.blocks, ENCODER])}
        groups.sort(key=lambda g: (block_order[g.block], g.steps[0]))
        return groups



def _replicates_to_run_order(run_tasks: list[str], tasks: list[str], K: int, G: np.ndarray
                             ) -> tuple[list[str], np.ndarray]:
    """Permute replicate-major rows (a*T + i) so that the tasks come in run order."""
    order = {t: k for k, t in enumerate(run_tasks)}
    perm = sorted(range(len(tasks)), key=lambda i: (order.get(tasks[i], len(order)), tasks[i]))
    T = len(tasks)
    rows = [a * T + i for a in range(K) for i in perm]
    return [tasks[i] for i in perm], G[:, rows][:, :, rows]
