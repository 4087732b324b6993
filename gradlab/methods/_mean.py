"""Mean: every task gradient with weight 1/T (the averaged-loss baseline)."""

from __future__ import annotations

import torch

from ._base import Method, MethodInput, MethodOutput, _gramian64, _on_device_of


class Mean(Method):
    """The averaged-loss update: w = 1/T, so d = (1/T) Σ_i g_i.

    Input gramian [T, T]; output weights [T] all equal to 1/T (float64, on the Gramian's
    device). Same direction as :class:`Sum`, 1/T of its length.

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, Mean
        >>> Mean()(MethodInput(gramian=torch.eye(4))).weights
        tensor([0.2500, 0.2500, 0.2500, 0.2500], dtype=torch.float64)
    """

    name = "mean"

    def __call__(self, inp: MethodInput) -> MethodOutput:
        gramian = _gramian64(inp, self.name)
        num_tasks = gramian.shape[0]
        weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        return MethodOutput(weights=_on_device_of(weights, inp.gramian))
