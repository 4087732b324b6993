"""A method's own learned values (GradNorm's task weights, Uncertainty's log-variances) and
the torch.optim optimizer that moves them, with the state a checkpoint keeps."""

from __future__ import annotations

from typing import Any

import torch

from ._base import _check_state_keys

OPTIMIZERS = ("adam", "sgd")


class LearnedValues:
    """Values [T] (float64, CPU) stepped by ``torch.optim.Adam`` (default betas and eps) or
    ``torch.optim.SGD`` with a gradient the method computes itself: no autograd graph exists,
    the values are a leaf tensor whose ``.grad`` is set for one ``step``.

    ``state_dict`` holds the Adam moments ``exp_avg``, ``exp_avg_sq`` [T] (zeros for SGD, so
    both optimizers save the same keys) and ``steps``; ``from_state`` rebuilds the optimizer
    from them, so a resumed run continues bit for bit.

    Example:
        >>> import torch
        >>> learned = LearnedValues(torch.zeros(2, dtype=torch.float64), "sgd", lr=0.1)
        >>> learned.step(torch.tensor([1.0, -2.0], dtype=torch.float64))
        >>> learned.values, learned.steps
        (tensor([-0.1000,  0.2000], dtype=torch.float64), 1)
    """

    def __init__(self, values: torch.Tensor, optimizer: str, lr: float) -> None:
        assert optimizer in OPTIMIZERS, optimizer  # the methods check their argument
        self.values = values.detach().to("cpu", torch.float64).clone()
        self.optimizer_name = optimizer
        optimizer_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.optimizer = optimizer_cls([self.values], lr=lr)
        self.steps = 0

    def step(self, grad: torch.Tensor) -> None:
        """One optimizer step on ``values`` with gradient ``grad`` [T]."""
        self.values.grad = grad.to(self.values.dtype)
        self.optimizer.step()
        self.values.grad = None
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        moments = self.optimizer.state.get(self.values, {})
        zeros = torch.zeros_like(self.values)
        return {
            "exp_avg": moments.get("exp_avg", zeros).clone(),
            "exp_avg_sq": moments.get("exp_avg_sq", zeros).clone(),
            "steps": self.steps,
        }

    @classmethod
    def from_state(cls, method: str, values: torch.Tensor, state: dict[str, Any],
                   optimizer: str, lr: float) -> LearnedValues:
        """Rebuilt from ``values`` and a ``state_dict()`` (checked; ValueError names ``method``)."""
        _check_state_keys(method, state, required={"exp_avg", "exp_avg_sq", "steps"})
        learned = cls(values, optimizer, lr)
        moments = [state[key].to("cpu", torch.float64) for key in ("exp_avg", "exp_avg_sq")]
        if any(m.shape != learned.values.shape for m in moments):
            raise ValueError(
                f"{method}: state exp_avg, exp_avg_sq must have the values' shape "
                f"{list(learned.values.shape)}, got {[list(m.shape) for m in moments]}"
            )
        learned.steps = int(state["steps"])
        if optimizer == "adam" and learned.steps > 0:
            exp_avg, exp_avg_sq = moments
            learned.optimizer.load_state_dict({
                "state": {0: {"step": torch.tensor(float(learned.steps)),
                              "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}},
                "param_groups": learned.optimizer.state_dict()["param_groups"],
            })
        return learned
