"""Layer-wise PCGrad: PCGrad on each parameter block's own Gramian."""

from __future__ import annotations

import torch

from ._base import (
    MethodInput,
    MethodOutput,
    _block_gramians64,
    _gramian64,
    _on_device_of,
)
from ._pcgrad import PCGrad, _reduce, pcgrad_coefficients


class PCGradLayerwise(PCGrad):
    """PCGrad applied separately to every parameter block (embeddings, each layer, pooler).

    `Gradient Surgery for Multi-Task Learning <https://arxiv.org/abs/2001.06782>`_ (Yu et al.,
    2020), with conflicts judged per block as in layer-wise variants of gradient surgery: block
    b's update is Σ_i g_{i,b}^PC computed from the block Gramian G_b alone.

    Input gramian [T, T] and block_gramians [B, T, T] with their block_names; output weights
    [B, T] (block b's update is w_bᵀ J_b; float64, on the Gramian's device) and projection
    events carrying their block name. Blocks are processed in order and, within a block, one
    ``torch.randperm(T, generator=self.generator)`` is drawn per task, as in :class:`PCGrad`.

    Args:
        reduction: "sum" (paper) or "mean".
        seed: seed of the generator that draws the task orders.

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, PCGradLayerwise
        >>> J_a = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # conflict
        >>> J_b = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)   # no conflict
        >>> blocks = torch.stack([J_a @ J_a.T, J_b @ J_b.T])
        >>> out = PCGradLayerwise()(MethodInput(gramian=blocks.sum(0), block_gramians=blocks,
        ...                                     block_names=("layer.0", "layer.1")))
        >>> out.weights
        tensor([[2.0000, 1.5000],
                [1.0000, 1.0000]], dtype=torch.float64)
        >>> sorted({e.block for e in out.projections})
        ['layer.0']
    """

    name = "pcgrad_layerwise"
    blockwise = True

    def __call__(self, inp: MethodInput) -> MethodOutput:
        _gramian64(inp, self.name)
        block_gramians = _block_gramians64(inp, self.name)
        weights, events = [], []
        for gramian, block in zip(block_gramians, inp.block_names, strict=True):
            coefficients, block_events = pcgrad_coefficients(gramian, self.generator, block)
            weights.append(_reduce(coefficients, self.reduction))
            events.extend(block_events)
        return MethodOutput(
            weights=_on_device_of(torch.stack(weights), inp.gramian),
            projections=events,
            extras={"projections": float(len(events))},
        )
