"""Helpers shared by the axes-level plots: the common preamble (`_prepare`), row
selection, the line and bar drawing in theme colours, titles, legends and log axes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D

from gradlab.plot import _data, _theme
from gradlab.plot._data import get_frame
from gradlab.significance import t_interval

Errorbar = str | tuple[str, float] | Callable | None
BAND = t_interval
MAX_POINTS = 500  # per curve; more logged steps are thinned (see _thin)
PRIMARY_METRICS = {"sst": "accuracy", "para": "accuracy", "sts": "pearson", "overall": "score"}


def _ax(ax: Axes | None) -> Axes:
    return plt.gca() if ax is None else ax


def _prepare(data, accessor: str, columns: Sequence[str], *, source, block: str, pair=None,
             smooth: int | None = None, ax: Axes | None = None, **kwargs):
    """The preamble the per-step plots share: the accessor's frame, one gradient source
    (None: see `_data.select_source`), one block, the asked pairs (frames with a pair
    column), the trailing mean over ``smooth`` steps; returns (rows, source, Axes)."""
    df = get_frame(data, accessor, ["source", "step", "block", *columns], **kwargs)
    df, source = _data.select_source(df, source)
    df = _data.select_block(df, block)
    keys = ["run", "source", "block"]
    if "pair" in columns:
        df = _select_pairs(df, pair)
        keys.append("pair")
    if "task" in columns:
        keys.append("task")
    if "value" in columns:
        df = _data.smooth(df, smooth, keys)
    return df, source, _ax(ax)


def _title(ax: Axes, text: str, df: pd.DataFrame | None = None) -> None:
    """Small grey subtitle stating what is drawn (method when only one, block, source),
    wrapped at its " · " separators so it stays within a column-width Axes."""
    parts = text.split(" · ")
    if df is not None and df["variant"].nunique() == 1:
        n = df["run"].nunique()
        method = _theme.method_label(df["variant"].iloc[0])
        parts.insert(0, f"{method}{f' ({n} seeds)' if n > 1 else ''}")
    size = FontProperties(size="small").get_size_in_points()
    width = 0.85 * ax.get_position().width * ax.figure.get_figwidth() * 72  # points
    budget = max(16, int(width / (0.55 * size)))  # characters per line
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 3 + len(part) <= budget:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    ax.set_title("\n".join(lines), loc="left", fontsize="small", color="0.3")


def _one_pair(df: pd.DataFrame) -> str:
    """"SST–PARA · " when the frame holds one pair (the legend then names methods only)."""
    pairs = df["pair"].unique()
    return f"{_theme.pair_label(pairs[0])} · " if len(pairs) == 1 else ""


def _where(block: str, source: str, smooth: int | None = None) -> str:
    text = "encoder" if block == "encoder" else _theme.block_label(block)
    text += f" · {source} batches"
    if smooth and smooth > 1:
        text += f" · {smooth}-step mean"
    return text


def _log_y(ax: Axes) -> None:
    """Log y axis ticked at 1-2-5 steps (1-3 over more than a decade, decades over more than
    two) and labelled as plain numbers ("0.5", "20"), never "6e-01"; unlabelled minor ticks
    (labelled ones crowd a column-wide panel). Call it after drawing the data."""
    ax.set_yscale("log")
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    # 1-2-5 over one decade; fewer labels as the span grows, so they never touch
    subs = (1.0, 2.0, 5.0) if decades <= 1.2 else (1.0, 3.0) if decades <= 2.2 else (1.0,)
    ax.yaxis.set_major_locator(mticker.LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def _thin(df: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Every k-th logged step when there are more than ``max_points``: a curve of thousands
    of steps has more points than a column-wide figure has pixels, and the seed band would
    cost one interval per step. Smooth first (``smooth=``) to average rather than pick."""
    steps = np.unique(df["step"].to_numpy())
    if len(steps) <= max_points:
        return df
    keep = steps[:: int(np.ceil(len(steps) / max_points))]
    return df[df["step"].isin(np.r_[keep, steps[-1]])]


#: metrics that live in [0, 1]: their axes stop there, whatever a seed band says
UNIT_METRICS = {"accuracy", "f1", "macro_f1", "score", "mean"}
#: metrics that live in [-1, 1]
CORRELATIONS = {"pearson", "spearman"}


def _metric_limits(metrics) -> tuple[float, float] | None:
    """The axis range the bounded ``metrics`` can take (a little margin beyond the bound),
    or None when one of them is unbounded (an MSE, a loss)."""
    metrics = set(metrics)
    if metrics <= UNIT_METRICS:
        return -0.01, 1.01
    if metrics <= UNIT_METRICS | CORRELATIONS:
        return -1.02, 1.02
    return None


def _clamp_lim(ax: Axes, low: float, high: float, axis: str = "y") -> None:
    """The ``axis`` range cut to [low, high]: a seed band or t interval of a bounded quantity
    (two seeds: 12.7 standard errors wide) may pass its bound."""
    get, put = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    lo, hi = get()
    put(max(lo, low), min(hi, high))


