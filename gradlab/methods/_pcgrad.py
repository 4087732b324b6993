"""PCGrad (gradient surgery) on the Gramian, reporting every projection it makes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    ProjectionEvent,
    SeededGenerator,
    _check_choice,
    _check_number,
    _gramian64,
    _on_device_of,
)

_REDUCTIONS = ("sum", "mean")


class PCGrad(SeededGenerator, Method):
    """PCGrad: project each task gradient off the others' where they conflict, then combine.

    `Gradient Surgery for Multi-Task Learning <https://arxiv.org/abs/2001.06782>`_ (Yu et al.,
    2020), Algorithm 1. For each task i, the other tasks j are visited in random order; when
    g_i^PC·g_j < 0, g_i^PC <- g_i^PC - (g_i^PC·g_j / ‖g_j‖²) g_j, always against the original
    g_j. The update is Σ_i g_i^PC (``reduction="sum"``, the paper's) or its mean
    (``reduction="mean"``, as some implementations do).

    Everything is computed from the Gramian: g_i^PC = C_i J for coefficient rows C [T, T], so
    g_i^PC·g_j = C_i G[:, j] and the weights are w = C.sum(0) (or C.mean(0)).

    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device), one
    :class:`ProjectionEvent` per projection (coefficient and cosine just before it), and
    ``extras["projections"]`` (their count).

    The order of the other tasks comes from ``torch.randperm(T, generator=self.generator)``,
    drawn once per task i in task order (i skipped); the generator is seeded with ``seed`` and
    its state is the method's state, so a resumed run draws the same orders. A zero-norm g_j is
    never projected onto.

    Args:
        reduction: "sum" (paper) or "mean".
        seed: seed of the generator that draws the task orders.

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, PCGrad
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> out = PCGrad()(MethodInput(gramian=J @ J.T))
        >>> (out.weights @ J).round(decimals=4)
        tensor([0.5848, 3.8012, 3.8012], dtype=torch.float64)
        >>> [(e.i, e.j, round(e.coefficient, 4)) for e in out.projections]
        [(0, 1, -0.5789), (1, 0, -1.2222)]
    """

    name = "pcgrad"
    projects = True

    def __init__(self, reduction: str = "sum", seed: int = 0) -> None:
        _check_choice(self.name, "reduction", reduction, _REDUCTIONS)
        _check_number(self.name, "seed", seed, minimum=0, integer=True)
        self.reduction = reduction
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, inp: MethodInput) -> MethodOutput:
        gramian = _gramian64(inp, self.name)
        coefficients, events = pcgrad_coefficients(gramian, self.generator)
        weights = _reduce(coefficients, self.reduction)
        return MethodOutput(
            weights=_on_device_of(weights, inp.gramian),
            projections=events,
            extras={"projections": float(len(events))},
        )

    def _repr_args(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "seed": self.seed}


def pcgrad_coefficients(
    gramian: torch.Tensor, generator: torch.Generator, block: str | None = None
) -> tuple[torch.Tensor, list[ProjectionEvent]]:
    """PCGrad's coefficient rows C [T, T] (g_i^PC = C_i J) and its projection events.

    ``gramian`` is a float64 CPU [T, T] tensor; one ``torch.randperm(T, generator=generator)``
    is drawn per task i, in task order. ``block`` is copied into the events.
    """
    G = gramian.numpy()
    num_tasks = G.shape[0]
    C = np.eye(num_tasks)
    events = []
    for i in range(num_tasks):
        dots = G[i].copy()  # g_i^PC·g_k for every original g_k, i.e. C_i G, kept up to date
        for j in torch.randperm(num_tasks, generator=generator).tolist():
            # Skip i itself, pairs that do not conflict, and zero g_j (nothing to project onto).
            if j == i or dots[j] >= 0.0 or G[j, j] <= 0.0:
                continue
            coefficient = dots[j] / G[j, j]
            cosine = _cosine(dots[j], dots @ C[i], G[j, j])
            C[i, j] -= coefficient
            dots -= coefficient * G[j]
            events.append(ProjectionEvent(i, j, float(coefficient), cosine, block))
    return torch.from_numpy(C), events


def _cosine(dot: float, squared_norm_a: float, squared_norm_b: float) -> float:
    """cos(a, b) from a·b and the squared norms, clipped to [-1, 1] against round-off."""
    denominator = math.sqrt(max(squared_norm_a, 0.0) * max(squared_norm_b, 0.0))
    if denominator == 0.0:  # a numerically zero vector with a negative dot: report -1
        return -1.0 if dot < 0 else 0.0
    return float(min(1.0, max(-1.0, dot / denominator)))


def _reduce(coefficients: torch.Tensor, reduction: str) -> torch.Tensor:
    """Task weights from coefficient rows: the update Σ_i C_i J (or its mean) is wᵀJ."""
    return coefficients.sum(0) if reduction == "sum" else coefficients.mean(0)
