"""Sum: every task gradient with weight 1 (the plain multi-task baseline)."""

from __future__ import annotations

import torch

from ._base import Method, MethodInput, MethodOutput, _gramian64, _on_device_of


class Sum(Method):
    """The summed-loss update: w = 1, so d = Σ_i g_i.

    Input gramian [T, T]; output weights [T] of ones (float64, on the Gramian's device).
    This is what ``loss.sum().backward()`` does; every other method is compared to it.

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, Sum
        >>> Sum()(MethodInput(gramian=torch.eye(3))).weights
        tensor([1., 1., 1.], dtype=torch.float64)
    """

    name = "sum"

    def __call__(self, inp: MethodInput) -> MethodOutput:
        gramian = _gramian64(inp, self.name)
        weights = torch.ones(gramian.shape[0], dtype=torch.float64)
        return MethodOutput(weights=_on_device_of(weights, inp.gramian))
