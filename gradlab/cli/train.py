"""``gradlab train --config configs/X.yaml key=value ...`` (or ``--resume RUN``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gradlab.cli.keys import key_table

    p = sub.add_parser(
        "train", help="train a multitask model and log it to a run store",
        description="Train; overrides are key=value (unknown keys are refused; a key=value "
                    "override wins over the config file). 'gradlab config --list' prints the "
                    "table below; 'gradlab config CONFIG key=value' checks a config without "
                    "training.",
        epilog="config keys (key = default), for the YAML file and key=value overrides:\n"
               + key_table(96))
    p.add_argument("--config", type=Path, default=None, help="YAML config file")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue the run folder RUN from its newest checkpoint, with the "
                        "config saved in it (overrides: only keys that do not change the "
                        "result, e.g. progress=false threads=4)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config keys, e.g. steps=10 method=pcgrad (table below)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradlab.config import load_config
    from gradlab.store import StoreError

    try:
        if args.resume is not None:
            if args.config is not None:
                raise ValueError("--resume continues a run with the config saved in it; "
                                 "do not pass --config as well")
            handle = resume(args.resume, args.overrides)
        else:  # the file and the overrides merged, then validated together, before the
            # training stack (the slowest import) loads
            cfg = load_config(args.config, args.overrides)
            from gradlab.training import train

            handle = train(cfg)
    except StoreError as err:  # names the run store; no traceback needed
        raise OSError(str(err)) from err
    print(json.dumps({"run": str(handle.path), "metrics": handle.metrics,
                      "wall_time_s": round(handle.wall_time, 1)}, indent=1))
    return 0


def resume(run_dir: Path, overrides: list[str]):
    """Continue ``run_dir`` with the config saved in it (plus overrides, e.g. progress)."""
    from gradlab.config import load_config, parse_overrides
    from gradlab.training import train

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume: the run folder {run_dir} does not exist")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"cannot resume: {run_dir} is not a run folder (it has no "
                                "config.yaml)")
    values = parse_overrides(overrides)
    values.update(name=run_dir.name, runs_dir=str(run_dir.parent))
    return train(load_config(config, values), resume=True)
