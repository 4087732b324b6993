"""The schema of a checkpoint's training state: every value's type, shape, dtype and range.

A resumed run reads ``state.json`` and two safetensors files that anyone could have edited.
Nothing of them reaches the run unchecked:

- ``check_training_state`` needs only the checkpoint. A candidate it rejects (nesting deeper
  than `MAX_DEPTH`, an integer past int64, an RNG state word past 32 bits, a learning rate
  above the schedule's peak, a 0-dim Adam moment, missing moments, ``saves=[1, 2]`` ...)
  counts as corrupt: ``gradlab.resume`` falls back to an older readable checkpoint, as for a
  truncated file, and names the file and the key or tensor at fault.
- ``check_fits`` compares the checkpoint with the run's own model and optimizer and refuses
  (CheckpointError naming the file and tensor) a model tensor of another shape or dtype (an
  fp16 or int64 tensor is never cast without a word) or hyperparameters other than the
  optimizer's own: every checkpoint of the run would differ the same way.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from gradlab.checkpoint import CheckpointError, compare_keys

MAX_DEPTH = 32  # JSON nesting a training state never comes near (a config: about 5)
_INT64 = 2**63
_WORD = 2**32  # Mersenne Twister state words are 32-bit
_STEP_MAX = 2**31 - 1
_KINDS = re.compile(r"last|best|step-\d+")
_OPTIM = re.compile(r"optim\.(\d+)\.(\w+)")
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_REQUIRED = ("step", "config", "optimizer", "scheduler", "methods", "batchers", "rng")
_SHOWN = 5  # problems named in one error


def check_training_state(path: str | Path, model_state: dict[str, torch.Tensor],
                         tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """CheckpointError naming the file and the values at fault unless the checkpoint at
    ``path`` holds a well-formed training state (what ``gradlab.resume.training_state``
    writes): types, ranges, tensor shapes, dtypes and finiteness."""
    path = Path(path)
    for name, problems in (("state.json", state_problems(state)),
                           ("model.safetensors", model_problems(model_state)),
                           ("train_state.safetensors",
                            tensor_problems(model_state, tensors, state))):
        if problems:
            raise CheckpointError(f"{path / name} is corrupt: " + _join(problems))


def check_fits(path: str | Path, model_state: dict[str, torch.Tensor],
               tensors: dict[str, torch.Tensor], state: dict[str, Any], *,
               model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """CheckpointError unless the checkpoint's model tensors have the names, shapes and
    dtypes of ``model``'s and its optimizer state fits ``optimizer`` (same parameters, same
    hyperparameters but the scheduled lr, moments of each parameter's shape)."""
    path = Path(path)
    ours = model.state_dict()
    missing, unexpected = compare_keys(ours, model_state)
    problems = []
    if missing or unexpected:
        problems.append(f"missing {missing[:5]}, unexpected {unexpected[:5]} (a different "
                        "model or task set?)")
    for name in sorted(set(ours) & set(model_state)):
        mine, theirs = ours[name], model_state[name]
        if theirs.dtype != mine.dtype or theirs.shape != mine.shape:
            problems.append(f"tensor {name!r} is {_describe(theirs)}, the model's "
                            f"{_describe(mine)}")
    if problems:
        raise CheckpointError(f"cannot resume from {path}: {path / 'model.safetensors'} "
                              "does not fit the model (nothing is cast or reshaped): "
                              + _join(problems))
    problems = optimizer_fit_problems(tensors, state.get("optimizer", {}), model, optimizer)
    if problems:
        raise CheckpointError(f"cannot resume from {path}: its optimizer state does not fit "
                              "the run's optimizer: " + _join(problems))


