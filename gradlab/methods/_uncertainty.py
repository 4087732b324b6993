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
)
from ._learned import OPTIMIZERS, LearnedValues


class Uncertainty(Method):
    """Uncertainty weighting: w_i = exp(-s_i), with s_i learned by minimising Σ exp(-s_i) L_i + s_i.

    `Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics
    <https://arxiv.org/abs/1705.07115>`_ (Kendall et al., 2018), in the common form with
    s_i = log σ_i². The step uses the current weights, then takes one optimizer step on s with
    the analytic gradient ∂/∂s_i = 1 - exp(-s_i) L_i (its fixed point is s_i = log L_i), as a
    joint backward of the weighted loss would; the step is ``torch.optim``'s, given this
    gradient (no autograd is involved).

    Input gramian [T, T] (only its size is used) and losses [T]; output weights [T]
    (float64, on the Gramian's device). State: ``log_vars`` s [T] (zeros at the first call),
    the Adam moments ``exp_avg``, ``exp_avg_sq`` [T] (zeros for SGD) and ``steps``.

    Args:
        lr: learning rate of s. The encoder's (~1e-5) would leave s frozen, so s has its own.
        optimizer: "adam" (``torch.optim.Adam``, default betas and eps) or "sgd".

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
        _check_choice(self.name, "optimizer", optimizer, OPTIMIZERS)
        self.lr = lr
        self.optimizer = optimizer
        self.reset()

    def __call__(self, inp: MethodInput) -> MethodOutput:
        num_tasks = _gramian64(inp, self.name).shape[0]
        losses = _losses64(inp, self.name)
        if self._learned is None:
            zeros = torch.zeros(num_tasks, dtype=torch.float64)
            self._learned = LearnedValues(zeros, self.optimizer, self.lr)
        elif self.log_vars.shape[0] != num_tasks:
            raise ValueError(
                f"{self.name}: state was built for T={self.log_vars.shape[0]} tasks, got "
                f"T={num_tasks}; call reset() first"
            )
        weights = torch.exp(-self.log_vars)
        grad = 1.0 - weights * losses
        self._learned.step(grad)
        return MethodOutput(weights=_on_device_of(weights, inp.gramian))

    @property
    def log_vars(self) -> torch.Tensor | None:
        """The learned log-variances s [T] the next call uses (None before the first call)."""
        return None if self._learned is None else self._learned.values

    def reset(self) -> None:
        self._learned: LearnedValues | None = None

    def state_dict(self) -> dict[str, Any]:
        if self._learned is None:
            return {}
        return {"log_vars": self.log_vars.clone(), **self._learned.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if not state:
            return
        _check_state_keys(
            self.name, state, required={"log_vars", "exp_avg", "exp_avg_sq", "steps"}
        )
        log_vars = state["log_vars"].to("cpu", torch.float64)
        if log_vars.ndim != 1:
            raise ValueError(
                f"{self.name}: state['log_vars'] must have shape [T], got {list(log_vars.shape)}"
            )
        moments = {key: state[key] for key in ("exp_avg", "exp_avg_sq", "steps")}
        self._learned = LearnedValues.from_state(
            self.name, log_vars, moments, self.optimizer, self.lr
        )

    def _repr_args(self) -> dict[str, Any]:
        return {"lr": self.lr, "optimizer": self.optimizer}
