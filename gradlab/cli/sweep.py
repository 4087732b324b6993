"""``gradlab sweep CONFIG --grid key=v1,v2 ... --seeds 0,1,2``: resumable grid over seeds."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of configs over seeds (resumable)",
                       description="Train every grid point x seed not finished yet, then print "
                                   "the results table. Put CONFIG before --grid: --grid takes "
                                   "every item after it.")
    p.add_argument("config", type=Path, nargs="?", default=None, help="YAML config file")
    p.add_argument("--grid", nargs="*", default=[], metavar="key=v1,v2",
                   help="grid axes, e.g. method=sum,pcgrad (linked: method:schedule=a:b,c:d)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/sweep"),
                   help="folder of the sweep's run folders")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config keys applied to every run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.sweep import SweepError, run_sweep

    if args.config is not None and "=" in str(args.config) and not args.config.exists():
        args.overrides, args.config = [str(args.config), *args.overrides], None  # no file
    swallowed = [item for item in args.grid if "=" not in item]
    if swallowed:
        where = ("it is not a grid item (key=v1,v2)" if args.config is not None else
                 "the config path must come before --grid, which takes every item after it")
        raise ValueError(f"--grid took {' '.join(swallowed)!r}: {where}, e.g. 'gradlab sweep "
                         f"{swallowed[0] if args.config is None else args.config} --grid "
                         "method=sum,pcgrad --seeds 0,1'")
    if args.config is None:
        raise ValueError("give the config file: gradlab sweep CONFIG --grid key=v1,v2 ...")
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