def _has_seeds(df: pd.DataFrame) -> bool:
    return bool((df.groupby("variant")["run"].nunique() > 1).any())


def _legend(ax: Axes, legend: str | bool) -> None:
    """ "outside" (or True): right of the Axes, never over the data; "inside": matplotlib's
    best spot; False/None: no legend."""
    if legend not in ("outside", "inside", True, False, None):
        raise ValueError(f"legend must be 'outside', 'inside' or False, got {legend!r}")
    leg = ax.get_legend()
    if leg is None:
        return
    if not legend:
        leg.remove()
    elif legend == "inside":
        sns.move_legend(ax, "best", frameon=True, framealpha=0.85, edgecolor="none")
    else:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _select_pairs(df: pd.DataFrame, pair) -> pd.DataFrame:
    return df[df["pair"].isin(_data.resolve_pairs(df, pair))]


def _select_tasks(df: pd.DataFrame, task, *, default_drop_overall: bool) -> pd.DataFrame:
    present = _data.order_tasks(df["task"].unique())
    if task is None:
        if default_drop_overall and len(present) > 1:
            present = [t for t in present if t != "overall"]
        return df[df["task"].isin(present)]
    wanted = [task] if isinstance(task, str) else list(task)
    missing = [t for t in wanted if t not in present]
    if missing:
        raise ValueError(f"task {missing if len(missing) > 1 else missing[0]!r} not in the "
                         f"data; tasks present: {present}")  # fmt: skip
    return df[df["task"].isin(wanted)]


def _select_metrics(df: pd.DataFrame, metric) -> tuple[pd.DataFrame, str]:
    """One metric per task; returns the rows and a y-axis label."""
    tasks = _data.order_tasks(df["task"].unique())
    present = df.groupby("task")["metric"].unique().apply(list).to_dict()
    if isinstance(metric, dict):
        chosen = {t: metric.get(t, PRIMARY_METRICS.get(t)) for t in tasks}
    elif metric is not None:
        chosen = {t: metric for t in tasks}
    else:
        chosen = {t: PRIMARY_METRICS.get(t) for t in tasks}
    for t in tasks:
        if chosen[t] is None:  # an unknown task without a primary metric: its first one
            chosen[t] = present[t][0]
        if chosen[t] not in present[t]:
            raise ValueError(
                f"metric {chosen[t]!r} not logged for task {t!r}; metrics of {t!r}: {present[t]}"
            )
    keep = df["metric"] == df["task"].map(chosen)
    metrics = set(chosen.values())
    ylabel = _theme.metric_label(metrics.pop()) if len(metrics) == 1 else "Dev metric"
    return df[keep], ylabel


def _task_metric_label(task: str, metric: str) -> str:
    """ "Overall (score)": which overall number is shown; tasks by name."""
    if task == "overall":
        return f"{_theme.task_label(task)} ({_theme.metric_label(metric).lower()})"
    return _theme.task_label(task)


def _task_lines(
    ax: Axes, df: pd.DataFrame, *, errorbar: Errorbar, legend, labels: dict | None = None
) -> None:
    """Task lines: coloured by task (one method) or by method with a line style per task."""
    variants = _data.order_variants(df["variant"].unique())
    tasks = _data.order_tasks(df["task"].unique())
    labels = {t: (labels or {}).get(t, _theme.task_label(t)) for t in tasks}
    df = df.assign(
        Task=df["task"].map(labels),
        Method=[_theme.method_label(v) for v in df["variant"]],
    )
    task_labels = [labels[t] for t in tasks]
    df = _thin(df)
    if len(variants) == 1:
        hue, order = "Task", task_labels
        palette = {labels[t]: _theme.task_color(t) for t in tasks}
        style, style_order = None, None
    else:
        hue, order = "Method", [_theme.method_label(v) for v in variants]
        palette = {_theme.method_label(v): _theme.method_color(v) for v in variants}
        style, style_order = ("Task", task_labels) if len(tasks) > 1 else (None, None)
    # sparse curves (e.g. dev metrics evaluated a few times) get markers: a run evaluated
    # once would otherwise draw nothing
    sparse = df.groupby(["run", "task"])["step"].nunique().min() <= 5
    sns.lineplot(
        data=df, x="step", y="value", hue=hue, hue_order=order, palette=palette,
        style=style, style_order=style_order, errorbar=errorbar if _has_seeds(df) else None,
        seed=0, ax=ax, legend=bool(legend), marker="o" if sparse else None,
    )  # fmt: skip
    _legend(ax, legend)
    _distinguish_methods(ax, variants)


METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def method_style(k: int, n: int) -> dict:
    """Line width, marker and layer of the k-th of n methods: earlier methods wider, with
    larger markers and lower, so runs with identical curves all stay visible (a thin line
    and small marker over a wide one of another colour)."""
    share = (n - 1 - k) / max(n - 1, 1)
    lw, ms = plt.rcParams["lines.linewidth"], plt.rcParams["lines.markersize"]
    return {"lw": lw * (0.6 + 0.8 * share), "marker": METHOD_MARKERS[k % len(METHOD_MARKERS)],
            "ms": ms * (0.5 + 0.5 * share), "zorder": 2.0 + 0.1 * k}


