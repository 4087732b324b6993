"""``gradlab predict CHECKPOINT --task sst --input FILE --out FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write a checkpoint's predictions for a task file")
    p.add_argument("checkpoint", type=Path, help="checkpoint folder, or a run folder (uses best)")
    p.add_argument("--task", required=True,
                   help="sst, para, sts or an aux task of the checkpoint (any case: STS is sts)")
    p.add_argument("--input", type=Path, required=True,
                   help="task file (TSV laid out as the dev files; the label column may be "
                        "absent; ids must be unique: a repeated id is an error naming its lines)")
    p.add_argument("--out", type=Path, required=True,
                   help="output TSV: id, prediction (never the --input file)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.inference import predict_file

    path, count = predict_file(args.checkpoint, args.task, args.input, args.out, args.overrides)
    print(f"wrote {count} predictions to {path}")
    return 0
