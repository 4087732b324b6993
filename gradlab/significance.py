"""Is a difference between methods more than seed noise? Paired tests and t intervals.

Runs that differ only in the method share their seed, hence their data order, probe batches
and head initialisation, so the comparison pairs them by seed: the per-seed differences
d_s = a_s - b_s get a Student-t 95% interval and a paired t-test (``scipy.stats.ttest_rel``;
a Wilcoxon signed-rank test on request). A difference whose interval contains 0 is reported
as within seed noise. With the 3 to 5 seeds of a typical comparison only large, consistent
differences leave that interval, which is the point: several studies found that most gains of
multi-task optimizers vanish across seeds.

Example (run by the tests):
    >>> r = paired_test([0.51, 0.53, 0.50], [0.49, 0.50, 0.50])
    >>> round(r["mean_diff"], 3), r["n"], r["within_noise"]
    (0.017, 3, True)
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["compare_methods", "holm", "paired_test", "seed_summary", "t_interval", "variant",
           "JOINT_SCHEDULES"]

RESULT_COLUMNS = ["method", "seed", "task", "metric", "value"]
JOINT_SCHEDULES = ("", "joint")


def variant(method: str, schedule) -> str:
    """What a run is compared as: its method for joint training ("pcgrad"), the schedule
    for a one-task schedule of the plain sum ("round_robin"), else "method (schedule)".
    Runs of one variant are seeds of one another.

    >>> variant("sum", "round_robin"), variant("pcgrad", "joint"), variant("mgda", "sequential")
    ('round_robin', 'pcgrad', 'mgda (sequential)')
    """
    schedule = "" if schedule is None or pd.isna(schedule) else str(schedule)
    if schedule in JOINT_SCHEDULES or method == schedule:
        return method
    if method in ("sum", "mean", ""):
        return schedule
    return f"{method} ({schedule})"


def paired_test(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                test: str = "t") -> dict:
    """Paired comparison of per-seed values a [S] and b [S] (seed s in position s of both).

    Returns mean_diff (mean of a - b), ci_low, ci_high (Student-t interval of that mean at
    ``confidence``), p_value (two-sided; ``test`` "t": paired t-test, "wilcoxon": signed-rank
    test), n (pairs with both values present; pairs with a NaN are dropped) and within_noise
    (True when the interval contains 0, or when n < 2 leaves no interval at all).
    """
    if test not in ("t", "wilcoxon"):
        raise ValueError(f"test must be 't' or 'wilcoxon', found {test!r}")
    _check_confidence(confidence)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D per-seed values of equal length, found shapes "
                         f"{x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    d = x - y
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    low, high = t_interval(d, confidence)
    p_value = math.nan  # no test below 2 pairs; t-test: none for identical differences
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision notes on tiny n
        if n >= 2 and test == "t" and np.ptp(d) > 0:
            p_value = float(sps.ttest_rel(x, y).pvalue)
        elif n >= 2 and test == "wilcoxon":
            p_value = float(sps.wilcoxon(x, y).pvalue) if np.any(d != 0) else 1.0
    within = n < 2 or low <= 0 <= high
    return {"mean_diff": mean, "ci_low": low, "ci_high": high, "p_value": p_value, "n": n,
            "within_noise": within}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaNs dropped); (NaN, NaN) below 2 values.

    Identical values give the zero-width interval (v, v). The interval of every band, error
    bar and table in gradlab: with the 3 to 5 seeds of a typical comparison the t interval
    is the honest one (a bootstrap of 3 values is far too narrow).
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return (math.nan, math.nan)
    mean, sem = float(v.mean()), float(v.std(ddof=1)) / math.sqrt(len(v))
    half = _t_quantile(len(v) - 1, confidence) * sem
    return (mean - half, mean + half)


@functools.lru_cache(maxsize=256)
def _t_quantile(dof: int, confidence: float) -> float:
    """Two-sided Student-t quantile (cached: plots ask for one interval per step)."""
    return float(sps.t.ppf(0.5 + confidence / 2, dof))


def seed_summary(df: pd.DataFrame, value_col: str, by: str | Sequence[str], *,
                 confidence: float = 0.95) -> pd.DataFrame:
    """Mean over seeds with a Student-t interval: one row per group of ``by``.

    Columns: the ``by`` columns, n (non-NaN values), mean, std (ddof=1), ci_low, ci_high.
    """
    by = [by] if isinstance(by, str) else list(by)
    _check_columns(df, [value_col, *by], "df")
    _check_confidence(confidence)
    rows = []
    for key, part in df.groupby(by, sort=False, dropna=False):
        values = part[value_col].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        low, high = t_interval(values, confidence)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                     "n": len(values),
                     "mean": float(values.mean()) if len(values) else math.nan,
                     "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "ci_low": low, "ci_high": high})
    columns = [*by, "n", "mean", "std", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def compare_methods(results: pd.DataFrame, baseline: str = "sum", *, confidence: float = 0.95,
                    test: str = "t") -> pd.DataFrame:
    """Every method against ``baseline`` over seeds: one row per (method, task, metric).

    results: long form with columns method, seed, task, metric, value (one row per run and
    metric; runs of a method differ only in their seed). Columns of the answer: method, task,
    metric, n, mean, std, ci_low, ci_high (over seeds), diff (mean paired difference
    method - baseline over the seeds both ran), diff_ci_low, diff_ci_high, p_value, p_holm
    (p_value adjusted by Holm's step-down method over the methods tested on the same task
    and metric: with several methods against one baseline, some unadjusted p < 0.05 are
    expected by chance), n_pairs and within_seed_noise (True when the interval of the paired
    difference contains 0; NA when fewer than 2 seeds pair up, so that there is no interval,
    and on the baseline's own rows).
    """
    _check_columns(results, RESULT_COLUMNS, "results")
    duplicated = results.duplicated(["method", "seed", "task", "metric"], keep=False)
    if duplicated.any():
        example = results.loc[duplicated, ["method", "seed", "task", "metric"]].iloc[0].tolist()
        raise ValueError(f"results has {int(duplicated.sum())} rows that share (method, seed, "
                         f"task, metric), e.g. {example}: runs of one method must differ only "
                         "in their seed (label other differences in the method name)")
    methods = list(dict.fromkeys(results["method"]))
    if baseline not in methods:
        raise ValueError(f"baseline={baseline!r} is not among the methods in results: {methods}")
    summary = seed_summary(results, "value", ["method", "task", "metric"], confidence=confidence)
    wide = results.pivot_table(index=["task", "metric", "seed"], columns="method",
                               values="value", aggfunc="first", dropna=False)
    tests = []
    for row in summary.itertuples(index=False):
        if row.method == baseline:
            tests.append({"diff": 0.0, "diff_ci_low": math.nan, "diff_ci_high": math.nan,
                          "p_value": math.nan, "n_pairs": row.n, "within_seed_noise": pd.NA})
            continue
        try:
            pairs = wide.loc[(row.task, row.metric)]
            a, b = pairs[row.method].to_numpy(float), pairs[baseline].to_numpy(float)
        except KeyError:  # the baseline never reported this task/metric
            a = b = np.array([])
        r = paired_test(a, b, confidence=confidence, test=test)
        tests.append({"diff": r["mean_diff"], "diff_ci_low": r["ci_low"],
                      "diff_ci_high": r["ci_high"], "p_value": r["p_value"], "n_pairs": r["n"],
                      "within_seed_noise": r["within_noise"] if r["n"] >= 2 else pd.NA})
    table = pd.concat([summary, pd.DataFrame(tests, index=summary.index)], axis=1)
    table.insert(table.columns.get_loc("p_value") + 1, "p_holm", math.nan)
    for _, part in table.groupby(["task", "metric"], sort=False):
        table.loc[part.index, "p_holm"] = holm(part["p_value"].to_numpy(float))
    table["within_seed_noise"] = table["within_seed_noise"].astype("boolean")
    table["n_pairs"] = table["n_pairs"].astype("int64")
    # baseline first, then methods, tasks and metrics in the order results lists them
    orders = {"method": [baseline, *[m for m in methods if m != baseline]],
              "task": list(dict.fromkeys(results["task"])),
              "metric": list(dict.fromkeys(results["metric"]))}
    table = table.sort_values(["method", "task", "metric"], kind="stable",
                              key=lambda c: c.map({v: k for k, v in enumerate(orders[c.name])}))
    return table.reset_index(drop=True)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of m p-values [m] (NaNs stay NaN and do not count).

    The k-th smallest p becomes max over j <= k of min(1, (m - j + 1) p_(j)): the family-wise
    error rate stays at the level used, without Bonferroni's loss of power.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    keep = np.flatnonzero(~np.isnan(p))
    order = keep[np.argsort(p[keep], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def _check_columns(df: pd.DataFrame, needed: Sequence[str], name: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, found {type(df).__name__}")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(df.columns)}")


def _check_confidence(confidence: float) -> None:
    if not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), found {confidence!r}")
