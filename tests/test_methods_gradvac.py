"""GradVac (_gradvac.py): against Algorithm 1 of Wang et al. run per block on explicit
vectors, and its first step against PCGrad."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_methods import jacobian_family, make_input, split_blocks, update

from gradlab.methods import get_method


def brute_gradvac(J_blocks, phi_hat: np.ndarray, generator: torch.Generator, beta: float):
    """Algorithm 1 of Wang et al. per block on explicit vectors; updates phi_hat in place."""
    updates = []
    for b, Jb in enumerate(J_blocks):
        rows = []
        for i in range(len(Jb)):
            g = Jb[i].copy()
            for j in torch.randperm(len(Jb), generator=generator).tolist():
                if j == i:
                    continue
                norm_i, norm_j = np.linalg.norm(g), np.linalg.norm(Jb[j])
                phi, target = g @ Jb[j] / (norm_i * norm_j), phi_hat[b, i, j]
                if phi < target:
                    g = (
                        g
                        + norm_i
                        * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                        / (norm_j * math.sqrt(1 - target**2))
                        * Jb[j]
                    )
                phi_hat[b, i, j] = (1 - beta) * target + beta * phi
            rows.append(g)
        updates.append(np.sum(rows, axis=0))
    return np.concatenate(updates)


@pytest.mark.parametrize("beta", [0.01, 0.5])
@pytest.mark.parametrize("seed", range(3))
def test_gradvac_matches_brute_force(beta, seed):
    rng = np.random.default_rng(seed)
    num_tasks, num_blocks = 1 + seed + 2, 3  # T = 3, 4, 5
    method = get_method("gradvac", beta=beta, seed=seed)
    reference = torch.Generator().manual_seed(seed)
    phi_hat = np.zeros((num_blocks, num_tasks, num_tasks))
    corrections = 0
    for _ in range(6):  # several steps: the targets move away from 0
        J = rng.normal(size=(num_tasks, 12)) + 0.5  # mostly aligned, some conflicts
        out = method(make_input(J, num_blocks=num_blocks))
        expected = brute_gradvac(split_blocks(J, num_blocks), phi_hat, reference, beta)
        np.testing.assert_allclose(update(out.weights, J), expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(method.state_dict()["phi_hat"].numpy(), phi_hat, atol=1e-12)
        corrections += out.extras["corrections"]
    assert corrections > 0


def test_gradvac_first_step_equals_pcgrad():
    for seed, J in enumerate(jacobian_family(11)):
        inp = make_input(J, num_blocks=1)
        gradvac = get_method("gradvac", seed=seed)(inp).weights[0]
        pcgrad = get_method("pcgrad", seed=seed)(inp).weights
        assert torch.allclose(gradvac, pcgrad, rtol=1e-10, atol=1e-12)
