"""``gradlab figures RUN --out figures/NAME``: every figure of one run, as PDF and PNG."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

#: one-axes figures written for a run (name, function name in gradlab.plot, keyword args)
RUN_FIGURES: tuple[tuple[str, str, dict], ...] = (
    ("training_curves", "training_curves", {}),
    ("training_loss", "training_curves", {"kind": "loss"}),
    ("cosine_train", "cosine_over_training", {"source": "train"}),
    ("cosine_probe", "cosine_over_training", {"source": "probe"}),
    ("conflict_rate", "conflict_rate", {}),
    ("projection_rate", "projection_rate", {}),
    ("task_weights", "task_weights", {}),
    ("s_conflict", "s_conflict_bars", {}),
    ("cosine_distribution", "cosine_distribution", {}),
    ("gradient_norms", "gradient_norms", {}),
    ("magnitude_similarity", "magnitude_similarity", {}),
    ("condition_number", "condition_number", {}),
    ("gradient_arrows", "gradient_arrows", {"source": "probe"}),
    ("gradient_arrows_pca", "gradient_arrows", {"source": "probe", "basis": "pca"}),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="write every figure of a run (PDF and PNG)")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, default=None, help="folder (default figures/<run name>)")
    p.add_argument("--width", default="icml-column", help="export width preset or inches")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.run import load_run

    loaded = load_run(args.run)
    out = args.out or Path("figures") / loaded.name
    written = write_run_figures(loaded, out, width=args.width)
    print(f"wrote {len(written)} files to {out}/")
    return 0


def write_run_figures(run, out: Path, width: str | float = "icml-column") -> list[Path]:
    """The dashboard, the layer heatmaps and every one-axes figure of ``run`` under ``out``.

    A figure the run has no data for (e.g. projection rates of a summed-loss run) is skipped
    with a line on stderr naming the reason.
    """
    import matplotlib.pyplot as plt

    from gradlab import plot

    plot.set_theme()
    written: list[Path] = []
    written += _save(lambda: plot.plot_conflicts(run), out / "conflicts", "icml-page")
    pairs = sorted(run.cosines(source="probe")["pair"].unique()) if _has(run, "probe") else []
    for pair in pairs:
        written += _one_axes(lambda ax, p=pair: plot.layer_heatmap(run, pair=p, source="probe",
                                                                     ax=ax),
                             out / f"layer_heatmap_{pair}", width)
    for name, func, kwargs in RUN_FIGURES:
        fn: Callable = getattr(plot, func)
        written += _one_axes(lambda ax, fn=fn, kw=kwargs: fn(run, ax=ax, **kw), out / name, width)
    plt.close("all")
    return written


def write_demo_figures(run_dirs: Sequence[Path], out: Path) -> list[Path]:
    """The demo's comparison figures (and each run's dashboard) under ``out``."""
    import matplotlib.pyplot as plt

    from gradlab import plot
    from gradlab.run import load_run, load_runs

    plot.set_theme()
    runs = load_runs(list(run_dirs))
    written: list[Path] = []
    fig_table = plot.compare(runs)
    fig, table = fig_table if isinstance(fig_table, tuple) else (fig_table, None)
    written += _save(lambda: fig, out / "compare", "icml-page")
    if table is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot.table_to_csv(table, out / "compare.csv")
        plot.table_to_latex(table, out / "compare.tex")
        written += [out / "compare.csv", out / "compare.tex"]
    pairs = ("sst-para", "sst-sts", "para-sts")
    # one file per pair: methods x pairs x seed bands in one axes is unreadable past 2 methods
    per_pair = [(f"{name}_{p}", func, {"source": "probe", "pair": p})
                for name, func in (("cosine_probe", "cosine_over_training"),
                                   ("conflict_rate_probe", "conflict_rate")) for p in pairs]
    for name, func, kwargs in (*per_pair,
                               ("training_curves", "training_curves", {}),
                               ("training_loss", "training_curves", {"kind": "loss"}),
                               *[(f"cosine_distribution_{p}", "cosine_distribution",
                                  {"source": "probe", "pair": p})
                                 for p in pairs]):
        fn = getattr(plot, func)
        written += _one_axes(lambda ax, fn=fn, kw=kwargs: fn(runs, ax=ax, **kw), out / name,
                             "icml-page")
    for run_dir in run_dirs:
        one = load_run(run_dir)
        written += _save(lambda one=one: plot.plot_conflicts(one), out / f"conflicts_{one.name}",
                         "icml-page")
        written += _one_axes(lambda ax, one=one: plot.gradient_arrows(one, source="probe", ax=ax),
                             out / f"gradient_arrows_{one.name}", "icml-column")
    plt.close("all")
    return written


def _has(run, source: str) -> bool:
    try:
        return not run.cosines(source=source).empty
    except ValueError:
        return False


def _one_axes(draw: Callable, path: Path, width) -> list[Path]:
    import matplotlib.pyplot as plt

    def make():
        # the layout engine from the start: a colorbar added before a later switch to
        # constrained layout breaks it (ZeroDivisionError in matplotlib 3.11)
        fig, ax = plt.subplots(layout="constrained")
        draw(ax)
        return fig

    return _save(make, path, width)


def _save(make: Callable, path: Path, width) -> list[Path]:
    import matplotlib.pyplot as plt

    from gradlab import plot

    try:
        fig = make()
    except (ValueError, KeyError) as err:
        print(f"skipped {path.name}: {err}", file=sys.stderr)
        plt.close("all")
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    files = plot.export(fig, path, width=width, formats=("pdf", "png"))
    plt.close(fig)
    return list(files) if files else [path.with_suffix(".pdf"), path.with_suffix(".png")]
