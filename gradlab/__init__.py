"""gradlab: see and tame gradient conflict in multi-task BERT training.

    >>> import gradlab
    >>> handle = gradlab.train(method="pcgrad", steps=200)          # doctest: +SKIP
    >>> run = gradlab.load_run(handle.path)                          # doctest: +SKIP
    >>> gradlab.plot_conflicts(run)                                  # doctest: +SKIP
    >>> job = gradlab.train(method="sum", background=True)           # doctest: +SKIP
    >>> job.progress, job.run, job.wait()                            # doctest: +SKIP

Heavy modules (torch, transformers, matplotlib) load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "gradlab.training",
    "RunHandle": "gradlab.training",
    "BackgroundTraining": "gradlab.background",
    "TrainConfig": "gradlab.config",
    "load_config": "gradlab.config",
    "ConfigError": "gradlab.config",
    "load_run": "gradlab.run",
    "load_runs": "gradlab.run",
    "Run": "gradlab.run",
    "Runs": "gradlab.run",
    "get_method": "gradlab.methods",
    "plot_conflicts": "gradlab.plot",
    "compare": "gradlab.plot",
    "set_theme": "gradlab.plot",
    "evaluate_checkpoint": "gradlab.inference",
    "build_parts": "gradlab.build",
    "task_gradients": "gradlab.step",
    "train_step": "gradlab.step",
    "load_model": "gradlab.probing",
    "gradients": "gradlab.probing",
    "noise_study": "gradlab.noise",
    "example_gradients": "gradlab.per_example",
    "ExampleGradients": "gradlab.per_example",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in ("stats", "plot", "methods", "data", "engine", "store", "run", "config",
                "calibration", "build", "step", "background"):
        return importlib.import_module(f"gradlab.{name}")
    raise AttributeError(f"module 'gradlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
