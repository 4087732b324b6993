"""``gradlab sweep CONFIG --grid key=v1,v2 ... --seeds 0,1,2`` (see issue 5)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of configs over seeds (resumable)")
    p.add_argument("config", type=Path)
    p.add_argument("--grid", nargs="*", default=[], metavar="key=v1,v2")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/sweep"))
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.sweep import run_sweep

    table = run_sweep(args.config, args.grid, [int(s) for s in args.seeds.split(",")],
                      args.runs_dir, args.overrides)
    print(table.to_string(index=False))
    return 0
