"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder: ``model.safetensors`` (encoder + heads), ``train_state.safetensors``
(optimizer moments, RNG states, method state tensors) and ``state.json`` (step, resolved
config, scheduler, data positions, numpy/random RNG states, metrics). Folders are written
under a temporary name and swapped in by renames, so a crash never leaves a half-written
checkpoint under a real name; ``recover_checkpoints`` finishes a swap a kill interrupted.

The checkpoints of one training step (e.g. ``best``, ``step-8`` and ``last``) are saved as
one unit by ``save_step``: every folder is first written in full under ``.save-<step>/``,
then one ``os.replace`` of the manifest ``.commit.json`` commits them, then they are
renamed into place. ``recover_checkpoints`` finishes the renames of a committed unit and
deletes an uncommitted one, so a kill at any point leaves either all or none of the step's
checkpoints.

A run's ``checkpoints/`` folder holds ``last`` (what a resumed run continues from), ``best``
(best dev score) and, with ``checkpoint_every``, the newest ``keep`` periodic ``step-N``
folders. Checkpoints of one unit share one set of files (hard links; copies where the file
system refuses links), and the optimizer state (``train_state.safetensors``, twice the
model's size with Adam) is kept only where a resume needs it: ``last`` and ``step-N`` always
hold it; ``best`` holds it only while it is the run's sole resume point (saved before any
``last``), or linked when saved in one unit with ``last``. A ``best`` saved after a ``last``
exists holds the model and ``state.json`` only, and a unit with ``last`` drops the optimizer
state of an older ``best``. Such a ``best`` serves ``evaluate`` / ``predict``
(``load_checkpoint(training_state=False)``) and is no resume point.

This module only reads and writes folders; what a training state holds and how it is put
back into a run's parts is ``gradlab.resume``'s.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gradlab.rundir import replace, write_point

FORMAT_VERSION = 1
FILES = ("model.safetensors", "train_state.safetensors", "state.json")
_STEP_FOLDER = re.compile(r"step-(\d+)")
_MANIFEST = ".commit.json"  # names the staged unit of checkpoints to rename into place
_STAGE = re.compile(r"\.save-(\d+)")


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
        _write_folder(tmp, model_state, tensors, state)
        _swap_in(tmp, path)
    except (OSError, SafetensorError) as err:  # SafetensorError: e.g. a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {path}: {err}") from None
    return path


