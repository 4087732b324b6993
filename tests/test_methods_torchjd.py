"""The torchjd-backed methods (_torchjd.py adapter; _mgda, _cagrad, _imtl_g, _aligned_mtl,
_upgrad, _dualproj, _random): against torchjd called directly, against brute-force solutions
of their problems on explicit vectors (scipy), and pinned values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_methods import (
    J_PINNED,
    SOLVER_ATOL,
    jacobian_family,
    make,
    make_input,
    update,
)
from scipy.optimize import minimize
from torchjd import aggregation

from gradlab.methods import MethodInput, get_method

TORCHJD_WEIGHTINGS = {
    "mgda": aggregation.MGDAWeighting,
    "cagrad": lambda: aggregation.CAGradWeighting(c=0.5),
    "imtl_g": aggregation.IMTLGWeighting,
    "aligned_mtl": aggregation.AlignedMTLWeighting,
    "upgrad": aggregation.UPGradWeighting,
    "dualproj": aggregation.DualProjWeighting,
}
TORCHJD_REG_EPS = 1e-4  # torchjd 0.18.0's QuadprogProjector: added to the diagonal of G / tr(G)


# ------------------------------------------------------------------------------------------
# Brute force on explicit vectors


def _slsqp(objective, gradient, start, ftol=1e-13, **kwargs) -> np.ndarray:
    result = minimize(objective, start, jac=gradient, method="SLSQP",
                      options={"ftol": ftol, "maxiter": 1000}, **kwargs)
    assert result.success, result.message
    return result.x


def project_onto_dual_cone(v: np.ndarray, J: np.ndarray) -> np.ndarray:
    """argmin_x ‖x - v‖ subject to J x >= 0: the closest vector that conflicts with no row."""
    constraint = {"type": "ineq", "fun": lambda x: J @ x, "jac": lambda x: J}
    return _slsqp(lambda x: 0.5 * (x - v) @ (x - v), lambda x: x - v, v.copy(),
                  constraints=[constraint])


def regularised_like_torchjd(J: np.ndarray) -> tuple[np.ndarray, float]:
    """J / ‖J‖_F with T more columns √reg_eps · I: its Gramian is the G / tr(G) + reg_eps I that
    torchjd's projector uses. A combination wᵀ[J | c I] ends in c w, which gives w back."""
    c = np.sqrt(TORCHJD_REG_EPS)
    return np.hstack([J / np.linalg.norm(J), c * np.eye(len(J))]), c


def brute_upgrad(J: np.ndarray) -> np.ndarray:
    """Weights of the mean of the rows, each projected onto the dual cone of all rows."""
    J_reg, c = regularised_like_torchjd(J)
    d = np.mean([project_onto_dual_cone(g, J_reg) for g in J_reg], axis=0)
    return d[J.shape[1]:] / c


def brute_dualproj(J: np.ndarray) -> np.ndarray:
    """Weights of the mean row projected onto the dual cone of all rows."""
    J_reg, c = regularised_like_torchjd(J)
    d = project_onto_dual_cone(J_reg.mean(0), J_reg)
    return d[J.shape[1]:] / c


def brute_mgda(J: np.ndarray) -> np.ndarray:
    """The minimum-norm point of the convex hull of the rows."""
    num_tasks, scale = len(J), np.linalg.norm(J)
    A = J / scale
    w = _slsqp(lambda w: 0.5 * (w @ A) @ (w @ A), lambda w: A @ (w @ A),
               np.full(num_tasks, 1 / num_tasks), bounds=[(0, 1)] * num_tasks,
               constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}])
    return w @ J


def brute_cagrad(J: np.ndarray, c: float) -> np.ndarray:
    """argmax_d min_i g_i·d subject to ‖d - g_0‖ <= c ‖g_0‖, g_0 the mean row (CAGrad eq. 4)."""
    scale, num_params = np.linalg.norm(J), J.shape[1]
    A = J / scale
    g0 = A.mean(0)
    radius = c * np.linalg.norm(g0)
    n = num_params

    def ball(z):  # r² - ‖d - g_0‖² >= 0
        return radius**2 - (z[:n] - g0) @ (z[:n] - g0)

    constraints = [
        {"type": "ineq", "fun": lambda z: A @ z[:n] - z[n],
         "jac": lambda z: np.hstack([A, -np.ones((len(A), 1))])},
        {"type": "ineq", "fun": ball, "jac": lambda z: np.append(-2 * (z[:n] - g0), 0.0)},
    ]
    # start feasible (d = g_0, t = min_i g_i·g_0): from t = 0, SLSQP's line search failed on
    # an AVX2 machine for one J of the family ("Positive directional derivative")
    z = _slsqp(lambda z: -z[num_params], lambda z: -np.eye(num_params + 1)[num_params],
               np.append(g0, (A @ g0).min()), ftol=1e-10, constraints=constraints)
    return z[:num_params] * scale


