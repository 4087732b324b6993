"""``gradlab evaluate CHECKPOINT``: dev metrics of a saved model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the dev sets")
    p.add_argument("checkpoint", type=Path, help="checkpoint folder, or a run folder (uses best)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. data_dir=... dev_limit=100 eval_batch_size=64")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.inference import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.overrides)
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    return 0
