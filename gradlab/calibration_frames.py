"""Jackknife intervals over replicates and probe steps, and the calibration's tidy frames
(re-exported by :mod:`gradlab.calibration`, whose docstring describes the intervals and when
values are undetermined).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from gradlab.calibration_estimators import (
    _check_batch_size,
    _check_level,
    _expected_cosines,
    _mu_sq,
    _noise_scale,
    _noise_traces,
    _signal_share,
    conflict_probability,
    moments,
    num_replicates,
    pool,
    predicted_raw_cosines,
    split_replicates,
)

__all__ = [
    "JACKKNIFE_UNITS",
    "format_interval",
    "jackknife",
    "pair_frame",
    "predicted_cosine_frame",
    "task_frame",
]

JACKKNIFE_UNITS = ("auto", "replicates", "steps")


# --- jackknife over replicates and probe steps -----------------------------------------------


def jackknife(gramians: np.ndarray, num_tasks: int,
              statistic: Callable[[dict[str, np.ndarray]], np.ndarray], *,
              level: float = 0.95, units: str = "auto"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(estimate, lo, hi, units used) of ``statistic(pooled moments)`` over a window.

    gramians: [S, K*T, K*T] (or one [K*T, K*T]); statistic maps a moments dict (arrays with
    any leading dims, as `moments` returns) to an array. units: "replicates" (delete one
    replicate batch of one step, stratified by step; K >= 3), "steps" (delete one probe
    step; S >= 2) or "auto" (replicates when K >= 3, else steps). Where neither is possible
    lo and hi are NaN and the returned units are "none".
    """
    from scipy.stats import t as student_t

    _check_level(level)
    if units not in JACKKNIFE_UNITS:
        raise ValueError(f"units must be one of {JACKKNIFE_UNITS}, found {units!r}")
    G = _as_window(gramians)
    S = G.shape[0]
    K = num_replicates(G, num_tasks)
    per_step = moments(G, num_tasks)
    estimate = np.asarray(statistic(pool(per_step)), dtype=float)
    if units == "auto":
        units = "replicates" if K >= 3 else "steps" if S >= 2 else "none"
    if units == "replicates" and K < 3:
        raise ValueError(f"units='replicates' needs K >= 3 replicates, found K={K}")
    if units == "steps" and S < 2:
        raise ValueError(f"units='steps' needs >= 2 probe steps, found {S}")
    if units == "none":
        nan = np.full(estimate.shape, np.nan)
        return estimate, nan, nan.copy(), units
    if units == "replicates":
        T = num_tasks
        X = split_replicates(G, T)
        thetas = []
        for a in range(K):
            keep = [r for r in range(K) if r != a]
            Xa = X[:, keep][:, :, :, keep]
            deleted = moments(Xa.reshape(S, (K - 1) * T, (K - 1) * T), T)  # [S, ...]
            # pooled moments with step s's moments replaced by its deleted version: [S, ...]
            loo = {k: pool(per_step)[k][None] + (deleted[k] - per_step[k]) / S
                   for k in per_step}
            thetas.append(np.asarray(statistic(loo), dtype=float))
        theta = np.stack(thetas, axis=1)  # [S, K, ...]
        centred = theta - theta.mean(axis=1, keepdims=True)
        var = (K - 1) / K * (centred**2).sum(axis=(0, 1))
        df = S * (K - 1)
    else:
        thetas = []
        for s in range(S):
            keep = [r for r in range(S) if r != s]
            thetas.append(np.asarray(statistic(pool({k: v[keep]
                                                     for k, v in per_step.items()})),
                                     dtype=float))
        theta = np.stack(thetas)
        var = (S - 1) / S * ((theta - theta.mean(0)) ** 2).sum(0)
        df = S - 1
    half = student_t.ppf(0.5 + level / 2, df) * np.sqrt(var)
    return estimate, estimate - half, estimate + half, units


# --- tidy frames -------------------------------------------------------------------------------


