"""Axes-level plots of a run over training steps, seaborn style: data in, ``ax=``, Axes out.

Every function takes a Run, Runs (several runs, e.g. methods x seeds) or the tidy DataFrame
of the matching Run accessor, draws on ``ax`` (default: the current Axes) and returns it.
Runs with the same method (and schedule) are seeds of one another: lines show their mean
with a 95% confidence band (``errorbar``: any seaborn errorbar; the default is the Student t
interval `gradlab.plot.t_interval`, honest for 3 to 5 seeds and cheap per step; pass
``("ci", 95)`` for seaborn's bootstrap or None for no band). ``smooth=N`` draws the trailing
mean over N steps (`gradlab.stats.rolling_rate`); curves of more than 500 logged steps are
drawn at every k-th step. Colours and names come from the theme: one colour per task, per
task pair and per method in every figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from gradlab.plot import _calibrated, _data, _theme
from gradlab.plot._data import get_frame
from gradlab.plot._draw import (
    BAND,
    Errorbar,
    _ax,
    _clamp_lim,
    _edges,
    _has_seeds,
    _legend,
    _log_y,
    _metric_limits,
    _one_pair,
    _one_variant,
    _pair_lines,
    _prepare,
    _select_metrics,
    _select_pairs,
    _select_tasks,
    _task_lines,
    _thin,
    _title,
    _where,
)

__all__ = [
    "training_curves",
    "cosine_over_training",
    "conflict_rate",
    "projection_rate",
    "task_weights",
    "layer_heatmap",
    "gradient_norms",
    "magnitude_similarity",
    "condition_number",
]



def training_curves(
    data,
    *,
    kind: str = "dev",
    task: str | Sequence[str] | None = None,
    metric: str | dict[str, str] | None = None,
    split: str = "dev",
    smooth: int | None = None,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    x: str = "auto",
    ax: Axes | None = None,
) -> Axes:
    """Per-task training curves, one line per method: dev metric (``kind="dev"``) or loss.

    ``metric``: one metric name, a dict task -> metric, or None for each task's primary
    metric (SST and PARA accuracy, STS Pearson r, overall score). ``smooth``: trailing mean
    over that many steps (useful for the noisy per-step loss). ``x``: "step" (optimizer
    steps), "task_batches" (batches each task has seen: the step for joint runs, step / T
    for round-robin and sequential runs of T tasks, so that runs fed the same examples line
    up) or "auto" (task_batches when joint and one-task schedules are plotted together).

    >>> ax = training_curves(runs, kind="loss", task="sst", smooth=50)  # doctest: +SKIP
    """
    if kind == "dev":
        df = get_frame(data, "evals", ["step", "split", "task", "metric", "value"], split=split)
        df = _data.select(df, "split", split, "split")
        df = _select_tasks(df, task, default_drop_overall=True)
        df, ylabel = _select_metrics(df, metric)
        labels = None
        if df["metric"].nunique() > 1:  # name each task's metric in the legend
            chosen = df.groupby("task")["metric"].first()
            labels = {
                t: f"{_theme.task_label(t)} ({_theme.metric_label(m)})" for t, m in chosen.items()
            }
    elif kind == "loss":
        df = get_frame(data, "losses", ["step", "task", "value"])
        df = _select_tasks(df, task, default_drop_overall=False)
        ylabel, labels = "Training loss", None
    else:
        raise ValueError(f"kind must be 'dev' or 'loss', got {kind!r}")
    df = _data.smooth(df, smooth, ["run", "task"])
    df, xlabel = _x_axis(data, df, x)
    ax = _ax(ax)
    _task_lines(ax, df, errorbar=errorbar, legend=legend, labels=labels)
    limits = _metric_limits(df["metric"]) if kind == "dev" else None
    if limits is not None:  # a t band may pass the metric's bounds
        _clamp_lim(ax, *limits)
    what = f"{split} set" if kind == "dev" else "training loss"
    ax.set(xlabel=xlabel, ylabel=ylabel)
    _title(ax, what + (f" · {smooth}-step mean" if smooth and smooth > 1 else ""), df)
    return ax


def _x_axis(data, df: pd.DataFrame, x: str) -> tuple[pd.DataFrame, str]:
    """``df`` with its step column in the unit ``x`` asks for, and the axis label."""
    if x not in ("auto", "step", "task_batches"):
        raise ValueError(f"x must be 'auto', 'step' or 'task_batches', got {x!r}")
    one_task = ~df["schedule"].isin(["joint", "", None])
    if x == "auto":
        x = "task_batches" if one_task.any() and (~one_task).any() else "step"
    if x == "step" or not one_task.any():
        return df, "Step" if x == "step" else "Batches per task"
    tasks = _tasks_per_run(data, df)
    df = df.copy()
    df["step"] = df["step"].astype(float)
    rows = one_task.to_numpy()
    df.loc[rows, "step"] = df.loc[rows, "step"] / df.loc[rows, "run"].map(tasks).to_numpy()
    return df, "Batches per task"


def _steps_per_task_batch(data, df: pd.DataFrame) -> dict[str, int]:
    """run -> optimizer steps per batch of each task: T for a one-task schedule, else 1."""
    tasks = _tasks_per_run(data, df)
    one_task = df.loc[~df["schedule"].isin(["joint", "", None]), "run"].unique()
    return {name: tasks[name] if name in one_task else 1 for name in tasks}


def _tasks_per_run(data, df: pd.DataFrame) -> dict[str, int]:
    """run -> number of tasks it trained: from the runs' configs, else the frame's tasks."""
    out: dict[str, int] = {}
    for run in getattr(data, "runs", None) or ([data] if hasattr(data, "config") else []):
        tasks = getattr(run, "config", {}).get("tasks")
        if tasks:
            out[run.name] = len(tasks)
    for name, part in df.groupby("run"):
        if name in out:
            continue
        if "task" in part.columns:
            tasks = set(part.loc[part["task"] != "overall", "task"])
        else:  # a pair frame: "sst-para" names two tasks
            tasks = {t for pair in part["pair"].unique() for t in str(pair).split("-")}
        out[name] = max(1, len(tasks))
    return out


def cosine_over_training(
    data,
    *,
    pair=None,
    source: str | None = None,
    block: str = "encoder",
    smooth: int | None = None,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    x: str = "auto",
    noise_band: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Cosine similarity of each task pair's gradients over training, zero line marked.

    ``source``: "train" (every training step), "probe" (the probe batches, the same for every
    run of a seed: the fair comparison with round-robin) or None (train if every run logged
    it, else probe).
    ``x``: "step", "task_batches" or "auto", as in `training_curves`. ``noise_band``: a
    grey band where a raw cosine (or its ``smooth``-step mean) lies, 95%, if the expected
    cosine were 0 (`Run.raw_cosine_spread` of the replicate probes; drawn for a Run or
    Runs with replicate probes, on either x axis, and for train cosines when train and
    probe batches are equally large).

    >>> ax = cosine_over_training(run, pair="sst-para", smooth=20)  # doctest: +SKIP
    """
    df, source, ax = _prepare(data, "cosines", ["pair", "value"], source=source, block=block,
                              pair=pair, smooth=smooth, ax=ax, blocks=block)
    df, xlabel = _x_axis(data, df, x)
    ax.axhline(0.0, color="0.25", lw=0.8, ls="--", zorder=1)
    banded = noise_band and _calibrated.cosine_band(
        ax, data, df, block=block, source=source, smooth=smooth,
        steps_per_x=None if xlabel == "Step" else _steps_per_task_batch(data, df))
    _pair_lines(ax, df, errorbar=errorbar, legend=legend)
    _clamp_lim(ax, -1.02, 1.02)  # a seed band of a cosine may pass +-1
    if banded:
        _calibrated.add_noise_entry(ax, legend)
    ax.set(xlabel=xlabel, ylabel="Cosine similarity")
    _title(ax, _one_pair(df) + _where(block, source, smooth), df)
    return ax


