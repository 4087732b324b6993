"""Figure-level entry points: a run's conflict dashboard, a comparison of methods, tables.

`plot_conflicts` and `compare` compose the axes-level functions into one figure each, in
the gradlab theme, sized for a paper page (export with `gradlab.plot.export`). Because every
task, pair and method keeps its colour in every panel, one legend per kind is enough.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D

from gradlab import significance
from gradlab.plot import _axes, _data, _draw, _layout, _summaries, _theme
from gradlab.plot._export import resolve_width

__all__ = ["plot_conflicts", "compare", "comparison_table", "table_to_latex", "table_to_csv"]

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
    if figsize is None:
        panel = 1.3 if cols == 1 else 1.7  # inches per row of panels
        figsize = PAGE if cols == 2 and width is None else (inches, panel * 6 / cols + 1.4)
    with _theme.theme_context(_theme.font_scale_for(inches)):
        fig, axes = plt.subplots(6 // cols, cols, figsize=figsize, layout="constrained")
        a_cos, a_conf, a_gms, a_proj, a_heat, a_norm = axes.flat
        common = {"source": source, "block": block}
        _axes.cosine_over_training(cos, pair=pairs, smooth=smooth, legend=False, ax=a_cos, **common)
        _axes.conflict_rate(run_or_runs, pair=pairs, window=window, ax=a_conf, **common)
        _axes.magnitude_similarity(
            run_or_runs, pair=pairs, smooth=smooth, legend=False, ax=a_gms, **common
        )
        projected = _has_projections(run_or_runs)
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
            a_gms: "Gradient magnitude similarity",
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
        _layout.legend_below(fig, [a_conf, a_proj, a_norm], title="", fontsize="small")
    return fig


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
            Line2D([], [], color=_theme.method_color(v), lw=1.6, marker="o", ms=3,
                   label=_theme.method_label(v))
            for v in variants
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


def as_runs(runs, what: str):
    """A Run or Runs as given; a list of Run objects or run folders, or one folder, loaded
    with `gradlab.load_runs`."""
    if callable(getattr(runs, "evals", None)):
        return runs
    from gradlab.run import load_runs

    if isinstance(runs, str | Path) or (
        isinstance(runs, list | tuple) and runs
        and all(isinstance(r, str | Path) or callable(getattr(r, "evals", None)) for r in runs)
    ):  # fmt: skip
        return load_runs(runs if isinstance(runs, str | Path) else list(runs))
    raise TypeError(
        f"{what} takes a Run, Runs, a list of runs or run folders, or a folder of runs "
        f"(gradlab.load_runs), got {type(runs).__name__}"
    )


def _dev_subset(runs) -> str:
    """"dev subset: first N rows per task" when the runs evaluated on a dev subset."""
    limits = {(r.config or {}).get("dev_limit") for r in getattr(runs, "runs", [runs])}
    limits.discard(None)
    if not limits:
        return ""
    return f"dev metrics on the first {'/'.join(str(v) for v in sorted(limits))} rows per task"


def _evaluated_once(runs, split: str) -> bool:
    """True when every run has its ``split`` metrics at one step only."""
    df = _data.get_frame(runs, "evals", ["step", "split", "task", "metric", "value"],
                         split=split)
    df = df[df["split"] == split]
    return bool(len(df)) and bool((df.groupby("run")["step"].nunique() <= 1).all())


def comparison_table(
    runs,
    metric: str | dict[str, str] | None = None,
    *,
    split: str = "dev",
    at: str = "final",
    baseline: str | None = "sum",
) -> pd.DataFrame:
    """Final (or best) metric per method and task over seeds, one row per (method, task).

    Columns: method (the run variant, e.g. "pcgrad" or "round_robin"), task, metric, n
    (seeds), mean, std, ci_low, ci_high (95% Student t; NaN for one seed). Tasks include
    "overall" (score by default).

    With two or more methods, each is also tested against ``baseline`` (the first method
    when absent; None: no tests), paired by seed (`gradlab.significance.compare_methods`):
    baseline, diff (mean of method - baseline over the shared seeds), diff_ci_low,
    diff_ci_high (95% t interval of that difference), p_value (paired t-test), p_holm (Holm-
    adjusted over the methods tested on the task), n_pairs and
    within_seed_noise (True when the interval contains 0 or fewer than 2 seeds pair up; NA
    on the baseline's rows). Runs of one method that share a seed cannot be paired: the
    test columns are then left empty, with a warning naming the runs.
    """
    runs = as_runs(runs, "comparison_table")
    _warn_unlike(runs, split)
    per_run = _summaries.final_metrics(runs, metric=metric, split=split, at=at)
    # runs of one variant are seeds of one another: significance compares variants
    results = per_run.rename(columns={"method": "base_method", "variant": "method"})
    methods = _data.order_variants(results["method"].unique())
    if baseline is None or len(methods) < 2:
        table = significance.seed_summary(results, "value", ["method", "task", "metric"])
    else:
        table = _paired(results, baseline if baseline in methods else methods[0])
    method_rank = {v: k for k, v in enumerate(methods)}
    task_rank = {t: k for k, t in enumerate(_data.order_tasks(table["task"].unique()))}
    table = table.sort_values(
        ["method", "task"], key=lambda c: c.map(method_rank if c.name == "method" else task_rank),
        kind="stable",
    )  # fmt: skip
    return table.reset_index(drop=True)


#: config keys that may differ between compared runs (what a comparison is about, or
#: bookkeeping); any other difference is warned about
VARYING_KEYS = {"name", "runs_dir", "method", "method_args", "schedule", "seed", "progress",
                "threads", "device", "data_dir", "synthetic", "save_checkpoints",
                "checkpoint_every", "keep_checkpoints", "probe_every", "eval_every",
                "counterfactual_methods", "measure_counterfactual", "log_train_gramians"}


def _warn_unlike(runs, split: str) -> None:
    """Warn about runs with no ``split`` evaluation (left out) and about settings, budgets
    included, that differ between the runs (an unfair comparison)."""
    members = getattr(runs, "runs", [runs])
    if len(members) < 2:
        return
    evals = runs.evals()
    have = set(evals.loc[evals["split"] == split, "run"]) if len(evals) else set()
    missing = [r.name for r in members if r.name not in have]
    if missing:
        warnings.warn(f"runs {missing} have no {split!r} evaluation and are left out of the "
                      "comparison", stacklevel=3)  # fmt: skip
    configs = {r.name: (r.config or {}) for r in members}
    keys = sorted({k for c in configs.values() for k in c} - VARYING_KEYS)
    differ = {}
    for key in keys:
        values = {n: c.get(key) for n, c in configs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            differ[key] = values
    if "steps" in differ or "step_budget" in differ:  # equal examples per task is fine
        seen = {r.name: _batches_per_task(r.config or {}) for r in members}
        if len(set(seen.values())) == 1:
            differ.pop("steps", None)
            differ.pop("step_budget", None)
    if differ:
        listed = "; ".join(f"{k}: {v}" for k, v in differ.items())
        warnings.warn(f"the compared runs differ in settings other than the method: {listed}",
                      stacklevel=3)  # fmt: skip


def _batches_per_task(config: dict):
    steps, budget = config.get("steps"), config.get("step_budget", "optimizer")
    tasks = len(config.get("tasks") or []) or 1
    one_task = config.get("schedule") not in (None, "", "joint")
    if budget == "per_task" or not one_task:
        return steps
    return steps / tasks if steps is not None else None


PAIRED_COLUMNS = ["baseline", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm",
                  "n_pairs", "within_seed_noise"]


def _paired(results: pd.DataFrame, base: str) -> pd.DataFrame:
    """`significance.compare_methods` of every variant against ``base``, with a baseline
    column; empty test columns (and a warning) when runs of one variant share a seed."""
    clash = results[results.duplicated(["method", "seed", "task", "metric"], keep=False)]
    if len(clash):
        names = sorted(clash["run"].unique())
        warnings.warn(
            f"runs {names} share a method and a seed, so the comparison cannot pair them by "
            "seed; the paired-test columns are empty (compare one setting at a time, or give "
            "the runs different methods)", stacklevel=4,
        )  # fmt: skip
        out = significance.seed_summary(results, "value", ["method", "task", "metric"])
        out["baseline"] = base
        for column in PAIRED_COLUMNS[1:]:
            out[column] = pd.NA if column == "within_seed_noise" else np.nan
        return out
    out = significance.compare_methods(results[significance.RESULT_COLUMNS], base)
    out.insert(out.columns.get_loc("diff"), "baseline", base)
    return out


def table_to_latex(
    table: pd.DataFrame,
    path: str | Path | None = None,
    *,
    digits: int = 3,
    bold_best: bool = True,
    caption: str | None = None,
    label: str | None = None,
) -> str:
    """A booktabs LaTeX table of `comparison_table`: methods as rows, tasks as columns,
    cells "mean ± half-width of the 95% CI", the best mean per column in bold. Writes it to
    ``path`` when given; returns the LaTeX source."""
    _check_table(table)
    methods = _data.order_variants(table["method"].unique())
    tasks = _data.order_tasks(table["task"].unique())
    cell = table.set_index(["method", "task"])
    best = table.loc[table.groupby("task")["mean"].idxmax()].set_index("task")["method"]
    metric_of = table.groupby("task")["metric"].first()
    header = ["Method"] + [
        _latex_escape(f"{_theme.task_label(t)} ({_theme.metric_label(metric_of[t])})")
        for t in tasks
    ]
    lines = []
    for m in methods:
        row = [_latex_escape(_theme.method_label(m))]
        for t in tasks:
            if (m, t) not in cell.index:
                row.append("--")
                continue
            r = cell.loc[(m, t)]
            text = f"{r['mean']:.{digits}f}"
            if bold_best and best.get(t) == m:
                text = f"\\textbf{{{text}}}"
            if np.isfinite(r["ci_high"]):
                text += f" $\\pm$ {(r['ci_high'] - r['ci_low']) / 2:.{digits}f}"
            row.append(text)
        lines.append(" & ".join(row) + r" \\")
    n = table.groupby("method")["n"].max()
    seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()}--{n.max()}"
    caption = caption or (
        f"Mean and 95\\% confidence interval (Student $t$) over {seeds} seeds."
        if n.max() > 1
        else "One seed per method."
    )
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "c" * len(tasks) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
        *lines,
        r"\bottomrule",
        r"\end{tabular}",
        f"\\caption{{{caption}}}",
        *([f"\\label{{{label}}}"] if label else []),
        r"\end{table}",
    ]
    text = "\n".join(out) + "\n"
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


def table_to_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write `comparison_table` (tidy: one row per method and task) as CSV; returns the path."""
    _check_table(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------


def _check_table(table: pd.DataFrame) -> None:
    needed = ["method", "task", "metric", "n", "mean", "ci_low", "ci_high"]
    missing = [c for c in needed if c not in getattr(table, "columns", [])]
    if missing:
        raise ValueError(f"not a comparison_table: missing columns {missing}")
    if table.empty:
        raise ValueError("the comparison table is empty")


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("–", "--"), ("ρ", r"$\rho$")):  # fmt: skip
        text = text.replace(a, b)
    return text


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
