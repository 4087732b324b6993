"""The ``gradlab`` command: one module per subcommand, no logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gradlab.cli import compare, demo, evaluate, export, figures, noise_study, predict, sweep, train
from gradlab.store import StoreError

SUBCOMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "predict": predict,
    "demo": demo,
    "figures": figures,
    "compare": compare,
    "sweep": sweep,
    "export": export,
    "noise-study": noise_study,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradlab", description="Gradient-conflict analysis for multi-task BERT training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradlab`` console script; returns the exit code."""
    parser = build_parser()
    # key=value overrides may stand anywhere, also after options
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError, OSError, StoreError,
            ImportError) as err:
        # Errors from gradlab name what is wrong; show them without a traceback.
        print(f"gradlab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
