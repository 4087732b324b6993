"""gradlab.stats against brute force on explicit gradient vectors J [T, P]."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradlab import stats

# Undefined values must come out as NaN silently: any numpy warning fails a test.
pytestmark = pytest.mark.filterwarnings("error")


# -- brute force on the vectors --------------------------------------------------------------


def bf_norms(J):
    return np.linalg.norm(J, axis=1)


def bf_cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na <= stats.EPS or nb <= stats.EPS:
        return np.nan
    return np.clip(a @ b / (na * nb), -1, 1)


def bf_pairwise(J, f):
    T = len(J)
    return np.array([[f(J[i], J[j]) for j in range(T)] for i in range(T)])


def bf_gms(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na <= stats.EPS and nb <= stats.EPS:
        return np.nan
    return 2 * na * nb / (na**2 + nb**2)


def bf_curvature(a, b):
    c = bf_cos(a, b)
    s = np.sum((a + b) ** 2)
    if np.isnan(c) or s <= 1e-12 * (a @ a + b @ b):
        return np.nan
    return (1 - c**2) * np.sum((a - b) ** 2) / s


def bf_condition(J):
    if not np.any(J):
        return np.nan
    s = np.linalg.svd(J, compute_uv=False)
    if len(J) > J.shape[1] or s[-1] <= 1e-6 * s[0]:
        return np.inf
    return s[0] / s[-1]


def random_J(rng, T, P=40, scale=1.0):
    return rng.standard_normal((T, P)) * scale


def gram(J):
    return J @ J.T


# -- pinned values ---------------------------------------------------------------------------


def test_module_docstring_example_runs():
    assert doctest.testmod(stats).failed == 0


def test_pinned_values():
    J = np.array([[3.0, 0.0], [0.0, 4.0], [-3.0, 4.0]])
    G = gram(J)
    np.testing.assert_allclose(stats.task_norms(G), [3, 4, 5])
    np.testing.assert_allclose(stats.cosines(G)[0], [1, 0, -0.6])
    np.testing.assert_array_equal(stats.conflict(G)[0], [0, 0, 1])
    np.testing.assert_allclose(stats.magnitude_similarity(G)[0, 1], 24 / 25)
    # (1 - 0.36) * |(6, 0)|^2 / |(0, 0)+(0,4)|... g_0 - g_2 = (6, -4), g_0 + g_2 = (0, 4)
    np.testing.assert_allclose(stats.curvature_bounding_measure(G)[0, 2], 0.64 * 52 / 16)
    np.testing.assert_allclose(stats.condition_number(gram(J[:2])), 4 / 3)
    w = np.array([1.0, 1.0, 0.0])  # d = (3, 4)
    np.testing.assert_allclose(stats.update_norm(G, w), 5.0)
    np.testing.assert_allclose(stats.update_task_cosines(G, w), [0.6, 0.8, 7 / 25])
    np.testing.assert_allclose(stats.predicted_loss_change(G, w, 0.1), [-0.9, -1.6, -0.7])


# -- every statistic vs brute force ----------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_match_brute_force(T, seed):
    rng = np.random.default_rng(seed)
    J = random_J(rng, T, scale=10.0 ** rng.uniform(-3, 2))
    G = gram(J)
    np.testing.assert_allclose(stats.task_norms(G), bf_norms(J), rtol=1e-12)
    np.testing.assert_allclose(stats.cosines(G), bf_pairwise(J, bf_cos), atol=1e-12)
    np.testing.assert_array_equal(stats.conflict(G), (bf_pairwise(J, bf_cos) < 0).astype(float))
    np.testing.assert_allclose(stats.magnitude_similarity(G), bf_pairwise(J, bf_gms), atol=1e-12)
    np.testing.assert_allclose(stats.curvature_bounding_measure(G), bf_pairwise(J, bf_curvature),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.condition_number(G), bf_condition(J), rtol=1e-8)

    w = rng.uniform(0, 2, T)
    d = w @ J
    mean = J.mean(0)
    np.testing.assert_allclose(stats.update_norm(G, w), np.linalg.norm(d), rtol=1e-12)
    np.testing.assert_allclose(stats.update_task_cosines(G, w), [bf_cos(d, g) for g in J],
                               atol=1e-12)
    np.testing.assert_allclose(stats.update_mean_cosine(G, w), bf_cos(d, mean), atol=1e-12)
    np.testing.assert_allclose(stats.predicted_loss_change(G, w, 0.01), -0.01 * (J @ d),
                               rtol=1e-12)
    a, b = rng.standard_normal(T), rng.standard_normal(T)
    np.testing.assert_allclose(stats.combination_cosine(G, a, b), bf_cos(a @ J, b @ J),
                               atol=1e-12)
    np.testing.assert_allclose(stats.update_gramian(G, w), gram(np.vstack([J, d])), rtol=1e-10,
                               atol=1e-12 * np.abs(G).max())


def test_broadcasting_over_leading_dims():
    rng = np.random.default_rng(3)
    Js = rng.standard_normal((2, 4, 3, 20))
    G = np.einsum("abtp,absp->abts", Js, Js)
    w = rng.uniform(size=(2, 4, 3))
    for f in (stats.task_norms, stats.cosines, stats.conflict, stats.magnitude_similarity,
              stats.curvature_bounding_measure, stats.condition_number):
        stacked = f(G)
        one_by_one = np.array([[f(G[a, b]) for b in range(4)] for a in range(2)])
        np.testing.assert_array_equal(stacked, one_by_one)
    for f in (stats.update_norm, stats.update_task_cosines, stats.update_mean_cosine):
        stacked = f(G, w)
        one_by_one = np.array([[f(G[a, b], w[a, b]) for b in range(4)] for a in range(2)])
        np.testing.assert_allclose(stacked, one_by_one, rtol=1e-14)
    # one weight vector against a stack of Gramians, per-Gramian learning rates
    assert stats.update_norm(G, w[0, 0]).shape == (2, 4)
    assert stats.predicted_loss_change(G, w, np.full((2, 4), 0.1)).shape == (2, 4, 3)
    xy, outside = stats.plane_coordinates(G, np.eye(3), basis="pca")
    assert xy.shape == (2, 4, 3, 2) and outside.shape == (2, 4, 3)


# -- adversarial cases -----------------------------------------------------------------------


def test_zero_gradient_is_missing_not_an_error():
    g = np.array([1.0, 2.0, 2.0])
    J = np.vstack([g, np.zeros(3), -g])
    G = gram(J)
    np.testing.assert_array_equal(stats.task_norms(G), [3, 0, 3])
    cos = stats.cosines(G)
    assert np.isnan(cos[1]).all() and np.isnan(cos[:, 1]).all()
    assert cos[0, 2] == -1 and cos[0, 0] == 1
    assert np.isnan(stats.conflict(G)[0, 1]) and stats.conflict(G)[0, 2] == 1
    assert stats.magnitude_similarity(G)[0, 1] == 0  # one zero: defined, 0
    assert np.isnan(stats.magnitude_similarity(G)[1, 1])  # both zero: undefined
    assert np.isnan(stats.curvature_bounding_measure(G)[0, 1])
    assert stats.condition_number(G) == np.inf
    assert np.isnan(stats.update_task_cosines(G, np.ones(3))).all()  # d = g + 0 - g = 0
    assert np.isnan(stats.update_mean_cosine(G, np.array([1.0, 0, 0])))
    # all gradients zero
    Z = np.zeros((3, 3))
    assert np.isnan(stats.cosines(Z)).all() and np.isnan(stats.magnitude_similarity(Z)).all()
    assert np.isnan(stats.condition_number(Z))
    np.testing.assert_array_equal(stats.task_norms(Z), 0)


def test_identical_gradients():
    g = np.random.default_rng(4).standard_normal(50)
    G = gram(np.vstack([g, g]))
    assert stats.cosines(G)[0, 1] == 1.0
    assert stats.conflict(G)[0, 1] == 0.0
    assert stats.magnitude_similarity(G)[0, 1] == pytest.approx(1.0)
    assert stats.curvature_bounding_measure(G)[0, 1] == 0.0
    assert stats.condition_number(G) == np.inf


def test_exactly_opposite_gradients():
    g = np.random.default_rng(5).standard_normal(50)
    G = gram(np.vstack([g, -g]))
    assert stats.cosines(G)[0, 1] == -1.0
    assert stats.conflict(G)[0, 1] == 1.0
    assert stats.magnitude_similarity(G)[0, 1] == pytest.approx(1.0)
    assert np.isnan(stats.curvature_bounding_measure(G)[0, 1])  # g_i + g_j = 0
    assert stats.condition_number(G) == np.inf
    # opposite with different lengths: 1 - cos^2 = 0 and the sum is not zero
    G2 = gram(np.vstack([g, -2 * g]))
    assert stats.curvature_bounding_measure(G2)[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert stats.magnitude_similarity(G2)[0, 1] == pytest.approx(0.8)


def test_single_task():
    G = gram(np.array([[3.0, 4.0]]))
    assert stats.condition_number(G) == 1.0
    np.testing.assert_array_equal(stats.cosines(G), [[1.0]])
    assert stats.update_task_cosines(G, [2.0])[0] == pytest.approx(1.0)
    xy, outside = stats.plane_coordinates(G, np.array([[1.0], [-0.5]]), basis="pca")
    np.testing.assert_allclose(xy, [[5, 0], [-2.5, 0]])
    np.testing.assert_allclose(outside, [0, 0], atol=1e-12)
    with pytest.raises(ValueError, match="basis='pca'"):
        stats.plane_coordinates(G, np.eye(1), basis="pair")
    assert np.isnan(stats.condition_number(np.zeros((1, 1))))


def test_condition_number_orthogonal_equal_norms_is_one():
    Q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((30, 5)))
    assert stats.condition_number(gram(2.0 * Q.T)) == pytest.approx(1.0)


def test_non_finite_gramian_gives_nan_condition_number():
    G = np.array([[1.0, np.nan], [np.nan, 1.0]])
    assert np.isnan(stats.condition_number(G))
    xy, outside = stats.plane_coordinates(G, np.eye(2), basis="pca")
    assert np.isnan(xy).all() and np.isnan(outside).all()


# -- plane coordinates vs explicit projection ------------------------------------------------


def bf_plane(J, C, basis, pair=(0, 1)):
    V = C @ J
    if basis == "pair":
        i, j = pair
        e1 = J[i] / np.linalg.norm(J[i])
        r = J[j] - (J[j] @ e1) * e1
        e2 = r / np.linalg.norm(r)
        E = np.vstack([e1, e2])
    else:
        _, _, Vt = np.linalg.svd(J, full_matrices=False)
        E = Vt[:2].copy()
        total = J.sum(0)
        E *= np.where(E @ total < 0, -1.0, 1.0)[:, None]
    xy = V @ E.T
    outside = np.linalg.norm(V - xy @ E, axis=1) / np.linalg.norm(V, axis=1)
    return xy, outside


@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("basis", ["pair", "pca"])
@pytest.mark.parametrize("seed", [0, 1])
def test_plane_coordinates_match_explicit_projection(T, basis, seed):
    rng = np.random.default_rng(seed)
    J = random_J(rng, T, P=30)
    C = np.vstack([np.eye(T), rng.uniform(0, 1, (2, T)), rng.standard_normal((1, T))])
    pair = (T - 1, 0) if seed else (0, 1)
    xy, outside = stats.plane_coordinates(gram(J), C, basis=basis, pair=pair)
    bxy, boutside = bf_plane(J, C, basis, pair)
    np.testing.assert_allclose(xy, bxy, atol=1e-10)
    np.testing.assert_allclose(outside, boutside, atol=1e-6)
    if basis == "pair":
        i, j = pair
        assert xy[i, 1] == pytest.approx(0, abs=1e-10) and xy[i, 0] > 0  # g_i on +x
        assert xy[j, 1] > 0  # g_j in the upper half plane
        assert outside[i] == 0 and outside[j] == 0
    else:
        assert np.all(np.sum(xy[:T], axis=0) > 0)  # Σ g_i has positive coordinates
    if T == 2:
        np.testing.assert_array_equal(outside, 0)  # the plane is the whole span


def test_plane_coordinates_degenerate_pair():
    g = np.array([1.0, 2.0, 0.0])
    h = np.array([0.0, 0.0, 1.0])
    J = np.vstack([g, 2 * g, h])  # g_1 parallel to g_0
    xy, outside = stats.plane_coordinates(gram(J), np.eye(3), basis="pair", pair=(0, 1))
    np.testing.assert_allclose(xy[:, 1], 0)
    np.testing.assert_allclose(xy[:, 0], [np.sqrt(5), 2 * np.sqrt(5), 0], atol=1e-12)
    np.testing.assert_allclose(outside, [0, 0, 1], atol=1e-12)
    J0 = np.vstack([np.zeros(3), g])  # x axis undefined
    xy, outside = stats.plane_coordinates(gram(J0), np.eye(2), basis="pair")
    assert np.isnan(xy).all() and np.isnan(outside).all()


def test_plane_coordinates_pca_rank_one_and_zero_sum():
    g = np.array([1.0, -2.0, 2.0])
    xy, outside = stats.plane_coordinates(gram(np.vstack([g, 3 * g])), np.eye(2), basis="pca")
    np.testing.assert_allclose(xy, [[3, 0], [9, 0]], atol=1e-12)
    # g and -g: Σ g_i = 0, orientation falls back to a deterministic sign
    xy1, _ = stats.plane_coordinates(gram(np.vstack([g, -g])), np.eye(2), basis="pca")
    xy2, _ = stats.plane_coordinates(gram(np.vstack([g, -g])), np.eye(2), basis="pca")
    np.testing.assert_array_equal(xy1, xy2)
    np.testing.assert_allclose(np.abs(xy1[:, 0]), [3, 3], atol=1e-12)


def test_plane_coordinates_argument_errors():
    G = np.eye(3)
    with pytest.raises(ValueError, match="coeffs"):
        stats.plane_coordinates(G, np.ones((2, 4)))
    with pytest.raises(ValueError, match="basis"):
        stats.plane_coordinates(G, np.eye(3), basis="svd")
    with pytest.raises(ValueError, match="pair"):
        stats.plane_coordinates(G, np.eye(3), pair=(1, 1))
    with pytest.raises(ValueError, match="pair"):
        stats.plane_coordinates(G, np.eye(3), pair=(0, 3))


# -- series statistics -----------------------------------------------------------------------


def bf_rolling(x, window, steps=None):
    steps = np.arange(len(x)) if steps is None else steps
    out = []
    for n in range(len(x)):
        inside = [x[k] for k in range(len(x)) if steps[n] - window < steps[k] <= steps[n]
                  and not np.isnan(x[k])]
        out.append(np.mean(inside) if inside else np.nan)
    return np.array(out)


def test_rolling_rate_matches_brute_force():
    rng = np.random.default_rng(7)
    x = (rng.uniform(size=40) < 0.4).astype(float)
    x[rng.uniform(size=40) < 0.2] = np.nan
    x[10:16] = np.nan  # a window with nothing defined
    for window in (1, 3, 5, 50):
        np.testing.assert_allclose(stats.rolling_rate(x, window), bf_rolling(x, window))
    steps = np.arange(40) * 10
    np.testing.assert_allclose(stats.rolling_rate(x, 50, steps), bf_rolling(x, 50, steps))
    np.testing.assert_allclose(stats.rolling_rate(x, 50, steps), bf_rolling(x, 5))
    assert stats.rolling_rate(np.zeros(0), 5).shape == (0,)
    with pytest.raises(ValueError, match="window"):
        stats.rolling_rate(x, 0)
    with pytest.raises(ValueError, match="sorted"):
        stats.rolling_rate(x[:3], 2, steps=np.array([3, 1, 2]))


def test_s_conflict_count():
    cos = np.array([-0.5, -0.01, 0.0, 0.3, np.nan, -0.2])
    assert stats.s_conflict_count(cos) == 3
    assert stats.s_conflict_count(cos, S=-0.1) == 2
    assert stats.s_conflict_count(cos, S=-1.0) == 0
    assert isinstance(stats.s_conflict_count(cos), int)
    np.testing.assert_array_equal(stats.s_conflict_count(np.vstack([cos, -cos]), 0.0, axis=1),
                                  [3, 1])
    with pytest.raises(ValueError, match="S must be"):
        stats.s_conflict_count(cos, S=-2)


def test_shape_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"G must have shape \[\.\.\., T, T\]"):
        stats.cosines(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"w must have shape \[\.\.\., 3\]"):
        stats.update_norm(np.eye(3), np.ones(2))


# -- properties ------------------------------------------------------------------------------

# J [T, P] with T in 1..5, P in 1..8; many exact zeros, so zero and parallel rows occur.
gradients = st.tuples(st.integers(1, 5), st.integers(1, 8)).flatmap(
    lambda shape: hnp.arrays(
        np.float64, shape,
        elements=st.one_of(st.just(0.0), st.floats(-1e3, 1e3, allow_subnormal=False)),
    )
)


@settings(max_examples=150, deadline=None)
@given(gradients)
def test_properties_of_pairwise_statistics(J):
    G = gram(J)
    T = len(J)
    cos = stats.cosines(G)
    defined = ~np.isnan(cos)
    assert np.all(np.abs(cos[defined]) <= 1)
    np.testing.assert_array_equal(cos, cos.T)
    norms = stats.task_norms(G)
    live = norms > stats.EPS
    np.testing.assert_array_equal(np.diag(cos)[live], 1.0)
    assert np.all(defined == (live[:, None] & live[None, :]))
    conflict = stats.conflict(G)
    assert set(np.unique(conflict[~np.isnan(conflict)])) <= {0.0, 1.0}
    gms = stats.magnitude_similarity(G)
    assert np.all((gms[~np.isnan(gms)] >= 0) & (gms[~np.isnan(gms)] <= 1))
    np.testing.assert_array_equal(gms, gms.T)
    xi = stats.curvature_bounding_measure(G)
    assert np.all(xi[~np.isnan(xi)] >= 0)
    kappa = stats.condition_number(G)
    assert np.isnan(kappa) or kappa >= 1 - 1e-9
    if T == 1 and live[0]:
        assert kappa == 1.0
    xy, outside = stats.plane_coordinates(G, np.vstack([np.eye(T), np.ones(T)]), basis="pca")
    ok = ~np.isnan(outside)
    assert np.all((outside[ok] >= 0) & (outside[ok] <= 1))
    lengths = np.linalg.norm(np.vstack([J, J.sum(0)]), axis=1)
    assert np.all(np.linalg.norm(xy, axis=1)[ok] <= lengths[ok] * (1 + 1e-9) + 1e-9)
    u = stats.update_task_cosines(G, np.ones(T))
    assert np.all(np.abs(u[~np.isnan(u)]) <= 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**32 - 1), st.floats(1e-3, 1e3))
def test_invariances(T, seed, scale):
    rng = np.random.default_rng(seed)
    J = random_J(rng, T, P=12)
    G = gram(J)
    perm = rng.permutation(T)
    # permuting tasks permutes every pairwise statistic
    for f in (stats.cosines, stats.magnitude_similarity, stats.curvature_bounding_measure):
        np.testing.assert_allclose(f(gram(J[perm])), f(G)[np.ix_(perm, perm)], atol=1e-12)
    # cosines, GMS, κ and the curvature measure do not depend on the gradients' common scale
    Gs = gram(scale * J)
    for f in (stats.cosines, stats.magnitude_similarity, stats.curvature_bounding_measure):
        np.testing.assert_allclose(f(Gs), f(G), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(stats.condition_number(Gs), stats.condition_number(G), rtol=1e-6)
    # no conflict -> the sum of the gradients agrees with every task
    Jp = np.abs(J)
    assert np.all(stats.update_task_cosines(gram(Jp), np.ones(T)) > 0)
    # the Gramian of an update sums over disjoint parameter blocks
    Gb = np.stack([gram(J[:, :5]), gram(J[:, 5:])])
    w = rng.uniform(size=(2, T))
    total = stats.update_gramian(Gb, w).sum(0)
    d = np.concatenate([w[0] @ J[:, :5], w[1] @ J[:, 5:]])
    np.testing.assert_allclose(total, gram(np.vstack([J, d])), rtol=1e-10, atol=1e-10)


# -- statistics of the applied update (moved from gradlab.run) -------------------------------


def test_update_statistics_pinned():
    # g_1 = (3, 0), g_2 = (0, 4); the sum d = (3, 4): |d| = 5, cos(d, g) = 3/5, 4/5, and d is
    # parallel to the mean gradient (1.5, 2).
    J = np.array([[3.0, 0.0], [0.0, 4.0]])
    out = stats.update_statistics(stats.update_gramian(gram(J), np.ones(2)))
    assert set(out) == {"update_norm", "cos_update_task", "cos_update_mean"}
    np.testing.assert_allclose(out["update_norm"], 5.0)
    np.testing.assert_allclose(out["cos_update_task"], [0.6, 0.8])
    np.testing.assert_allclose(out["cos_update_mean"], 1.0)


def test_blockwise_update_gramian_pinned():
    # one coordinate per block: block 0 holds g_1 = (3, .), block 1 holds g_2 = (., 4); the
    # blockwise weights [[1, 1], [1, -1]] give d = (3 + 0, 0 - 4) = (3, -4).
    Gb = np.stack([gram(np.array([[3.0], [0.0]])), gram(np.array([[0.0], [4.0]]))])
    Gu = stats.blockwise_update_gramian(Gb, np.array([[1.0, 1.0], [1.0, -1.0]]))
    np.testing.assert_allclose(Gu, [[9.0, 0.0, 9.0], [0.0, 16.0, -16.0], [9.0, -16.0, 25.0]])
    out = stats.update_statistics(Gu)
    np.testing.assert_allclose(out["update_norm"], 5.0)
    np.testing.assert_allclose(out["cos_update_task"], [0.6, -0.8])
    np.testing.assert_allclose(out["cos_update_mean"], (4.5 - 8.0) / (5.0 * 2.5))


@pytest.mark.parametrize("T,B,seed", [(1, 1, 0), (2, 3, 1), (3, 4, 2), (5, 2, 3)])
def test_update_gramian_and_statistics_match_brute_force(T, B, seed):
    rng = np.random.default_rng(seed)
    N = 4
    sizes = rng.integers(1, 9, size=B)
    J = [rng.standard_normal((N, T, p)) for p in sizes]  # per step and block: J_b [T, P_b]
    W = rng.normal(size=(N, B, T))
    Gb = np.stack([np.einsum("ntp,nsp->nts", j, j) for j in J], axis=1)  # [N, B, T, T]
    Gu = stats.blockwise_update_gramian(Gb, W)
    assert Gu.shape == (N, T + 1, T + 1)
    for n in range(N):
        full = np.concatenate([j[n] for j in J], axis=1)  # [T, P]
        d = np.concatenate([W[n, b] @ J[b][n] for b in range(B)])
        np.testing.assert_allclose(Gu[n], gram(np.vstack([full, d])), rtol=1e-10, atol=1e-10)
        out = stats.update_statistics(Gu[n])
        np.testing.assert_allclose(out["update_norm"], np.linalg.norm(d), rtol=1e-10)
        np.testing.assert_allclose(out["cos_update_task"], [bf_cos(d, g) for g in full],
                                   rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(out["cos_update_mean"], bf_cos(d, full.mean(0)),
                                   rtol=1e-8, atol=1e-10)
        # one weight vector for every block is the plain update wᵀJ
        same = stats.blockwise_update_gramian(Gb[n], np.broadcast_to(W[n, 0], (B, T)))
        np.testing.assert_allclose(same, stats.update_gramian(gram(full), W[n, 0]),
                                   rtol=1e-10, atol=1e-10)
    batched = stats.update_statistics(Gu)  # [N, ...] in one call equals step by step
    for n in range(N):
        for key, value in stats.update_statistics(Gu[n]).items():
            np.testing.assert_array_equal(batched[key][n], value)


def test_update_statistics_of_a_zero_update_are_missing():
    J = np.array([[1.0, 0.0], [-1.0, 0.0]])  # the sum cancels: d = 0
    out = stats.update_statistics(stats.update_gramian(gram(J), np.ones(2)))
    assert out["update_norm"] == 0.0
    assert np.isnan(out["cos_update_task"]).all() and np.isnan(out["cos_update_mean"])


def test_update_shape_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"W must have shape \[\.\.\., 3\]"):
        stats.blockwise_update_gramian(np.zeros((2, 3, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="same B"):
        stats.blockwise_update_gramian(np.zeros((2, 3, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"Gu must have shape \[\.\.\., T\+1, T\+1\]"):
        stats.update_statistics(np.zeros((1, 1)))
