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

from gradlab import __version__
from gradlab.cli import (
    compare,
    config,
    demo,
    evaluate,
    export,
    figures,
    noise_study,
    predict,
    sweep,
    train,
)
from gradlab.store import StoreError

SUBCOMMANDS = {
    "train": train,
    "config": config,
    "evaluate": evaluate,
    "predict": predict,
    "demo": demo,
    "figures": figures,
    "compare": compare,
    "sweep": sweep,
    "export": export,
    "noise-study": noise_study,
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help line (unless the help says it, or there is none to
    show); descriptions and epilogs that hold line breaks (tables) are printed as written."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.option_strings and _shown(action.default):
            action.help = "default: %(default)s"  # an option without help keeps its default
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if not (action.option_strings and _shown(action.default)) or "%(default)" in help_text:
            return action.help
        return f"{help_text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _shown(default) -> bool:
    return not (default is None or default is False or default == []
                or default is argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradlab", formatter_class=HelpFormatter,
        description="Gradient-conflict analysis for multi-task BERT training.",
        epilog="Run 'gradlab COMMAND --help' for a command's options; 'gradlab config --list' "
               "lists every config key with its default and meaning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also: GRADLAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return parser


def _option_hint(extra: Sequence[str], argv: Sequence[str]) -> str | None:
    """For ``--steps 10`` (a config key given as an option): "use steps=10"."""
    from gradlab.config import config_keys

    keys = set(config_keys())
    hints = []
    for item in extra:
        if not item.startswith("--"):
            continue
        name, sep, value = item[2:].partition("=")
        key = name.replace("-", "_")
        if key not in keys:
            continue
        if not sep:
            at = list(argv).index(item)
            following = argv[at + 1] if at + 1 < len(argv) else ""
            value = following if following and not following.startswith("-") \
                and "=" not in following else "VALUE"
        hints.append(f"{key}={value}")
    if not hints:
        return None
    return ("config keys are given as key=value, not as options: use " + " ".join(hints)
            + " ('gradlab config --list' lists every key)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradlab`` console script; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # key=value overrides may stand anywhere, also after options
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown and hasattr(args, "overrides"):
        hint = _option_hint(unknown, argv)
        if hint:
            _say(f"gradlab {args.command}: error: {hint}")
            return 2
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