@pytest.mark.parametrize("seed", range(3))
def test_upgrad_and_dualproj_match_brute_force(seed):
    upgrad, dualproj = make("upgrad"), make("dualproj")
    for J in jacobian_family(seed):
        np.testing.assert_allclose(upgrad(make_input(J)).weights.numpy(), brute_upgrad(J),
                                   rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(dualproj(make_input(J)).weights.numpy(), brute_dualproj(J),
                                   rtol=1e-6, atol=1e-9)


def test_upgrad_regularisation_lets_small_gradients_conflict():
    """What torchjd's reg_eps does: a task with ‖g‖² ~ 1e-4 tr(G) is nearly ignored, and the
    update conflicts with it (cos = -0.17 here) although UPGrad's exact update never does."""
    J = next(J for J in jacobian_family(0) if J.shape == (5, 8))
    d = update(make("upgrad")(make_input(J)).weights, J)
    cosines = J @ d / (np.linalg.norm(J, axis=1) * np.linalg.norm(d))
    assert cosines.min() == pytest.approx(-0.166, abs=1e-3)
    exact = np.mean([project_onto_dual_cone(g, J / np.linalg.norm(J)) for g in J], axis=0)
    assert (J @ exact >= -1e-9).all()


@pytest.mark.parametrize("seed", range(3))
def test_mgda_matches_brute_force(seed):
    """Frank-Wolfe approaches the minimum norm slowly: with the defaults (epsilon 1e-3, 100
    iterations, as torchjd) ‖d‖ ends up to 5.4 % above the minimum on these families (and the
    direction up to ~20 % away), with 1000 iterations within 0.5 %; it never goes below."""
    for J in jacobian_family(seed):
        minimum = np.linalg.norm(brute_mgda(J))
        for kwargs, excess in (({}, 0.06), ({"epsilon": 1e-9, "max_iters": 1000}, 0.005)):
            d = update(make("mgda", **kwargs)(make_input(J)).weights, J)
            assert minimum * (1 - 1e-9) <= np.linalg.norm(d) <= minimum * (1 + excess), kwargs


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("c", [0.25, 0.5])
def test_cagrad_matches_brute_force(seed, c):
    method = make("cagrad", c=c)
    for J in jacobian_family(seed):
        if len(J) == 1:
            continue
        expected = brute_cagrad(J, c)
        d = update(method(make_input(J)).weights, J)
        np.testing.assert_allclose(d, expected, atol=1e-3 * np.linalg.norm(expected))


@pytest.mark.parametrize("seed", range(3))
def test_imtl_g_update_has_equal_projections_on_the_unit_gradients(seed):
    """IMTL-G's defining property (Liu et al., 2021): u_i·d is the same for every task i,
    with weights summing to 1 (full-rank J here: T <= 5 < P)."""
    for J in jacobian_family(seed):
        weights = make("imtl_g")(make_input(J)).weights.numpy()
        d = weights @ J
        projections = J @ d / np.linalg.norm(J, axis=1)
        np.testing.assert_allclose(projections, projections[0], rtol=1e-8)
        assert weights.sum() == pytest.approx(1.0)
        assert projections[0] > 0


def test_aligned_mtl_aligns_the_singular_values():
    """Aligned-MTL rescales J's principal components to the smallest singular value: with the
    SVD J = U S Vᵀ, the update is σ_min U Vᵀ's rows averaged, i.e. w = σ_min U S⁻¹ Uᵀ 1/T."""
    J = np.array([[3.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    U, S, _ = np.linalg.svd(J, full_matrices=False)
    expected = S.min() * U @ np.diag(1 / S) @ U.T @ np.full(2, 0.5)
    weights = make("aligned_mtl")(make_input(J)).weights.numpy()
    np.testing.assert_allclose(weights, expected, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# Against torchjd called directly; pinned values


@pytest.mark.parametrize("name", sorted(TORCHJD_WEIGHTINGS))
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.filterwarnings("ignore:.*not DPP")
def test_adapter_matches_torchjd(name, seed):
    method = make(name)
    for J in jacobian_family(seed):
        G = torch.tensor(J @ J.T)
        assert G.trace() >= 1e-4  # torchjd's own thresholds do not bite
        expected = TORCHJD_WEIGHTINGS[name]()(G)
        weights = method(make_input(J)).weights
        assert torch.allclose(weights, expected, atol=SOLVER_ATOL, rtol=1e-5)


def test_mgda_pinned_two_task_min_norm():
    # Min-norm point of the segment [g_1, g_2]: w_1 = (G22 - G12) / (G11 + G22 - 2 G12).
    G = J_PINNED @ J_PINNED.T
    w1 = (G[1, 1] - G[0, 1]) / (G[0, 0] + G[1, 1] - 2 * G[0, 1])
    assert w1 == pytest.approx(0.6)
    weights = get_method("mgda")(make_input(J_PINNED)).weights
    assert weights.tolist() == pytest.approx([w1, 1 - w1], abs=1e-9)
    d = update(weights, J_PINNED)  # interior optimum: d·g_1 = d·g_2 = ‖d‖²
    assert d @ J_PINNED.T == pytest.approx([d @ d, d @ d])


def test_tiny_gradients_keep_upgrad_weights():
    """torchjd on the raw Gramian falls back to the mean once tr(G) < 1e-4; the adapter not."""
    upgrad = make("upgrad")
    tiny = 1e-3 * J_PINNED  # tr(G) = 5.6e-5
    weights = upgrad(make_input(tiny)).weights
    assert weights.tolist() == pytest.approx([1.1109, 0.7894], abs=1e-4)
    raw = aggregation.UPGradWeighting()(torch.tensor(tiny @ tiny.T))
    assert raw.tolist() == pytest.approx([0.5, 0.5])


def test_random_matches_torchjd_and_keeps_the_global_rng():
    method = get_method("random", seed=5)
    torch.manual_seed(5)
    eye = torch.eye(4, dtype=torch.float64)
    expected = [aggregation.RandomWeighting()(eye) for _ in range(3)]
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    weights = [method(MethodInput(gramian=torch.eye(4))).weights for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), rng_before)
    for got, want in zip(weights, expected, strict=True):
        assert torch.equal(got, want)
