"""Calibrated conflict over training: expected-gradient cosines with their intervals, and the
noise-only bands that the raw cosine and conflict-rate plots draw.

A raw cosine of two batch gradients is mostly sampling noise at small batches
(`gradlab.calibration`). `expected_cosine_over_training` draws cos(mu_i, mu_j) from a run's
replicate probes (`Run.expected_cosines`, pooled over a trailing window of probe steps, with
its jackknife interval) beside the raw probe cosine; undetermined windows are gaps marked x
on the axis, never a value. `cosine_band` and `conflict_band` draw what a raw cosine or a
conflict rate would look like if the expected cosine were 0 (`Run.raw_cosine_spread`,
`gradlab.calibration.noise_only_conflict_band`). Nothing is computed here but the band's
scaling by the number of points a curve averages.
"""

from __future__ import annotations

import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gradlab import calibration
from gradlab.config import stored_probe_size
from gradlab.plot import _data, _theme
from gradlab.plot._draw import _ax, _clamp_lim, _legend, _one_pair, _select_pairs, _title

__all__ = ["expected_cosine_over_training", "cosine_band", "conflict_band", "has_replicates",
           "NOISE_LABEL"]

NOISE_LABEL = "noise only (cos μ = 0)"
NOISE_STYLE = {"color": "0.55", "alpha": 0.18, "lw": 0, "zorder": 0.5}
_COLUMNS = ["step", "first_step", "block", "pair", "estimate", "lo", "hi", "n", "reason"]


