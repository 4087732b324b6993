"""``gradlab sweep CONFIG --grid key=v1,v2 ... --seeds 0,1,2``: resumable grid over seeds."""

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
    from gradlab.sweep import SweepError, run_sweep

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} must be comma-separated integers") from None
    try:
        table = run_sweep(args.config, args.grid, seeds, args.runs_dir, args.overrides)
    except SweepError as err:
        print(f"gradlab sweep: {err}")
        return 1
    print(table.to_string(index=False))
    return 0
