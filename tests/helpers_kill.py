"""Kill points: run the real ``gradlab`` CLI in a child process that SIGKILLs itself right after
its N-th write (``GRADLAB_KILL_AFTER``, see `gradlab.rundir.write_point`).

Children are forked from a multiprocessing fork server that has imported torch, transformers
and gradlab once, so each run costs its training, not its imports. The server never runs a
torch operation, so forking it is safe.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

_PRELOAD = ["helpers_kill", "torch", "transformers", "gradlab.cli", "gradlab.training",
            "gradlab.build"]
_CONTEXT = None


def run_cli(argv: list[str], *, log: Path, kill_after: int | None = None,
            write_log: Path | None = None, timeout: float = 300) -> int:
    """Run ``gradlab <argv>`` in a forked child; its exit code (-9: it killed itself).

    kill_after: SIGKILL after this many write points; write_log: a file that gets one line
    per write point. The child's output goes to ``log``.
    """
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(_PRELOAD)
    env = {"GRADLAB_KILL_AFTER": str(kill_after) if kill_after else None,
           "GRADLAB_WRITE_LOG": str(write_log) if write_log else None}
    child = _CONTEXT.Process(target=_child, args=(argv, env, str(log)))
    child.start()
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
        raise TimeoutError(f"gradlab {' '.join(argv)} ran past {timeout} s; see {log}")
    return child.exitcode


def _child(argv: list[str], env: dict[str, str | None], log: str) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from gradlab.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
