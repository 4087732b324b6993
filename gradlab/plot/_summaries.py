"""Axes-level summaries over training: S-conflict per layer, cosine distributions, and the
final-metric comparison of methods. Same contract as `gradlab.plot._axes`: a Run, Runs or
tidy DataFrame in, ``ax=`` accepted, the Axes returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from gradlab.plot import _data, _theme
from gradlab.plot._data import get_frame
from gradlab.plot._draw import (
    BAND,
    Errorbar,
    _ax,
    _clamp_lim,
    _distinguish_methods,
    _has_seeds,
    _hue_for_pairs,
    _legend,
    _metric_limits,
    _prepare,
    _select_metrics,
    _select_pairs,
    _select_tasks,
    _task_metric_label,
    _title,
    _where,
)
from gradlab.significance import t_interval

__all__ = ["s_conflict_bars", "cosine_distribution", "method_comparison", "seed_points",
           "final_metrics"]


def s_conflict_bars(
    data,
    *,
    S: float = 0.0,
    pair=None,
    source: str | None = None,
    include_encoder: bool = False,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Recon's S-conflict score per block: the share of steps with cos < ``S``, as bars.

    One bar per pair (one method) or per method (several methods; then one ``pair``).
    """
    df = get_frame(data, "s_conflict", ["source", "block", "pair", "count", "steps", "share"], S=S)
    df, source = _data.select_source(df, source)
    df = _select_pairs(df, pair)
    if not include_encoder:
        df = df[df["block"] != "encoder"]
        if df.empty:
            raise ValueError("no per-block S-conflict scores (only 'encoder')")
    blocks = _data.order_blocks(df["block"].unique(), _data.encoder_blocks(data))
    df = df.assign(Block=[_theme.block_label(b) for b in df["block"]])
    df, hue, order, palette = _hue_for_pairs(df, bars=True)
    ax = _ax(ax)
    # horizontal bars: blocks read top to bottom in encoder order, as in layer_heatmap,
    # and their names never collide however many layers there are
    sns.barplot(
        data=df,
        y="Block",
        x="share",
        order=[_theme.block_label(b) for b in blocks],
        hue=hue,
        hue_order=order,
        palette=palette,
        errorbar=errorbar if _has_seeds(df) else None,
        seed=0,
        ax=ax,
        legend=bool(legend),
        saturation=1.0,
        err_kws={"linewidth": 1.0},
    )
    ax.set(ylabel="", xlabel=f"Share of steps with cos < {S:g}")
    # from 0 (a t interval of a share can reach below 0), and a little room to the right so
    # a tick label at the axis' end stays on the canvas of a right-hand panel
    ax.set_xlim(0, ax.get_xlim()[1] * 1.08)
    ax.tick_params(axis="y", length=0)
    ax.grid(False, axis="y")
    _legend(ax, legend)
    _title(ax, f"S-conflict per layer · {source} batches", df)
    return ax


def cosine_distribution(
    data,
    *,
    kind: str = "hist",
    pair=None,
    source: str | None = None,
    block: str = "encoder",
    bins: int | str = "auto",
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Distribution of a pair's cosines over training steps: histogram or ECDF.

    One curve per pair (one method) or per method and pair (several methods; the ECDF
    draws pairs with line styles, the histogram needs one ``pair``).
    """
    if kind not in ("hist", "ecdf"):
        raise ValueError(f"kind must be 'hist' or 'ecdf', got {kind!r}")
    df, source, ax = _prepare(data, "cosines", ["pair", "value"], source=source, block=block,
                              pair=pair, ax=ax, blocks=block)
    df = df.dropna(subset=["value"])
    if df.empty:
        raise ValueError(f"every cosine is undefined (a zero gradient) for pair {pair!r}")
    ax.axvline(0.0, color="0.25", lw=0.8, ls="--", zorder=1)
    if kind == "hist":
        df, hue, order, palette = _hue_for_pairs(df, bars=True)
        sns.histplot(
            data=df,
            x="value",
            hue=hue,
            hue_order=order,
            palette=palette,
            bins=bins,
            stat="density",
            common_norm=False,
            element="step",
            fill=False,  # outlines: filled histograms over each other read as mud
            linewidth=1.4,
            ax=ax,
            legend=bool(legend),
        )
        # methods with the same cosines (PCGrad barely moves off the sum here) draw the same
        # outline: earlier methods wider and lower, so each stays visible
        _distinguish_methods(ax, _data.order_variants(df["variant"].unique()), markers=False)
        ax.set_ylabel("Density")
    else:
        variants = _data.order_variants(df["variant"].unique())
        pairs = _data.order_pairs(df["pair"].unique())
        dashes = ["-", "--", ":", "-."]
        for v in variants:
            for k, p in enumerate(pairs):
                sub = df[(df["variant"] == v) & (df["pair"] == p)]
                if sub.empty:
                    continue
                if len(variants) == 1:
                    color, ls, label = _theme.pair_color(p), "-", _theme.pair_label(p)
                else:
                    color, ls = _theme.method_color(v), dashes[k % len(dashes)]
                    label = _theme.method_label(v)
                    if len(pairs) > 1:
                        label += f", {_theme.pair_label(p)}"
                sns.ecdfplot(sub["value"], color=color, linestyle=ls, label=label, ax=ax)
        ax.set_ylabel("Share of steps (ECDF)")
        if legend:
            ax.legend()
    ax.set_xlabel("Cosine similarity")
    _legend(ax, legend)
    where = _where(block, source)
    drawn = df["pair"].unique()
    if len(drawn) == 1:  # name the pair: the legend shows methods only
        where = f"{_theme.pair_label(drawn[0])} · {where}"
    _title(ax, where, df)
    return ax


def method_comparison(
    data,
    *,
    metric: str | dict[str, str] | None = None,
    task: str | Sequence[str] | None = None,
    split: str = "dev",
    at: str = "final",
    kind: str = "point",
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Final (or best) dev metric per task and overall, per method: mean and 95% interval.

    The interval is Student's t over seeds, the same numbers as ``comparison_table``.
    ``kind``: "point" (dodged points with error bars) or "bar". Tasks are rows (a forest
    plot), so their names never collide at column width.
    """
    if kind not in ("point", "bar"):
        raise ValueError(f"kind must be 'point' or 'bar', got {kind!r}")
    df = final_metrics(data, metric=metric, task=task, split=split, at=at)
    variants = _data.order_variants(df["variant"].unique())
    tasks = _data.order_tasks(df["task"].unique())
    df = df.assign(
        Method=[_theme.method_label(v) for v in df["variant"]],
        Task=[_task_metric_label(t, m) for t, m in zip(df["task"], df["metric"], strict=True)],
    )
    order = list(dict.fromkeys(df.set_index("task").loc[tasks, "Task"]))
    common = {
        "data": df,
        "y": "Task",
        "x": "value",
        "order": order,
        "hue": "Method",
        "hue_order": [_theme.method_label(v) for v in variants],
        "palette": {_theme.method_label(v): _theme.method_color(v) for v in variants},
        "errorbar": t_interval if _has_seeds(df) else None,
        "ax": _ax(ax),
        "legend": bool(legend),
    }
    if kind == "point":
        ax = sns.pointplot(
            **common, dodge=0.5 if len(variants) > 1 else False, linestyle="none",
            markersize=4, err_kws={"linewidth": 1.2}, capsize=0.15,
        )  # fmt: skip
    else:
        ax = sns.barplot(**common, saturation=1.0, capsize=0.15, err_kws={"linewidth": 1.0})
    ax.set(ylabel="", xlabel=f"{split.capitalize()} metric ({at})")
    limits = _metric_limits(df["metric"])
    if limits is not None:  # a t interval of two seeds may pass the metric's bounds
        _clamp_lim(ax, *limits, axis="x")
    ax.tick_params(axis="y", length=0)
    ax.grid(False, axis="y")
    _legend(ax, legend)
    n = df.groupby("variant")["run"].nunique()
    seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()}–{n.max()}"
    _title(ax, f"mean and 95% CI over {seeds} seeds" if n.max() > 1 else "one seed per method")
    return ax


