"""The comparison table behind `compare`: final metrics per method over seeds, each method
tested against a baseline paired by seed (`gradlab.significance`), as CSV or LaTeX."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from gradlab import significance
from gradlab.plot import _data, _summaries, _theme

__all__ = ["comparison_table", "table_to_latex", "table_to_csv", "as_runs"]


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
#: bookkeeping); any other difference is warned about. freeze_encoder is what a comparison
#: with the frozen-encoder baseline is about (its runs are the variant "frozen").
VARYING_KEYS = {"name", "runs_dir", "method", "method_args", "schedule", "freeze_encoder",
                "seed", "progress", "threads", "device", "data_dir", "synthetic",
                "save_checkpoints", "checkpoint_every", "keep_checkpoints", "probe_every",
                "eval_every", "counterfactual_methods", "measure_counterfactual",
                "log_train_gramians"}


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
