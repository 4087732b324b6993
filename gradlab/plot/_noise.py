"""The noise-study figure: raw vs noise-corrected cosines across batch sizes.

One panel per task pair: the measured raw cosine of two batch gradients (what a user sees),
the expected-gradient cosine (noise-corrected) and the noise model's prediction of the raw
cosine, all with their intervals; one panel of within-task cosines (the signal share of one
batch gradient) with the model's s_i(b) = 1 / (1 + B_i / b). The statistics come from the
table of `gradlab.noise_study` (`gradlab.calibration`); nothing is computed here but the
model's curve between the measured batch sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from gradlab.plot import _theme

__all__ = ["noise_study_axes", "noise_study_figure", "within_task_axes"]

_REQUIRED = ("batch_size", "fit_batch_size", "kind", "name", "quantity", "estimate", "lo", "hi")


def noise_study_axes(table: pd.DataFrame, pair: str, *, fit_batch_size: int | None = None,
                     ax: Axes | None = None) -> Axes:
    """One task pair: measured raw cosine, expected cosine and the noise model's raw cosine
    against batch size (log scale), with intervals. Returns the Axes."""
    table = _checked(table)
    ax = plt.gca() if ax is None else ax
    measured = table[table.fit_batch_size.isna() & (table.name == pair)]
    if measured.empty:
        raise ValueError(f"pair {pair!r} not in the table; pairs: "
                         f"{sorted(table[table.kind == 'pair'].name.unique())}")
    fit = _fit_size(table, fit_batch_size)
    color = _theme.pair_color(pair)
    raw = measured[measured.quantity == "raw_cos"].sort_values("batch_size")
    expected = measured[measured.quantity == "expected_cos"].sort_values("batch_size")
    pred = table[(table.fit_batch_size == fit) & (table.name == pair) &
                 (table.quantity == "predicted_raw_cos")].sort_values("batch_size")
    _band(ax, pred, color)
    rho = _value(measured, "expected_cos", fit)
    b_i, b_j = (_value(table[table.fit_batch_size.isna() & (table.name == t)], "b_noise", fit)
                for t in _theme.split_pair(pair))
    _model_curve(ax, table.batch_size.unique(),
                 lambda b: rho * np.sqrt(_share(b_i, b) * _share(b_j, b)), color)
    _points(ax, raw, color, "o", -1)
    _points(ax, expected, "0.15", "D", +1)
    ax.axhline(0, color="0.6", lw=0.7, zorder=0)
    _log_x(ax, table.batch_size.unique())
    ax.set(xlabel="batch size (examples per task)", ylabel="cosine")
    ax.set_title(_theme.pair_label(pair), loc="left", fontsize="medium")
    return ax


def within_task_axes(table: pd.DataFrame, *, tasks: Sequence[str] | None = None,
                     fit_batch_size: int | None = None, ax: Axes | None = None) -> Axes:
    """Within-task cosine (two batches of one task) per task against batch size, with the
    noise model's s_i(b) = 1 / (1 + B_i / b) from ``fit_batch_size``. Returns the Axes."""
    table = _checked(table)
    ax = plt.gca() if ax is None else ax
    fit = _fit_size(table, fit_batch_size)
    measured = table[table.fit_batch_size.isna() & (table.quantity == "within_cos")]
    tasks = list(measured.name.unique()) if tasks is None else list(tasks)
    for k, task in enumerate(tasks):
        color = _theme.task_color(task)
        rows = measured[measured.name == task].sort_values("batch_size")
        pred = table[(table.fit_batch_size == fit) & (table.name == task) &
                     (table.quantity == "predicted_within_cos")].sort_values("batch_size")
        _band(ax, pred, color)
        b_noise = _value(table[table.fit_batch_size.isna() & (table.name == task)], "b_noise", fit)
        _model_curve(ax, table.batch_size.unique(), lambda b, B=b_noise: _share(B, b), color)
        _points(ax, rows, color, "o", k - (len(tasks) - 1) / 2, label=_theme.task_label(task))
    ax.axhline(0, color="0.6", lw=0.7, zorder=0)
    _log_x(ax, table.batch_size.unique())
    ax.set(xlabel="batch size (examples per task)", ylabel="cosine")
    ax.set_ylim(max(ax.get_ylim()[0], -1.05), 1.05)  # a cosine: longer error bars are cut
    ax.set_title("Within task (signal share)", loc="left", fontsize="medium")
    ax.legend(frameon=False, fontsize="small", loc="best")
    return ax


