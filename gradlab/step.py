"""One training step, public: the task gradients of any batches, then the method's update.

``task_gradients`` fills one row of J [n, P] per (task, batch) pair with one backward each
(the engine points ``.grad`` at the row first), averages the rows across ranks and returns
the losses [n] and per-block Gramians [B, n, n]; several batches of one task are allowed, so
a probe can ask for K replicates per task. ``train_step`` does a whole step but the
optimizer's: batches from the run's batchers, ``task_gradients``, the method's weights, the
update wᵀJ in ``.grad``, gradient clipping. Neither logs nor steps the optimizer; both report
a NaN or infinite loss or gradient as ``fault`` (a sentence naming the task and block)
instead of raising, so the caller applies one non-finite policy.

    >>> result = train_step(parts, ["sst", "para", "sts"], step=0)  # doctest: +SKIP
    >>> result.weights, result.block_gramians.shape                 # doctest: +SKIP
    (tensor([1., 1., 1.], dtype=torch.float64), torch.Size([9, 3, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from gradlab.distributed import DistInfo, average_gradients, average_scalar
from gradlab.engine import GradientEngine
from gradlab.methods import MethodInput, MethodOutput
from gradlab.regularizers import smart_loss
from gradlab.tasks import TASKS, TaskSpec, task_loss

if TYPE_CHECKING:
    from gradlab.build import Parts


@dataclass(frozen=True)
class TaskLoss:
    """How a task's loss is computed: the task table (heads and losses), forward precision and
    the SMART regularizer's weight per task (0: none) and arguments."""

    specs: Mapping[str, TaskSpec] = field(default_factory=lambda: TASKS)
    precision: str = "fp32"  # "fp32" | "bf16" (forward under autocast)
    smart_weight: Mapping[str, float] = field(default_factory=dict)
    smart_args: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, model: torch.nn.Module, task: str, batch: Mapping[str, torch.Tensor],
                 *, smart: bool = True) -> tuple[torch.Tensor, float]:
        """(loss to backpropagate, the task loss alone) of one batch; the SMART term is
        added (when ``smart`` and the task has a weight) only to the first."""
        device = next(model.parameters()).device.type
        autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) \
            if self.precision == "bf16" else nullcontext()
        with autocast:
            predictions = model(task, batch)
        loss = task_loss(self.specs[task], predictions.float(), batch["labels"])
        value = loss.item()
        weight = self.smart_weight.get(task, 0.0) if smart else 0.0
        if weight and math.isfinite(value):
            with autocast:
                loss = loss + weight * smart_loss(model, task, batch, predictions=predictions,
                                                  **self.smart_args)
        return loss, value


@dataclass
class TaskGradients:
    """What ``task_gradients`` found: J's first ``len(tasks)`` rows are the gradients.

    losses [n] (float64, the task losses alone); block_gramians [B, n, n] (float64; None
    when a loss was not finite); fault: None, or the first non-finite loss or gradient found,
    in words (the rows must not be used then).
    """

    tasks: list[str]
    losses: torch.Tensor
    block_gramians: torch.Tensor | None
    fault: str | None


def task_gradients(model: torch.nn.Module,
                   batches: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
                   engine: GradientEngine, *, loss: TaskLoss | None = None,
                   dist: DistInfo | None = None, head_params: Sequence[torch.nn.Parameter] = (),
                   smart: bool = True) -> TaskGradients:
    """One row of J per (task, batch) pair, in order: bind the row, forward, backward.

    batches: (task, batch) pairs (a task may appear several times); J rows 0..n-1 hold their
    shared-parameter gradients afterwards ([n, P], ``engine.jacobian[:n]``) and the heads'
    ``.grad`` their own task's gradient (accumulated, so clear them first). With several
    ranks, J's rows, ``head_params``' gradients and the losses are averaged over the ranks,
    and every rank reports a fault if any rank found one (they must skip or stop together).
    """
    if not 1 <= len(batches) <= engine.num_tasks:
        raise ValueError(f"batches: expected 1 to {engine.num_tasks} (task, batch) pairs (the "
                         f"engine's rows), found {len(batches)}")
    loss, dist = loss or TaskLoss(), dist or DistInfo()
    tasks = [task for task, _ in batches]
    losses = torch.full((len(batches),), math.nan, dtype=torch.float64)
    fault = None
    for row, (task, batch) in enumerate(batches):
        engine.bind_row(row)
        value, losses[row] = loss(model, task, batch, smart=smart)
        if not math.isfinite(losses[row]):
            fault = f"non-finite loss {losses[row].item()} of task {task!r}"
            if not dist.enabled:
                break
            continue  # every rank must reach the same collectives
        value.backward()
    if dist.enabled:  # global gradients: the mean over the ranks' shares
        fault = _any_fault(fault, dist)
        if fault is None:
            average_gradients(engine.jacobian[:len(batches)], list(head_params), dist)
            losses = torch.tensor([average_scalar(v, dist) for v in losses.tolist()],
                                  dtype=torch.float64)
    if fault is not None:
        return TaskGradients(tasks, losses, None, fault)
    block_gramians = engine.block_gramians(len(batches))  # [B, n, n]
    return TaskGradients(tasks, losses, block_gramians,
                         nonfinite_block(block_gramians, engine.block_names, tasks))