def optimizer_param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer
                          ) -> list[str]:
    """The model's name of each optimizer parameter, in the optimizer's order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]]


# --- state.json ------------------------------------------------------------------------------


def state_problems(state: dict[str, Any]) -> list[str]:
    """Every problem of a parsed state.json (empty: well formed)."""
    problems = bounds_problems(state)
    if problems:  # no further walk through a structure that deep or those numbers
        return problems
    problems = [f"{key}: missing" for key in _REQUIRED if key not in state]
    step = state.get("step")
    if "step" in state and not _is_int(step, 0, _STEP_MAX):
        problems.append(f"step={_show(step)} must be an integer in 0..{_STEP_MAX}")
        step = None
    for key in ("config", "methods", "batchers"):
        if key in state and not _is_dict(state[key]):
            problems.append(f"{key}: expected a JSON object, found {_show(state[key])}")
    for prefix, values in state.get("methods", {}).items() if _is_dict(
            state.get("methods")) else ():
        if not _is_dict(values):
            problems.append(f"methods.{prefix}: expected a JSON object, found {_show(values)}")
    for task, values in state.get("batchers", {}).items() if _is_dict(
            state.get("batchers")) else ():
        # ranges are the batcher's own to check (load_state_dict names them)
        if not _is_dict(values) or not all(_is_int(v, -_INT64, _INT64 - 1)
                                           for v in values.values()):
            problems.append(f"batchers.{task}={_show(values)} must map names to integers")
    if "optimizer" in state:
        problems += _optimizer_problems(state["optimizer"])
    if "scheduler" in state:
        problems += _scheduler_problems(state["scheduler"])
    if "rng" in state:
        problems += _rng_problems(state["rng"])
    problems += _progress_problems(state, step)
    return problems


def bounds_problems(value: Any, where: str = "state.json") -> list[str]:
    """Nesting deeper than MAX_DEPTH and integers outside int64, found without recursion."""
    stack = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if depth > MAX_DEPTH:
            return [f"{at}: nested deeper than {MAX_DEPTH} levels"]
        if isinstance(item, int) and not isinstance(item, bool) and not \
                -_INT64 <= item < _INT64:
            return [f"{at}: an integer of {item.bit_length()} bits (outside int64)"]
        if isinstance(item, dict):
            stack += [(v, f"{at}.{k}" if depth < 6 else at, depth + 1) for k, v in item.items()]
        elif isinstance(item, list):
            stack += [(v, f"{at}[{i}]" if depth < 6 else at, depth + 1)
                      for i, v in enumerate(item)]
    return []


def _optimizer_problems(meta: Any) -> list[str]:
    if not _is_dict(meta) or not isinstance(meta.get("param_groups"), list) \
            or not _is_dict(meta.get("scalars", {})):
        return [f"optimizer={_show(meta)} must hold param_groups (a list) and scalars"]
    problems, seen = [], []
    for i, group in enumerate(meta["param_groups"]):
        where = f"optimizer.param_groups[{i}]"
        if not _is_dict(group):
            problems.append(f"{where}={_show(group)} must be a JSON object")
            continue
        params = group.get("params")
        if not isinstance(params, list) or not all(_is_int(p, 0, _STEP_MAX) for p in params):
            problems.append(f"{where}.params={_show(params)} must list parameter indices")
        else:
            seen += params
        peak = group.get("initial_lr")
        if "initial_lr" in group and not _is_number(peak, low=0, low_inclusive=False):
            problems.append(f"{where}.initial_lr={_show(peak)} must be a finite number > 0")
            peak = None
        lr = group.get("lr")
        if not _is_number(lr, low=0) or (_is_number(peak) and lr > peak):
            bound = f" and at most initial_lr={peak!r} (the schedule's peak)" \
                if _is_number(peak) else ""
            problems.append(f"{where}.lr={_show(lr)} must be a finite number >= 0{bound}")
        for key, low, inclusive in (("weight_decay", 0, True), ("eps", 0, False)):
            if key in group and not _is_number(group[key], low=low, low_inclusive=inclusive):
                problems.append(f"{where}.{key}={_show(group[key])} must be a finite number "
                                f"{'>=' if inclusive else '>'} {low}")
        betas = group.get("betas")
        if "betas" in group and not (isinstance(betas, list) and len(betas) == 2 and all(
                _is_number(b, low=0) and b < 1 for b in betas)):
            problems.append(f"{where}.betas={_show(betas)} must be two numbers in [0, 1)")
    if len(seen) != len(set(seen)) or sorted(seen) != list(range(len(seen))):
        problems.append(f"optimizer.param_groups: parameter indices {_show(sorted(seen))} "
                        f"must be 0..{len(seen) - 1}, each once")
    names = meta.get("param_names")
    if "param_names" in meta and not (isinstance(names, list) and len(names) == len(seen)
                                      and all(isinstance(n, str) for n in names)):
        problems.append(f"optimizer.param_names={_show(names)} must name the {len(seen)} "
                        "parameters")
    stateful = meta.get("stateful")
    if "stateful" in meta and not (isinstance(stateful, list) and all(
            _is_int(i, 0, len(seen) - 1) for i in stateful)):
        problems.append(f"optimizer.stateful={_show(stateful)} must list parameter indices")
    for idx, values in meta.get("scalars", {}).items():
        if not (idx.isdigit() and int(idx) < len(seen)) or not _is_dict(values):
            problems.append(f"optimizer.scalars.{idx}={_show(values)} is not the state of a "
                            "parameter")
    return problems


def _scheduler_problems(sched: Any) -> list[str]:
    if not _is_dict(sched):
        return [f"scheduler={_show(sched)} must be a JSON object"]
    problems = []
    for key in ("last_epoch", "_step_count"):
        if key in sched and not _is_int(sched[key], -1, _STEP_MAX):
            problems.append(f"scheduler.{key}={_show(sched[key])} must be an integer in "
                            f"-1..{_STEP_MAX}")
    for key, low_inclusive in (("base_lrs", False), ("_last_lr", True)):
        values = sched.get(key)
        if key in sched and not (isinstance(values, list) and all(
                _is_number(v, low=0, low_inclusive=low_inclusive) for v in values)):
            problems.append(f"scheduler.{key}={_show(values)} must list finite learning rates")
    return problems


def _rng_problems(rng: Any) -> list[str]:
    if not _is_dict(rng):
        return [f"rng={_show(rng)} must be a JSON object"]
    problems = []
    n = rng.get("numpy")
    if not (isinstance(n, list) and len(n) == 5 and n[0] == "MT19937"
            and _words(n[1], 624) and _is_int(n[2], 0, 624) and _is_int(n[3], 0, 1)
            and _is_number(n[4])):
        problems.append(f"rng.numpy={_show(n)} must be ['MT19937', 624 32-bit words, a "
                        "position 0..624, has_gauss 0|1, a finite number]")
    p = rng.get("python")
    if not (isinstance(p, list) and len(p) == 3 and _is_int(p[0], 1, 3)
            and _words(p[1], 625) and p[1][-1] <= 624
            and (p[2] is None or _is_number(p[2]))):
        problems.append(f"rng.python={_show(p)} must be [version, 624 32-bit words and a "
                        "position 0..624, null or a finite number]")
    return problems


def _progress_problems(state: dict[str, Any], step: int | None) -> list[str]:
    """The loop's own values (all optional: older checkpoints lack some)."""
    problems = []
    best = state.get("best_score")
    if best is not None and not _is_number(best):
        problems.append(f"best_score={_show(best)} must be a finite number or null")
    skipped = state.get("skipped_steps", 0)
    if not _is_int(skipped, 0, _STEP_MAX if step is None else step):
        problems.append(f"skipped_steps={_show(skipped)} must be an integer in "
                        f"0..{'step' if step is None else step}")
    metrics = state.get("metrics") or {}
    if not _is_dict(metrics) or not all(
            _is_dict(values) and all(v is None or (isinstance(v, int | float)
                                                   and not isinstance(v, bool))
                                     for v in values.values()) for values in metrics.values()):
        problems.append(f"metrics={_show(metrics)} must map tasks to {{metric: number}}")
    saves = state.get("saves", ["last"])
    if not (isinstance(saves, list) and saves and len(set(map(repr, saves))) == len(saves)
            and all(isinstance(k, str) and _KINDS.fullmatch(k) for k in saves)):
        problems.append(f"saves={_show(saves)} must list distinct checkpoint names (last, best, "
                        "step-N)")
    wall = state.get("wall_time", 0.0)
    if not _is_number(wall, low=0):
        problems.append(f"wall_time={_show(wall)} must be a finite number >= 0")
    return problems


