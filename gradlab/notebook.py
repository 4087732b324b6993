"""The analysis notebooks' shared setup: budget, folders, and the runs they train and read.

Every notebook in ``analysis_notebooks/`` starts with ``nb = notebook_setup()``. Folders are
resolved from the repository root (not the kernel's working directory, which JupyterLab sets
to the notebook's folder), and each can be set with an environment variable:

- ``GRADLAB_NOTEBOOK_RUNS``: where the notebooks train their runs (``runs/notebooks``);
- ``GRADLAB_NOTEBOOK_FIGURES``: where they export figures (``figures/notebooks``);
- ``GRADLAB_NOTEBOOK_DEMO_RUNS``: the demo's runs that notebook 04 reads (``runs/demo``);
- ``GRADLAB_NOTEBOOK_TINY=1``: a tiny random BERT and a seconds-long budget (the tests).

Every schedule gets the same batches of each task (``step_budget="per_task"``), as in the
demo: round-robin takes T optimizer steps per batch of each task.

Background trainings take one torch thread each unless ``threads`` is given: torch's default
is one thread per core in every process, and six trainings of two threads each on a 2-core
machine reached a third of their steps in 26 minutes, about 3x slower than the same six one
after another (each process's threads wait for cores the others hold). ``ensure_runs``
runs at most one training per core at a time (``max_parallel``).

    >>> nb = notebook_setup()                       # doctest: +SKIP
    >>> folders = nb.ensure_runs(seeds=(0, 1))      # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["notebook_setup", "NotebookSetup", "METHODS", "TINY_BUDGET", "SMALL_BUDGET"]

#: the three trainings the notebooks compare: run-name prefix -> config changes
METHODS = {
    "sum": {"method": "sum", "schedule": "joint"},
    "round_robin": {"method": "sum", "schedule": "round_robin"},
    "pcgrad": {"method": "pcgrad", "schedule": "joint"},
}
#: a tiny random BERT, seconds per run (the tests execute every notebook with it)
TINY_BUDGET = {
    "tiny_encoder": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64},
    "steps": 8, "step_budget": "per_task", "train_limit": 64, "dev_limit": 32,
    "eval_every": 4, "batch_size": 4, "max_length": 32, "probe_every": 2,
    "probe_batch_size": 4, "progress": False, "threads": 1,
}  # fmt: skip
#: the packaged MiniLM-L6 on a small budget: 60 batches of 16 per task, dev curves every
#: 15 batches on the first 300 dev rows of each task, the demo's learning rates (the heads
#: start from scratch: at the default lr of 5e-5 they learn nothing in 60 steps, STS r 0.02)
SMALL_BUDGET = {
    "steps": 60, "step_budget": "per_task", "train_limit": 2000, "dev_limit": 300,
    "eval_every": 15, "probe_every": 5, "progress": False, "lr": 1.0e-3, "encoder_lr": 3.0e-5,
}  # fmt: skip


def repository_root() -> Path:
    """The checkout gradlab runs from (an editable install), else the working directory."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "analysis_notebooks").is_dir() else Path.cwd()


@dataclass
class NotebookSetup:
    """Budget and folders of the notebooks; trains their runs in the background
    (``gradlab.train(..., background=True)``)."""

    tiny: bool
    runs: Path
    figures: Path
    demo_runs: Path
    budget: dict = field(default_factory=dict)
    #: trainings ``ensure_runs`` runs at once (default: one per core, one thread each)
    max_parallel: int = field(default_factory=lambda: os.cpu_count() or 1)

    def train_in_background(self, name: str, overwrite: bool = False, **values):
        """``gradlab.train(..., background=True)`` of run ``name`` in `runs` on the notebooks'
        budget (``values`` change it); returns its `gradlab.background.BackgroundTraining`.
        ``eval_every`` counts batches per task, as ``steps`` does. One torch thread unless
        ``threads`` is given (several trainings share the cores; see the module docstring)."""
        import gradlab

        values = {"name": name, "runs_dir": str(self.runs), "threads": 1, **self.budget,
                  **values}
        if values.get("schedule", "joint") != "joint" and values.get("eval_every"):
            from gradlab.config import TrainConfig

            tasks = values.get("tasks") or TrainConfig().tasks
            values["eval_every"] = values["eval_every"] * len(tasks)
        return gradlab.train(None, background=True, overwrite=overwrite, **values)

    def ensure_runs(self, seeds=(0,), methods: dict | None = None) -> list[Path]:
        """Train each method of ``methods`` (default `METHODS`) for each seed unless its run
        finished before, in the background, at most `max_parallel` at a time (one thread
        each); returns the run folders."""
        import gradlab

        folders, todo = [], []
        for seed in seeds:
            for name, values in (methods or METHODS).items():
                folder = self.runs / f"{name}-s{seed}"
                folders.append(folder)
                if (folder / "run.sqlite").exists() and \
                        gradlab.load_run(folder).status == "finished":
                    continue
                if folder.exists():  # an unfinished run: keep it aside, train anew
                    shutil.move(str(folder), f"{folder}.old-{int(time.time())}")
                todo.append((folder.name, seed, values))
        running: list = []
        for name, seed, values in todo:
            while len(running) >= max(1, self.max_parallel):
                running = _wait_for_one(running)
            running.append(self.train_in_background(name, seed=seed, **values))
        for job in running:
            job.wait()
        return folders

    def demo_or_notebook_runs(self) -> list[Path]:
        """The demo's three runs when they exist (not in tiny mode), else `ensure_runs`."""
        demo = [self.demo_runs / n for n in ("sum", "round_robin", "pcgrad")]
        if not self.tiny and all((d / "run.sqlite").exists() for d in demo):
            return demo
        return self.ensure_runs()

    def __repr__(self) -> str:
        mode = "tiny random BERT" if self.tiny else "MiniLM-L6, small budget"
        return (f"NotebookSetup({mode}; runs in {self.runs}, figures in {self.figures}, "
                f"demo runs read from {self.demo_runs})")


def _wait_for_one(jobs: list) -> list:
    """Wait until one of the background trainings ``jobs`` ends (its error, if it failed, is
    raised by its ``wait``); return the others."""
    while True:
        for k, job in enumerate(jobs):
            if job.done:
                job.wait()
                return jobs[:k] + jobs[k + 1:]
        time.sleep(0.5)


def notebook_setup(tiny: bool | None = None) -> NotebookSetup:
    """The notebooks' settings from the ``GRADLAB_NOTEBOOK_*`` variables (module docstring).
    ``tiny``: force the tiny budget on or off."""
    root = repository_root()
    if tiny is None:
        tiny = os.environ.get("GRADLAB_NOTEBOOK_TINY") == "1"

    def folder(variable: str, default: str) -> Path:
        value = os.environ.get(variable)
        return Path(value).expanduser().resolve() if value else root / default

    return NotebookSetup(
        tiny=tiny,
        runs=folder("GRADLAB_NOTEBOOK_RUNS", "runs/notebooks"),
        figures=folder("GRADLAB_NOTEBOOK_FIGURES", "figures/notebooks"),
        demo_runs=folder("GRADLAB_NOTEBOOK_DEMO_RUNS", "runs/demo"),
        budget=dict(TINY_BUDGET if tiny else SMALL_BUDGET),
    )
