"""DualProj: the mean gradient projected onto the dual cone (via torchjd)."""

from __future__ import annotations

from ._torchjd import _TorchJDWeighting, aggregation


class DualProj(_TorchJDWeighting):
    """DualProj: project the mean gradient onto the dual cone of the task gradients.

    The projection of Eq. 11 of `Gradient Episodic Memory for Continual Learning
    <https://arxiv.org/abs/1706.08840>`_ (Lopez-Paz & Ranzato, 2017) applied to the mean
    gradient, via torchjd's ``DualProjWeighting`` (one quadratic program solved with
    quadprog). Needs qpsolvers and quadprog.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Example:
        >>> import torch
        >>> from gradlab.methods import DualProj, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> DualProj()(MethodInput(gramian=J @ J.T)).weights.round(decimals=4)
        tensor([0.6109, 0.5000], dtype=torch.float64)
    """

    name = "dualproj"
    requires = ("qpsolvers", "quadprog")
    extra = "quadprog-projector"

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.DualProjWeighting()