# --- tensors ---------------------------------------------------------------------------------


def model_problems(model_state: dict[str, torch.Tensor]) -> list[str]:
    """Model tensors holding NaN (a model that is not finite is never saved; an infinite
    value may be a buffer's, e.g. an attention mask, so only NaN is looked for)."""
    return [f"tensor {name!r} holds NaN" for name, t in model_state.items()
            if t.is_floating_point() and bool(torch.isnan(t).any())]


def tensor_problems(model_state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                    state: dict[str, Any]) -> list[str]:
    """Problems of train_state.safetensors: the torch RNG state, and the optimizer moments
    (each parameter with state has all of them, of its parameter's shape and dtype, finite,
    second moments >= 0, Adam's step count an integer <= the run's step)."""
    problems = []
    rng = tensors.get("rng.torch")
    expected = torch.get_rng_state()
    if rng is None or rng.dtype != expected.dtype or rng.shape != expected.shape:
        problems.append(f"rng.torch is {'missing' if rng is None else _describe(rng)}, "
                        f"expected {_describe(expected)}")
    meta = state.get("optimizer") if _is_dict(state.get("optimizer")) else {}
    groups = [g for g in meta.get("param_groups", []) if _is_dict(g)]
    amsgrad = {i: bool(g.get("amsgrad")) for g in groups for i in g.get("params", [])
               if isinstance(g.get("params"), list)}
    names = meta.get("param_names")
    found: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name == "rng.torch" or name.startswith(("method.", "counterfactual.")):
            continue  # method states are checked by the methods' load_state_dict
        match = _OPTIM.fullmatch(name)
        if match is None or int(match.group(1)) not in amsgrad:
            problems.append(f"unexpected tensor {name!r}")
            continue
        found.setdefault(int(match.group(1)), {})[match.group(2)] = value
    step = state.get("step") if _is_int(state.get("step"), 0, _STEP_MAX) else _STEP_MAX
    for idx, values in sorted(found.items()):
        shape_of = model_state.get(names[idx]) if isinstance(names, list) else None
        problems += _moment_problems(idx, values, amsgrad[idx], shape_of, step)
    stateful = meta.get("stateful")
    if isinstance(stateful, list):
        lost = sorted(set(stateful) - set(found))
        if lost:
            problems.append(f"the optimizer moments of {len(lost)} parameter(s) are missing "
                            f"(e.g. optim.{lost[0]}"
                            + (f", {names[lost[0]]!r}" if isinstance(names, list) else "")
                            + "): Adam would silently start again")
        extra = sorted(set(found) - set(stateful))
        if extra:
            problems.append(f"optimizer moments of parameters {extra[:5]} that had none")
    elif not found and _is_int(state.get("skipped_steps", 0), 0, _STEP_MAX) \
            and step > state.get("skipped_steps", 0):
        problems.append(f"no optimizer moments, though the run took "
                        f"{step - state.get('skipped_steps', 0)} optimizer step(s): Adam "
                        "would silently start again")
    return problems


