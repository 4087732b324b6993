"""``gradlab figures RUN --out figures/NAME``: every figure of one run, as PDF and PNG."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="write every figure of a run (PDF and PNG)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, default=None, help="folder (default figures/<run name>)")
    p.add_argument("--width", default="icml-column",
                   help="export width: a preset (acl-column, acl-page, icml-column, icml-page, "
                        "neurips) or inches")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.run import load_run

    loaded = load_run(args.run)
    out = args.out or Path("figures") / loaded.name
    written = write_run_figures(loaded, out, width=_width(args.width))
    print(f"wrote {len(written)} files to {out}/")
    return 0


def write_run_figures(run, out: Path, width: str | float = "icml-column") -> list[Path]:
    """Every figure of ``run`` (`gradlab.plot.run_figures`) under ``out``, built at ``width``."""
    from gradlab import plot

    plot.set_theme()
    return plot.write_figures(plot.run_figures(run), out, width=width)


def write_demo_figures(run_dirs: Sequence[Path] | Path, out: Path,
                       width: str | float = "icml-page") -> list[Path]:
    """The figures comparing the runs (`gradlab.plot.comparison_figures`) and their table;
    ``run_dirs``: run folders, or one folder of runs."""
    from gradlab import plot
    from gradlab.run import load_runs

    plot.set_theme()
    runs = load_runs(run_dirs if isinstance(run_dirs, str | Path) else list(run_dirs))
    return plot.write_comparison(runs, out, width=width)


def _width(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text
