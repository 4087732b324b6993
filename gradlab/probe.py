"""Probes: every task's gradient on fixed probe batches, without an optimizer step.

Every N steps the loop measures all tasks' gradients on the same batches (the same for every
run with the same seed, so runs of different methods and schedules are compared on equal
terms), with dropout off and the parameters unchanged, and asks each counterfactual method
what it would have done with them: its weights w [T], the first-order predicted change of
each loss -lr G w [T] and, optionally, the change measured after a virtual SGD step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from gradlab.distributed import average_scalar
from gradlab.methods import MethodInput
from gradlab.seeding import derive_seed
from gradlab.step import task_gradients

if TYPE_CHECKING:
    from gradlab.build import Parts


def probe_indices(num_examples: int, batch_size: int, seed: int, *keys: int | str
                  ) -> np.ndarray:
    """Example indices [batch_size] of a probe batch, drawn without replacement from a
    generator seeded by ``derive_seed(seed, "probe", *keys)``: keys (task, or task, probe
    step and replicate ...) name the batch, so it never depends on the method or schedule."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "probe", *keys))
    return torch.randperm(num_examples, generator=generator)[:batch_size].numpy()


@dataclass
class ProbeResult:
    """block_gramians [B, T, T] and losses [T] on the probe batches; counterfactuals: method
    name -> (weights [T], predicted loss change [T], measured loss change [T] or None);
    fault: None, or the non-finite loss or gradient found (then no counterfactuals)."""

    losses: torch.Tensor
    block_gramians: torch.Tensor | None = None
    counterfactuals: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = \
        field(default_factory=dict)
    fault: str | None = None


def probe(parts: Parts, step: int, lr: float, *, measure: bool = False) -> ProbeResult:
    """All task gradients on ``parts.probe_batches`` in eval mode, and the counterfactuals.

    lr: the learning rate of the predicted (and, with ``measure``, measured) changes. The
    parameters, the training mode and the heads' ``.grad`` (cleared) are left as found.
    """
    model, engine, tasks = parts.model, parts.engine, parts.tasks
    was_training = model.training
    model.eval()
    try:
        batches = [(task, parts.probe_batches[task]) for task in tasks]
        grads = task_gradients(model, batches, engine, loss=parts.loss, dist=parts.dist,
                               smart=False)
        for p in parts.head_params:
            p.grad = None
        result = ProbeResult(grads.losses, grads.block_gramians, fault=grads.fault)
        if result.fault is not None:
            return result
        block_gramians = result.block_gramians
        gramian = block_gramians.sum(0)
        for name, method in parts.counterfactuals.items():
            out = method(MethodInput(gramian=gramian, block_gramians=block_gramians,
                                     block_names=engine.block_names, losses=result.losses,
                                     step=step))
            w = out.weights.to(gramian.dtype)
            # first-order change of each loss: -lr G w (blockwise: -lr sum_b G_b w_b)
            predicted = -lr * (gramian @ w if w.dim() == 1 else
                               torch.einsum("bij,bj->i", block_gramians, w))
            if w.dim() == 2:  # log the block-averaged weights of a blockwise method
                w = w.mean(0)
            measured = virtual_step(parts, out.weights, lr) - result.losses if measure \
                else None
            result.counterfactuals[name] = (w, predicted, measured)
        return result
    finally:
        model.train(was_training)


@torch.no_grad()
def virtual_step(parts: Parts, weights: torch.Tensor, lr: float) -> torch.Tensor:
    """Probe losses [T] after one SGD step of size lr along wᵀJ; parameters restored exactly."""
    engine = parts.engine
    saved = engine.flat_params()
    engine.write_update(weights, len(parts.tasks))
    for p in engine.params:
        p.sub_(lr * p.grad)
    losses = torch.tensor([average_scalar(parts.loss(parts.model, task, parts.probe_batches[task],
                                                     smart=False)[1], parts.dist)
                           for task in parts.tasks], dtype=torch.float64)
    engine.load_flat_params(saved)
    return losses


__all__ = ["ProbeResult", "probe", "probe_indices", "virtual_step"]
