"""The Nash bargaining weights (Gα = 1/α) by Newton's method, and the residual of a solution."""

from __future__ import annotations

import math

import numpy as np
import torch


def nash_bargaining_weights(gramian: torch.Tensor, *, tol: float = 1e-20,
                            max_iter: int = 100) -> torch.Tensor | None:
    """The Nash bargaining weights α > 0 with α_i (Gα)_i = 1 for every task i, exactly.

    Nash-MTL's solution (Navon et al., 2022, eq. 2: Gα = 1/α) is the unique minimiser of
    the strictly convex f(α) = ½ αᵀGα - Σ log α_i over α > 0, found here by damped Newton
    steps. The problem is first rescaled to unit diagonal (α = β / √G_ii, a correlation
    matrix C with Cβ = 1/β), so gradients whose norms differ by orders of magnitude are no
    harder than equal ones. Tasks with a zero gradient take no part and get weight 0.

    Input gramian [T, T] (symmetric PSD); output weights [T] (float64, CPU), or None when no
    solution exists: the gradients' convex hull contains 0 (the minimum norm is 0, a Pareto
    stationary point, where no direction helps every task), detected as f unbounded below.
    Converges when the Newton decrement λ² = ∇fᵀH⁻¹∇f falls below ``tol``.

    Example:
        >>> import torch
        >>> G = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> nash_bargaining_weights(G)  # orthogonal gradients: α_i = 1 / ‖g_i‖
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    G = torch.as_tensor(gramian, dtype=torch.float64).detach().cpu()
    G = (G + G.T) / 2
    diag = G.diagonal().clamp_min(0.0)
    active = diag > diag.max() * 1e-20 if diag.max() > 0 else torch.zeros_like(diag, dtype=bool)
    weights = torch.zeros_like(diag)
    if not active.any():
        return None
    d = diag[active].sqrt()
    C = G[active][:, active] / d[:, None] / d[None, :]
    beta = torch.ones(len(d), dtype=torch.float64)  # the solution for orthogonal gradients

    def f(b: torch.Tensor) -> float:
        return float(0.5 * b @ C @ b - torch.log(b).sum())

    value = f(beta)
    for _ in range(max_iter):
        grad = C @ beta - 1.0 / beta
        hessian = C + torch.diag(1.0 / beta**2)
        try:
            step = torch.linalg.solve(hessian, -grad)
        except torch.linalg.LinAlgError:  # C singular and β far out: f unbounded below
            return None
        decrement = float(-(grad @ step))
        if decrement < tol:
            weights[active] = beta / d
            return weights
        t = 1.0
        while True:  # backtracking: stay positive, decrease f enough (Armijo)
            trial = beta + t * step
            if (trial > 0).all():
                trial_value = f(trial)
                if trial_value <= value - 0.25 * t * decrement:
                    break
            t /= 2
            if t < 1e-12:
                return None
        beta, value = trial, trial_value
        if not np.isfinite(value) or float(beta.max()) > 1e12:  # f unbounded below
            return None
    return None


def nash_residual(gramian: torch.Tensor, alpha) -> float:
    """max_i |α_i (Gα)_i - 1|, scale-free (inf for an α with a zero or negative entry)."""
    a = torch.as_tensor(np.asarray(alpha, dtype=np.float64))
    if not (a > 0).all():
        return math.inf
    return float((a * (gramian.detach().cpu() @ a) - 1.0).abs().max())
