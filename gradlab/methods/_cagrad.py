"""CAGrad: conflict-averse gradient descent (via torchjd)."""

from __future__ import annotations

from typing import Any

from ._base import _check_number
from ._torchjd import _TorchJDWeighting, aggregation


class CAGrad(_TorchJDWeighting):
    """CAGrad: maximise the worst task's improvement within a ball around the mean gradient.

    `Conflict-Averse Gradient Descent for Multi-task Learning
    <https://arxiv.org/abs/2110.14048>`_ (Liu et al., 2021), Algorithm 1, via torchjd's
    ``CAGradWeighting`` (a cvxpy problem solved with Clarabel). Needs cvxpy and clarabel.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Args:
        c: radius of the ball, relative to the mean gradient's norm (c = 0 is the mean).

    Example:
        >>> import torch
        >>> from gradlab.methods import CAGrad, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> CAGrad(c=0.5)(MethodInput(gramian=J @ J.T)).weights.round(decimals=3)
        tensor([0.7040, 0.5000], dtype=torch.float64)
    """

    name = "cagrad"
    requires = ("cvxpy", "clarabel")
    extra = "cagrad"

    def __init__(self, c: float = 0.5) -> None:
        _check_number(self.name, "c", c, minimum=0.0)
        self.c = c
        super().__init__()

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.CAGradWeighting(c=self.c)

    def _repr_args(self) -> dict[str, Any]:
        return {"c": self.c}