@dataclass
class StepResult:
    """One training step: tasks [Ta] active, their losses [Ta], block Gramians [B, Ta, Ta],
    the method's output and weights ([Ta] or [B, Ta]), the gradient norm before clipping,
    and ``fault`` (None, or what was not finite: then the update must not be applied)."""

    tasks: list[str]
    losses: torch.Tensor
    block_gramians: torch.Tensor | None = None
    output: MethodOutput | None = None
    weights: torch.Tensor | None = None
    grad_norm: float | None = None
    fault: str | None = None


def train_step(parts: Parts, active_tasks: Sequence[str], step: int, *,
               batches: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> StepResult:
    """Task gradients of the next batch of each active task, the method's weights, the
    update wᵀJ in the shared ``.grad`` and the heads' own gradients, clipped: everything but
    ``parts.optimizer.step()``. A single task (non-blockwise method) is its own update.

    batches: task -> model inputs to use instead of the next batch of ``parts.batchers``
    (benchmarks and notebooks step on batches of their own).
    """
    parts.optimizer.zero_grad(set_to_none=True)  # heads; the engine rebinds shared grads
    batches = [(task, parts.batch(task, next(parts.batchers[task])) if batches is None
                else batches[task]) for task in active_tasks]
    grads = task_gradients(parts.model, batches, parts.engine, loss=parts.loss,
                           dist=parts.dist, head_params=parts.head_params)
    result = StepResult(grads.tasks, grads.losses, grads.block_gramians, fault=grads.fault)
    if result.fault is not None:
        return result
    engine, n = parts.engine, len(batches)
    if n == 1 and not parts.method.blockwise:
        result.weights = torch.ones(1, dtype=torch.float64)
        engine.use_row_as_update(0)
    else:
        gramians = result.block_gramians
        result.output = parts.method(MethodInput(
            gramian=gramians.sum(0), block_gramians=gramians, block_names=engine.block_names,
            losses=result.losses, step=step))
        result.weights = result.output.weights
        if not bool(torch.isfinite(result.weights).all()):
            result.fault = (f"method {parts.method_name!r} returned non-finite task weights "
                            f"{result.weights.tolist()}")
            return result
        engine.write_update(result.weights, n)
    result.grad_norm = clip_gradients(parts.model, parts.max_grad_norm)
    if not math.isfinite(result.grad_norm):
        result.fault = "non-finite gradient in the task heads"
    return result


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> float:
    """The norm of all gradients of ``model``, clipped to ``max_norm`` (None: not clipped)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return float(torch.stack([p.grad.norm() for p in params]).norm())
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def nonfinite_block(block_gramians: torch.Tensor, block_names: Sequence[str],
                    tasks: Sequence[str]) -> str | None:
    """None, or the first task and block whose gradient is NaN or infinite (in words)."""
    diag = torch.diagonal(block_gramians, dim1=-2, dim2=-1)  # [B, n]
    if bool(torch.isfinite(diag).all()):
        return None
    b, t = (~torch.isfinite(diag)).nonzero()[0].tolist()
    return f"non-finite gradient of task {tasks[t]!r} in block {block_names[b]!r}"


def _any_fault(fault: str | None, dist: DistInfo) -> str | None:
    """The fault of this rank, or of another one: every rank must skip or stop together."""
    if average_scalar(0.0 if fault is None else 1.0, dist) == 0.0:
        return None
    return fault or "a non-finite loss or gradient on another rank"


__all__ = ["StepResult", "TaskGradients", "TaskLoss", "clip_gradients", "nonfinite_block",
           "task_gradients", "train_step"]
