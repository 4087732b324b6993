"""``gradlab noise-study CHECKPOINT|CONFIG --batch-sizes 1,4,16,64 --rounds N --out DIR``:
raw, within-task and expected cosines per batch size, with intervals (`gradlab.noise`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "noise-study", help="how much of a gradient cosine is sampling noise, per batch size",
        description="Per batch size, draw ROUNDS x REPLICATES independent batches per task "
                    "(model in eval mode, not trained), and report the raw, within-task and "
                    "noise-corrected expected cosines with jackknife intervals and the noise "
                    "model's fit. Writes noise_study.csv, gramians.npz, info.json and "
                    "noise_study.png/.pdf into --out.")
    p.add_argument("source", metavar="CHECKPOINT|CONFIG",
                   help="checkpoint folder, run folder (its best checkpoint), or YAML config "
                        "(the model it describes at initialisation)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config keys, e.g. data_dir=... train_limit=5000")
    p.add_argument("--batch-sizes", default="1,4,16,64", help="comma-separated (default "
                   "%(default)s)")
    p.add_argument("--rounds", type=int, default=8, help="rounds of fresh batches per batch "
                   "size (default %(default)s)")
    p.add_argument("--replicates", type=int, default=4, help="batches per task per round, >= 2 "
                   "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which batches are drawn")
    p.add_argument("--level", type=float, default=0.95, help="interval level")
    p.add_argument("--blocks", default="layers", help="layers | fine (parameter blocks kept in "
                   "gramians.npz)")
    p.add_argument("--fit-batch-size", type=int, default=None,
                   help="batch size whose estimates the figure's noise model uses "
                        "(default: the largest)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from gradlab.config import parse_value
    from gradlab.noise import noise_study
    from gradlab.plot import export

    try:
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes must be comma-separated integers, found "
                         f"{args.batch_sizes!r}") from None
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, found {bad}")
    overrides = {k.strip(): parse_value(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    study = noise_study(args.source, sizes, rounds=args.rounds, replicates=args.replicates,
                        seed=args.seed, level=args.level, blocks=args.blocks,
                        fit_batch_size=args.fit_batch_size, progress=not args.no_progress,
                        **overrides)
    paths = study.save(args.out)
    fig = study.figure(fit_batch_size=args.fit_batch_size)
    figures = export(fig, args.out / "noise_study", formats=("png", "pdf"))
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.max_colwidth", 60):
        print(study.summary().to_string(index=False))
    print(json.dumps({"out": str(args.out), "files": [str(p) for p in
                                                      [*paths.values(), *figures]],
                      "gradient_s": study.info["gradient_s"]}, indent=1))
    return 0