def task_frame(gramians: np.ndarray, tasks: Sequence[str], *, batch_size: int,
               level: float = 0.95, units: str = "auto") -> pd.DataFrame:
    """One row per task and quantity, pooled over the window [S, K*T, K*T] (or one Gramian).

    Quantities: "within_cos" (mean raw cosine of two batches of the task), "mu_sq" (|mu|^2),
    "sq_norm" (E|g|^2), "noise_trace" (tr Sigma / b), "signal_share" (|mu|^2 / E|g|^2),
    "b_noise" (tr Sigma / |mu|^2, examples). Columns: task, quantity, estimate, lo, hi, n
    (batches per task pooled, S*K), level, units (jackknife units), reason (why undetermined,
    or a caveat; "" when fine).
    """
    _check_batch_size(batch_size)
    G, T = _window_and_tasks(gramians, tasks)
    stats = {
        "within_cos": lambda m: np.diagonal(m["raw"], axis1=-2, axis2=-1),
        "mu_sq": _mu_sq,
        "sq_norm": lambda m: m["sq"],
        "noise_trace": _noise_traces,
        "signal_share": _signal_share,
        "b_noise": lambda m: _noise_scale(m, batch_size),
    }
    results, mu_reason = _run_all(G, T, stats, level, units)
    rows = []
    for name, (est, lo, hi, used, reason_all) in results.items():
        for i, task in enumerate(tasks):
            reason = reason_all
            e, a, b = est[i], lo[i], hi[i]
            if name == "mu_sq" and mu_reason[i]:
                reason = mu_reason[i]
            if name == "b_noise" and mu_reason[i]:
                e, a, b, reason = np.nan, np.nan, np.nan, mu_reason[i]
            rows.append(_row(task=task, quantity=name, estimate=e, lo=a, hi=b, n=G.shape[0] *
                             _K(G, T), level=level, units=used, reason=reason))
    return pd.DataFrame(rows)


def pair_frame(gramians: np.ndarray, tasks: Sequence[str], *, level: float = 0.95,
               units: str = "auto") -> pd.DataFrame:
    """One row per task pair (i < j) and quantity, pooled over the window.

    Quantities: "expected_cos" (cos(mu_i, mu_j)), "mu_dot" (mu_i . mu_j), "raw_cos" (mean raw
    cosine of two batch gradients), "raw_cos_sd" (its spread between batch pairs; the
    noise-only band of a raw cosine is +- z times this), "conflict_rate" (Phi(-raw/sd): the
    share of probes whose raw cosine is < 0; noise alone gives 1/2; its interval is clipped to
    [0, 1], that of raw_cos_sd at 0). Columns: pair ("a-b"),
    task_i, task_j, quantity, estimate, lo, hi, n, level, units, reason.
    """
    G, T = _window_and_tasks(gramians, tasks)
    iu = np.triu_indices(T, 1)

    def upper(f):
        return lambda m: f(m)[..., iu[0], iu[1]]

    stats = {
        "expected_cos": upper(_expected_cosines),
        "mu_dot": upper(lambda m: m["mu"]),
        "raw_cos": upper(lambda m: m["raw"]),
        "raw_cos_sd": upper(lambda m: np.sqrt(np.clip(m["raw_var"], 0.0, None))),
        "conflict_rate": upper(lambda m: conflict_probability(m["raw"],
                                                              np.sqrt(np.clip(m["raw_var"],
                                                                              0.0, None)))),
    }
    results, mu_reason = _run_all(G, T, stats, level, units)
    rows = []
    for name, (est, lo, hi, used, reason_all) in results.items():
        for p, (i, j) in enumerate(zip(*iu, strict=True)):
            e, a, b, reason = est[p], lo[p], hi[p], reason_all
            if name == "expected_cos" and (mu_reason[i] or mu_reason[j]):
                reason = "; ".join(dict.fromkeys(r for r in (mu_reason[i], mu_reason[j]) if r))
                e, a, b = np.nan, np.nan, np.nan
            if name in _BOUNDS:  # a jackknife interval is symmetric: keep it in range
                a, b = np.clip([a, b], *_BOUNDS[name])
            rows.append(_row(pair=f"{tasks[i]}-{tasks[j]}", task_i=tasks[i], task_j=tasks[j],
                             quantity=name, estimate=e, lo=a, hi=b,
                             n=G.shape[0] * _K(G, T), level=level, units=used, reason=reason))
    return pd.DataFrame(rows)


