"""Aligned-MTL: align the principal components of the task gradients (via torchjd)."""

from __future__ import annotations

from typing import Any

from ._base import _check_choice
from ._torchjd import _TorchJDWeighting, aggregation


class AlignedMTL(_TorchJDWeighting):
    """Aligned-MTL: align the principal components of the task gradients, then average.

    `Independent Component Alignment for Multi-Task Learning
    <https://arxiv.org/abs/2305.19000>`_ (Senushkin et al., 2023), Algorithm 1, via torchjd's
    ``AlignedMTLWeighting`` (an eigendecomposition of G; no solver).
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Args:
        scale_mode: eigenvalue that sets the scale: "min" (paper), "median" or "rmse".

    Example:
        >>> import torch
        >>> from gradlab.methods import AlignedMTL, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> AlignedMTL()(MethodInput(gramian=J @ J.T)).weights
        tensor([0.5591, 0.4083], dtype=torch.float64)
    """

    name = "aligned_mtl"

    def __init__(self, scale_mode: str = "min") -> None:
        _check_choice(self.name, "scale_mode", scale_mode, ("min", "median", "rmse"))
        self.scale_mode = scale_mode
        super().__init__()

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.AlignedMTLWeighting(scale_mode=self.scale_mode)

    def _repr_args(self) -> dict[str, Any]:
        return {"scale_mode": self.scale_mode}
