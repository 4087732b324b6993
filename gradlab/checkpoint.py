"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder: ``model.safetensors`` (encoder + heads), ``train_state.safetensors``
(optimizer moments, RNG states, method state tensors) and ``state.json`` (step, resolved
config, scheduler, data positions, numpy/random RNG states, metrics). Folders are written
under a temporary name and renamed, so a crash never leaves a half-written checkpoint under
a real name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


def save_checkpoint(path: str | Path, *, model_state: dict[str, torch.Tensor],
                    tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename over ``path``).

    model_state: the model's state_dict; tensors: other tensors (optimizer, RNG, method);
    state: JSON-able values.
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint folder {parent}: {err}") from None
    tmp = parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
                  str(tmp / "model.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(tmp / "train_state.safetensors"))
        payload = {"format_version": FORMAT_VERSION, **state}
        (tmp / "state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        old = parent / f".old-{path.name}-{os.getpid()}"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {path}: {err}") from None
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                dict[str, Any]]:
    """Read (model_state, tensors, state) from a checkpoint folder; clear errors if corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a folder holding "
                              "model.safetensors and state.json)")
    files = {name: path / name for name in
             ("model.safetensors", "train_state.safetensors", "state.json")}
    missing = [n for n, f in files.items() if not f.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    try:
        state = json.loads(files["state.json"].read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path}: state.json is corrupt ({err})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: unknown format version "
                              f"{state.get('format_version') if isinstance(state, dict) else None}")
    try:
        model_state = load_file(str(files["model.safetensors"]))
        tensors = load_file(str(files["train_state.safetensors"]))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"checkpoint {path}: a tensor file is corrupt ({err})") from None
    return model_state, tensors, state


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
    """Inverse of ``optimizer_to_flat``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        idx, key = name[len(prefix) + 1:].split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
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
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), int(n[2]), int(n[3]),
                         float(n[4])))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
