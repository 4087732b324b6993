"""Figure-level entry points: a run's conflict dashboard, a comparison of methods, tables.

`plot_conflicts` and `compare` compose the axes-level functions into one figure each, in
the gradlab theme, sized for a paper page (export with `gradlab.plot.export`). Because every
task, pair and method keeps its colour in every panel, one legend per kind is enough.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D

from gradlab.plot import _axes, _calibrated, _data, _draw, _layout, _summaries, _theme
from gradlab.plot._export import resolve_width
from gradlab.plot._tables import _dev_subset, as_runs, comparison_table

__all__ = ["plot_conflicts", "compare"]

PAGE = (6.75, 7.2)  # inches: ICML page width


def plot_conflicts(
    run_or_runs,
    source: str | None = None,
    pair=None,
    *,
    block: str = "encoder",
    window: int = 50,
    smooth: int | str | None = "auto",
    heatmap_pair=None,
    heatmap_method: str | None = None,
    expected_window: int = 5,
    width: str | float | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One-call picture of a run's (or several runs') gradient conflict.

    Panels: cosine per pair over training; conflict rate; gradient magnitude similarity;
    PCGrad projection rate per ordered pair (when the runs projected, else S-conflict per
    layer); layer x step heatmap of one pair's cosine; task gradient norms. ``source``:
    "train", "probe" or None (train if every run logged it, else probe). ``pair``: pairs
    to draw (None: all). ``smooth``: trailing mean over that many steps for the per-step
    curves; "auto" takes 1/40 of the logged span. ``heatmap_pair`` defaults to the first
    drawn pair; ``heatmap_method`` picks the method shown when the runs hold several.
    One run with replicate probes (``probe_replicates`` >= 2) shows the expected cosine of
    the task gradients (`expected_cosine_over_training`, pooled over ``expected_window``
    probe steps) in place of the magnitude similarity; the cosine and conflict-rate panels
    carry their noise-only bands.
    ``width``: the width it is built for (a preset of `export` or inches; default an ICML
    page): below 5 inches the panels stack in one column. ``figsize`` overrides the size.

    >>> fig = plot_conflicts(gradlab.load_run("runs/pcgrad-s0"))  # doctest: +SKIP
    """
    if isinstance(run_or_runs, pd.DataFrame):
        raise TypeError("plot_conflicts needs a Run or Runs (it reads several accessors), "
                        "got a DataFrame; use the axes-level functions for frames")  # fmt: skip
    cos = _data.get_frame(
        run_or_runs, "cosines", ["source", "step", "block", "pair", "value"], blocks=block
    )
    cos, source = _data.select_source(cos, source)
    pairs = _data.resolve_pairs(cos, pair)
    smooth = _auto_smooth(cos, smooth)
    variants = _data.order_variants(cos["variant"].unique())
    heatmap_pair = heatmap_pair if heatmap_pair is not None else pairs[0]
    if heatmap_method is None:
        heatmap_method = variants[0]
    inches = resolve_width(width) if width is not None else PAGE[0]
    cols = 2 if inches >= 5 else 1
    projected = _has_projections(run_or_runs)
    panel = 1.2 if cols == 1 else 1.7  # inches per row of panels
    heights = [panel] * (6 // cols)
    if cols == 1:  # stacked: the per-layer panels get a row of text per block
        per_block = panel_for_blocks(_block_count(run_or_runs))
        heights[4] = max(panel, per_block)  # the layer heatmap
        if not projected:
            heights[3] = max(panel, per_block)  # S-conflict bars per layer
    if figsize is None:
        figsize = PAGE if cols == 2 and width is None else (inches, sum(heights) + 1.4)
    with _theme.theme_context(_theme.font_scale_for(inches)):
        fig, axes = plt.subplots(6 // cols, cols, figsize=figsize, layout="constrained",
                                 gridspec_kw={"height_ratios": heights})
        a_cos, a_conf, a_gms, a_proj, a_heat, a_norm = axes.flat
        common = {"source": source, "block": block}
        _axes.cosine_over_training(run_or_runs, pair=pairs, smooth=smooth, legend=False, ax=a_cos,
                                   **common)
        _axes.conflict_rate(run_or_runs, pair=pairs, window=window, ax=a_conf, **common)
        calibrated = _one_run_with_replicates(run_or_runs)
        if calibrated is not None:  # noise-corrected cosines replace magnitude similarity
            _calibrated.expected_cosine_over_training(
                calibrated, pair=pairs, window=expected_window, block=block, ax=a_gms,
                legend="outside",
            )  # fmt: skip
            a_gms.set_ylabel("Cosine")
        else:
            _axes.magnitude_similarity(
                run_or_runs, pair=pairs, smooth=smooth, legend=False, ax=a_gms, **common
            )
        if projected:
            _axes.projection_rate(run_or_runs, pair=pairs, window=window, ax=a_proj)
        else:
            _summaries.s_conflict_bars(
                run_or_runs, source=source, pair=heatmap_pair if len(variants) > 1 else pairs,
                ax=a_proj,
            )  # fmt: skip
        _axes.layer_heatmap(
            run_or_runs, pair=heatmap_pair, source=source, method=heatmap_method, ax=a_heat,
        )  # fmt: skip
        _axes.gradient_norms(run_or_runs, smooth=smooth, ax=a_norm, **common)
        wrap = "\n" if figsize[0] / cols < 3.6 else " "  # narrow panels: two-line titles
        titles = {
            a_cos: "Cosine per task pair",
            a_conf: f"Conflict rate{wrap}({window}-step window)",
            a_gms: f"Expected cosine{wrap}(noise-corrected, {expected_window} probes)"
            if calibrated is not None else "Gradient magnitude similarity",
            a_proj: f"PCGrad projection rate{wrap}({window}-step window)"
            if projected else f"S-conflict per layer{wrap}(S = 0)",
            a_heat: f"{_theme.pair_label(heatmap_pair)} cosine per layer"
            + (f" ({_theme.method_label(heatmap_method)})" if len(variants) > 1 else ""),
            a_norm: "Task gradient norms",
        }  # fmt: skip
        for ax, title in titles.items():
            ax.set_title(title, loc="left", fontsize="medium")
            if ax is not a_proj or projected:
                ax.set_xlabel("Step" if ax in (a_heat, a_norm) else "")
            else:  # S-conflict bars: S is in the title; a short label fits a narrow panel
                ax.set_xlabel("Share of steps")
        fig.suptitle(_suptitle(cos, source, block, smooth), x=0.01, ha="left",
                     fontsize="medium", linespacing=1.4)  # fmt: skip
        # one legend under the panels: legends beside them would squeeze the data
        a_conf.set_ylabel("Conflict rate")  # "cos < 0" and the window are in the title
        _layout.legend_below(fig, [a_conf, a_gms, a_proj, a_norm], title="", fontsize="small")
    return fig


def _block_count(run_or_runs) -> int:
    """The most per-layer blocks any of the runs logs (0 when unknown)."""
    runs = getattr(run_or_runs, "runs", None) or [run_or_runs]
    return max((len(getattr(r, "blocks", None) or []) for r in runs), default=0)


def panel_for_blocks(blocks: int) -> float:
    """Height in inches of a stacked panel with one labelled row per block (a layer heatmap,
    S-conflict bars): a tick label needs about 0.14 in at column-width fonts, plus the
    title and the x axis."""
    return 0.14 * blocks + 0.6


def compare(
    runs,
    metric: str | dict[str, str] | None = None,
    *,
    kind: str = "dev",
    split: str = "dev",
    at: str = "final",
    smooth: int | None = None,
    width: str | float | None = None,
    figsize: tuple[float, float] | None = None,
) -> tuple[Figure, pd.DataFrame]:
    """Methods side by side: each task's training curve per method, and the final dev
    metric per task and overall (mean and 95% t interval over seeds). Returns the figure
    and `comparison_table` of the same numbers. Runs evaluated only at the end have no
    curves: their task panels show each seed's value beside the mean (`seed_points`).

    ``kind``: curves of the dev metric ("dev") or the training loss ("loss"); ``metric``:
    a metric name, a dict task -> metric or None for each task's primary metric.
    ``width``: the width it is built for (preset or inches; default an ICML page): below
    4 inches the panels stack in one column. ``figsize`` overrides the size.

    >>> fig, table = compare(gradlab.load_runs("runs/"))  # doctest: +SKIP
    """
    runs = as_runs(runs, "compare")
    table = comparison_table(runs, metric=metric, split=split, at=at)
    subset = _dev_subset(runs) if split == "dev" else ""
    tasks = [t for t in _data.order_tasks(table["task"].unique()) if t != "overall"]
    variants = _data.order_variants(table["method"].unique())
    n = len(tasks) + 1
    inches = resolve_width(width) if width is not None else 6.75
    cols = 1 if inches < 4 else (2 if n == 4 else min(n, 3))
    rows = int(np.ceil(n / cols))
    if figsize is None:
        figsize = (inches, 2.0 * rows + 0.9)
    with _theme.theme_context(_theme.font_scale_for(inches)):
        fig = plt.figure(figsize=figsize, layout=ConstrainedLayoutEngine(w_pad=0.06))
        axes = fig.subplots(rows, cols, squeeze=False).flat
        end_only = kind == "dev" and _evaluated_once(runs, split)
        for ax, task in zip(axes, tasks, strict=False):
            if end_only:  # curves would be one point per method: show the seeds instead
                _summaries.seed_points(runs, task=task, metric=metric, split=split, at=at,
                                       ax=ax)
                ax.set_title(_theme.task_label(task), loc="left", fontsize="medium")
                ax.tick_params(axis="x", labelrotation=30 if len(variants) > 3 else 0)
                continue
            _axes.training_curves(
                runs, kind=kind, task=task, metric=metric, split=split, smooth=smooth,
                legend=False, ax=ax,
            )  # fmt: skip
            what = _theme.metric_label(
                _draw.PRIMARY_METRICS.get(task, "") if metric is None else _metric_of(metric, task)
            ) if kind == "dev" else "Training loss"  # fmt: skip
            ax.set_title(f"{_theme.task_label(task)}: {what}", loc="left", fontsize="medium")
            ax.set_ylabel(what)
        ax_cmp = axes[len(tasks)]
        _summaries.method_comparison(
            runs, metric=metric, split=split, at=at, legend=False, ax=ax_cmp
        )
        ax_cmp.set_title(f"Final {split} metric", loc="left", fontsize="medium")
        ax_cmp.tick_params(axis="x", labelrotation=0)
        for ax in list(axes)[n:]:
            ax.set_visible(False)
        handles = [
            Line2D([], [], color=_theme.method_color(v), label=_theme.method_label(v),
                   **{k: x for k, x in _draw.method_style(i, len(variants)).items()
                      if k != "zorder"})
            for i, v in enumerate(variants)
        ] if len(variants) > 1 else [
            Line2D([], [], color=_theme.method_color(v), lw=1.6, marker="o", ms=3,
                   label=_theme.method_label(v)) for v in variants
        ]  # fmt: skip
        seeds = table.groupby("method")["n"].max()
        note = (
            f"mean and 95% CI over {seeds.min()}–{seeds.max()} seeds"
            if seeds.min() != seeds.max()
            else f"mean and 95% CI over {seeds.min()} seeds"
        ) if seeds.max() > 1 else "one seed per method: a dot is one run, no interval"  # fmt: skip
        if subset:  # said once, for every panel
            note += f"\n{subset}"
        _layout.figure_legend(fig, handles, [h.get_label() for h in handles], title=note)
    return fig, table


def _evaluated_once(runs, split: str) -> bool:
    """True when every run has its ``split`` metrics at one step only."""
    df = _data.get_frame(runs, "evals", ["step", "split", "task", "metric", "value"],
                         split=split)
    df = df[df["split"] == split]
    return bool(len(df)) and bool((df.groupby("run")["step"].nunique() <= 1).all())


def _metric_of(metric, task: str) -> str:
    if isinstance(metric, dict):
        return metric.get(task, _draw.PRIMARY_METRICS.get(task, ""))
    return metric


def _auto_smooth(cos: pd.DataFrame, smooth) -> int | None:
    if smooth != "auto":
        return smooth
    steps = np.unique(cos["step"].to_numpy())
    if len(steps) < 2:
        return None
    window = int((steps[-1] - steps[0]) // 40)
    # a window shorter than two logging intervals would average a single point
    return window if window >= 2 * np.median(np.diff(steps)) else None


def _one_run_with_replicates(data):
    """The Run when ``data`` is one run with replicate probes (K >= 2), else None."""
    runs = getattr(data, "runs", None)
    run = runs[0] if runs is not None and len(runs) == 1 else data if runs is None else None
    return run if run is not None and _calibrated.has_replicates(run) else None


def _has_projections(data) -> bool:
    """Whether any run logged a projection event (sum runs have rates, all zero)."""
    if not callable(getattr(data, "projections", None)):
        return False
    return not data.projections().empty


def _suptitle(cos: pd.DataFrame, source: str, block: str, smooth: int | None) -> str:
    runs = cos["run"].unique()
    variants = _data.order_variants(cos["variant"].unique())
    what = ", ".join(_theme.method_label(v) for v in variants)
    if len(runs) == 1:
        head = what if runs[0] in variants else f"{runs[0]} ({what})"
    else:
        head = f"{len(runs)} runs ({what})"
    where = "whole encoder" if block == "encoder" else _theme.block_label(block)
    text = f"{head}\ngradients on {_theme.source_label(source)}, {where}"
    if smooth:
        text += f"; curves: {smooth}-step means"
    if len(runs) > len(variants):
        text += "; bands: 95% CI over seeds"
    return text