def seed_points(
    data,
    *,
    task: str,
    metric: str | dict[str, str] | None = None,
    split: str = "dev",
    at: str = "final",
    ax: Axes | None = None,
) -> Axes:
    """One task's final (or best) metric per method: every seed as a dot, and the mean with
    its 95% t interval (the numbers of ``comparison_table``) beside them.

    The figure for runs evaluated only at the end, where training curves are single points:
    it shows how far apart the seeds lie, which an interval of 3 seeds hides.

    >>> ax = seed_points(gradlab.load_runs("runs/sweep"), task="sst")  # doctest: +SKIP
    """
    df = final_metrics(data, metric=metric, task=task, split=split, at=at)
    if df.empty:
        raise ValueError(f"no final {split} metric of task {task!r} in {_data.describe(data)}")
    variants = _data.order_variants(df["variant"].unique())
    ax = _ax(ax)
    for position, v in enumerate(variants):
        values = df.loc[df["variant"] == v, "value"].to_numpy(dtype=float)
        color = _theme.method_color(v)
        offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(position - 0.1 + offsets, values, s=12, color=color, alpha=0.55, lw=0,
                   zorder=3)
        mean = float(values.mean())
        low, high = t_interval(values)
        if np.isfinite(low):
            ax.errorbar(position + 0.18, mean, yerr=[[mean - low], [high - mean]], fmt="o",
                        ms=4, color=color, capsize=2.5, lw=1.2, zorder=4)
        else:
            ax.plot(position + 0.18, mean, "o", ms=4, color=color, zorder=4)
    ax.set_xticks(range(len(variants)), [_theme.method_label(v) for v in variants])
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.set(xlabel="", ylabel=_theme.metric_label(df["metric"].iloc[0]))
    limits = _metric_limits(df["metric"])
    if limits is not None:
        _clamp_lim(ax, *limits)
    ax.grid(False, axis="x")
    n = df.groupby("variant")["run"].nunique()
    _title(ax, f"{_theme.task_label(task)} · seeds and mean (95% CI)" if n.max() > 1
           else f"{_theme.task_label(task)} · one seed per method")
    return ax


def final_metrics(
    data,
    *,
    metric: str | dict[str, str] | None = None,
    task: str | Sequence[str] | None = None,
    split: str = "dev",
    at: str = "final",
) -> pd.DataFrame:
    """One row per run and task: the metric at the run's last eval (or its best).

    Columns: run, method, seed, schedule, variant, task, metric, step, value.
    """
    if at not in ("final", "best"):
        raise ValueError(f"at must be 'final' or 'best', got {at!r}")
    df = get_frame(data, "evals", ["step", "split", "task", "metric", "value"], split=split)
    df = _data.select(df, "split", split, "split")
    df = _select_tasks(df, task, default_drop_overall=False)
    df, _ = _select_metrics(df, metric)
    df = df.dropna(subset=["value"]).sort_values(["run", "task", "step"])
    if at == "final":
        rows = df.groupby(["run", "task"], sort=False).tail(1)
    else:
        rows = df.loc[df.groupby(["run", "task"], sort=False)["value"].idxmax()]
    cols = [*_data.IDENTITY, "variant", "task", "metric", "step", "value"]
    return rows[cols].reset_index(drop=True)