def _distinguish_methods(ax: Axes, variants: Sequence[str], markers: bool = True) -> None:
    """Give each method's lines (found by their theme colour) and legend entries its
    `method_style`; dense curves carry a marker every ~1/8 of their points, staggered by
    method, so coinciding curves show every method's marker. ``markers=False``: widths and
    layers only (histogram outlines)."""
    if len(variants) < 2:
        return
    styles = {mcolors.to_rgb(_theme.method_color(v)): method_style(k, len(variants))
              for k, v in enumerate(variants)}
    offsets = {c: k for k, c in enumerate(styles)}
    legend = ax.get_legend()
    handles = list(legend.legend_handles) if legend is not None else []
    for line in [*ax.get_lines(), *handles]:
        if not isinstance(line, Line2D):
            continue
        color = mcolors.to_rgb(line.get_color())
        if color not in styles:
            continue
        style = styles[color]
        if not markers:
            line.set(lw=style["lw"], zorder=style["zorder"])
            continue
        line.set(lw=style["lw"], marker=style["marker"], markersize=style["ms"],
                 zorder=style["zorder"], markeredgecolor="white", markeredgewidth=0.4)
        n = len(line.get_xdata())
        if n > 12 and line not in handles:
            every = max(2, n // 8)
            line.set_markevery((offsets[color] * every // len(styles), every))


def _hue_for_pairs(df: pd.DataFrame, *, bars: bool):
    """(df with a hue column, hue column, order, palette): pairs for one method, methods
    for several."""
    variants = _data.order_variants(df["variant"].unique())
    pairs = _data.order_pairs(df["pair"].unique())
    if len(variants) == 1:
        labels = [_theme.pair_label(p) for p in pairs]
        df = df.assign(Pair=[_theme.pair_label(p) for p in df["pair"]])
        return (
            df,
            "Pair",
            labels,
            {p_: _theme.pair_color(p) for p, p_ in zip(pairs, labels, strict=True)},
        )
    if bars and len(pairs) > 1:
        raise ValueError(
            f"with several methods {variants} this plot shows one pair; pass pair= one of {pairs}"
        )
    df = df.assign(Method=[_theme.method_label(v) for v in df["variant"]])
    labels = [_theme.method_label(v) for v in variants]
    return df, "Method", labels, {_theme.method_label(v): _theme.method_color(v) for v in variants}


def _pair_lines(ax: Axes, df: pd.DataFrame, *, errorbar, legend, ordered: bool = False) -> None:
    """Pair lines: coloured by pair (one method) or by method with a style per pair."""
    variants = _data.order_variants(df["variant"].unique())
    pairs = _data.order_pairs(df["pair"].unique())
    df = _thin(df).assign(Pair=lambda d: [_theme.pair_label(p) for p in d["pair"]])
    pair_labels = [_theme.pair_label(p) for p in pairs]
    dashes = None
    if ordered:  # a→b solid, b→a dashed, in the colour of the unordered pair
        dashes = {_theme.pair_label(p): "" if _is_forward(p) else (4, 2) for p in pairs}
    if len(variants) == 1:
        hue, order = "Pair", pair_labels
        palette = {_theme.pair_label(p): _theme.pair_color(p) for p in pairs}
        style = "Pair" if ordered else None
    else:
        df["Method"] = [_theme.method_label(v) for v in df["variant"]]
        hue, order = "Method", [_theme.method_label(v) for v in variants]
        palette = {_theme.method_label(v): _theme.method_color(v) for v in variants}
        style = "Pair" if len(pairs) > 1 else None
        dashes = None
    # a live run with its first probes only: markers, or one point would draw nothing
    sparse = df.groupby(["run", "pair"])["step"].nunique().min() <= 3
    sns.lineplot(
        data=df, x="step", y="value", hue=hue, hue_order=order, palette=palette,
        style=style, style_order=pair_labels if style else None,
        dashes=dashes if dashes is not None else True,
        errorbar=errorbar if _has_seeds(df) else None, seed=0, ax=ax, legend=bool(legend),
        marker="o" if sparse else None,
    )  # fmt: skip
    if ordered:  # dashed b→a lines over solid a→b ones: equal rates would hide them
        for line in ax.get_lines():
            if line.get_linestyle() not in ("-", "None"):
                line.set_zorder(line.get_zorder() + 0.5)
    _legend(ax, legend)
    _distinguish_methods(ax, variants)


def _is_forward(pair: str) -> bool:
    a, b = _theme.split_pair(pair)
    order = _data.order_tasks([a, b])
    return order[0] == a


def _one_variant(df: pd.DataFrame, method: str | None, what: str) -> pd.DataFrame:
    variants = _data.order_variants(df["variant"].unique())
    if method is not None:
        return _data.select(df, "variant", method, "method")
    if len(variants) > 1:
        raise ValueError(f"{what} shows one method; the data holds {variants}: pass method=")
    return df


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each step (midpoints; the ends extend by half a spacing)."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[2 * steps[0] - mid[0]], mid, [2 * steps[-1] - mid[-1]]])
