"""The ``gradlab`` command: one module per subcommand, no logic of its own.

Exit codes: 0 done; 2 a user error (a bad config key, file, checkpoint, or a run locked by
another process): one line on stderr naming what is wrong, no traceback; 1 an internal
failure (a bug): one line, and the traceback with ``--debug`` or ``GRADLAB_DEBUG=1``;
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
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
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also: GRADLAB_DEBUG=1)")
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
    debug = args.debug or os.environ.get("GRADLAB_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends as one line and an exit code
        if debug:
            traceback.print_exc()
        if is_user_error(err):
            _say(f"gradlab {args.command}: error: {one_line(err)}")
            return 2
        _say(f"gradlab {args.command}: internal error ({type(err).__name__}): "
             f"{one_line(err)}" + ("" if debug else
                                   " (rerun with --debug or GRADLAB_DEBUG=1 for the traceback)"))
        return 1


def _say(text: str) -> None:
    """Print one line on stderr in whatever encoding it has (characters it cannot show are
    escaped, never a UnicodeEncodeError on top of the error being reported)."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=sys.stderr)


#: errors that mean bad input; their messages name the file, key, step or run at fault
USER_ERRORS = (ValueError, OSError, StoreError, ImportError, FloatingPointError)
_MAX_MESSAGE = 4000  # characters of an error message shown


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (exit code 2) rather than a bug (exit code 1).

    A run locked by another process (`gradlab.rundir.RunLockedError`) is a user error.
    """
    from gradlab.rundir import RunLockedError

    return isinstance(err, (*USER_ERRORS, RunLockedError))


def one_line(err: BaseException) -> str:
    """An error's message on one line (a config error's problems joined by '; '), at most
    `_MAX_MESSAGE` characters."""
    problems = getattr(err, "problems", None)
    if isinstance(problems, list) and problems and hasattr(err, "source"):
        text = f"{len(problems)} problem(s) in {err.source}: " + "; ".join(map(str, problems))
    else:
        text = str(err) or type(err).__name__
    # lone surrogates (a YAML "\ud800" escape) cannot be printed: shown escaped
    text = " ".join(text.split()).encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + f" ... ({len(text) - _MAX_MESSAGE} more characters)"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