def expected_cosine_over_training(
    data,
    *,
    pair=None,
    window: int = 5,
    block: str = "encoder",
    level: float = 0.95,
    raw: bool = True,
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Cosine of the expected task gradients cos(mu_i, mu_j) over training, per task pair,
    with its jackknife interval band, over the raw probe cosine (dots: one batch pair).

    ``data``: a Run (or Runs of one run) with replicate probes (``probe_replicates`` >= 2),
    or the frame of ``Run.expected_cosines`` (no raw dots then). Each point pools the
    trailing ``window`` probe steps (`Run.expected_cosines`); a window whose |mu|^2 interval
    reaches 0 is undetermined: a gap in the line, marked x at the foot of the Axes.

    >>> ax = expected_cosine_over_training(run, window=5)  # doctest: +SKIP
    """
    runs = getattr(data, "runs", None)
    if runs is not None:
        if len(runs) != 1:
            raise ValueError(f"expected_cosine_over_training draws one run, got "
                             f"{[r.name for r in runs]}; pass one of runs.runs")
        data = runs[0]
    df = _data.get_frame(data, "expected_cosines", _COLUMNS, window=window, blocks=block,
                         level=level)
    if df["run"].nunique() > 1:
        raise ValueError(f"expected_cosine_over_training draws one run; the frame holds "
                         f"{sorted(df['run'].unique())}")
    df = _select_pairs(_data.select_block(df, block), pair)
    if df["estimate"].isna().all() and df["reason"].str.contains("K=1").all():
        raise ValueError(f"no expected cosines in {_data.describe(data)}: "
                         f"{df['reason'].iloc[0]} (set probe_replicates >= 2)")
    ax = _ax(ax)
    ax.axhline(0.0, color="0.25", lw=0.8, ls="--", zorder=1)
    pairs = _data.order_pairs(df["pair"].unique())
    cos = _raw_probe_cosines(data, block, pairs) if raw else None
    undetermined, off_scale = {}, []
    for p in pairs:
        rows = df[df["pair"] == p].sort_values("step")
        steps = rows["step"].to_numpy(float)
        est, lo, hi = (rows[c].to_numpy(float) for c in ("estimate", "lo", "hi"))
        color = _theme.pair_color(p)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(steps, lo, hi, where=ok, color=color, alpha=0.2, lw=0,
                        interpolate=False, zorder=1.5)
        ax.plot(steps, est, color=color, lw=1.6, marker="o", ms=3, zorder=3,
                label=_theme.pair_label(p))  # NaN estimates break the line: gaps
        undetermined[p] = steps[~np.isfinite(est)]
        off = np.abs(est) > 1.05  # no interval, one probe: noise can put it past +-1
        off_scale += [(x, np.sign(y), color) for x, y in zip(steps[off], est[off], strict=True)]
        if cos is not None:
            own = cos[cos["pair"] == p]
            ax.plot(own["step"], own["value"], ls="none", marker="o", ms=3.2, mfc="none",
                    mec=color, mew=0.7, alpha=0.8, zorder=2)
    foot = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for k, p in enumerate(pairs):  # one row of x per pair at the foot of the Axes
        ax.plot(undetermined[p], np.full(len(undetermined[p]), 0.035 + 0.04 * k), ls="none",
                marker="x", ms=3.5, mew=1.0, color=_theme.pair_color(p), transform=foot,
                clip_on=False, zorder=4)
    undetermined = any(len(v) for v in undetermined.values())
    _clamp_lim(ax, -1.05, 1.05)
    edge = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for x, sign, color in off_scale:  # at the Axes' edge, pointing where the value lies
        ax.plot([x], [0.97 if sign > 0 else 0.03], ls="none", marker="^" if sign > 0 else "v",
                ms=4, color=color, transform=edge, clip_on=False, zorder=4)
    ax.set(xlabel="Step", ylabel="Cosine")
    if legend:
        handles = [Line2D([], [], color=_theme.pair_color(p), lw=1.6, marker="o", ms=3,
                          label=_theme.pair_label(p)) for p in pairs]
        handles.append(Patch(facecolor=_theme.pair_color(pairs[0]), alpha=0.25, lw=0,
                             label=f"{level:.0%} interval"))  # pair-coloured, as drawn
        if cos is not None:
            handles.append(Line2D([], [], ls="none", marker="o", ms=3.2, mfc="none", mec="0.3",
                                  label="raw cosine"))
        if undetermined:
            handles.append(Line2D([], [], ls="none", marker="x", ms=4, color="0.35",
                                  label="undetermined"))
        if off_scale:
            handles.append(Line2D([], [], ls="none", marker="^", ms=4, color="0.35",
                                  label="beyond ±1"))
        ax.legend(handles=handles)
        _legend(ax, legend)
    _title(ax, f"{_one_pair(df)}expected cosine · {_block_text(block)} · pooled over "
               f"{window} probes", df)
    return ax


def has_replicates(run) -> bool:
    """Whether a Run has replicate probes (K >= 2) that give expected cosines."""
    try:
        df = run.expected_cosines(window=None, blocks="encoder")
    except (ValueError, KeyError, AttributeError):
        return False
    return bool(len(df)) and not df["reason"].str.contains("K=1").all()


def cosine_band(ax: Axes, data, df: pd.DataFrame, *, block: str, source: str,
                smooth: int | None, level: float = 0.95,
                steps_per_x: dict[str, float] | None = None) -> bool:
    """Grey band around 0: where a raw cosine of ``df``'s pairs (one point, or the trailing
    mean of ``smooth`` steps) lies at ``level`` if the expected cosine were 0, from the runs'
    replicate probes (+- z sd / sqrt(points averaged)); the widest of the drawn pairs. Drawn
    only for a Run or Runs with replicate probes whose train batches (``source="train"``)
    are as large as the probe batches; returns whether it was drawn. steps_per_x: run name ->
    optimizer steps per unit of the x axis (on a batches-per-task axis, T for a one-task
    schedule), 1 where not given."""
    from scipy.stats import norm

    runs = getattr(data, "runs", None) or ([data] if hasattr(data, "raw_cosine_spread") else [])
    spreads = []
    for run in runs:
        if source == "train" and not _same_batches(run):
            continue
        try:
            sd = run.raw_cosine_spread(blocks=block, level=level)
        except (ValueError, KeyError):
            continue
        sd = sd[sd["pair"].isin(_unordered(df["pair"].unique())) & np.isfinite(sd["estimate"])]
        if len(sd):
            sd = sd[["step", "estimate"]].astype({"step": float})
            sd["step"] /= (steps_per_x or {}).get(run.name, 1)
            spreads.append(sd)
    if not spreads:
        return False
    sd = pd.concat(spreads).groupby("step")["estimate"].max().sort_index()
    half = norm.ppf(0.5 + level / 2) * sd.to_numpy() / np.sqrt(_points_averaged(df, smooth))
    ax.fill_between(sd.index.to_numpy(float), -half, half, step=None, **NOISE_STYLE)
    return True


def conflict_band(ax: Axes, df: pd.DataFrame, window: int, level: float = 0.95,
                  steps_per_x: dict[str, float] | None = None) -> None:
    """Grey band: the range of a conflict rate over the logged steps in a ``window``-step
    window if the expected cosine were 0 (1/2 +- z sqrt(1 / 4n),
    `gradlab.calibration.noise_only_conflict_band`), n counted per run and step as its curve
    has; ``df`` on the step axis (columns run, step), the band drawn on the x axis that
    ``steps_per_x`` gives (as in `cosine_band`), the widest of the runs at each x."""
    parts = []
    for name, part in (df.groupby("run") if "run" in df.columns else [("", df)]):
        steps = np.unique(part["step"].to_numpy(float))
        n = np.arange(1, len(steps) + 1) - np.searchsorted(steps, steps - window, side="right")
        lo, hi = calibration.noise_only_conflict_band(n, level=level)
        parts.append(pd.DataFrame({"x": steps / (steps_per_x or {}).get(name, 1),
                                   "lo": lo, "hi": hi}))
    if not parts:
        return
    band = pd.concat(parts).groupby("x").agg(lo=("lo", "min"), hi=("hi", "max")).sort_index()
    if len(band):
        ax.fill_between(band.index.to_numpy(float), band["lo"].to_numpy(float),
                        band["hi"].to_numpy(float), **NOISE_STYLE)


def add_noise_entry(ax: Axes, legend) -> None:
    """Append the noise band's entry to ``ax``'s legend (kept where ``legend`` puts it)."""
    leg = ax.get_legend()
    if leg is None:
        return
    handles = [*leg.legend_handles, Patch(facecolor=NOISE_STYLE["color"], alpha=0.35)]
    labels = [t.get_text() for t in leg.get_texts()] + [NOISE_LABEL]
    title = leg.get_title().get_text() or None
    ax.legend(handles, labels, title=title)
    _legend(ax, legend)


def _raw_probe_cosines(data, block: str, pairs: list[str]) -> pd.DataFrame | None:
    if not callable(getattr(data, "cosines", None)):
        return None
    try:
        cos = data.cosines(source="probe", blocks=block)
    except ValueError:
        return None
    return cos[(cos["block"] == block) & cos["pair"].isin(pairs)]


def _points_averaged(df: pd.DataFrame, smooth: int | None) -> float:
    """How many logged points a trailing mean over ``smooth`` steps averages (median)."""
    if not smooth or smooth <= 1:
        return 1.0
    steps = np.unique(df["step"].to_numpy(float))
    n = np.arange(1, len(steps) + 1) - np.searchsorted(steps, steps - smooth, side="right")
    return float(max(1.0, np.median(n)))


def _same_batches(run) -> bool:
    config = getattr(run, "config", {}) or {}
    return config.get("batch_size") is None or stored_probe_size(config) == config["batch_size"]


def _unordered(pairs) -> set[str]:
    out = set()
    for p in pairs:
        a, b = _theme.split_pair(p)
        out |= {f"{a}-{b}", f"{b}-{a}"}
    return out


def _block_text(block: str) -> str:
    return "encoder" if block == "encoder" else _theme.block_label(block)
