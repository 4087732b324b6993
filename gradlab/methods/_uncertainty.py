"""Uncertainty weighting: learned per-task log-variances, updated with their analytic gradient."""

from __future__ import annotations

from typing import Any

import torch

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    _check_choice,
    _check_number,
    _check_state_keys,
    _gramian64,
    _losses64,
    _on_device_of,
    _optimizer_step,
)

_OPTIMIZERS = ("adam", "sgd")


class Uncertainty(Method):
    """Uncertainty weighting: w_i = exp(-s_i), with s_i learned by minimising Σ exp(-s_i) L_i + s_i.

    `Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics
    <https://arxiv.org/abs/1705.07115>`_ (Kendall et al., 2018), in the common form with
    s_i = log σ_i². The step uses the current weights, then takes one optimizer step on s with
    the analytic gradient ∂/∂s_i = 1 - exp(-s_i) L_i (its fixed point is s_i = log L_i), as a
    joint backward of the weighted loss would. No autograd is involved.

    Input gramian [T, T] (only its size is used) and losses [T]; output weights [T]
    (float64, on the Gramian's device). State: ``log_vars`` s [T] (zeros at the first call),
    the Adam moments ``exp_avg``, ``exp_avg_sq`` [T] and ``steps``.

    Args:
        lr: learning rate of s. The encoder's (~1e-5) would leave s frozen, so s has its own.
        optimizer: "adam" (torch.optim.Adam's update, default betas and eps) or "sgd".

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, Uncertainty
        >>> method = Uncertainty(lr=0.1, optimizer="sgd")
        >>> inp = MethodInput(gramian=torch.eye(2), losses=torch.tensor([2.0, 0.5]))
        >>> method(inp).weights  # s = 0 at first
        tensor([1., 1.], dtype=torch.float64)
        >>> method(inp).weights  # s <- s - 0.1 (1 - L): exp(-0.1), exp(0.05)
        tensor([0.9048, 1.0513], dtype=torch.float64)
    """

    name = "uncertainty"

    def __init__(self, lr: float = 1e-2, optimizer: str = "adam") -> None:
        _check_number(self.name, "lr", lr, minimum=0.0, exclusive_minimum=True)
        _check_choice(self.name, "optimizer", optimizer, _OPTIMIZERS)
        self.lr = lr
        self.optimizer = optimizer
        self.reset()

    def __call__(self, inp: MethodInput) -> MethodOutput:
        num_tasks = _gramian64(inp, self.name).shape[0]
        losses = _losses64(inp, self.name)
        if self.log_vars is None:
            self.log_vars = torch.zeros(num_tasks, dtype=torch.float64)
            self.exp_avg = torch.zeros(num_tasks, dtype=torch.float64)
            self.exp_avg_sq = torch.zeros(num_tasks, dtype=torch.float64)
        elif self.log_vars.shape[0] != num_tasks:
            raise ValueError(
                f"{self.name}: state was built for T={self.log_vars.shape[0]} tasks, got "
                f"T={num_tasks}; call reset() first"
            )
        weights = torch.exp(-self.log_vars)
        grad = 1.0 - weights * losses
        self.steps = _optimizer_step(
            self.optimizer, self.lr, self.log_vars, grad, self.exp_avg, self.exp_avg_sq, self.steps
        )
        return MethodOutput(weights=_on_device_of(weights, inp.gramian))

    def reset(self) -> None:
        self.log_vars: torch.Tensor | None = None
        self.exp_avg: torch.Tensor | None = None
        self.exp_avg_sq: torch.Tensor | None = None
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        if self.log_vars is None:
            return {}
        return {
            "log_vars": self.log_vars.clone(),
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if not state:
            return
        keys = {"log_vars", "exp_avg", "exp_avg_sq", "steps"}
        _check_state_keys(self.name, state, required=keys)
        log_vars, exp_avg, exp_avg_sq = (
            state[key].to("cpu", torch.float64).clone()
            for key in ("log_vars", "exp_avg", "exp_avg_sq")
        )
        if log_vars.ndim != 1 or not log_vars.shape == exp_avg.shape == exp_avg_sq.shape:
            raise ValueError(
                f"{self.name}: state log_vars, exp_avg, exp_avg_sq must all have shape [T], got "
                f"{[list(t.shape) for t in (log_vars, exp_avg, exp_avg_sq)]}"
            )
        self.log_vars, self.exp_avg, self.exp_avg_sq = log_vars, exp_avg, exp_avg_sq
        self.steps = int(state["steps"])

    def _repr_args(self) -> dict[str, Any]:
        return {"lr": self.lr, "optimizer": self.optimizer}
