"""What the training loop logs: raw facts of each step and probe, written to the run store.

The monitor observes (Gramians, weights, projection events, losses) and never computes
gradients or statistics: every statistic is derived at read time by ``gradlab.stats``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gradlab.methods import MethodOutput
from gradlab.store import RunWriter


class Monitor:
    """Logs training steps and probes of one run to a ``RunWriter``."""

    def __init__(self, writer: RunWriter, tasks: Sequence[str], block_names: Sequence[str],
                 method: str | None = None) -> None:
        self.writer = writer
        self.tasks = list(tasks)
        self.block_names = list(block_names)
        self.method = method or writer.method

    def train_step(self, step: int, active: Sequence[str], losses: torch.Tensor,
                   weights: torch.Tensor, output: MethodOutput | None,
                   block_gramians: torch.Tensor | None, *, lr: float, grad_norm: float,
                   step_time: float) -> None:
        """One optimizer step.

        active: the Ta tasks that took part; losses [Ta]; weights [Ta] or [B, Ta];
        block_gramians [B, Ta, Ta] (None when not logged, e.g. round-robin steps).
        Effective weights are logged for every task (0 for tasks not in the step).
        """
        w = self._full_weights(active, weights)
        self.writer.log_weights(step, "train", self.method, w.numpy(), self.tasks,
                                self.block_names if w.dim() == 2 else None)
        for task, loss in zip(active, losses.tolist(), strict=True):
            self.writer.log_scalars(step, {"loss": loss}, task=task)
        self.writer.log_scalars(step, {"lr": lr, "grad_norm": grad_norm, "step_time": step_time})
        if block_gramians is not None:
            self.writer.log_gramians(step, "train", block_gramians.numpy(), self.block_names,
                                     list(active))
        if output is not None:
            if output.projections:
                self.writer.log_projections(step, output.projections, list(active))
            if output.extras:
                self.writer.log_scalars(step, dict(output.extras))

    def probe(self, step: int, block_gramians: torch.Tensor, losses: torch.Tensor,
              counterfactuals: Mapping[str, tuple[torch.Tensor, torch.Tensor,
                                                  torch.Tensor | None]], *,
              replicate_gramians: torch.Tensor | None = None) -> None:
        """A probe: replicate 0's Gramians [B, T, T] and losses [T], for each hypothetical
        method its weights [T], predicted and measured loss change [T], and (when given) the
        Gramians [B, K*T, K*T] of all K replicate batches per task, rows replicate-major."""
        self.writer.log_gramians(step, "probe", block_gramians.numpy(), self.block_names,
                                 self.tasks)
        if replicate_gramians is not None:
            K = replicate_gramians.shape[-1] // len(self.tasks)
            self.writer.log_replicate_gramians(step, replicate_gramians.numpy(),
                                               self.block_names, self.tasks, K)
        for task, loss in zip(self.tasks, losses.tolist(), strict=True):
            self.writer.log_scalars(step, {"probe_loss": loss}, task=task)
        for name, (w, predicted, measured) in counterfactuals.items():
            self.writer.log_counterfactual(
                step, name, self.tasks, w.double().numpy(), predicted.double().numpy(),
                None if measured is None else measured.double().numpy())
        self.writer.flush()

    def _full_weights(self, active: Sequence[str], weights: torch.Tensor) -> torch.Tensor:
        w = weights.detach().double().cpu()
        if list(active) == self.tasks:
            return w
        full = torch.zeros(*w.shape[:-1], len(self.tasks), dtype=torch.float64)
        for k, task in enumerate(active):
            full[..., self.tasks.index(task)] = w[..., k]
        return full


__all__ = ["Monitor"]
