"""A run's training state <-> checkpoint tensors + JSON, and where a resumed run continues.

A checkpoint holds the whole training state (model, optimizer, scheduler, method states, RNG
states, data positions, the loop's progress), so ``gradlab.train(..., resume=True)`` ends bit
for bit as the uninterrupted run would have (on CPU). ``find_resume_point`` picks the newest
readable checkpoint and refuses a run configuration that differs in anything but
``RESUMABLE_CHANGES``; ``restore`` puts the state back into a run's parts (RNG states last);
``save`` writes it. Folder I/O (atomic writes, links, recovery) is ``gradlab.checkpoint``'s.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradlab import checkpoint as ckpt
from gradlab.checkpoint_schema import check_fits, check_training_state, optimizer_param_names
from gradlab.config import TrainConfig, load_config, to_dict, upgrade_keys

if TYPE_CHECKING:
    from gradlab.build import Parts

# Config keys a resumed run may change: none of them alters the trained parameters.
RESUMABLE_CHANGES = ("name", "runs_dir", "data_dir", "progress", "threads", "device",
                     "eval_batch_size", "nonfinite", "max_skipped_share", "checkpoint_every",
                     "keep_checkpoints", "save_checkpoints", "tokenization_cache")


@dataclass
class ResumePoint:
    """The checkpoint a resumed run continues from, as ``ckpt.load_checkpoint`` read it."""

    path: Path
    model_state: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


@dataclass
class Progress:
    """The loop's own state, saved with every checkpoint: the step it starts (or restarts)
    at, the best dev score, skipped steps, the latest metrics, the checkpoints written at
    that step (logged again on resume) and the wall time spent before."""

    step: int = 0
    best_score: float = -math.inf
    skipped_steps: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    saves: list[str] = field(default_factory=list)
    wall_time: float = 0.0


def find_resume_point(run_dir: Path, cfg: TrainConfig) -> ResumePoint | None:
    """The checkpoint to continue the run ``run_dir`` from (None: none saved, the run starts
    again at step 0); CheckpointError if it was written by a different configuration."""
    checkpoint_dir = run_dir / "checkpoints"
    for action in ckpt.recover_checkpoints(checkpoint_dir):
        warnings.warn(action, RuntimeWarning, stacklevel=3)
    # a checkpoint that is not a well-formed training state counts as corrupt: an older one
    found = ckpt.latest_checkpoint(checkpoint_dir, check=check_training_state)
    if found is None:
        config_file = run_dir / "config.yaml"
        if config_file.is_file():
            check_compatible(to_dict(load_config(config_file)), cfg, config_file)
        warnings.warn(f"{run_dir} has no checkpoint: its run starts again at step 0",
                      RuntimeWarning, stacklevel=3)
        return None
    path, (model_state, tensors, state) = found
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ckpt.CheckpointError(f"checkpoint {path}: state.json holds no config")
    check_compatible(saved, cfg, path)
    return ResumePoint(path, model_state, tensors, state)


def check_compatible(saved: dict, cfg: TrainConfig, source: Path) -> None:
    """CheckpointError listing every config key (but RESUMABLE_CHANGES) that differs.

    A key the saved config lacks (added to gradlab later) counts as its default.
    """
    current, defaults = to_dict(cfg), to_dict(TrainConfig())
    saved = upgrade_keys(saved, str(source), warn=False)  # keys renamed since it was saved
    problems = [f"{k}: the run has {saved.get(k, defaults[k])!r}, the config {v!r}"
                for k, v in current.items()
                if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v]
    problems += [f"{k}: unknown key in the run's config" for k in saved if k not in current]
    if problems:
        raise ckpt.CheckpointError(
            f"cannot resume from {source}: it was written by a different run configuration "
            "(a different model, task set or schedule?): " + "; ".join(problems))


def restore(point: ResumePoint, parts: Parts) -> Progress:
    """Load a checkpoint into a run's parts (RNG states last); the loop's progress."""
    step = restore_training_state(
        point.path, point.model_state, point.tensors, point.state, model=parts.model,
        optimizer=parts.optimizer, scheduler=parts.scheduler, methods=stateful_methods(parts),
        batchers=parts.batchers, max_step=parts.total_steps)
    state = point.state
    return Progress(step=step,
                    best_score=-math.inf if state.get("best_score") is None
                    else state["best_score"],
                    skipped_steps=state.get("skipped_steps", 0),
                    metrics=state.get("metrics") or {},
                    saves=state.get("saves", ["last"]),
                    wall_time=state.get("wall_time", 0))


def save(folder: Path, kinds: list[str], parts: Parts, *, step: int, rng: tuple[dict, dict],
         progress: Progress, config: dict[str, Any]) -> list[Path]:
    """Write the training state at ``step`` as the checkpoints ``folder/<kind>`` of every
    kind, one unit: all of them or none (``ckpt.save_step``); ``progress.saves`` lists them
    (a resumed run logs them again). rng: what ``rng_state()`` returned before the step's
    evaluation."""
    tensors, state = training_state(
        optimizer=parts.optimizer, scheduler=parts.scheduler, methods=stateful_methods(parts),
        batchers=parts.batchers, rng=rng, step=step, config=config, tasks=parts.tasks,
        param_names=optimizer_param_names(parts.model, parts.optimizer),
        best_score=progress.best_score if math.isfinite(progress.best_score) else None,
        skipped_steps=progress.skipped_steps, metrics=progress.metrics,
        saves=list(progress.saves), wall_time=progress.wall_time)
    return ckpt.save_step(folder, kinds, model_state=parts.model.state_dict(), tensors=tensors,
                          state=state)


def stateful_methods(parts: Parts) -> dict[str, Any]:
    """The run's method and the probes' counterfactual ones, by their checkpoint prefix."""
    return {"method": parts.method,
            **{f"counterfactual.{name}": m for name, m in parts.counterfactuals.items()}}


# --- optimizer and RNG state as tensors + JSON ---------------------------------------------


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and JSON values; "stateful"
    lists the parameters that have state (the others never had a gradient), so that lost
    moments are found on load."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars,
                     "stateful": sorted(int(idx) for idx in sd["state"])}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, prefix: str,
                        tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of ``optimizer_to_flat``; ValueError if the saved state does not fit.

    The hyperparameter groups must have the form of the optimizer's own, and every moment
    tensor the shape of its parameter, so nothing fails later in the middle of a run.
    """
    ours = optimizer.state_dict()["param_groups"]
    check_like(meta["param_groups"], ours, "param_groups")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        idx, key = name[len(prefix) + 1:].split(".", 1)
        if not 0 <= int(idx) < len(params):
            raise ValueError(f"{name}: the optimizer has {len(params)} parameters")
        if value.dim() > 0 and value.shape != params[int(idx)].shape:
            raise ValueError(f"{name} has shape {list(value.shape)}, its parameter "
                             f"{list(params[int(idx)].shape)}")
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        check_like(values, dict.fromkeys(values, 0.0), f"scalars.{idx}")
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (tensor), numpy and random (JSON) generator states."""
    np_state = np.random.get_state()  # noqa: NPY002 - numpy's legacy global RNG, on purpose
    py_state = random.getstate()
    return (
        {"rng.torch": torch.get_rng_state()},
        {
            "numpy": [np_state[0], np_state[1].tolist(), *[float(x) if isinstance(x, float)
                                                            else int(x) for x in np_state[2:]]],
            "python": [py_state[0], list(py_state[1]), py_state[2]],
        },
    )


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore the states saved by ``rng_state``."""
    torch.set_rng_state(tensors["rng.torch"])
    n = meta["numpy"]
    np.random.set_state((str(n[0]), np.asarray(n[1], dtype=np.uint32),  # noqa: NPY002
                         int(n[2]), int(n[3]), float(n[4])))
    p = meta["python"]
    random.setstate((int(p[0]), tuple(int(x) for x in p[1]),
                     None if p[2] is None else float(p[2])))