def _moment_problems(idx: int, values: dict[str, torch.Tensor], amsgrad: bool,
                     param: torch.Tensor | None, step: int) -> list[str]:
    where = f"optim.{idx}"
    keys = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())
    problems = []
    if set(values) != keys:
        missing, extra = sorted(keys - set(values)), sorted(set(values) - keys)
        problems.append(f"{where}: " + ", ".join(
            ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra
                                                           else []))
            + (": Adam would silently start again" if missing else ""))
    count = values.get("step")
    if count is not None and not (count.numel() == 1 and count.dim() <= 1 and bool(
            torch.isfinite(count).all()) and float(count) == int(float(count))
            and 0 <= float(count) <= step):
        problems.append(f"{where}.step is {_describe(count)} "
                        f"{count.reshape(-1)[:1].tolist() if count.numel() else ''}, expected "
                        f"an integer count in 0..{step}")
    shapes = {tuple(v.shape) for k, v in values.items() if k in _MOMENTS}
    for key in _MOMENTS:
        moment = values.get(key)
        if moment is None:
            continue
        # the shape of the parameter's saved tensor; dtypes are compared with the run's own
        # model by check_fits (a model tensor of another dtype is refused, not skipped)
        if not moment.is_floating_point() or moment.dim() == 0 or len(shapes) > 1 or (
                param is not None and moment.shape != param.shape):
            problems.append(f"{where}.{key} is {_describe(moment)}, expected a floating "
                            "tensor of " + (f"shape {list(param.shape)}" if param is not None
                                            else "its parameter's shape"))
        elif not bool(torch.isfinite(moment).all()) or (key != "exp_avg"
                                                       and bool((moment < 0).any())):
            problems.append(f"{where}.{key} holds "
                            + ("non-finite" if key == "exp_avg" else "non-finite or negative")
                            + " values")
    return problems


