"""``gradlab compare RUN... --out figures/NAME``: methods side by side, figures and table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare runs: figures (PDF, PNG) and a table",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+",
                   help="run folders, or one folder whose subfolders are runs")
    p.add_argument("--out", type=Path, default=Path("figures/compare"), help="figure folder")
    p.add_argument("--width", default="icml-page",
                   help="export width: a preset (acl-column, acl-page, icml-column, icml-page, "
                        "neurips) or inches")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.cli.figures import _width, write_demo_figures

    runs = args.runs[0] if len(args.runs) == 1 else args.runs
    written = write_demo_figures(runs, args.out, width=_width(args.width))
    table = args.out / "compare.csv"
    if table.is_file():
        print(table.read_text())
    print(f"wrote {len(written)} files to {args.out}/")
    return 0
