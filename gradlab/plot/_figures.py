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
from matplotlib.lines import Line2D

from gradlab.plot import _axes, _data, _summaries, _theme

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
    figsize: tuple[float, float] = PAGE,
) -> Figure:
    """One-call picture of a run's (or several runs') gradient conflict.

    Panels: cosine per pair over training; conflict rate; gradient magnitude similarity;
    PCGrad projection rate per ordered pair (when the runs projected, else S-conflict per
    layer); layer x step heatmap of one pair's cosine; task gradient norms. ``source``:
    "train", "probe" or None (train if every run logged it, else probe). ``pair``: pairs
    to draw (None: all). ``smooth``: trailing mean over that many steps for the per-step
    curves; "auto" takes 1/40 of the logged span. ``heatmap_pair`` defaults to the first
    drawn pair; ``heatmap_method`` picks the method shown when the runs hold several.

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
    with _theme.theme_context():
        fig, axes = plt.subplots(3, 2, figsize=figsize, layout="constrained")
        (a_cos, a_conf), (a_gms, a_proj), (a_heat, a_norm) = axes
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
        titles = {
            a_cos: "Cosine per task pair",
            a_conf: f"Conflict rate ({window}-step window)",
            a_gms: "Gradient magnitude similarity",
            a_proj: f"PCGrad projection rate ({window}-step window)"
            if projected else "S-conflict per layer",
            a_heat: f"{_theme.pair_label(heatmap_pair)} cosine per layer"
            + (f" ({_theme.method_label(heatmap_method)})" if len(variants) > 1 else ""),
            a_norm: "Task gradient norms",
        }  # fmt: skip
        for ax, title in titles.items():
            ax.set_title(title, loc="left", fontsize="medium")
            ax.set_xlabel("Step" if ax in (a_heat, a_norm) else "")
        fig.suptitle(_suptitle(cos, source, block, smooth), x=0.01, ha="left",
                     fontsize="medium", linespacing=1.4)  # fmt: skip
    return fig


def compare(
    runs,
    metric: str | dict[str, str] | None = None,
    *,
    kind: str = "dev",
    split: str = "dev",
    at: str = "final",
    smooth: int | None = None,
    figsize: tuple[float, float] = (6.75, 4.6),
) -> tuple[Figure, pd.DataFrame]:
    """Methods side by side: each task's training curve per method, and the final dev
    metric per task and overall (mean and 95% t interval over seeds). Returns the figure
    and `comparison_table` of the same numbers. Runs evaluated only at the end have no
    curves: their task panels show each seed's value beside the mean (`seed_points`).

    ``kind``: curves of the dev metric ("dev") or the training loss ("loss"); ``metric``:
    a metric name, a dict task -> metric or None for each task's primary metric.

    >>> fig, table = compare(gradlab.load_runs("runs/"))  # doctest: +SKIP
    """
    table = comparison_table(runs, metric=metric, split=split, at=at)
    tasks = [t for t in _data.order_tasks(table["task"].unique()) if t != "overall"]
    variants = _data.order_variants(table["method"].unique())
    with _theme.theme_context():
        fig = plt.figure(figsize=figsize, layout="constrained")
        n = len(tasks) + 1
        cols = 2 if n == 4 else min(n, 3)
        rows = int(np.ceil(n / cols))
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
                _axes.PRIMARY_METRICS.get(task, "") if metric is None else _metric_of(metric, task)
            ) if kind == "dev" else "Training loss"  # fmt: skip
            ax.set_title(_theme.task_label(task), loc="left", fontsize="medium")
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
        ) if seeds.max() > 1 else "one seed per method"  # fmt: skip
        fig.legend(
            handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
            frameon=False, title=note, title_fontsize="small",
        )  # fmt: skip
    return fig, table


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
    per_run = _summaries.final_metrics(runs, metric=metric, split=split, at=at)
    rows = []
    for (variant, task, metric_), part in per_run.groupby(["variant", "task", "metric"]):
        values = part["value"].to_numpy(dtype=float)
        low, high = _data.t_interval(values)
        rows.append(
            {
                "method": variant,
                "task": task,
                "metric": metric_,
                "n": len(values),
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
                "ci_low": low,
                "ci_high": high,
            }
        )
    table = pd.DataFrame(rows)
    method_rank = {v: k for k, v in enumerate(_data.order_variants(table["method"].unique()))}
    task_rank = {t: k for k, t in enumerate(_data.order_tasks(table["task"].unique()))}
    table = table.sort_values(
        ["method", "task"], key=lambda c: c.map(method_rank if c.name == "method" else task_rank)
    )
    table = table.reset_index(drop=True)
    if baseline is None or table["method"].nunique() < 2:
        return table
    return _with_paired_tests(table, per_run, baseline)


PAIRED_COLUMNS = ["baseline", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm",
                  "n_pairs", "within_seed_noise"]


def _with_paired_tests(table: pd.DataFrame, per_run: pd.DataFrame, baseline: str
                       ) -> pd.DataFrame:
    """``table`` plus the PAIRED_COLUMNS of each method against ``baseline``."""
    from gradlab.significance import compare_methods

    methods = list(table["method"].unique())
    base = baseline if baseline in methods else methods[0]
    long = per_run.rename(columns={"method": "base_method", "variant": "method"})
    clash = long[long.duplicated(["method", "seed", "task", "metric"], keep=False)]
    if len(clash):
        names = sorted(clash["run"].unique())
        warnings.warn(
            f"runs {names} share a method and a seed, so the comparison cannot pair them by "
            "seed; the paired-test columns are empty (compare one setting at a time, or give "
            "the runs different methods)", stacklevel=3,
        )  # fmt: skip
        out = table.copy()
        out["baseline"] = base
        for column in PAIRED_COLUMNS[1:]:
            out[column] = pd.NA if column == "within_seed_noise" else np.nan
        return out
    tests = compare_methods(long[["method", "seed", "task", "metric", "value"]], base)
    tests = tests[["method", "task", "metric", *PAIRED_COLUMNS[1:]]]
    out = table.merge(tests, on=["method", "task", "metric"], how="left", validate="1:1")
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
        return metric.get(task, _axes.PRIMARY_METRICS.get(task, ""))
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
