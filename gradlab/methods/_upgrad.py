"""UPGrad: average of the task gradients projected onto their dual cone (via torchjd)."""

from __future__ import annotations

from ._torchjd import _TorchJDWeighting, aggregation


class UPGrad(_TorchJDWeighting):
    """UPGrad: project every task gradient onto the dual cone of all of them, then average.

    `Jacobian Descent for Multi-Objective Optimization <https://arxiv.org/abs/2406.16232>`_
    (Quinton & Rey, 2024), via torchjd's ``UPGradWeighting`` (T quadratic programs solved with
    quadprog). Needs qpsolvers and quadprog. The exact update never conflicts with any task;
    torchjd first adds 1e-4 to the diagonal of G / tr(G), so a task whose ‖g_i‖² is near
    1e-4 tr(G) is nearly left out and the update can conflict with it (cos = -0.17 measured
    with norms 0.28 and 18.7 in one Gramian). The same holds for :class:`DualProj`.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, UPGrad
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> UPGrad()(MethodInput(gramian=J @ J.T)).weights.round(decimals=4)
        tensor([1.1109, 0.7894], dtype=torch.float64)
    """

    name = "upgrad"
    requires = ("qpsolvers", "quadprog")
    extra = "quadprog-projector"

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.UPGradWeighting()