def optimizer_fit_problems(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                           model: torch.nn.Module, optimizer: torch.optim.Optimizer
                           ) -> list[str]:
    """Problems of a saved optimizer state against the run's own optimizer."""
    problems = []
    names = optimizer_param_names(model, optimizer)
    if "param_names" in meta and meta["param_names"] != names:
        saved = meta["param_names"]
        first = next((i for i, (a, b) in enumerate(zip(saved, names, strict=False)) if a != b),
                     min(len(names), len(saved)))
        problems.append(f"optimizer.param_names differ from the optimizer's parameters (first "
                        f"at index {first}: {_show(saved[first:first + 1])}, the "
                        f"optimizer's {_show(names[first:first + 1])})")
    ours = optimizer.state_dict()["param_groups"]
    theirs = meta.get("param_groups", [])
    if len(theirs) != len(ours):
        problems.append(f"{len(theirs)} parameter groups, the optimizer has {len(ours)}")
    for i, (saved, own) in enumerate(zip(theirs, ours, strict=False)):
        for key in sorted(set(saved) | set(own)):
            if key == "lr":
                continue  # set by the schedule, checked against initial_lr
            a, b = saved.get(key), own.get(key)
            if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple)
                                                             else b):
                problems.append(f"param_groups[{i}].{key}={_show(a)}, the optimizer's "
                                f"{_show(b)}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, value in tensors.items():
        match = _OPTIM.fullmatch(name)
        if match and match.group(2) in _MOMENTS and int(match.group(1)) < len(params):
            param = params[int(match.group(1))]
            if value.shape != param.shape or value.dtype != param.dtype:
                problems.append(f"{name} is {_describe(value)}, its parameter "
                                f"{_describe(param)}")
    return problems


# --- helpers ---------------------------------------------------------------------------------


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any, low: float = -math.inf, low_inclusive: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    value = float(value)  # bounded: integers past int64 were refused before
    return math.isfinite(value) and (value >= low if low_inclusive else value > low)


def _words(values: Any, count: int) -> bool:
    return isinstance(values, list) and len(values) == count and all(
        _is_int(v, 0, _WORD - 1) for v in values)


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def _show(value: Any) -> str:
    from gradlab.config_checks import show

    return show(value)


def _join(problems: list[str]) -> str:
    more = len(problems) - _SHOWN
    return "; ".join(problems[:_SHOWN]) + (f"; ... ({more} more)" if more > 0 else "")


__all__ = ["MAX_DEPTH", "bounds_problems", "check_fits", "check_training_state",
           "model_problems", "optimizer_fit_problems", "optimizer_param_names",
           "state_problems", "tensor_problems"]
