"""Run folders: refuse to overwrite a run, lock a folder per process, write files atomically.

The run lock (`RunLock`, a ``flock`` on ``<run>/.lock``) is held by the process that writes a
run (the trainer, or a `RunWriter` used on its own) for as long as it writes; the OS releases it
when that process exits or dies. `is_locked` therefore tells a live writer from a dead one: a
store that says 'running' while nobody holds the lock belongs to a killed or crashed run.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import time
from pathlib import Path

try:  # POSIX: an exclusive lock per run folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_LOCK = ".lock"
#: False where ``flock`` is missing (Windows): locks are then not taken and `is_locked` is
#: always False, so nothing can be said about a writer's liveness.
LOCKS_SUPPORTED = fcntl is not None
_ACQUIRE_SECONDS = 1.0  # how long RunLock retries: an `is_locked` probe holds a shared lock briefly
_HELD: dict[Path, list] = {}  # run folders this process has locked: resolved path -> [file, depth]


class RunLockedError(RuntimeError):
    """The run folder is locked by another process (it is training or writing that run)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"the run {run_dir} is being trained by another process")
        self.run_dir = run_dir


def is_locked(run_dir: Path | str) -> bool:
    """True while some process (this one included) holds the run lock of ``run_dir``.

    A non-blocking probe: it never waits and never creates the lock file. False when the folder
    has no lock file, when the lock is free, or where locks are not supported (see
    `LOCKS_SUPPORTED`).

    Example:
        >>> import tempfile
        >>> run_dir = Path(tempfile.mkdtemp()) / "run"
        >>> with RunLock(run_dir):
        ...     is_locked(run_dir)
        True
        >>> is_locked(run_dir)
        False
    """
    run_dir = Path(run_dir)
    if not LOCKS_SUPPORTED:
        return False
    if _key(run_dir) in _HELD:
        return True
    try:
        fd = os.open(run_dir / _LOCK, os.O_RDONLY)
    except OSError:  # no lock file (never locked), or unreadable: no live writer to be seen
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse a new run over an existing one, a resume of nothing, and an unwritable folder.

    A folder holding only the lock file and temporary files (a run killed before it wrote its
    config.yaml) holds no run: a new run may take it (`remove_leftovers` clears it).
    """
    if resume:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"cannot resume: the run folder {run_dir} does not exist")
        return
    if run_dir.exists() and (not run_dir.is_dir() or holds_run(run_dir)):
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
    """Write a text file under a temporary name, then rename: never half a file.

    A kill leaves at most the temporary ``.<name>.tmp<pid>``, which `remove_leftovers`
    deletes when the run starts again.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    write_point(f"wrote {tmp}")
    replace(tmp, path)


#: the temporary files of `write_atomic` (and of sweep tables): ``.<name>.tmp<pid>``
_TEMPORARY = re.compile(r"\..+\.tmp\d+")


def holds_run(run_dir: Path | str) -> bool:
    """True when the folder ``run_dir`` holds anything of a run: more than its lock file and
    the temporary files of writers killed before they renamed them."""
    return any(p.name != _LOCK and not _TEMPORARY.fullmatch(p.name)
               for p in Path(run_dir).iterdir())


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files killed writers left in ``run_dir`` (call it holding the
    run lock: no live writer's temporary file can be among them); the files deleted."""
    removed = []
    for p in Path(run_dir).iterdir() if Path(run_dir).is_dir() else ():
        if _TEMPORARY.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --- kill points: a test-only hook on every write a run makes ---------------------------------

_KILL_AFTER = "GRADLAB_KILL_AFTER"  # N: SIGKILL this process right after its N-th write point
_WRITE_LOG = "GRADLAB_WRITE_LOG"  # a file: append one line per write point (to count them)
_writes = 0


def replace(src: Path | str, dst: Path | str) -> None:
    """``os.replace`` and a write point: every rename a run makes goes through here."""
    os.replace(src, dst)
    write_point(f"replace {src} -> {dst}")


def write_point(what: str) -> None:
    """Mark a write a run just made (a rename, a checkpoint file, a link).

    Test-only and free when unset: with ``GRADLAB_WRITE_LOG`` set, a line per point is
    appended to that file; with ``GRADLAB_KILL_AFTER=N``, the process SIGKILLs itself right
    after its N-th point, so the kill-point tests can stop a real run after any write.
    """
    log, kill_after = os.environ.get(_WRITE_LOG), os.environ.get(_KILL_AFTER)
    if log is None and kill_after is None:
        return
    global _writes
    _writes += 1
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{_writes} {what}\n")
    if kill_after and _writes == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)


class RunLock:
    """An exclusive lock on a run folder (flock: the OS releases it when the process dies).

    Creates the folder; removes it again on exit when the run left nothing in it. Re-entrant
    within one process (a `RunWriter` opened inside the trainer's lock shares it). Raises
    `RunLockedError` when another process holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.created = False
        self.file = None

    def __enter__(self) -> RunLock:
        if not self.run_dir.is_dir():
            try:
                self.run_dir.mkdir(parents=True)
                self.created = True
            except FileExistsError:  # another process made it a moment ago: the lock decides
                if not self.run_dir.is_dir():
                    raise OSError(errno.EEXIST, f"cannot create the run folder {self.run_dir}: "
                                                "a file of that name exists") from None
            except OSError as err:
                raise OSError(err.errno, f"cannot create the run folder {self.run_dir}: "
                                         f"{err.strerror or err}") from None
        key = _key(self.run_dir)
        if key in _HELD:  # this process holds it already
            _HELD[key][1] += 1
            self.file = _HELD[key][0]
            return self
        self.file = open(self.run_dir / _LOCK, "a")  # noqa: SIM115 - held for the whole run
        if LOCKS_SUPPORTED:
            deadline = time.monotonic() + _ACQUIRE_SECONDS
            while True:
                try:
                    fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.02)
                        continue
                    self.file.close()
                    raise RunLockedError(self.run_dir) from None
                except OSError as err:  # e.g. a file system without locks
                    self.file.close()
                    raise OSError(err.errno, f"cannot lock the run folder {self.run_dir}: "
                                             f"{err.strerror or err}") from None
        _HELD[key] = [self.file, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = _key(self.run_dir)
        held = _HELD.get(key)
        if held is not None and held[0] is self.file:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                self.file.close()  # releases the lock
        if (self.created and self.run_dir.is_dir()
                and [p.name for p in self.run_dir.iterdir()] == [_LOCK]):
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _key(run_dir: Path) -> Path:
    return Path(run_dir).resolve()  # one key however the folder is spelled (relative, symlink)


__all__ = ["LOCKS_SUPPORTED", "RunLock", "RunLockedError", "check_run_folder", "holds_run",
           "is_locked", "remove_leftovers", "replace", "write_atomic", "write_point"]