def noise_study_figure(table: pd.DataFrame, *, pairs: Sequence[str] | None = None,
                       fit_batch_size: int | None = None, figsize=None, title: str | None = None):
    """The noise-study figure: one panel per task pair and one of within-task cosines.

    table: `NoiseStudy.table` (or its CSV read back). Returns the Figure.

    >>> fig = noise_study_figure(gradlab.noise_study(...).table)  # doctest: +SKIP
    """
    table = _checked(table)
    pairs = list(table[table.kind == "pair"].name.unique()) if pairs is None else list(pairs)
    fit = _fit_size(table, fit_batch_size)
    n = len(pairs) + 1
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    with _theme.theme_context():
        fig = plt.figure(figsize=figsize or (3.2 * cols, 3.0 * rows + 0.6), layout="constrained")
        axes = list(fig.subplots(rows, cols, squeeze=False).flat)
        for ax, pair in zip(axes, pairs, strict=False):
            noise_study_axes(table, pair, fit_batch_size=fit, ax=ax)
        within_task_axes(table, fit_batch_size=fit, ax=axes[len(pairs)])
        for ax in axes[n:]:
            ax.set_visible(False)
        level = table["level"].iloc[0] if "level" in table else 0.95
        handles = [
            Line2D([], [], color="0.4", marker="o", ls="none", label="raw cosine (measured)"),
            Line2D([], [], color="0.15", marker="D", ls="none",
                   label="expected cosine (noise-corrected)"),
            Line2D([], [], color="0.4", ls="--", label=f"noise model fitted at b = {fit}"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False,
                   fontsize="small")
        fig.suptitle(title or f"Gradient cosines vs batch size ({round(100 * level)}% "
                     "intervals; undetermined values not drawn)", fontsize="medium")
    return fig


# --- private helpers ---------------------------------------------------------------------------


def _checked(table: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a NoiseStudy.table DataFrame, found "
                        f"{type(table).__name__}")
    missing = [c for c in _REQUIRED if c not in table]
    if missing:
        raise ValueError(f"table lacks columns {missing}; expected NoiseStudy.table")
    if table.fit_batch_size.dtype != "Int64":  # read back from CSV: floats with NaN
        table = table.assign(fit_batch_size=table.fit_batch_size.astype("Int64"))
    return table


def _fit_size(table: pd.DataFrame, fit_batch_size: int | None) -> int:
    sizes = sorted(int(b) for b in table.fit_batch_size.dropna().unique())
    if fit_batch_size is None:
        return sizes[-1]
    if fit_batch_size not in sizes:
        raise ValueError(f"fit_batch_size must be one of the study's batch sizes {sizes}, "
                         f"found {fit_batch_size!r}")
    return int(fit_batch_size)


def _value(rows: pd.DataFrame, quantity: str, batch_size: int) -> float:
    sel = rows[(rows.quantity == quantity) & (rows.batch_size == batch_size)]
    return float(sel.estimate.iloc[0]) if len(sel) else float("nan")


def _share(b_noise: float, b) -> np.ndarray:
    return 1.0 / (1.0 + b_noise / np.asarray(b, dtype=float))


def _model_curve(ax: Axes, sizes, f, color) -> None:
    sizes = np.asarray(sorted(sizes), dtype=float)
    lo, hi = sizes.min() / 1.5, sizes.max() * 1.5
    grid = np.geomspace(lo, hi, 100)
    y = f(grid)
    if np.all(np.isfinite(y)):
        ax.plot(grid, y, ls="--", lw=1.2, color=color, zorder=2)


def _band(ax: Axes, pred: pd.DataFrame, color) -> None:
    ok = pred[np.isfinite(pred.lo) & np.isfinite(pred.hi)]
    if len(ok) >= 2:
        ax.fill_between(ok.batch_size, ok.lo, ok.hi, color=color, alpha=0.15, lw=0, zorder=1)


def _points(ax: Axes, rows: pd.DataFrame, color, marker: str, shift: float,
            label: str | None = None) -> None:
    """Estimates with error bars, shifted sideways (in log x) so that they do not overlap."""
    rows = rows[np.isfinite(rows.estimate)]
    if rows.empty:
        return
    x = rows.batch_size.to_numpy(float) * 1.08**shift
    lo = (rows.estimate - rows.lo).to_numpy(float)
    hi = (rows.hi - rows.estimate).to_numpy(float)
    err = np.where(np.isfinite([lo, hi]), [lo, hi], 0.0)
    ax.errorbar(x, rows.estimate, yerr=err, fmt=marker, color=color, ms=4.5, capsize=2.5,
                lw=1.1, zorder=3, label=label)


def _log_x(ax: Axes, sizes) -> None:
    sizes = sorted(int(b) for b in sizes)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