# --- the training state of a run -----------------------------------------------------------


def training_state(*, optimizer: torch.optim.Optimizer, scheduler: Any, methods: dict[str, Any],
                   batchers: dict[str, Any], rng: tuple[dict, dict], step: int,
                   param_names: list[str] | None = None,
                   **values: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything a resumed run needs: (tensors for safetensors, JSON-able state).

    methods: name -> object with ``state_dict()`` ("method" for the run's method,
    "counterfactual.<name>" for the probes' hypothetical ones); batchers: task -> batcher;
    rng: what ``rng_state()`` returned; param_names: the model's name of each optimizer
    parameter (``checkpoint_schema.optimizer_param_names``; lets a load check each moment
    against its parameter); values: further JSON-able entries (config, metrics...).
    """
    tensors, optim_meta = optimizer_to_flat(optimizer, "optim")
    if param_names is not None:
        optim_meta["param_names"] = list(param_names)
    rng_tensors, rng_meta = rng
    tensors.update(rng_tensors)
    method_json = {}
    for prefix, method in methods.items():
        method_json[prefix] = {}
        for key, value in method.state_dict().items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{key}"] = value
            else:
                method_json[prefix][key] = value
    state = {
        "step": step,
        "optimizer": optim_meta,
        "scheduler": scheduler.state_dict(),
        "methods": method_json,
        "batchers": {t: b.state_dict() for t, b in batchers.items()},
        "rng": rng_meta,
        **values,
    }
    return tensors, state


def restore_training_state(path: str | Path, model_state: dict[str, torch.Tensor],
                           tensors: dict[str, torch.Tensor], state: dict[str, Any], *,
                           model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any, methods: dict[str, Any], batchers: dict[str, Any],
                           max_step: int) -> int:
    """Load a checkpoint into the parts of a run (inverse of ``training_state``); its step.

    The RNG states are restored last. Raises CheckpointError naming the part that does not
    fit (a different model or task set, a corrupt or crafted state.json), before anything
    is loaded when the model's tensors or the optimizer's do not fit
    (``checkpoint_schema.check_fits``: no tensor is cast).
    """
    missing, unexpected = ckpt.compare_keys(model.state_dict(), model_state)
    if missing or unexpected:
        raise ckpt.CheckpointError(f"checkpoint {path}: cannot restore the model: ValueError: "
                                   f"missing {missing[:5]}, unexpected {unexpected[:5]} "
                                   "(a different model or task set?)")
    check_fits(path, model_state, tensors, state, model=model, optimizer=optimizer)
    part = "model"
    try:
        model.load_state_dict(model_state)
        part = "optimizer"
        optimizer_from_flat(optimizer, "optim", tensors, state["optimizer"])
        part = "scheduler"
        scheduler.load_state_dict(_checked_scheduler_state(scheduler, state["scheduler"]))
        for prefix, method in methods.items():
            part = f"state of {prefix} {method!r}"
            json_part = state["methods"].get(prefix, {})
            if not isinstance(json_part, dict):
                raise TypeError(f"expected a JSON object, found {json_part!r}")
            method.load_state_dict({**json_part, **{
                name[len(prefix) + 1:]: value for name, value in tensors.items()
                if name.startswith(prefix + ".")}})
        part = "data positions"
        for task, batcher in batchers.items():
            batcher.load_state_dict(state["batchers"][task])
        part = "step"
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= max_step:
            raise ValueError(f"step {step!r} is not in 0..{max_step}")
        part = "random number generators"
        set_rng_state(tensors, state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError,
            OverflowError, RecursionError) as err:
        raise ckpt.CheckpointError(f"checkpoint {path}: cannot restore the {part}: "
                              f"{type(err).__name__}: {err}") from None
    return step


def _checked_scheduler_state(scheduler: Any, state: Any) -> dict:
    """The saved scheduler state, if it has the form (keys, value types) of ours.

    LRScheduler.load_state_dict copies every key into the scheduler's attributes, so a
    crafted state.json must not choose them.
    """
    check_like(state, scheduler.state_dict(), "scheduler")
    return state


def check_like(value: Any, expected: Any, where: str) -> None:
    """ValueError unless the JSON value ``value`` has the form of ``expected``: the same dict
    keys, list lengths and kinds of scalars (numbers, bools, strings, None), recursively."""
    if expected is None or isinstance(expected, bool | str):
        ok = type(value) is type(expected)
    elif isinstance(expected, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(expected, list | tuple):
        ok = isinstance(value, list | tuple) and len(value) == len(expected)
        for i, (v, e) in enumerate(zip(value, expected, strict=False) if ok else ()):
            check_like(v, e, f"{where}[{i}]")
    elif isinstance(expected, dict):
        ok = isinstance(value, dict) and set(value) == set(expected)
        for key in expected if ok else ():
            check_like(value[key], expected[key], f"{where}.{key}")
    else:
        ok = False
    if not ok:
        raise ValueError(f"{where}={value!r} does not have the form of {expected!r}")


__all__ = ["RESUMABLE_CHANGES", "Progress", "ResumePoint", "check_compatible", "check_like",
           "find_resume_point", "optimizer_from_flat", "optimizer_to_flat", "restore",
           "restore_training_state", "rng_state", "save", "set_rng_state", "stateful_methods",
           "training_state"]
