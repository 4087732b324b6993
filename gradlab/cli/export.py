"""``gradlab export RUN --parquet DIR [--tensorboard DIR]``: copies of a run's frames."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run to Parquet and/or TensorBoard")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--parquet", type=Path, default=None, help="folder for Parquet files")
    p.add_argument("--tensorboard", type=Path, default=None, help="TensorBoard log folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.run import load_run

    if args.parquet is None and args.tensorboard is None:
        raise ValueError("give --parquet DIR and/or --tensorboard DIR")
    loaded = load_run(args.run)
    if args.parquet is not None:
        print(f"wrote Parquet files to {loaded.to_parquet(args.parquet)}")
    if args.tensorboard is not None:
        from gradlab.export import to_tensorboard

        print(f"wrote TensorBoard events to {to_tensorboard(loaded, args.tensorboard)}")
    return 0