def conflict_rate(
    data,
    *,
    pair=None,
    source: str | None = None,
    block: str = "encoder",
    window: int = 50,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    x: str = "auto",
    noise_band: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Share of the last ``window`` logged steps where a pair's cosine was negative.

    With a DataFrame the rate column is drawn as it is (its window was chosen when the
    frame was made by ``Run.conflicts(window=...)``). ``x`` as in `training_curves`.
    ``noise_band``: a grey band where the rate lies, 95%, if the expected cosine were 0
    (1/2 +- z sqrt(1/4n) over the n steps in the window,
    `gradlab.calibration.noise_only_conflict_band`; per run, on either x axis).
    """
    df, source, ax = _prepare(data, "conflicts", ["pair", "conflict_rate"], source=source,
                              block=block, pair=pair, ax=ax, window=window, blocks=block)
    by_step = df.rename(columns={"conflict_rate": "value"})
    df, xlabel = _x_axis(data, by_step, x)
    banded = noise_band and len(df) > 0
    if banded:  # the window counts each run's steps: the band is made on the step axis
        _calibrated.conflict_band(ax, by_step, window, steps_per_x=None if xlabel == "Step"
                                  else _steps_per_task_batch(data, by_step))
    _pair_lines(ax, df, errorbar=errorbar, legend=legend)
    if banded:
        _calibrated.add_noise_entry(ax, legend)
    ax.set(xlabel=xlabel, ylabel="Conflict rate (cos < 0)", ylim=(-0.02, 1.02))
    _title(ax, _one_pair(df) + _where(block, source) + f" · {window}-step window", df)
    return ax


def projection_rate(
    data,
    *,
    pair=None,
    window: int = 50,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """PCGrad projection rate per ordered pair i→j (task i's gradient projected off j's).

    ``pair``: ordered "sst→para" (or "sst->para"), or unordered "sst-para" for both
    directions. Both directions of a pair share its colour; the reverse one is dashed.
    """
    df = get_frame(
        data,
        "projection_rate",
        ["step", "pair", "task_i", "task_j", "rate"],
        window=window,
    )
    df = _select_pairs(df, pair).rename(columns={"rate": "value"})
    ax = _ax(ax)
    _pair_lines(ax, df, errorbar=errorbar, legend=legend, ordered=True)
    ax.set(xlabel="Step", ylabel="Projection rate", ylim=(-0.02, 1.02))
    _title(ax, f"{window}-step window", df)
    return ax


def task_weights(
    data,
    *,
    source: str = "train",
    block: str = "",
    smooth: int | None = None,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Effective task weights over training (block "" = whole-update weights)."""
    df = get_frame(data, "weights", ["source", "step", "block", "task", "value"], source=source)
    df = _data.select(df, "source", source, "source")
    df = _data.select(df, "block", block, "block")
    df = _data.smooth(df, smooth, ["run", "task"])
    ax = _ax(ax)
    _task_lines(ax, df, errorbar=errorbar, legend=legend)
    ax.set(xlabel="Step", ylabel="Task weight")
    _title(ax, "task weights" + (f", block {block}" if block else ""), df)
    return ax


def layer_heatmap(
    data,
    *,
    pair=None,
    source: str | None = None,
    method: str | None = None,
    max_columns: int = 60,
    include_encoder: bool = False,
    cbar: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Layer x step map of one pair's gradient cosine; diverging colours centred at 0.

    Rows are the encoder's blocks in order (embeddings on top). With more than
    ``max_columns`` logged steps, steps are grouped into that many bins and each cell is
    the bin's mean. Several seeds of one method are averaged; several methods need
    ``method=`` (the name in the legends' data: "pcgrad", "round_robin", ...), since one
    heatmap shows one method. ``pair`` defaults to the first pair.
    """
    df = get_frame(data, "cosines", ["source", "step", "block", "pair", "value"])
    df, source = _data.select_source(df, source)
    df = _one_variant(df, method, "layer_heatmap")
    pairs = _data.resolve_pairs(df, pair)
    if len(pairs) > 1 and pair is not None:
        raise ValueError(f"layer_heatmap draws one pair, got {pair!r} matching {pairs}")
    pair = pairs[0]
    df = df[df["pair"] == pair]
    if not include_encoder:
        df = df[df["block"] != "encoder"]
        if df.empty:
            raise ValueError("no per-block cosines (only 'encoder'); were block Gramians logged?")
    blocks = _data.order_blocks(df["block"].unique(), _data.encoder_blocks(data))
    n_seeds = df["run"].nunique()
    cell = df.groupby(["block", "step"])["value"].mean().unstack("step").reindex(blocks)
    steps = cell.columns.to_numpy(dtype=float)
    values = cell.to_numpy(dtype=float)
    if len(steps) > max_columns:
        groups = np.array_split(np.arange(len(steps)), max_columns)
        with warnings.catch_warnings():  # bins where a block is all NaN stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.stack([np.nanmean(values[:, g], axis=1) for g in groups], axis=1)
        edges = np.array([steps[g[0]] for g in groups] + [steps[-1]], dtype=float)
        edges[-1] += (steps[-1] - steps[0]) / max(len(steps) - 1, 1)
    else:
        edges = _edges(steps)
    ax = _ax(ax)
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    mesh = ax.pcolormesh(
        edges,
        np.arange(len(blocks) + 1),
        np.ma.masked_invalid(values),
        cmap="vlag",
        vmin=-limit,
        vmax=limit,
        shading="flat",
        rasterized=True,
    )
    ax.set_yticks(np.arange(len(blocks)) + 0.5, [_theme.block_label(b) for b in blocks])
    ax.set_ylim(len(blocks), 0)
    ax.set_xlabel("Step")
    ax.grid(False)
    ax.tick_params(axis="y", length=0)
    if cbar:
        bar = ax.figure.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(f"Cosine {_theme.pair_label(pair)}")
        bar.outline.set_visible(False)
    label = _theme.method_label(df["variant"].iloc[0])
    seeds = f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""
    _title(ax, f"{label}{seeds} · {_theme.pair_label(pair)} · {source} batches")
    return ax


def gradient_norms(
    data,
    *,
    source: str | None = None,
    block: str = "encoder",
    smooth: int | None = None,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Each task's gradient norm ‖g_i‖ over training, on a log scale."""
    df, source, ax = _prepare(data, "norms", ["task", "value"], source=source, block=block,
                              smooth=smooth, ax=ax, blocks=block)
    _task_lines(ax, df, errorbar=errorbar, legend=legend)
    _log_y(ax)
    ax.set(xlabel="Step", ylabel="Gradient norm ‖g‖")
    _title(ax, _where(block, source, smooth), df)
    return ax


def magnitude_similarity(
    data,
    *,
    pair=None,
    source: str | None = None,
    block: str = "encoder",
    smooth: int | None = None,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Gradient magnitude similarity per pair (PCGrad, Def. 2): 1 for equal norms."""
    df, source, ax = _prepare(data, "magnitude_similarity", ["pair", "value"], source=source,
                              block=block, pair=pair, smooth=smooth, ax=ax, blocks=block)
    _pair_lines(ax, df, errorbar=errorbar, legend=legend)
    ax.set(xlabel="Step", ylabel="Magnitude similarity", ylim=(0, 1.02))
    _title(ax, _where(block, source, smooth), df)
    return ax


def condition_number(
    data,
    *,
    source: str | None = None,
    block: str = "encoder",
    smooth: int | None = None,
    errorbar: Errorbar = BAND,
    legend: str | bool = "outside",
    ax: Axes | None = None,
) -> Axes:
    """Condition number κ of the task gradients (σ_max / σ_min of J), log scale."""
    df, source, ax = _prepare(data, "condition_number", ["value"], source=source, block=block,
                              smooth=smooth, ax=ax, blocks=block)
    variants = _data.order_variants(df["variant"].unique())
    df = _thin(df).assign(Method=lambda d: [_theme.method_label(v) for v in d["variant"]])
    sns.lineplot(
        data=df,
        x="step",
        y="value",
        hue="Method",
        hue_order=[_theme.method_label(v) for v in variants],
        palette={_theme.method_label(v): _theme.method_color(v) for v in variants},
        errorbar=errorbar if _has_seeds(df) else None,
        seed=0,
        ax=ax,
        legend=bool(legend) and len(variants) > 1,
    )
    _log_y(ax)
    ax.set(xlabel="Step", ylabel="Condition number κ")
    _legend(ax, legend)
    _title(ax, _where(block, source, smooth), df)
    return ax
