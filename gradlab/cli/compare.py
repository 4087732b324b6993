"""``gradlab compare RUN... --out figures/NAME``: methods side by side, figures and table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare runs: figures (PDF, PNG) and a table")
    p.add_argument("runs", type=Path, nargs="+", help="run folders")
    p.add_argument("--out", type=Path, default=Path("figures/compare"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.cli.figures import write_demo_figures

    written = write_demo_figures(args.runs, args.out)
    table = args.out / "compare.csv"
    if table.is_file():
        print(table.read_text())
    print(f"wrote {len(written)} files to {args.out}/")
    return 0
