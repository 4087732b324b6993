"""Nash-MTL (_nash_mtl.py) against torchjd, its failed-solve fallback, and the exact Nash
bargaining solver (_nash_bargaining.py) against brute force and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_methods import J_PINNED, SOLVER_ATOL, jacobian_family, make, make_input
from torchjd import aggregation

from gradlab.methods._nash_bargaining import nash_bargaining_weights


@pytest.mark.filterwarnings("ignore:.*not DPP")
def test_nash_mtl_matches_torchjd_on_the_jacobian():
    method = make("nash_mtl", max_norm=1.0, fallback=False)  # torchjd's answers, as they are
    for seed in range(2):
        family = [J for J in jacobian_family(seed, count=10) if len(J) == 3]
        reference = aggregation.NashMTL(n_tasks=3, max_norm=1.0)
        method.reset()
        for J in family:  # a sequence: the solver state carries over
            expected = reference.weighting(torch.tensor(J))
            weights = method(make_input(J)).weights
            assert torch.allclose(weights, expected, atol=SOLVER_ATOL, rtol=1e-4)


def test_nash_mtl_reports_failed_solves_and_falls_back_to_the_exact_solution():
    J = np.vstack([np.random.default_rng(0).normal(size=(2, 9)), np.zeros((1, 9))])
    out = make("nash_mtl", fallback=False)(make_input(J))  # a zero task: torchjd fails
    assert out.extras == {"solver_failed": 1.0}
    assert torch.isfinite(out.weights).all()
    out = make("nash_mtl", max_norm=0.0)(make_input(J))
    assert out.extras == {"solver_failed": 1.0, "fallback": 1.0}
    G = torch.tensor(J @ J.T)
    w = out.weights
    assert w[2] == 0  # the zero task takes no part
    np.testing.assert_allclose((w * (G @ w))[:2], 1.0, rtol=1e-9)
    out = make("nash_mtl")(make_input(J_PINNED))
    assert out.extras == {"solver_failed": 0.0, "fallback": 0.0}


@pytest.mark.filterwarnings("ignore:.*not DPP", "ignore:Solution may be inaccurate")
def test_nash_mtl_fallback_where_torchjd_fails_on_spread_norms():
    """Norms 0.01, 1 and 50 (a Gramian spanning 7 decades): torchjd's solves fail (each
    takes ~0.4 s of ECOS); those steps get the exact solution, the others stay torchjd's."""
    rng = np.random.default_rng(0)
    method, plain = make("nash_mtl", max_norm=0.0), make("nash_mtl", max_norm=0.0,
                                                         fallback=False)
    fell_back = 0
    for _ in range(4):
        J = rng.normal(size=(3, 200))
        J *= (np.array([0.01, 1.0, 50.0]) / np.linalg.norm(J, axis=1))[:, None]
        G = torch.tensor(J @ J.T)
        out = method(make_input(J))
        plain(make_input(J))
        if out.extras["fallback"]:
            fell_back += 1
            np.testing.assert_allclose(out.weights * (G @ out.weights), 1.0, rtol=1e-9)
        else:  # torchjd solved it: its answer, near the solution
            assert (out.weights * (G @ out.weights) - 1).abs().max() <= 1e-2
    assert fell_back > 0


def test_nash_bargaining_weights_brute_force_and_properties():
    rng = np.random.default_rng(3)
    for num_tasks in (2, 3, 5):
        J = rng.normal(size=(num_tasks, 40)) * 10.0 ** rng.uniform(-3, 3, size=(num_tasks, 1))
        G = torch.tensor(J @ J.T)
        w = nash_bargaining_weights(G)
        np.testing.assert_allclose(w * (G @ w), 1.0, rtol=1e-9)  # Gα = 1/α
        # brute force: f(α) = ½αᵀGα - Σ log α is smallest at w among nearby positive points
        Gn = G.numpy()
        best = 0.5 * w.numpy() @ Gn @ w.numpy() - np.log(w.numpy()).sum()
        for _ in range(50):
            other = w.numpy() * np.exp(rng.normal(scale=0.05, size=num_tasks))
            assert 0.5 * other @ Gn @ other - np.log(other).sum() > best
        # scaling task 0's gradient by c scales its weight by 1/c (loss-scale invariance)
        S = np.diag([7.0] + [1.0] * (num_tasks - 1))
        w_scaled = nash_bargaining_weights(torch.tensor(S @ J @ J.T @ S))
        np.testing.assert_allclose(w_scaled.numpy(), w.numpy() / np.diag(S), rtol=1e-8)
        perm = rng.permutation(num_tasks)
        w_perm = nash_bargaining_weights(G[perm][:, perm])
        np.testing.assert_allclose(w_perm.numpy(), w.numpy()[perm], rtol=1e-8)
    # pinned: torchjd's (converged) answer on J_PINNED, and 1/‖g_i‖ for orthogonal gradients
    w = nash_bargaining_weights(torch.tensor(J_PINNED @ J_PINNED.T))
    np.testing.assert_allclose(w.numpy(), [0.5915, 0.4071], atol=5e-5)
    w = nash_bargaining_weights(torch.diag(torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)))
    np.testing.assert_allclose(w.numpy(), [0.5, 1.0, 2.0], rtol=1e-12)
    g = rng.normal(size=6)
    assert nash_bargaining_weights(torch.tensor(np.outer([1, -1], [1, -1]) * (g @ g))) is None
    assert nash_bargaining_weights(torch.zeros(3, 3)) is None