def predicted_cosine_frame(gramians: np.ndarray, tasks: Sequence[str], *, batch_size: int,
                           batch_sizes: Sequence[float], level: float = 0.95,
                           units: str = "auto") -> pd.DataFrame:
    """The raw cosine a user would see at each batch size b' (`predicted_raw_cosines`), with
    jackknife intervals: one row per batch size and task pair i <= j (i == j: within-task).

    Columns: batch_size, pair, task_i, task_j, estimate, lo, hi, n, level, units, reason.
    NaN with a reason where an involved |mu|^2 is undetermined.
    """
    _check_batch_size(batch_size)
    G, T = _window_and_tasks(gramians, tasks)
    iu = np.triu_indices(T)
    stats = {}
    for bs in batch_sizes:
        _check_batch_size(bs, "batch_sizes")
        stats[bs] = (lambda m, bs=bs: predicted_raw_cosines(
            _expected_cosines(m), _noise_scale(m, batch_size), bs)[..., iu[0], iu[1]])
    results, mu_reason = _run_all(G, T, stats, level, units)
    rows = []
    for bs, (est, lo, hi, used, reason_all) in results.items():
        for p, (i, j) in enumerate(zip(*iu, strict=True)):
            e, a, b, reason = est[p], lo[p], hi[p], reason_all
            if mu_reason[i] or mu_reason[j]:
                reason = "; ".join(dict.fromkeys(r for r in (mu_reason[i], mu_reason[j]) if r))
                e, a, b = np.nan, np.nan, np.nan
            rows.append(_row(batch_size=bs, pair=f"{tasks[i]}-{tasks[j]}", task_i=tasks[i],
                             task_j=tasks[j], estimate=e, lo=a, hi=b,
                             n=G.shape[0] * _K(G, T), level=level, units=used, reason=reason))
    return pd.DataFrame(rows)


# --- private helpers ---------------------------------------------------------------------------

#: ranges that pair_frame's symmetric intervals are clipped to
_BOUNDS = {"conflict_rate": (0.0, 1.0), "raw_cos_sd": (0.0, np.inf)}



def _run_all(G, T, stats, level, units):
    """Jackknife every statistic; per-task reasons why |mu_i|^2 is undetermined."""
    K = _K(G, T)
    tasks_n = T
    if K < 2:
        reason = f"K={K} replicate per task: needs K >= 2 independent batches per task"
        results = {}
        for name, f in stats.items():
            shape = np.asarray(f(pool(moments(G, T)))).shape
            nan = np.full(shape, np.nan)
            results[name] = (nan, nan, nan, "none", reason)
        return results, [reason] * tasks_n
    results = {}
    for name, f in stats.items():
        est, lo, hi, used = jackknife(G, T, f, level=level, units=units)
        reason = "" if used != "none" else \
            "no interval: K=2 and one probe step (needs K >= 3 or >= 2 probe steps)"
        results[name] = (est, lo, hi, used, reason)
    mu_est, mu_lo, _, used = jackknife(G, T, _mu_sq, level=level, units=units)
    mu_reason = []
    for i in range(T):
        if not mu_est[i] > 0:
            mu_reason.append(f"|mu|^2 estimate {mu_est[i]:.3g} <= 0")
        elif used != "none" and not mu_lo[i] > 0:
            mu_reason.append(f"|mu|^2 interval reaches 0 (lo {mu_lo[i]:.3g})")
        else:
            mu_reason.append("")
    return results, mu_reason


def _row(**values):
    for k in ("estimate", "lo", "hi"):
        values[k] = float(values[k])
    return values


def _K(G, T):
    return G.shape[-1] // T


def _as_window(gramians):
    G = np.asarray(gramians, dtype=float)
    if G.ndim == 2:
        G = G[None]
    if G.ndim != 3 or G.shape[-1] != G.shape[-2] or G.shape[0] < 1:
        raise ValueError(f"gramians must be [S, K*T, K*T] or [K*T, K*T], found shape "
                         f"{np.shape(gramians)}")
    return G


def _window_and_tasks(gramians, tasks):
    if isinstance(tasks, str) or not len(tasks):
        raise ValueError(f"tasks must be a non-empty sequence of task names, found {tasks!r}")
    G = _as_window(gramians)
    num_replicates(G, len(tasks))
    return G, len(tasks)


def format_interval(row, fmt: str = "{:+.3f}") -> str:
    """One row of a calibration frame as text: "estimate [lo, hi]", the estimate alone when
    it has no interval, or "undetermined" when it is NaN (its reason is in the frame)."""
    est, lo, hi = row["estimate"], row["lo"], row["hi"]
    if np.isnan(est):
        return "undetermined"
    if np.isnan(lo):
        return fmt.format(est)
    return f"{fmt.format(est)} [{fmt.format(lo)}, {fmt.format(hi)}]"
