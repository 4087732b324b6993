"""GradNorm: balance the tasks' gradient norms on the last shared block, from its Gramian."""

from __future__ import annotations

from typing import Any

import torch

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    _block_gramians64,
    _check_choice,
    _check_number,
    _check_state_keys,
    _gramian64,
    _losses64,
    _on_device_of,
)
from ._learned import OPTIMIZERS, LearnedValues

_TINY = 1e-12  # floor on denominators (initial losses, mean loss ratio)
_MIN_WEIGHT = 1e-6  # weights stay positive: a negative weight would reverse a task's gradient


class GradNorm(Method):
    """GradNorm: learn task weights so each task's weighted gradient norm tracks its training rate.

    `GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks
    <https://arxiv.org/abs/1711.02257>`_ (Chen et al., 2018), Algorithm 1. On the last shared
    block W, G_W(i) = ‖∇_W w_i L_i‖ = w_i √G^W_ii; with L̃_i = L_i / L_i(0) and
    r_i = L̃_i / mean_j L̃_j, the loss is Σ_i |G_W(i) - mean_j G_W(j) · r_i^α| with the target
    held constant (as in the paper), whose gradient in w_i is sign(G_W(i) - target_i) √G^W_ii.
    The step uses the current weights, then takes one optimizer step on w (``torch.optim``,
    with this gradient), keeps w positive and renormalises it to Σ_i w_i = T.

    Input gramian [T, T], block_gramians [B, T, T] with block_names, losses [T]; output
    weights [T] (float64, on the Gramian's device) and ``extras["gradnorm_loss"]``. State:
    ``task_weights`` [T] (ones at the first call), ``initial_losses`` [T] (the first call's
    losses), the Adam moments ``exp_avg``, ``exp_avg_sq`` [T] (zeros for SGD) and ``steps``.

    Args:
        alpha: strength of the restoring force toward equal training rates (paper: 1.5).
        lr: learning rate of the weights. The encoder's (~1e-5) would leave them frozen.
        optimizer: "adam" (``torch.optim.Adam``, default betas and eps) or "sgd".
        block: name of the shared block whose gradients are balanced; None = the last one.

    Example:
        >>> import torch
        >>> from gradlab.methods import GradNorm, MethodInput
        >>> G = torch.diag(torch.tensor([4.0, 1.0]))  # ‖g_0‖ = 2, ‖g_1‖ = 1
        >>> inp = MethodInput(gramian=G, block_gramians=G[None], block_names=("layer.0",),
        ...                   losses=torch.tensor([1.0, 1.0]))
        >>> method = GradNorm(lr=0.1, optimizer="sgd")
        >>> method(inp).weights  # equal weights first, then the larger gradient is damped
        tensor([1., 1.], dtype=torch.float64)
        >>> method(inp).weights
        tensor([0.8421, 1.1579], dtype=torch.float64)
    """

    name = "gradnorm"

    def __init__(
        self,
        alpha: float = 1.5,
        lr: float = 1e-2,
        optimizer: str = "adam",
        block: str | None = None,
    ) -> None:
        _check_number(self.name, "alpha", alpha, minimum=0.0)
        _check_number(self.name, "lr", lr, minimum=0.0, exclusive_minimum=True)
        _check_choice(self.name, "optimizer", optimizer, OPTIMIZERS)
        if block is not None and not isinstance(block, str):
            raise TypeError(f"{self.name}: block must be a block name or None, got {block!r}")
        self.alpha = alpha
        self.lr = lr
        self.optimizer = optimizer
        self.block = block
        self.reset()

    def __call__(self, inp: MethodInput) -> MethodOutput:
        num_tasks = _gramian64(inp, self.name).shape[0]
        block_gramians = _block_gramians64(inp, self.name)
        losses = _losses64(inp, self.name)
        last_shared = block_gramians[self._block_index(inp.block_names)]
        norms = last_shared.diagonal().clamp_min(0.0).sqrt()  # ‖∇_W L_i‖
        if self._learned is None:
            ones = torch.ones(num_tasks, dtype=torch.float64)
            self._learned = LearnedValues(ones, self.optimizer, self.lr)
            self.initial_losses = losses.clone()
        elif self.task_weights.shape[0] != num_tasks:
            raise ValueError(
                f"{self.name}: state was built for T={self.task_weights.shape[0]} tasks, got "
                f"T={num_tasks}; call reset() first"
            )
        weights = self.task_weights.clone()

        weighted_norms = weights * norms
        loss_ratios = losses / self.initial_losses.clamp_min(_TINY)
        inverse_rates = loss_ratios / loss_ratios.mean().clamp_min(_TINY)
        targets = weighted_norms.mean() * inverse_rates**self.alpha  # constant in w
        gaps = weighted_norms - targets
        grad = torch.sign(gaps) * norms

        self._learned.step(grad)
        self.task_weights.clamp_min_(_MIN_WEIGHT)  # in place: the optimizer's own tensor
        self.task_weights.mul_(num_tasks / self.task_weights.sum())
        return MethodOutput(
            weights=_on_device_of(weights, inp.gramian),
            extras={"gradnorm_loss": float(gaps.abs().sum())},
        )

    def _block_index(self, block_names: tuple[str, ...]) -> int:
        if self.block is None:
            return len(block_names) - 1
        if self.block not in block_names:
            raise ValueError(
                f"{self.name}: block {self.block!r} is not among the blocks {list(block_names)}"
            )
        return list(block_names).index(self.block)

    @property
    def task_weights(self) -> torch.Tensor | None:
        """The learned weights [T] the next call uses (None before the first call)."""
        return None if self._learned is None else self._learned.values

    def reset(self) -> None:
        self._learned: LearnedValues | None = None
        self.initial_losses: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        if self._learned is None:
            return {}
        return {
            "task_weights": self.task_weights.clone(),
            "initial_losses": self.initial_losses.clone(),
            **self._learned.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if not state:
            return
        _check_state_keys(
            self.name, state,
            required={"task_weights", "initial_losses", "exp_avg", "exp_avg_sq", "steps"},
        )
        task_weights, initial_losses = (
            state[key].to("cpu", torch.float64) for key in ("task_weights", "initial_losses")
        )
        if task_weights.ndim != 1 or initial_losses.shape != task_weights.shape:
            raise ValueError(
                f"{self.name}: state task_weights, initial_losses must both have shape [T], "
                f"got {[list(t.shape) for t in (task_weights, initial_losses)]}"
            )
        moments = {key: state[key] for key in ("exp_avg", "exp_avg_sq", "steps")}
        self._learned = LearnedValues.from_state(
            self.name, task_weights, moments, self.optimizer, self.lr
        )
        self.initial_losses = initial_losses.clone()

    def _repr_args(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "block": self.block,
        }
