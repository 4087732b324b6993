"""gradlab.calibration: brute force on explicit gradients, known truth in simulation
(g = mu + noise with known mu and Sigma), jackknife coverage, pinned values, properties."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
from scipy.stats import norm

from gradlab import calibration as cal

pytestmark = pytest.mark.filterwarnings("error")

Z = norm.ppf(1 - 1e-4 / 2)  # two-sided 1e-4 per check: the Monte Carlo tolerance multiplier


def gramians(J: np.ndarray) -> np.ndarray:
    """[..., K, T, P] replicate gradients -> replicate-major Gramians [..., K*T, K*T]."""
    *lead, K, T, P = J.shape
    flat = J.reshape(*lead, K * T, P)
    return flat @ np.swapaxes(flat, -1, -2)


def simulate(rng, *, draws, K, T=3, P=200, b=16, S=None, mu=None, sd=None):
    """Batch gradients g_ia = mu_i + mean of b per-example noises ~ N(0, diag(sd_i^2))."""
    shape = (draws, K, T, P) if S is None else (draws, S, K, T, P)
    noise = rng.standard_normal(shape) * sd / np.sqrt(b)
    return mu + noise


def truth(rng, T=3, P=200, scale=0.25):
    """A known mu [T, P] (tasks 0 and 1 aligned at ~0.6) and per-example sd [T, P]."""
    mu = rng.standard_normal((T, P)) * scale
    mu[1] = 0.6 * mu[0] + 0.8 * mu[1]
    sd = np.sqrt(rng.uniform(0.5, 2.0, size=(T, P)))
    return mu, sd


# -- brute force on the vectors ----------------------------------------------------------------


def bf_cos(x, y):
    return x @ y / np.sqrt((x @ x) * (y @ y))


def bf_estimates(g, b):
    """Every estimator by explicit loops over the K*T batch gradients g [K, T, P]."""
    K, T, _ = g.shape
    M = np.zeros((T, T))
    raw = np.zeros((T, T))
    var = np.full((T, T), np.nan)
    for i, j in itertools.product(range(T), range(T)):
        pairs = [(a, c) for a in range(K) for c in range(K) if i != j or a != c]
        M[i, j] = np.mean([g[a, i] @ g[c, j] for a, c in pairs])
        raw[i, j] = np.mean([bf_cos(g[a, i], g[c, j]) for a, c in pairs])
        if i != j:  # 1/2 E (c_ab - c_cd)^2 over a != c, b != d
            quads = [(a, c, d, e) for a, c, d, e in itertools.product(range(K), repeat=4)
                     if a != d and c != e]
            var[i, j] = np.mean([(bf_cos(g[a, i], g[c, j]) - bf_cos(g[d, i], g[e, j])) ** 2
                                 for a, c, d, e in quads]) / 2
    sq = np.array([np.mean([g[a, i] @ g[a, i] for a in range(K)]) for i in range(T)])
    mu_sq = np.diag(M)
    return {
        "mu": M, "sq": sq, "raw": raw, "raw_var": var,
        "rho": M / np.sqrt(np.outer(mu_sq, mu_sq)),
        "share": mu_sq / sq,
        "b_noise": b * (sq - mu_sq) / mu_sq,
    }


@pytest.mark.parametrize("K", [2, 3, 5])
def test_estimators_equal_brute_force(K):
    rng = np.random.default_rng(K)
    mu, sd = truth(rng, P=40, scale=1.0)
    g = simulate(rng, draws=1, K=K, P=40, mu=mu, sd=sd)[0]
    G = gramians(g)
    bf = bf_estimates(g, b=16)
    np.testing.assert_allclose(cal.mu_gramian(G, 3), bf["mu"], rtol=1e-10)
    np.testing.assert_allclose(cal.mean_sq_norms(G, 3), bf["sq"], rtol=1e-12)
    np.testing.assert_allclose(cal.noise_traces(G, 3), bf["sq"] - np.diag(bf["mu"]), rtol=1e-9)
    np.testing.assert_allclose(cal.raw_cosines(G, 3), bf["raw"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(cal.within_task_cosines(G, 3), np.diag(bf["raw"]), rtol=1e-10)
    np.testing.assert_allclose(cal.raw_cosine_sd(G, 3) ** 2, bf["raw_var"], rtol=1e-8,
                               atol=1e-15)
    np.testing.assert_allclose(cal.expected_cosines(G, 3), bf["rho"], rtol=1e-9)
    np.testing.assert_allclose(cal.signal_share(G, 3), bf["share"], rtol=1e-10)
    np.testing.assert_allclose(cal.noise_scale(G, 3, 16), bf["b_noise"], rtol=1e-9)


def test_estimators_broadcast_over_leading_dims():
    rng = np.random.default_rng(1)
    mu, sd = truth(rng, P=30)
    G = gramians(simulate(rng, draws=6, K=3, S=2, P=30, mu=mu, sd=sd))  # [6, 2, 9, 9]
    stacked = cal.expected_cosines(G, 3)
    assert stacked.shape == (6, 2, 3, 3)
    np.testing.assert_allclose(stacked[4, 1], cal.expected_cosines(G[4, 1], 3))
    np.testing.assert_allclose(cal.raw_cosine_sd(G, 3)[2, 0], cal.raw_cosine_sd(G[2, 0], 3))


def test_reorder_gramian_matches_task_major_rows():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((4, 3, 10))  # [K, T, P]
    G_rep = gramians(g)
    task_major = g.transpose(1, 0, 2).reshape(12, 10)  # row i*K + a
    G_task = task_major @ task_major.T
    np.testing.assert_allclose(cal.reorder_gramian(G_task, 3), G_rep)
    np.testing.assert_allclose(cal.reorder_gramian(G_rep, 3, source="replicate_major",
                                                   target="task_major"), G_task)
    stack = np.stack([G_task, 2 * G_task])
    np.testing.assert_allclose(cal.reorder_gramian(stack, 3)[1], 2 * G_rep)
    with pytest.raises(ValueError, match="source"):
        cal.reorder_gramian(G_task, 3, source="rows")
    with pytest.raises(ValueError, match="multiple K\\*T"):
        cal.mu_gramian(G_task, 5)


# -- pinned values on a hand-computable Gramian -------------------------------------------------


def test_pinned_two_tasks_two_replicates():
    # rows a*T + i: g_00 = (2, 1), g_01 = (1, 1), g_10 = (2, -1), g_11 = (0, 1)
    J = np.array([[2.0, 1.0], [1.0, 1.0], [2.0, -1.0], [0.0, 1.0]])
    G = J @ J.T
    # |mu_0|^2 = g_00.g_10 = 3; |mu_1|^2 = g_01.g_11 = 1; mu_0.mu_1 = (3 + 1 + 1 - 1) / 4 = 1
    np.testing.assert_allclose(cal.mu_gramian(G, 2), [[3.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(cal.mean_sq_norms(G, 2), [5.0, 1.5])  # (5 + 5)/2, (2 + 1)/2
    np.testing.assert_allclose(cal.noise_traces(G, 2), [2.0, 0.5])
    np.testing.assert_allclose(cal.signal_share(G, 2), [0.6, 2 / 3])
    np.testing.assert_allclose(cal.noise_scale(G, 2, 4), [4 * 2 / 3, 4 * 0.5])
    np.testing.assert_allclose(cal.expected_cosines(G, 2)[0, 1], 1 / np.sqrt(3))
    # within: cos(g_00, g_10) = 3/5; cos(g_01, g_11) = 1/sqrt(2)
    np.testing.assert_allclose(cal.within_task_cosines(G, 2), [0.6, 1 / np.sqrt(2)])
    # raw cross: mean of cos over the 4 batch pairs (3/sqrt10, 1/sqrt5, 1/sqrt10, -1/sqrt5)
    np.testing.assert_allclose(cal.raw_cosines(G, 2)[0, 1], 4 / np.sqrt(10) / 4)
    # variance: 1/2 mean over (ab, cd) with a != c, b != d: (c_00 - c_11)^2, (c_01 - c_10)^2
    c = np.array([[3 / np.sqrt(10), 1 / np.sqrt(5)], [1 / np.sqrt(10), -1 / np.sqrt(5)]])
    var = ((c[0, 0] - c[1, 1]) ** 2 + (c[0, 1] - c[1, 0]) ** 2) / 4
    np.testing.assert_allclose(cal.raw_cosine_sd(G, 2)[0, 1], np.sqrt(var))
    np.testing.assert_allclose(
        cal.predicted_raw_cosines(cal.expected_cosines(G, 2), cal.noise_scale(G, 2, 4), 4),
        [[0.6, 1 / np.sqrt(3) * np.sqrt(0.6 * 2 / 3)], [1 / np.sqrt(3) * np.sqrt(0.4), 2 / 3]])


def test_doctests():
    assert doctest.testmod(cal, raise_on_error=False).failed == 0


def test_stratified_jackknife_of_a_mean_is_the_classical_standard_error():
    # for the linear statistic E|g|^2 the delete-one jackknife reduces to s^2 / K per step
    rng = np.random.default_rng(3)
    mu, sd = truth(rng, P=20)
    g = simulate(rng, draws=1, K=5, S=3, P=20, mu=mu, sd=sd)[0]  # [S, K, T, P]
    G = gramians(g)
    est, lo, hi, units = cal.jackknife(G, 3, lambda m: m["sq"], level=0.9)
    assert units == "replicates"
    sq = (g**2).sum(-1)  # [S, K, T]
    se = np.sqrt((sq.var(1, ddof=1) / 5).sum(0)) / 3
    from scipy.stats import t

    np.testing.assert_allclose(est, sq.mean((0, 1)))
    np.testing.assert_allclose(hi - est, t.ppf(0.95, 3 * 4) * se, rtol=1e-10)
    np.testing.assert_allclose(est - lo, hi - est)
    # delete-one step: (S-1)/S sum (theta_s - mean)^2 = variance of the step means / S
    est, lo, hi, units = cal.jackknife(G, 3, lambda m: m["sq"], units="steps")
    assert units == "steps"
    steps = sq.mean(1)
    np.testing.assert_allclose(hi - est, t.ppf(0.975, 2) * steps.std(0, ddof=1) / np.sqrt(3),
                               rtol=1e-10)


# -- known truth: unbiasedness, coverage ---------------------------------------------------------


def test_unbiased_over_many_draws():
    rng = np.random.default_rng(4)
    mu, sd = truth(rng)
    b, R = 16, 4000
    G = gramians(simulate(rng, draws=R, K=3, mu=mu, sd=sd, b=b))  # [R, 9, 9]
    checks = {
        "mu . mu": (cal.mu_gramian(G, 3), mu @ mu.T),
        "E|g|^2": (cal.mean_sq_norms(G, 3), (mu**2).sum(1) + (sd**2).sum(1) / b),
        "tr Sigma / b": (cal.noise_traces(G, 3), (sd**2).sum(1) / b),
    }
    for name, (estimates, true) in checks.items():
        se = estimates.std(0, ddof=1) / np.sqrt(R)
        err = np.abs(estimates.mean(0) - true)
        assert np.all(err <= Z * se), f"{name}: |bias| {err} > {Z:.1f} x SE {se}"


def test_raw_cosine_variance_is_unbiased():
    rng = np.random.default_rng(5)
    mu, sd = truth(rng, P=100)
    R = 4000
    g = simulate(rng, draws=R, K=3, P=100, mu=mu, sd=sd)
    G = gramians(g)
    var_est = cal.raw_cosine_sd(G, 3)[:, 0, 1] ** 2
    c = np.einsum("rp,rp->r", g[:, 0, 0], g[:, 1, 1]) / np.linalg.norm(
        g[:, 0, 0], axis=-1) / np.linalg.norm(g[:, 1, 1], axis=-1)  # one independent pair
    # SE of the sample variance: sqrt(var((c - mean)^2) / R); of the mean estimate: sd / sqrt R
    se = np.hypot(var_est.std(ddof=1), ((c - c.mean()) ** 2).std(ddof=1)) / np.sqrt(R)
    assert abs(var_est.mean() - c.var(ddof=1)) <= Z * se


@pytest.mark.parametrize(("K", "S"), [(4, 1), (2, 4)])
def test_jackknife_interval_covers_the_true_expected_cosine(K, S):
    """95% intervals over 400 seeded simulated probes cover cos(mu_i, mu_j) 90-98% of the time
    (issue 13's criterion; binomial SE at 0.95 and n=400 pairs of probes: 0.011)."""
    rng = np.random.default_rng(6)
    mu, sd = truth(rng)
    true = (mu @ mu.T) / np.sqrt(np.outer((mu**2).sum(1), (mu**2).sum(1)))
    iu = np.triu_indices(3, 1)
    G = gramians(simulate(rng, draws=400, K=K, S=S, mu=mu, sd=sd))  # [400, S, K*T, K*T]
    covered = []
    for window in G:
        _, lo, hi, units = cal.jackknife(window, 3, cal._expected_cosines, level=0.95)
        assert units == ("replicates" if K >= 3 else "steps")
        covered.append((lo[iu] <= true[iu]) & (true[iu] <= hi[iu]))
    coverage = np.mean(covered, axis=0)
    assert np.all((coverage >= 0.90) & (coverage <= 0.98)), coverage


def test_predicted_raw_cosine_at_another_batch_size():
    """Estimates at batch 16 predict the raw cosines seen at batch 4 (Spearman attenuation;
    the large-P approximation E[cos] ~ ratio of expectations, error O(1/P) = O(0.001) here)."""
    rng = np.random.default_rng(7)
    P = 2000
    mu, sd = truth(rng, P=P, scale=0.3)  # signal share ~0.55 at b = 16, ~0.23 at b = 4
    # estimates at b = 16 pooled over 50 windows (the parameters do not move)
    G16 = gramians(simulate(rng, draws=50, K=3, P=P, mu=mu, sd=sd, b=16))
    pred = cal.predicted_cosine_frame(G16, ["a", "b", "c"], batch_size=16, batch_sizes=[4])
    # raw cosines actually seen at b = 4
    g4 = simulate(rng, draws=400, K=2, P=P, mu=mu, sd=sd, b=4)
    raw4 = cal.raw_cosines(gramians(g4), 3)  # [400, 3, 3]
    for row in pred.itertuples():
        i, j = "abc".index(row.task_i), "abc".index(row.task_j)
        seen = raw4[:, i, j]
        se_estimate = (row.hi - row.lo) / 2 / norm.ppf(0.975)  # from its 95% interval
        se_seen = seen.std(ddof=1) / np.sqrt(len(seen))
        tol = Z * np.hypot(se_seen, se_estimate) + 5 / P
        assert abs(seen.mean() - row.estimate) <= tol, (row.pair, seen.mean(), row.estimate)


def test_noise_only_conflict_rate_is_one_half():
    rng = np.random.default_rng(8)
    P, R = 300, 4000
    mu, sd = truth(rng, P=P)
    mu[1] -= (mu[1] @ mu[0]) / (mu[0] @ mu[0]) * mu[0]  # expected cosine exactly 0
    g = simulate(rng, draws=R, K=1, P=P, mu=mu, sd=sd)[:, 0]
    rate = np.mean(np.einsum("rp,rp->r", g[:, 0], g[:, 1]) < 0)
    assert abs(rate - 0.5) <= Z * np.sqrt(0.25 / R)
    assert cal.conflict_probability(0.0, 0.3) == 0.5
    assert cal.conflict_probability(-0.3, 0.3) == pytest.approx(norm.cdf(1.0))
    assert np.isnan(cal.conflict_probability(0.1, 0.0))
    lo, hi = cal.noise_only_conflict_band(100, level=0.95)
    assert (lo, hi) == pytest.approx((0.5 - 1.959964 * 0.05, 0.5 + 1.959964 * 0.05))


# -- properties ----------------------------------------------------------------------------------


def test_permuting_tasks_or_replicates_permutes_the_estimates():
    rng = np.random.default_rng(9)
    mu, sd = truth(rng, P=50, scale=1.0)  # strong signal: every estimate determined
    g = simulate(rng, draws=1, K=4, P=50, mu=mu, sd=sd)[0]
    G = gramians(g)
    perm = [2, 0, 1]
    Gp = gramians(g[:, perm])
    for f in (cal.mu_gramian, cal.expected_cosines, cal.raw_cosines):
        np.testing.assert_allclose(f(Gp, 3), f(G, 3)[np.ix_(perm, perm)], rtol=1e-12)
    np.testing.assert_allclose(cal.noise_scale(Gp, 3, 8), cal.noise_scale(G, 3, 8)[perm])
    Gr = gramians(g[[3, 1, 0, 2]])
    for f in (cal.mu_gramian, cal.expected_cosines, cal.raw_cosines, cal.raw_cosine_sd):
        np.testing.assert_allclose(f(Gr, 3), f(G, 3), rtol=1e-12, atol=1e-15)
    names = ["sst", "para", "sts"]
    fp = cal.pair_frame(Gp, [names[p] for p in perm]).set_index(["pair", "quantity"])
    f0 = cal.pair_frame(G, names)
    assert f0["estimate"].notna().all() and (f0["reason"] == "").all()
    for row in f0.itertuples():
        other = fp.loc[(row.pair, row.quantity)] if (row.pair, row.quantity) in fp.index else \
            fp.loc[("-".join(row.pair.split("-")[::-1]), row.quantity)]
        assert other.estimate == pytest.approx(row.estimate, rel=1e-9)
        assert other.lo == pytest.approx(row.lo, rel=1e-9, abs=1e-12)


def test_scaling_gradients_leaves_cosines_unchanged():
    rng = np.random.default_rng(10)
    mu, sd = truth(rng, P=50)
    g = simulate(rng, draws=1, K=3, P=50, mu=mu, sd=sd)[0]
    scale = np.array([3.0, 0.1, 7.0])  # per task: a loss weight
    G, Gs = gramians(g), gramians(g * scale[:, None])
    for f in (cal.expected_cosines, cal.raw_cosines, cal.raw_cosine_sd, cal.signal_share,
              cal.within_task_cosines):
        np.testing.assert_allclose(f(Gs, 3), f(G, 3), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(cal.noise_scale(Gs, 3, 16), cal.noise_scale(G, 3, 16), rtol=1e-9)
    np.testing.assert_allclose(cal.mu_gramian(Gs, 3), cal.mu_gramian(G, 3) * np.outer(scale,
                                                                                      scale))


def test_one_replicate_gives_nan_with_a_reason():
    rng = np.random.default_rng(11)
    G = gramians(rng.standard_normal((1, 3, 20)))
    assert np.all(np.isnan(np.diag(cal.mu_gramian(G, 3))))
    assert np.all(np.isnan(cal.expected_cosines(G, 3)))
    assert np.all(np.isnan(cal.within_task_cosines(G, 3)))
    for frame in (cal.task_frame(G, ["a", "b", "c"], batch_size=4),
                  cal.pair_frame(G, ["a", "b", "c"]),
                  cal.predicted_cosine_frame(G, ["a", "b", "c"], batch_size=4,
                                             batch_sizes=[1, 16])):
        assert frame[["estimate", "lo", "hi"]].isna().all().all()
        assert frame["reason"].str.contains("K=1").all()


def test_undetermined_where_the_signal_interval_reaches_zero():
    rng = np.random.default_rng(12)
    mu, sd = truth(rng)
    mu[2] = 0.0  # task c: pure noise, |mu|^2 = 0
    G = gramians(simulate(rng, draws=1, K=4, S=2, mu=mu, sd=sd)[0])
    tf = cal.task_frame(G, ["a", "b", "c"], batch_size=16).set_index(["task", "quantity"])
    assert tf.loc[("c", "mu_sq"), "lo"] <= 0 or tf.loc[("c", "mu_sq"), "estimate"] <= 0
    assert "|mu|^2" in tf.loc[("c", "mu_sq"), "reason"]
    assert np.isnan(tf.loc[("c", "b_noise"), "estimate"])
    assert "|mu|^2" in tf.loc[("c", "b_noise"), "reason"]
    assert np.isfinite(tf.loc[("c", "signal_share"), "estimate"])  # reported, near 0
    assert tf.loc[("a", "b_noise"), "reason"] == ""
    assert tf.loc[("a", "b_noise"), "lo"] > 0
    pf = cal.pair_frame(G, ["a", "b", "c"]).set_index(["pair", "quantity"])
    for pair in ("a-c", "b-c"):
        assert np.isnan(pf.loc[(pair, "expected_cos"), "estimate"])
        assert "|mu|^2" in pf.loc[(pair, "expected_cos"), "reason"]
        assert np.isfinite(pf.loc[(pair, "raw_cos"), "estimate"])  # raw facts stay
    rates = pf.xs("conflict_rate", level="quantity")
    assert ((rates[["lo", "hi"]] >= 0) & (rates[["lo", "hi"]] <= 1)).all().all()
    row = pf.loc[("a-b", "expected_cos")]
    assert row.reason == "" and row.lo < row.estimate < row.hi and row.n == 8


def test_two_replicates_one_step_has_no_interval():
    rng = np.random.default_rng(13)
    mu, sd = truth(rng)
    G = gramians(simulate(rng, draws=1, K=2, mu=mu, sd=sd)[0])
    pf = cal.pair_frame(G, ["a", "b", "c"])
    assert pf["lo"].isna().all() and pf["estimate"].notna().all()
    assert pf["reason"].str.contains("no interval").all()
    with pytest.raises(ValueError, match="K >= 3"):
        cal.jackknife(G, 3, cal._mu_sq, units="replicates")
    with pytest.raises(ValueError, match="2 probe steps"):
        cal.jackknife(G, 3, cal._mu_sq, units="steps")


def test_bad_arguments_name_the_parameter():
    G = np.eye(6)
    with pytest.raises(ValueError, match="level"):
        cal.pair_frame(G, ["a", "b"], level=95)
    with pytest.raises(ValueError, match="batch_size"):
        cal.task_frame(G, ["a", "b"], batch_size=0)
    with pytest.raises(ValueError, match="units"):
        cal.pair_frame(G, ["a", "b"], units="bootstrap")
    with pytest.raises(ValueError, match="tasks"):
        cal.pair_frame(G, "ab")
    with pytest.raises(ValueError, match="square"):
        cal.mu_gramian(np.ones((6, 4)), 2)


def test_format_interval_says_undetermined_and_omits_a_missing_interval():
    from gradlab.calibration import format_interval

    assert format_interval({"estimate": -0.0943, "lo": -0.119, "hi": -0.0692}) == \
        "-0.094 [-0.119, -0.069]"
    assert format_interval({"estimate": 5.1, "lo": np.nan, "hi": np.nan}, "{:.0f}") == "5"
    assert format_interval({"estimate": np.nan, "lo": np.nan, "hi": np.nan}) == "undetermined"
