"""Training in a separate process: ``gradlab.train(..., background=True)`` returns a
`BackgroundTraining`, so a notebook's kernel stays responsive while the run trains.

The handle reads the run store: ``.run`` is the live `gradlab.Run`, ``.progress`` the step
reached, its share and an ETA; ``.wait()`` returns the finished Run or raises the training's
own error (same type and message, the child's traceback as its cause); ``.stop()`` asks the
trainer to save its checkpoint at the top of its next step and end with status 'stopped', so
the run continues with ``gradlab.train(..., name=<its name>, resume=True)``. The process
writes its output to ``.log_file`` (in a temporary folder removed with the handle). On Linux
it ends when the process that started it dies (a kernel restart or crash: PR_SET_PDEATHSIG);
its store then reads 'dead', resumable from its last checkpoint.

    >>> job = gradlab.train(method="pcgrad", steps=60, background=True)  # doctest: +SKIP
    >>> job.progress                                                     # doctest: +SKIP
    TrainingProgress(12/60 steps (20%), ETA 41 s, running)
    >>> run = job.wait()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path

import yaml

from gradlab.config import TrainConfig, load_config, to_dict
from gradlab.rundir import RunLockedError, check_run_folder, is_locked
from gradlab.store import STORE_FILENAME, StoreError, resolve_run_dir

__all__ = ["BackgroundTraining", "TrainingProgress", "start_training"]

_STOPPED = 3  # the exit status of a run that stopped on request (or on Ctrl-C)
_POLL_SECONDS = 0.2


def start_training(cfg: TrainConfig, *, resume: bool = False,
                   overwrite: bool = False) -> BackgroundTraining:
    """Start ``gradlab.train(cfg, resume=..., overwrite=...)`` in a new Python process (the
    config's name resolved); refuses an existing run folder here and now, as `train` does."""
    run_dir = resolve_run_dir(Path(cfg.runs_dir), cfg.name)
    if overwrite:
        if is_locked(run_dir):
            raise RunLockedError(run_dir)
    else:
        check_run_folder(run_dir, resume)
    control = Path(tempfile.mkdtemp(prefix=f"gradlab-{cfg.name}-"))
    (control / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False),
                                         encoding="utf-8")
    (control / "options.json").write_text(json.dumps({"resume": resume,
                                                      "overwrite": overwrite}))
    env = dict(os.environ)  # the child imports this gradlab, wherever it was imported from
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(control / "log.txt", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gradlab.background", str(control)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_end_with_parent if sys.platform == "linux" else None)
    return BackgroundTraining(cfg, run_dir, process, control, resume)


@dataclass(frozen=True)
class TrainingProgress:
    """Where a background training stands: ``step`` of ``steps`` optimizer steps, the
    ``status`` ('starting' before its store exists, then the run's status: 'running',
    'finished', 'stopped', 'failed', 'dead'), seconds since it started and the estimated
    seconds left (None until two points in time are known)."""

    step: int
    steps: int
    status: str
    elapsed_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 1.0

    def __repr__(self) -> str:
        eta = "" if self.eta_s is None or self.status != "running" else \
            f", ETA {_duration(self.eta_s)}"
        return (f"TrainingProgress({self.step}/{self.steps} steps ({self.fraction:.0%}){eta}, "
                f"{self.status})")


class BackgroundTraining:
    """A training running in another process (see the module docstring).

    Attributes: name, path (the run folder), config (its `TrainConfig`), pid, log_file.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, process: subprocess.Popen,
                 control: Path, resume: bool) -> None:
        self.config = cfg
        self.name = cfg.name
        self.path = run_dir
        self.pid = process.pid
        self.log_file = control / "log.txt"
        self._process = process
        self._control = control
        self._started = time.time()
        self._resume = resume
        self._first_seen: tuple[float, int] | None = None  # (time, step) the loop began
        self._run = None
        # the control folder (config, stop request, error, log) goes with the handle
        weakref.finalize(self, shutil.rmtree, control, ignore_errors=True)

    @property
    def done(self) -> bool:
        """True once the process has ended (finished, stopped, failed or killed)."""
        return self._process.poll() is not None

    @property
    def run(self):  # -> gradlab.run.Run
        """The live `gradlab.Run`; waits (at most 10 minutes) for the process to create its
        store, and raises the training's error if it ended before."""
        from gradlab.run import load_run

        deadline = time.monotonic() + 600
        while self._run is None:
            try:
                self._run = load_run(self.path)
            except StoreError:
                if self.done:
                    self._raise_if_failed()
                    raise StoreError(f"the training of {self.name!r} ended without a run "
                                     f"store; its output: {self.log_file}", self.path) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no run store in {self.path} after 10 minutes; the "
                                       f"training's output: {self.log_file}") from None
                time.sleep(_POLL_SECONDS)
        return self._run

    @property
    def progress(self) -> TrainingProgress:
        """The step reached, of how many, the run's status and an ETA (from the store)."""
        from gradlab.store_reader import StoreReader

        steps, now = self.config.optimizer_steps, time.time()
        store = self.path / STORE_FILENAME
        try:
            reader = StoreReader(store)
            status = reader.status() if store.is_file() else None
            step = reader.progress()[1] if status is not None else None
        except StoreError:  # being created
            status, step = None, None
        if status is None:
            status = "exited" if self.done else "starting"
        step = steps if status == "finished" else min(int(step or 0), steps)
        eta = None
        if self._first_seen is None and status == "running":
            # a new run's loop starts when its config.yaml is written; a resumed one's is
            # first seen now
            config_file = self.path / "config.yaml"
            self._first_seen = ((now, step) if self._resume or not config_file.is_file()
                                else (config_file.stat().st_mtime, 0))
        if self._first_seen is not None and step > self._first_seen[1]:
            t0, s0 = self._first_seen
            eta = (now - t0) / (step - s0) * (steps - step)
        return TrainingProgress(step, steps, status, now - self._started, eta)

    def wait(self, timeout: float | None = None):  # -> gradlab.run.Run
        """Wait for the training to end and return its `gradlab.Run` (status 'finished', or
        'stopped' after `stop`); raise the training's error if it failed, TimeoutError if it
        is still running after ``timeout`` seconds."""
        from gradlab.run import load_run

        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the training of {self.name!r} is still running after "
                               f"{timeout} s: {self.progress}") from None
        self._raise_if_failed()
        return load_run(self.path)

    def stop(self, timeout: float | None = None):  # -> gradlab.run.Run
        """Ask the training to stop at the top of its next step, saving its checkpoint there
        (unless save_checkpoints=false), and wait for it (see `wait`). The run's status is
        then 'stopped' and ``gradlab.train(..., name=<name>, resume=True)`` continues it."""
        if not self.done:
            (self._control / "stop").touch()
        return self.wait(timeout)

    def log(self, tail: int = 4000) -> str:
        """The last ``tail`` characters of the process's output (warnings, progress bars)."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")[-tail:]
        except OSError:
            return ""

    def __repr__(self) -> str:
        return (f"BackgroundTraining(name={self.name!r}, {self.progress}, pid={self.pid}, "
                f"path={str(self.path)!r})")

    def _raise_if_failed(self) -> None:
        code = self._process.poll()
        if code in (None, 0, _STOPPED):
            return
        error = self._control / "error.json"
        if error.is_file():
            found = json.loads(error.read_text(encoding="utf-8"))
            raise _rebuild(found["type"], found["message"]) from _RemoteTraceback(
                found["traceback"])
        why = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        raise RuntimeError(f"the training of {self.name!r} {why}; its run folder "
                           f"{self.path} resumes with train(..., resume=True). Its output "
                           f"ends:\n{self.log(2000)}")


class _RemoteTraceback(Exception):
    """The traceback of the error in the training process (the cause of the error raised)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _rebuild(qualified: str, message: str) -> BaseException:
    """The training's exception: same class (when importable from gradlab or builtins) and
    message, else a RuntimeError naming the class."""
    module, _, name = qualified.rpartition(".")
    cls = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module.split(".")[0] == "gradlab":
        try:
            cls = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            cls = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            err = cls.__new__(cls)
            err.args = (message,)
            if str(err) == message:
                return err
        except Exception:  # noqa: BLE001 - a class that cannot be built this way
            pass
    return RuntimeError(f"{qualified}: {message}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _end_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to send SIGTERM to this process when its parent (the kernel) dies."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """The training process: ``python -m gradlab.background CONTROL_FOLDER``."""
    from gradlab.training import train

    control = Path((argv or sys.argv[1:])[0])
    options = json.loads((control / "options.json").read_text(encoding="utf-8"))
    stop_file = control / "stop"
    try:
        train(load_config(control / "config.yaml"), resume=options["resume"],
              overwrite=options["overwrite"], _stop_requested=stop_file.exists)
    except KeyboardInterrupt:  # a stop request (TrainingStopped) or Ctrl-C: status 'stopped'
        return _STOPPED
    except BaseException as err:  # noqa: BLE001 - every error goes back to the handle
        error = {"type": f"{type(err).__module__}.{type(err).__qualname__}",
                 "message": str(err), "traceback": traceback.format_exc()}
        tmp = control / "error.json.tmp"
        tmp.write_text(json.dumps(error), encoding="utf-8")
        tmp.replace(control / "error.json")
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
