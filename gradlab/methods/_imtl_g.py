"""IMTL-G: equal projections of the update on every unit task gradient (via torchjd)."""

from __future__ import annotations

from ._torchjd import _TorchJDWeighting, aggregation


class IMTLG(_TorchJDWeighting):
    """IMTL-G: the update has equal projections on every task's unit gradient.

    `Towards Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_
    (Liu et al., 2021), in the form of `Jacobian Descent for Multi-Objective Optimization
    <https://arxiv.org/abs/2406.16232>`_ that allows linearly dependent gradients, via
    torchjd's ``IMTLGWeighting``: w ∝ G⁺ diag(G)^½, summing to 1. Closed form, no solver.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Example:
        >>> import torch
        >>> from gradlab.methods import IMTLG, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> IMTLG()(MethodInput(gramian=J @ J.T)).weights
        tensor([0.5923, 0.4077], dtype=torch.float64)
    """

    name = "imtl_g"

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.IMTLGWeighting()
