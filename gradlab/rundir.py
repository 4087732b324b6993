"""Run folders: refuse to overwrite a run, lock a folder per process, write files atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

try:  # POSIX: an exclusive lock per run folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_LOCK = ".lock"


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse a new run over an existing one, a resume of nothing, and an unwritable folder."""
    if resume:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"cannot resume: the run folder {run_dir} does not exist")
        return
    if run_dir.exists() and (not run_dir.is_dir()
                             or any(p.name != _LOCK for p in run_dir.iterdir())):
        raise FileExistsError(
            f"the run folder {run_dir} already exists; continue that run with "
            f"`gradlab train --resume {run_dir}` (Python: train(..., resume=True)) or choose "
            "another name=...")
    runs_dir = run_dir.parent
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in runs_dir.parents if p.exists()), None)
        why = (f"{blocker} is a file, not a folder" if blocker is not None
               and not blocker.is_dir() else err.strerror or str(err))
        raise OSError(err.errno, f"cannot create the runs folder {runs_dir}: {why}") from None
    if not os.access(runs_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"the runs folder {runs_dir} is not writable")


def write_atomic(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunLock:
    """An exclusive lock on a run folder (flock: the OS releases it when the process dies).

    Creates the folder; removes it again on exit when the run left nothing in it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.created = False
        self.file = None

    def __enter__(self) -> RunLock:
        if not self.run_dir.is_dir():
            try:
                self.run_dir.mkdir(parents=True)
            except OSError as err:
                raise OSError(err.errno, f"cannot create the run folder {self.run_dir}: "
                                         f"{err.strerror or err}") from None
            self.created = True
        self.file = open(self.run_dir / _LOCK, "a")  # noqa: SIM115 - held for the whole run
        if fcntl is not None:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.close()
                raise RuntimeError(f"the run {self.run_dir} is being trained by another "
                                   "process") from None
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # releases the lock
        if self.created and [p.name for p in self.run_dir.iterdir()] == [_LOCK]:
            shutil.rmtree(self.run_dir, ignore_errors=True)



__all__ = ["RunLock", "check_run_folder", "write_atomic"]
