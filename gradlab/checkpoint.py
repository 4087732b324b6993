"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder: ``model.safetensors`` (encoder + heads), ``train_state.safetensors``
(optimizer moments, RNG states, method state tensors) and ``state.json`` (step, resolved
config, scheduler, data positions, numpy/random RNG states, metrics). Folders are written
under a temporary name and swapped in by renames, so a crash never leaves a half-written
checkpoint under a real name; ``recover_checkpoints`` finishes a swap a kill interrupted.

A run's ``checkpoints/`` folder holds ``last`` (what a resumed run continues from), ``best``
(best dev score) and, with ``checkpoint_every``, the newest ``keep`` periodic ``step-N``
folders; ``last`` shares the files of the ``step-N`` saved with it (hard links).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
FILES = ("model.safetensors", "train_state.safetensors", "state.json")
_STEP_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


def save_checkpoint(path: str | Path, *, model_state: dict[str, torch.Tensor],
                    tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename over ``path``).

    model_state: the model's state_dict; tensors: other tensors (optimizer, RNG, method);
    state: JSON-able values. state.json is written last: its presence marks a whole folder.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
                  str(tmp / "model.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(tmp / "train_state.safetensors"))
        payload = {"format_version": FORMAT_VERSION, **state}
        (tmp / "state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        _swap_in(tmp, path)
    except (OSError, SafetensorError) as err:  # SafetensorError: e.g. a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {path}: {err}") from None
    return path


def link_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` a copy of the checkpoint folder ``source``, atomically.

    The files are hard links when the file system allows it (no extra disk space; checkpoint
    files are never modified in place, only replaced), copies otherwise.
    """
    source, path = Path(source), Path(path)
    tmp = _temporary(path)
    try:
        for name in FILES:
            try:
                os.link(source / name, tmp / name)
            except OSError:
                shutil.copy2(source / name, tmp / name)
        _swap_in(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {path}: {err}") from None
    return path


def _temporary(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint folder {path.parent}: {err}") from None
    return tmp


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename the complete folder ``tmp`` to ``path``, replacing an older one.

    A directory cannot be renamed over a non-empty one, so the old folder is first moved
    aside. Between the two renames ``path`` does not exist; ``recover_checkpoints`` then
    finds the complete new folder under its temporary name.
    """
    old = path.parent / f".old-{path.name}-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def recover_checkpoints(folder: str | Path) -> list[str]:
    """Finish checkpoint swaps a killed process left half done; delete leftovers.

    For each checkpoint name whose folder is missing, the complete temporary folder (written
    in full before the swap began) takes its place, else the folder it was replacing.
    Returns a line per action taken, for a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers: dict[str, list[Path]] = {}
    for entry in folder.iterdir():
        match = re.fullmatch(r"\.(tmp|old)-(.+)-\d+", entry.name)
        if match and entry.is_dir():
            leftovers.setdefault(match.group(2), []).append(entry)
    actions = []
    for name, entries in sorted(leftovers.items()):
        target = folder / name
        # the new (tmp) folder is preferred: it only exists complete once a swap has begun
        entries.sort(key=lambda p: (not p.name.startswith(".tmp-"), p.name))
        if not target.exists():
            for entry in entries:
                if _is_complete(entry):
                    os.replace(entry, target)
                    actions.append(f"restored {target} from {entry.name} (interrupted save)")
                    break
        for entry in entries:
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
                actions.append(f"removed the leftover {entry}")
    return actions


def _is_complete(path: Path) -> bool:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(state, dict) and state.get("format_version") == FORMAT_VERSION
            and all((path / name).is_file() for name in FILES))


def rotate_checkpoints(folder: str | Path, keep: int, step: int) -> list[Path]:
    """Delete periodic ``step-N`` folders but the ``keep`` newest with N <= ``step``.

    Folders with N > ``step`` belong to a timeline a resumed run is redoing; they go too.
    Returns the deleted folders.
    """
    folder = Path(folder)
    periodic = sorted(((int(m.group(1)), p) for p in folder.iterdir()
                       if (m := _STEP_FOLDER.fullmatch(p.name)) and p.is_dir()), reverse=True)
    kept = [p for n, p in periodic if n <= step][:keep]
    removed = [p for _, p in periodic if p not in kept]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def load_checkpoint(path: str | Path, *, training_state: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Read (model_state, tensors, state) from a checkpoint folder; clear errors if corrupt.

    training_state=False skips train_state.safetensors (tensors is then {}): all evaluation
    needs. Nothing is unpickled: state.json is parsed as JSON, tensors are read by safetensors
    (a JSON header and raw bytes, no code).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a folder holding "
                              "model.safetensors and state.json)")
    names = FILES if training_state else ("model.safetensors", "state.json")
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    state = read_state(path)
    tensors_of = {"train_state.safetensors": {}}
    for name in names[:-1]:
        try:
            tensors_of[name] = load_file(str(path / name))
        except (SafetensorError, OSError, ValueError) as err:  # a bad header or truncated data
            raise CheckpointError(f"checkpoint {path}: {name} is corrupt ({err})") from None
    return tensors_of["model.safetensors"], tensors_of["train_state.safetensors"], state


def read_state(path: str | Path) -> dict[str, Any]:
    """The parsed ``state.json`` of a checkpoint folder (a JSON object of a known version)."""
    file = Path(path) / "state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"cannot read {file}: {err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is corrupt (not UTF-8 JSON: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is corrupt: expected a JSON object, found "
                              f"{type(state).__name__}")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: unknown checkpoint format version "
                              f"{state.get('format_version')!r} (this gradlab reads "
                              f"{FORMAT_VERSION})")
    return state


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint folder from a checkpoint path or a run folder (its best, else last)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    for name in (prefer, "last", "best"):
        candidate = path / "checkpoints" / name
        if (candidate / "state.json").is_file():
            return candidate
    raise CheckpointError(f"{path} is neither a checkpoint folder nor a run folder with "
                          "checkpoints/best or checkpoints/last")


def latest_checkpoint(folder: str | Path) -> tuple[Path, tuple[dict, dict, dict]] | None:
    """The newest readable checkpoint among ``last``, ``step-N`` and ``best`` (each holds a
    whole training state) in a run's checkpoints folder; ``last`` first at equal steps.

    Returns (path, (model_state, tensors, state)), or None when there is no checkpoint at all.
    A corrupt candidate is skipped with a warning when an older one is readable; when none
    is, CheckpointError lists what is wrong with each.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = []
    for p in folder.iterdir():
        if p.name in ("last", "best") or _STEP_FOLDER.fullmatch(p.name):
            try:
                step = float(read_state(p).get("step", math.inf))
            except (CheckpointError, TypeError, ValueError):
                step = math.inf  # unknown: possibly the newest, so tried (and reported) first
            rank = {"last": 0, "best": 2}.get(p.name, 1)
            candidates.append((step, rank, p))
    problems = []
    for _, _, path in sorted(candidates, key=lambda c: (-c[0], c[1])):
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn("skipping unreadable checkpoint(s): " + "; ".join(problems) +
                          f" -- resuming from {path}", RuntimeWarning, stacklevel=2)
        return path, loaded
    if problems:
        raise CheckpointError("no readable checkpoint to resume from: " + "; ".join(problems))
    return None


# --- optimizer and RNG state as tensors + JSON ---------------------------------------------


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and JSON values."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


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
    np_state = np.random.get_state()
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
    np.random.set_state((str(n[0]), np.asarray(n[1], dtype=np.uint32), int(n[2]), int(n[3]),
                         float(n[4])))
    p = meta["python"]
    random.setstate((int(p[0]), tuple(int(x) for x in p[1]),
                     None if p[2] is None else float(p[2])))


# --- the training state of a run -----------------------------------------------------------


def training_state(*, optimizer: torch.optim.Optimizer, scheduler: Any, methods: dict[str, Any],
                   batchers: dict[str, Any], rng: tuple[dict, dict], step: int,
                   **values: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything a resumed run needs: (tensors for safetensors, JSON-able state).

    methods: name -> object with ``state_dict()`` ("method" for the run's method,
    "counterfactual.<name>" for the probes' hypothetical ones); batchers: task -> batcher;
    rng: what ``rng_state()`` returned; values: further JSON-able entries (config, metrics...).
    """
    tensors, optim_meta = optimizer_to_flat(optimizer, "optim")
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
    fit (a different model or task set, a corrupt or crafted state.json).
    """
    part = "model"
    try:
        missing, unexpected = compare_keys(model.state_dict(), model_state)
        if missing or unexpected:
            raise ValueError(f"missing {missing[:5]}, unexpected {unexpected[:5]} "
                             "(a different model or task set?)")
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
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot restore the {part}: "
                              f"{type(err).__name__}: {err}") from None
    return step


def compare_keys(expected: dict, found: dict) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of a state dict ``found`` against ``expected``, sorted."""
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))


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

__all__ = [
    "CheckpointError",
    "FILES",
    "check_like",
    "compare_keys",
    "latest_checkpoint",
    "link_checkpoint",
    "load_checkpoint",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "read_state",
    "recover_checkpoints",
    "resolve_checkpoint",
    "restore_training_state",
    "rng_state",
    "rotate_checkpoints",
    "save_checkpoint",
    "set_rng_state",
    "training_state",
]