def save_step(folder: str | Path, kinds: list[str], *, model_state: dict[str, torch.Tensor],
              tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> list[Path]:
    """Save the checkpoints ``kinds`` of one step in ``folder``, all or none of them.

    One kind (the first but ``best``) is written in full, the others share its files (hard
    links, copies where links are refused), all under ``folder/.save-<step>/``; a ``best``
    saved on its own once ``last`` exists leaves out the optimizer state (see the module's
    notes). One ``os.replace`` of the manifest then commits the unit, and the folders are
    renamed into place (replacing older ones). A kill before the commit leaves the older
    checkpoints; after it, ``recover_checkpoints`` finishes the renames. Returns the
    checkpoint folders.
    """
    folder = Path(folder)
    if not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must name distinct checkpoints, got {kinds!r}")
    stage = folder / f".save-{int(state['step'])}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        recover_checkpoints(folder)  # an unfinished unit (e.g. of a killed resume) goes first
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir()
        # written in full once, under the first kind that resumes (best only if it is alone)
        full = next((k for k in kinds if k != "best"), kinds[0])
        # a best saved on its own after a last exists is no resume point: model only
        weights_only = kinds == ["best"] and _is_complete(folder / "last")
        (stage / full).mkdir()
        _write_folder(stage / full, model_state, tensors, state, train_state=not weights_only)
        for kind in kinds:
            if kind != full:
                (stage / kind).mkdir()
                _share(stage / full, stage / kind, FILES)
        manifest = folder / f"{_MANIFEST}.tmp{os.getpid()}"
        manifest.write_text(json.dumps({"stage": stage.name, "kinds": kinds}), encoding="utf-8")
        write_point(f"wrote {manifest}")
        replace(manifest, folder / _MANIFEST)  # the commit point
        _finish_unit(folder)
    except (OSError, SafetensorError) as err:  # SafetensorError: e.g. a full disk
        if not (folder / _MANIFEST).exists():
            shutil.rmtree(stage, ignore_errors=True)
        raise CheckpointError(f"could not write the checkpoints {kinds} in {folder}: "
                              f"{err}") from None
    return [folder / kind for kind in kinds]


def _write_folder(tmp: Path, model_state: dict[str, torch.Tensor],
                  tensors: dict[str, torch.Tensor], state: dict[str, Any], *,
                  train_state: bool = True) -> None:
    """The files of a checkpoint; state.json last: its presence marks a whole folder.
    train_state=False leaves out train_state.safetensors (a checkpoint to evaluate only)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
              str(tmp / "model.safetensors"))
    write_point(f"wrote {tmp / 'model.safetensors'}")
    if train_state:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(tmp / "train_state.safetensors"))
        write_point(f"wrote {tmp / 'train_state.safetensors'}")
    payload = {"format_version": FORMAT_VERSION, **state}
    (tmp / "state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    write_point(f"wrote {tmp / 'state.json'}")


def _share(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Give the folder ``target`` the files ``names`` of ``source`` that exist: hard links
    (checkpoint files are never modified in place, only replaced or unlinked), copies where
    the file system refuses links. A write point after each file."""
    for name in names:
        if not (source / name).is_file():
            continue
        try:
            os.link(source / name, target / name)
            write_point(f"linked {target / name}")
        except OSError:
            shutil.copy2(source / name, target / name)
            write_point(f"copied {target / name}")


def _finish_unit(folder: Path) -> list[str]:
    """Rename the folders of the committed unit into place, then drop the manifest and the
    stage (which then holds the replaced folders). Safe to repeat after a kill."""
    manifest = folder / _MANIFEST
    try:
        unit = json.loads(manifest.read_text(encoding="utf-8"))
        kinds, stage = list(unit["kinds"]), folder / unit["stage"]
        if not _STAGE.fullmatch(stage.name) or not all(
                isinstance(k, str) and (k in ("last", "best") or _STEP_FOLDER.fullmatch(k))
                for k in kinds):
            raise ValueError(f"unexpected names {unit!r}")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        os.unlink(manifest)  # not one this module wrote: the unit counts as uncommitted
        return [f"ignored the unreadable {manifest} ({err})"]
    actions = []
    for kind in kinds:
        new, target = stage / kind, folder / kind
        if not new.exists():
            continue  # renamed into place already
        if target.exists():
            old = stage / f"old-{kind}"
            if old.exists():
                shutil.rmtree(old)
            replace(target, old)
        replace(new, target)
        actions.append(f"completed the save of {target} (interrupted)")
    best_state = folder / "best" / "train_state.safetensors"
    if "last" in kinds and "best" not in kinds and best_state.exists():
        # the new last (a newer resume point) makes the older best's optimizer state dead
        # weight; repeated harmlessly when a kill comes before the manifest is removed
        os.unlink(best_state)
        write_point(f"removed {best_state}")
    os.unlink(manifest)
    write_point(f"removed {manifest}")
    shutil.rmtree(stage, ignore_errors=True)
    write_point(f"removed {stage}")
    return actions


def link_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` a copy of the checkpoint folder ``source``, atomically.

    The files are hard links when the file system allows it (no extra disk space; checkpoint
    files are never modified in place, only replaced), copies otherwise.
    """
    source, path = Path(source), Path(path)
    tmp = _temporary(path)
    try:
        _share(source, tmp, FILES)
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
        replace(path, old)
    replace(tmp, path)
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
    actions = []
    if (folder / _MANIFEST).is_file():  # committed: roll forward
        actions += _finish_unit(folder)
    for entry in folder.iterdir():  # uncommitted units and manifests: roll back
        if entry.is_dir() and _STAGE.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            actions.append(f"removed the uncommitted save {entry}")
        elif entry.name.startswith(_MANIFEST + ".tmp"):
            entry.unlink(missing_ok=True)
    leftovers: dict[str, list[Path]] = {}
    for entry in folder.iterdir():
        match = re.fullmatch(r"\.(tmp|old)-(.+)-\d+", entry.name)
        if match and entry.is_dir():
            leftovers.setdefault(match.group(2), []).append(entry)
    for name, entries in sorted(leftovers.items()):
        target = folder / name
        # the new (tmp) folder is preferred: it only exists complete once a swap has begun
        entries.sort(key=lambda p: (not p.name.startswith(".tmp-"), p.name))
        if not target.exists():
            for entry in entries:
                if _is_complete(entry):
                    replace(entry, target)
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
        write_point(f"rotated away {p}")
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
    except RecursionError:
        raise CheckpointError(f"{file} is corrupt (JSON nested too deeply to parse)") from None
    except ValueError as err:  # an integer past Python's 4300-digit limit
        raise CheckpointError(f"{file} is corrupt ({err})") from None
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


def latest_checkpoint(folder: str | Path, check: Callable[[Path, dict, dict, dict], None]
                      | None = None) -> tuple[Path, tuple[dict, dict, dict]] | None:
    """The newest readable checkpoint among ``last``, ``step-N`` and ``best`` (when it holds
    a whole training state) in a run's checkpoints folder; ``last`` first at equal steps.

    Returns (path, (model_state, tensors, state)), or None when there is no checkpoint at all.
    check: called as ``check(path, model_state, tensors, state)`` on each readable candidate;
    a CheckpointError it raises makes the candidate count as corrupt (e.g.
    ``gradlab.checkpoint_schema.check_training_state``). A corrupt candidate is skipped with
    a warning when an older one is readable; when none is, CheckpointError lists what is
    wrong with each.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = []
    for p in folder.iterdir():
        if p.name == "best" and not (p / "train_state.safetensors").exists():
            continue  # weights only (saved after a last): not a resume point
        if p.name in ("last", "best") or _STEP_FOLDER.fullmatch(p.name):
            try:
                step = float(read_state(p).get("step", math.inf))
            except (CheckpointError, TypeError, ValueError, OverflowError):
                step = math.inf  # unknown: possibly the newest, so tried (and reported) first
            rank = {"last": 0, "best": 2}.get(p.name, 1)
            candidates.append((step, rank, p))
    problems = []
    for _, _, path in sorted(candidates, key=lambda c: (-c[0], c[1])):
        try:
            loaded = load_checkpoint(path)
            if check is not None:
                check(path, *loaded)
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


def compare_keys(expected: dict, found: dict) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of a state dict ``found`` against ``expected``, sorted."""
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))



__all__ = [
    "CheckpointError",
    "FILES",
    "compare_keys",
    "latest_checkpoint",
    "link_checkpoint",
    "load_checkpoint",
    "read_state",
    "recover_checkpoints",
    "resolve_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "save_step",
]
