"""GradVac (Gradient Vaccine): per-block cosine targets, computed on block Gramians."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    _block_gramians64,
    _check_number,
    _check_state_keys,
    _generator_from_state,
    _gramian64,
    _on_device_of,
)


class GradVac(Method):
    """GradVac: raise each pair's cosine to an EMA target instead of only removing conflict.

    `Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
    Multilingual Models <https://arxiv.org/abs/2010.05874>`_ (Wang et al., 2021), Algorithm 1,
    with one target per block (their layer-wise granularity). For each block b and task i, the
    other tasks j are visited in random order; with φ = cos(g_i^PC, g_j) and target φ̂_ij:
    if φ < φ̂_ij, g_i^PC += ‖g_i^PC‖ (φ̂ √(1-φ²) - φ √(1-φ̂²)) / (‖g_j‖ √(1-φ̂²)) g_j; then
    φ̂_ij <- (1-β) φ̂_ij + β φ. Targets start at 0 (so the first step is PCGrad without
    overshoot: it only lifts negative cosines to 0). Block b's update is Σ_i g_{i,b}^PC.

    Computed from the block Gramians only, with coefficient rows as in :class:`PCGrad`.
    Input gramian [T, T], block_gramians [B, T, T]; output weights [B, T] (float64, on the
    Gramian's device) and ``extras["corrections"]``. State: targets ``phi_hat`` [B, T, T] and
    the generator (one ``torch.randperm(T)`` per block and task, blocks outer). Pairs where a
    gradient has zero norm have no cosine: they are neither corrected nor averaged in.

    Args:
        beta: EMA rate of the targets (paper: 0.01).
        seed: seed of the generator that draws the task orders.
        eps: floor on 1 - φ̂² in the correction's denominator (guards φ̂ = ±1).

    Example:
        >>> import torch
        >>> from gradlab.methods import GradVac, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> G = J @ J.T
        >>> out = GradVac()(MethodInput(gramian=G, block_gramians=G[None], block_names=("all",)))
        >>> (out.weights[0] @ J).round(decimals=4)  # step 0: targets 0, same as PCGrad
        tensor([0.5848, 3.8012, 3.8012], dtype=torch.float64)
    """

    name = "gradvac"
    blockwise = True

    def __init__(self, beta: float = 0.01, seed: int = 0, eps: float = 1e-8) -> None:
        _check_number(self.name, "beta", beta, minimum=0.0, maximum=1.0)
        _check_number(self.name, "seed", seed, minimum=0, integer=True)
        _check_number(self.name, "eps", eps, minimum=0.0, exclusive_minimum=True)
        self.beta = beta
        self.seed = seed
        self.eps = eps
        self.generator = torch.Generator().manual_seed(seed)
        self.phi_hat: torch.Tensor | None = None  # [B, T, T], created at the first call

    def __call__(self, inp: MethodInput) -> MethodOutput:
        _gramian64(inp, self.name)
        block_gramians = _block_gramians64(inp, self.name)
        if self.phi_hat is None:
            self.phi_hat = torch.zeros_like(block_gramians)
        elif self.phi_hat.shape != block_gramians.shape:
            raise ValueError(
                f"{self.name}: targets were built for [B, T, T] = {list(self.phi_hat.shape)}, "
                f"got block_gramians {list(block_gramians.shape)}; call reset() first"
            )
        block_weights, corrections = [], 0
        for gramian, phi_hat in zip(block_gramians, self.phi_hat, strict=True):
            coefficients, count = self._vaccinate(gramian.numpy(), phi_hat.numpy())
            block_weights.append(coefficients.sum(0))
            corrections += count
        weights = torch.from_numpy(np.stack(block_weights))
        return MethodOutput(
            weights=_on_device_of(weights, inp.gramian),
            extras={"corrections": float(corrections)},
        )

    def _vaccinate(self, G: np.ndarray, phi_hat: np.ndarray) -> tuple[np.ndarray, int]:
        """Coefficient rows C [T, T] for one block; updates ``phi_hat`` [T, T] in place."""
        num_tasks = G.shape[0]
        C = np.eye(num_tasks)
        corrections = 0
        for i in range(num_tasks):
            dots = G[i].copy()  # g_i^PC·g_k for every original g_k, i.e. C_i G
            for j in torch.randperm(num_tasks, generator=self.generator).tolist():
                if j == i:
                    continue
                norm_i = math.sqrt(max(dots @ C[i], 0.0))
                norm_j = math.sqrt(max(G[j, j], 0.0))
                if norm_i == 0.0 or norm_j == 0.0:  # no cosine: leave the pair alone
                    continue
                phi = min(1.0, max(-1.0, dots[j] / (norm_i * norm_j)))
                target = phi_hat[i, j]
                if phi < target:
                    sin_target = math.sqrt(max(1.0 - target**2, self.eps))
                    scale = norm_i * (target * math.sqrt(1.0 - phi**2) - phi * sin_target)
                    step = scale / (norm_j * sin_target)
                    C[i, j] += step
                    dots += step * G[j]
                    corrections += 1
                phi_hat[i, j] = (1.0 - self.beta) * target + self.beta * phi
        return C, corrections

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)
        self.phi_hat = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.generator.get_state()}
        if self.phi_hat is not None:
            state["phi_hat"] = self.phi_hat.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state_keys(self.name, state, required={"generator"}, optional={"phi_hat"})
        phi_hat = state.get("phi_hat")
        if phi_hat is not None and (phi_hat.ndim != 3 or phi_hat.shape[1] != phi_hat.shape[2]):
            raise ValueError(
                f"{self.name}: state['phi_hat'] must have shape [B, T, T], "
                f"got {list(phi_hat.shape)}"
            )
        self.generator = _generator_from_state(self.name, state["generator"])
        self.phi_hat = None if phi_hat is None else phi_hat.to("cpu", torch.float64).clone()

    def _repr_args(self) -> dict[str, Any]:
        return {"beta": self.beta, "seed": self.seed, "eps": self.eps}
