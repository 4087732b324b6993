"""Calibrated conflict: expected-gradient statistics from replicate Gramians [K*T, K*T].

A gradient computed on one batch is the task's expected gradient plus sampling noise,
g_ia = mu_i + e_ia, with E e_ia = 0 and Cov(e_ia) = Sigma_i / b for a batch of b examples
drawn independently (Sigma_i: the covariance of one example's gradient). With K >= 2
independent batches ("replicates") a = 1..K of every task i = 1..T in one probe, the Gramian
of their K*T gradients holds everything needed to separate the signal mu from the noise:

    |mu_i|^2    = mean over a != b of g_ia . g_ib           (a U-statistic; unbiased)
    mu_i . mu_j = mean over all a, b of g_ia . g_jb, i != j  (batches of different tasks
                                                              are independent; unbiased)
    E|g_i|^2    = mean over a of |g_ia|^2 = |mu_i|^2 + tr(Sigma_i) / b
    signal share s_i = |mu_i|^2 / E|g_i|^2       (what a within-task cosine measures)
    noise scale  B_i = tr(Sigma_i) / |mu_i|^2    (examples; McCandlish et al. 2018, "An
                 = b (E|g_i|^2 - |mu_i|^2) / |mu_i|^2   Empirical Model of Large-Batch
                                                         Training", arXiv:1812.06162, the
                                                         "simple noise scale" B_simple)
    expected cosine rho_ij = mu_i . mu_j / (|mu_i| |mu_j|)

For large P the norms of batch gradients concentrate, so the raw cosine of two batch
gradients is about its expectation's ratio: cos(g_ia, g_jb) ~ rho_ij sqrt(s_i s_j). That
is Spearman's (1904) correction for attenuation ("The proof and measurement of association
between two things", Am. J. Psychol. 15:72-101): the observed correlation is the true one
times the square root of both reliabilities, here the within-task cosines s_i. Hence the
raw cosine a user would see at batch size b':

    s_i(b')            = |mu_i|^2 / (|mu_i|^2 + tr(Sigma_i) / b') = 1 / (1 + B_i / b')
    raw cos_ij(b')     ~ rho_ij sqrt(s_i(b') s_j(b'))       (i != j)
    within cos_i(b')   ~ s_i(b')

Conflict rate: P(raw cos_ij < 0) is approximated by treating the raw cosine of one batch
pair as Gaussian with mean m_ij (the observed mean raw cosine) and the standard deviation
sd_ij observed between batch pairs: Phi(-m_ij / sd_ij). If the expected cosine were 0 the
numerator (mu_i + e_i).(mu_j + e_j) has mean 0, and under that symmetric (Gaussian)
approximation the noise-only conflict rate is exactly 1/2 at every batch size (the only
asymmetry is the third moment 6 mu_i^T Sigma_j Sigma_i mu_j / b^2, zero for isotropic noise);
what noise sets is the spread: a rate over n independent probes lies in 1/2 +- z sqrt(1/(4n))
(`noise_only_conflict_band`) and a single raw cosine in +- z sd_ij (its variance does not
depend on mu_i . mu_j).

Layout. Rows of the Gramian are **replicate-major**: row a*T + i is replicate a of task i
(the first T rows are one ordinary probe, so G[:T, :T] is the raw task Gramian).
`reorder_gramian` converts from task-major (row i*K + a). A window of S probe steps is a
stack [S, K*T, K*T]; its estimates pool the per-step moments (means over steps, then the
ratios), i.e. they estimate the window's average of |mu_i(s)|^2 and mu_i(s) . mu_j(s).

Intervals: delete-one jackknife (Quenouille 1956, Tukey 1958). Units are replicate batches
(one replicate of one probe step, stratified by step: v = sum_s (K-1)/K sum_a (theta_(s,a) -
mean_a theta_(s,.))^2, df = S (K-1); needs K >= 3, since deleting one of two replicates
leaves no pair for |mu|^2) or probe steps (v = (S-1)/S sum_s (theta_(s) - mean)^2, df = S - 1;
needs S >= 2; also counts the drift of mu inside the window). The interval is the plug-in
estimate +- t_{df, (1+level)/2} sqrt(v), nominal level ``level`` (default 0.95).

Undetermined values are NaN with a reason, never silently reported: everything with K < 2;
every ratio that divides by |mu_i|^2 (expected cosines, noise scales, predicted raw cosines)
where the estimate of |mu_i|^2 is <= 0 or its interval reaches 0. The signal share, the
within-task and raw cosines, |mu_i|^2 and mu_i . mu_j themselves are always reported (an
interval of |mu_i|^2 reaching 0 is itself the finding; its row says so in ``reason``).

Example (two replicates of two tasks, hand-computable):
    >>> import numpy as np
    >>> J = np.array([[2.0, 1.0], [1.0, 1.0], [2.0, -1.0], [0.0, 1.0]])  # rows a*T + i
    >>> G = J @ J.T
    >>> M = mu_gramian(G, 2)  # |mu_0|^2 = g_00.g_10, mu_0.mu_1 = mean of 4 cross products
    >>> float(M[0, 0]), float(M[1, 1]), float(M[0, 1])
    (3.0, 1.0, 1.0)
    >>> float(expected_cosines(G, 2)[0, 1].round(4))  # 1 / sqrt(3 * 1)
    0.5774
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "JACKKNIFE_UNITS",
    "LAYOUTS",
    "conflict_probability",
    "expected_cosines",
    "jackknife",
    "mean_sq_norms",
    "moments",
    "mu_gramian",
    "noise_only_conflict_band",
    "noise_scale",
    "noise_traces",
    "num_replicates",
    "pair_frame",
    "pool",
    "predicted_cosine_frame",
    "predicted_raw_cosines",
    "raw_cosine_sd",
    "raw_cosines",
    "reorder_gramian",
    "signal_share",
    "split_replicates",
    "task_frame",
    "within_task_cosines",
]

LAYOUTS = ("replicate_major", "task_major")
JACKKNIFE_UNITS = ("auto", "replicates", "steps")
EPS = 1e-300  # squared norms at or below this make a batch gradient zero (no direction)


# --- layout ---------------------------------------------------------------------------------


def num_replicates(G: np.ndarray, num_tasks: int) -> int:
    """K from a Gramian [..., K*T, K*T] and T (ValueError if K*T does not fit)."""
    G = np.asarray(G)
    if G.ndim < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must be a square Gramian [..., K*T, K*T], found shape {G.shape}")
    if not isinstance(num_tasks, int | np.integer) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer, found {num_tasks!r}")
    n = G.shape[-1]
    if n == 0 or n % num_tasks:
        raise ValueError(f"G has {n} rows, not a multiple K*T of num_tasks={num_tasks} (K >= 1)")
    return n // num_tasks


def split_replicates(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """View a replicate-major Gramian [..., K*T, K*T] as X [..., K, T, K, T], X[a, i, b, j] =
    g_ia . g_jb."""
    K = num_replicates(G, num_tasks)
    G = np.asarray(G, dtype=float)
    return G.reshape(*G.shape[:-2], K, num_tasks, K, num_tasks)


def reorder_gramian(G: np.ndarray, num_tasks: int, *, source: str = "task_major",
                    target: str = "replicate_major") -> np.ndarray:
    """Reorder the rows and columns of [..., K*T, K*T] between layouts.

    "replicate_major": row a*T + i (what every function here takes); "task_major": row
    i*K + a. Example: ``reorder_gramian(G_task_major, T)`` gives the replicate-major G.
    """
    for name, value in (("source", source), ("target", target)):
        if value not in LAYOUTS:
            raise ValueError(f"{name} must be one of {LAYOUTS}, found {value!r}")
    K = num_replicates(G, num_tasks)
    G = np.asarray(G, dtype=float)
    if source == target:
        return G.copy()
    lead = G.shape[:-2]
    # replicate-major index a*T + i <-> task-major index i*K + a
    shape = (K, num_tasks) if source == "replicate_major" else (num_tasks, K)
    X = G.reshape(*lead, *shape, *shape)
    nd = len(lead)
    X = X.swapaxes(nd, nd + 1).swapaxes(nd + 2, nd + 3)
    return X.reshape(*lead, K * num_tasks, K * num_tasks)


# --- per-Gramian estimators (broadcast over leading dims) -------------------------------------


def mu_gramian(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """Unbiased estimate of the expected gradients' Gramian M_ij = mu_i . mu_j, [..., T, T].

    Diagonal: mean of g_ia . g_ib over replicates a != b (NaN for K < 2); off-diagonal: mean
    of g_ia . g_jb over all K^2 pairs of batches. M need not be positive semi-definite.
    """
    return moments(G, num_tasks)["mu"]


def mean_sq_norms(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """E|g_i|^2 estimated by the mean of |g_ia|^2 over replicates, [..., T]."""
    return moments(G, num_tasks)["sq"]


def noise_traces(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """tr(Cov(g_i)) = tr(Sigma_i) / b = E|g_i|^2 - |mu_i|^2, unbiased, [..., T]."""
    return _noise_traces(moments(G, num_tasks))


def signal_share(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """|mu_i|^2 / E|g_i|^2 (the reliability of one batch gradient), [..., T]."""
    return _signal_share(moments(G, num_tasks))


def noise_scale(G: np.ndarray, num_tasks: int, batch_size: int) -> np.ndarray:
    """B_noise,i = tr(Sigma_i) / |mu_i|^2 in examples (McCandlish et al. 2018), [..., T].

    ``batch_size``: examples per replicate batch (tr(Sigma_i) = b tr(Cov(g_i))). NaN where
    the |mu_i|^2 estimate is <= 0.
    """
    _check_batch_size(batch_size)
    return _noise_scale(moments(G, num_tasks), batch_size)


def expected_cosines(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """cos(mu_i, mu_j) = M_ij / sqrt(M_ii M_jj), [..., T, T] (Spearman's correction for
    attenuation); NaN in the rows of a task whose |mu_i|^2 estimate is <= 0; not clipped."""
    return _expected_cosines(moments(G, num_tasks))


def within_task_cosines(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """Mean raw cosine of two different batches of the same task, [..., T] (NaN for K < 2)."""
    return np.diagonal(moments(G, num_tasks)["raw"], axis1=-2, axis2=-1).copy()


def raw_cosines(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """Mean raw cosine between batch gradients, [..., T, T]: cos(g_ia, g_jb) over all a, b for
    i != j; over a != b on the diagonal (the within-task cosine)."""
    return moments(G, num_tasks)["raw"]


def raw_cosine_sd(G: np.ndarray, num_tasks: int) -> np.ndarray:
    """Standard deviation of one raw cross-task cosine between batches, [..., T, T].

    Var = 1/2 E (c_ab - c_cd)^2 over pairs of batch pairs with a != c and b != d (independent
    pairs): an unbiased U-statistic of the variance (K >= 2). Pooled over steps as the mean
    variance. NaN on the diagonal.
    """
    return np.sqrt(np.clip(moments(G, num_tasks)["raw_var"], 0.0, None))


def predicted_raw_cosines(expected_cos: np.ndarray, noise_scales: np.ndarray,
                          batch_size: float | np.ndarray) -> np.ndarray:
    """The raw cosine expected at batch size b', [..., T, T], from rho [..., T, T] and B [..., T]:
    rho_ij sqrt(s_i s_j) off the diagonal and s_i on it, with s_i = 1 / (1 + B_i / b')."""
    share = 1.0 / (1.0 + np.asarray(noise_scales, dtype=float) / np.asarray(batch_size,
                                                                              dtype=float))
    rho = np.asarray(expected_cos, dtype=float)
    out = rho * np.sqrt(share[..., :, None] * share[..., None, :])
    T = rho.shape[-1]
    return np.where(np.eye(T, dtype=bool), share[..., :, None] * np.ones(T), out)


def conflict_probability(mean_cos: np.ndarray, sd_cos: np.ndarray) -> np.ndarray:
    """P(raw cosine < 0) = Phi(-mean / sd), the Gaussian approximation of one raw cosine.

    With mean 0 (expected cosine 0) it is 1/2 whatever the noise: the noise-only rate.
    """
    from scipy.special import ndtr

    mean = np.asarray(mean_cos, dtype=float)
    sd = np.asarray(sd_cos, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, -mean / np.where(sd > 0, sd, 1.0), np.nan)
    return ndtr(z)


def noise_only_conflict_band(num_probes: int | np.ndarray, level: float = 0.95
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of a conflict rate over n independent probes if the expected cosine were 0:
    1/2 +- z sqrt(1 / (4 n)) (normal approximation of Binomial(n, 1/2))."""
    from scipy.stats import norm

    _check_level(level)
    n = np.asarray(num_probes, dtype=float)
    half = norm.ppf(0.5 + level / 2) * np.sqrt(0.25 / n)
    return np.clip(0.5 - half, 0.0, 1.0), np.clip(0.5 + half, 0.0, 1.0)


# --- moments: everything the estimators are functions of ------------------------------------


def moments(G: np.ndarray, num_tasks: int) -> dict[str, np.ndarray]:
    """Per-Gramian sufficient moments, each broadcast over the leading dims of G:

    "mu" [..., T, T] (unbiased mu_i . mu_j), "sq" [..., T] (mean |g_ia|^2), "raw" [..., T, T]
    (mean raw cosines), "raw_var" [..., T, T] (variance of one raw cross cosine). Estimators
    are ratios of these; pooling over probe steps averages them first.
    """
    X = split_replicates(G, num_tasks)
    K, T = X.shape[-4], X.shape[-3]
    sq = np.einsum("...aiai->...ai", X)  # [..., K, T]
    out_sq = sq.mean(-2)
    block_sum = X.sum(axis=(-4, -2))  # sum over a, b: [..., T, T]
    eye = np.eye(T, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = block_sum / K**2
        same = (np.diagonal(block_sum, axis1=-2, axis2=-1) - sq.sum(-2)) / (K * (K - 1)) \
            if K > 1 else np.full(out_sq.shape, np.nan)
    mu = np.where(eye, same[..., :, None], cross)  # diagonal: same-task U-statistic

    n = np.sqrt(np.clip(sq, 0.0, None))
    valid = sq > EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        C = X / (n[..., :, :, None, None] * n[..., None, None, :, :])  # [..., K, T, K, T]
    C = np.where(valid[..., :, :, None, None] & valid[..., None, None, :, :], C, np.nan)
    C = np.moveaxis(C, -3, -2)  # [..., K, K, T, T]: C[a, b, i, j] = cos(g_ia, g_jb)
    total = C.sum(axis=(-4, -3))
    diag_ab = np.einsum("...aaij->...ij", C)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_cross = total / K**2
        raw_same = (total - diag_ab) / (K * (K - 1)) if K > 1 else np.full(total.shape, np.nan)
    raw = np.where(eye, raw_same, raw_cross)

    # variance of one c_ab (i != j) from pairs of independent batch pairs (a != c, b != d)
    if K > 1:
        rows = C.sum(-3)  # sum over b: [..., K, T, T]
        cols = C.sum(-4)  # sum over a
        sq_sum = (C**2).sum(axis=(-4, -3))
        prod = (total**2 - (rows**2).sum(-3) - (cols**2).sum(-3) + sq_sum) / (K * (K - 1))**2
        raw_var = sq_sum / K**2 - prod
    else:
        raw_var = np.full(total.shape, np.nan)
    raw_var = np.where(eye, np.nan, raw_var)
    return {"mu": mu, "sq": out_sq, "raw": raw, "raw_var": raw_var}


def pool(m: Mapping[str, np.ndarray], axis: int = 0) -> dict[str, np.ndarray]:
    """Pool per-step moments over a window (the mean over ``axis``)."""
    return {k: v.mean(axis) for k, v in m.items()}


def _noise_traces(m):
    return m["sq"] - np.diagonal(m["mu"], axis1=-2, axis2=-1)


def _signal_share(m):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m["sq"] > EPS, np.diagonal(m["mu"], axis1=-2, axis2=-1) / m["sq"],
                        np.nan)


def _mu_sq(m):
    return np.diagonal(m["mu"], axis1=-2, axis2=-1)


def _noise_scale(m, batch_size):
    mu_sq = _mu_sq(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mu_sq > 0, batch_size * _noise_traces(m) / mu_sq, np.nan)


def _expected_cosines(m):
    mu_sq = _mu_sq(m)
    root = np.sqrt(np.where(mu_sq > 0, mu_sq, np.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        return m["mu"] / (root[..., :, None] * root[..., None, :])


# --- jackknife over replicates and probe steps -----------------------------------------------


def jackknife(gramians: np.ndarray, num_tasks: int,
              statistic: Callable[[dict[str, np.ndarray]], np.ndarray], *,
              level: float = 0.95, units: str = "auto"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(estimate, lo, hi, units used) of ``statistic(pooled moments)`` over a window.

    gramians: [S, K*T, K*T] (or one [K*T, K*T]); statistic maps a moments dict (arrays with
    any leading dims, as `moments` returns) to an array. units: "replicates" (delete one
    replicate batch of one step, stratified by step; K >= 3), "steps" (delete one probe
    step; S >= 2) or "auto" (replicates when K >= 3, else steps). Where neither is possible
    lo and hi are NaN and the returned units are "none".
    """
    from scipy.stats import t as student_t

    _check_level(level)
    if units not in JACKKNIFE_UNITS:
        raise ValueError(f"units must be one of {JACKKNIFE_UNITS}, found {units!r}")
    G = _as_window(gramians)
    S = G.shape[0]
    K = num_replicates(G, num_tasks)
    per_step = moments(G, num_tasks)
    estimate = np.asarray(statistic(pool(per_step)), dtype=float)
    if units == "auto":
        units = "replicates" if K >= 3 else "steps" if S >= 2 else "none"
    if units == "replicates" and K < 3:
        raise ValueError(f"units='replicates' needs K >= 3 replicates, found K={K}")
    if units == "steps" and S < 2:
        raise ValueError(f"units='steps' needs >= 2 probe steps, found {S}")
    if units == "none":
        nan = np.full(estimate.shape, np.nan)
        return estimate, nan, nan.copy(), units
    if units == "replicates":
        T = num_tasks
        X = split_replicates(G, T)
        thetas = []
        for a in range(K):
            keep = [r for r in range(K) if r != a]
            Xa = X[:, keep][:, :, :, keep]
            deleted = moments(Xa.reshape(S, (K - 1) * T, (K - 1) * T), T)  # [S, ...]
            # pooled moments with step s's moments replaced by its deleted version: [S, ...]
            loo = {k: pool(per_step)[k][None] + (deleted[k] - per_step[k]) / S
                   for k in per_step}
            thetas.append(np.asarray(statistic(loo), dtype=float))
        theta = np.stack(thetas, axis=1)  # [S, K, ...]
        centred = theta - theta.mean(axis=1, keepdims=True)
        var = (K - 1) / K * (centred**2).sum(axis=(0, 1))
        df = S * (K - 1)
    else:
        thetas = []
        for s in range(S):
            keep = [r for r in range(S) if r != s]
            thetas.append(np.asarray(statistic(pool({k: v[keep]
                                                     for k, v in per_step.items()})),
                                     dtype=float))
        theta = np.stack(thetas)
        var = (S - 1) / S * ((theta - theta.mean(0)) ** 2).sum(0)
        df = S - 1
    half = student_t.ppf(0.5 + level / 2, df) * np.sqrt(var)
    return estimate, estimate - half, estimate + half, units


# --- tidy frames -------------------------------------------------------------------------------


def task_frame(gramians: np.ndarray, tasks: Sequence[str], *, batch_size: int,
               level: float = 0.95, units: str = "auto") -> pd.DataFrame:
    """One row per task and quantity, pooled over the window [S, K*T, K*T] (or one Gramian).

    Quantities: "within_cos" (mean raw cosine of two batches of the task), "mu_sq" (|mu|^2),
    "sq_norm" (E|g|^2), "noise_trace" (tr Sigma / b), "signal_share" (|mu|^2 / E|g|^2),
    "b_noise" (tr Sigma / |mu|^2, examples). Columns: task, quantity, estimate, lo, hi, n
    (batches per task pooled, S*K), level, units (jackknife units), reason (why undetermined,
    or a caveat; "" when fine).
    """
    _check_batch_size(batch_size)
    G, T = _window_and_tasks(gramians, tasks)
    stats = {
        "within_cos": lambda m: np.diagonal(m["raw"], axis1=-2, axis2=-1),
        "mu_sq": _mu_sq,
        "sq_norm": lambda m: m["sq"],
        "noise_trace": _noise_traces,
        "signal_share": _signal_share,
        "b_noise": lambda m: _noise_scale(m, batch_size),
    }
    results, mu_reason = _run_all(G, T, stats, level, units)
    rows = []
    for name, (est, lo, hi, used, reason_all) in results.items():
        for i, task in enumerate(tasks):
            reason = reason_all
            e, a, b = est[i], lo[i], hi[i]
            if name == "mu_sq" and mu_reason[i]:
                reason = mu_reason[i]
            if name == "b_noise" and mu_reason[i]:
                e, a, b, reason = np.nan, np.nan, np.nan, mu_reason[i]
            rows.append(_row(task=task, quantity=name, estimate=e, lo=a, hi=b, n=G.shape[0] *
                             _K(G, T), level=level, units=used, reason=reason))
    return pd.DataFrame(rows)


def pair_frame(gramians: np.ndarray, tasks: Sequence[str], *, level: float = 0.95,
               units: str = "auto") -> pd.DataFrame:
    """One row per task pair (i < j) and quantity, pooled over the window.

    Quantities: "expected_cos" (cos(mu_i, mu_j)), "mu_dot" (mu_i . mu_j), "raw_cos" (mean raw
    cosine of two batch gradients), "raw_cos_sd" (its spread between batch pairs; the
    noise-only band of a raw cosine is +- z times this), "conflict_rate" (Phi(-raw/sd): the
    share of probes whose raw cosine is < 0; noise alone gives 1/2; its interval is clipped to
    [0, 1], that of raw_cos_sd at 0). Columns: pair ("a-b"),
    task_i, task_j, quantity, estimate, lo, hi, n, level, units, reason.
    """
    G, T = _window_and_tasks(gramians, tasks)
    iu = np.triu_indices(T, 1)

    def upper(f):
        return lambda m: f(m)[..., iu[0], iu[1]]

    stats = {
        "expected_cos": upper(_expected_cosines),
        "mu_dot": upper(lambda m: m["mu"]),
        "raw_cos": upper(lambda m: m["raw"]),
        "raw_cos_sd": upper(lambda m: np.sqrt(np.clip(m["raw_var"], 0.0, None))),
        "conflict_rate": upper(lambda m: conflict_probability(m["raw"],
                                                              np.sqrt(np.clip(m["raw_var"],
                                                                              0.0, None)))),
    }
    results, mu_reason = _run_all(G, T, stats, level, units)
    rows = []
    for name, (est, lo, hi, used, reason_all) in results.items():
        for p, (i, j) in enumerate(zip(*iu, strict=True)):
            e, a, b, reason = est[p], lo[p], hi[p], reason_all
            if name == "expected_cos" and (mu_reason[i] or mu_reason[j]):
                reason = "; ".join(dict.fromkeys(r for r in (mu_reason[i], mu_reason[j]) if r))
                e, a, b = np.nan, np.nan, np.nan
            if name in _BOUNDS:  # a jackknife interval is symmetric: keep it in range
                a, b = np.clip([a, b], *_BOUNDS[name])
            rows.append(_row(pair=f"{tasks[i]}-{tasks[j]}", task_i=tasks[i], task_j=tasks[j],
                             quantity=name, estimate=e, lo=a, hi=b,
                             n=G.shape[0] * _K(G, T), level=level, units=used, reason=reason))
    return pd.DataFrame(rows)


def predicted_cosine_frame(gramians: np.ndarray, tasks: Sequence[str], *, batch_size: int,
                           batch_sizes: Sequence[float], level: float = 0.95,
                           units: str = "auto") -> pd.DataFrame:
    """The raw cosine a user would see at each batch size b' (`predicted_raw_cosines`), with
    jackknife intervals: one row per batch size and task pair i <= j (i == j: within-task).

    Columns: batch_size, pair, task_i, task_j, estimate, lo, hi, n, level, units, reason.
    NaN with a reason where an involved |mu|^2 is undetermined.
    """
    _check_batch_size(batch_size)
    G, T = _window_and_tasks(gramians, tasks)
    iu = np.triu_indices(T)
    stats = {}
    for bs in batch_sizes:
        _check_batch_size(bs, "batch_sizes")
        stats[bs] = (lambda m, bs=bs: predicted_raw_cosines(
            _expected_cosines(m), _noise_scale(m, batch_size), bs)[..., iu[0], iu[1]])
    results, mu_reason = _run_all(G, T, stats, level, units)
    rows = []
    for bs, (est, lo, hi, used, reason_all) in results.items():
        for p, (i, j) in enumerate(zip(*iu, strict=True)):
            e, a, b, reason = est[p], lo[p], hi[p], reason_all
            if mu_reason[i] or mu_reason[j]:
                reason = "; ".join(dict.fromkeys(r for r in (mu_reason[i], mu_reason[j]) if r))
                e, a, b = np.nan, np.nan, np.nan
            rows.append(_row(batch_size=bs, pair=f"{tasks[i]}-{tasks[j]}", task_i=tasks[i],
                             task_j=tasks[j], estimate=e, lo=a, hi=b,
                             n=G.shape[0] * _K(G, T), level=level, units=used, reason=reason))
    return pd.DataFrame(rows)


# --- private helpers ---------------------------------------------------------------------------

#: ranges that pair_frame's symmetric intervals are clipped to
_BOUNDS = {"conflict_rate": (0.0, 1.0), "raw_cos_sd": (0.0, np.inf)}



def _run_all(G, T, stats, level, units):
    """Jackknife every statistic; per-task reasons why |mu_i|^2 is undetermined."""
    K = _K(G, T)
    tasks_n = T
    if K < 2:
        reason = f"K={K} replicate per task: needs K >= 2 independent batches per task"
        results = {}
        for name, f in stats.items():
            shape = np.asarray(f(pool(moments(G, T)))).shape
            nan = np.full(shape, np.nan)
            results[name] = (nan, nan, nan, "none", reason)
        return results, [reason] * tasks_n
    results = {}
    for name, f in stats.items():
        est, lo, hi, used = jackknife(G, T, f, level=level, units=units)
        reason = "" if used != "none" else \
            "no interval: K=2 and one probe step (needs K >= 3 or >= 2 probe steps)"
        results[name] = (est, lo, hi, used, reason)
    mu_est, mu_lo, _, used = jackknife(G, T, _mu_sq, level=level, units=units)
    mu_reason = []
    for i in range(T):
        if not mu_est[i] > 0:
            mu_reason.append(f"|mu|^2 estimate {mu_est[i]:.3g} <= 0")
        elif used != "none" and not mu_lo[i] > 0:
            mu_reason.append(f"|mu|^2 interval reaches 0 (lo {mu_lo[i]:.3g})")
        else:
            mu_reason.append("")
    return results, mu_reason


def _row(**values):
    for k in ("estimate", "lo", "hi"):
        values[k] = float(values[k])
    return values


def _K(G, T):
    return G.shape[-1] // T


def _as_window(gramians):
    G = np.asarray(gramians, dtype=float)
    if G.ndim == 2:
        G = G[None]
    if G.ndim != 3 or G.shape[-1] != G.shape[-2] or G.shape[0] < 1:
        raise ValueError(f"gramians must be [S, K*T, K*T] or [K*T, K*T], found shape "
                         f"{np.shape(gramians)}")
    return G


def _window_and_tasks(gramians, tasks):
    if isinstance(tasks, str) or not len(tasks):
        raise ValueError(f"tasks must be a non-empty sequence of task names, found {tasks!r}")
    G = _as_window(gramians)
    num_replicates(G, len(tasks))
    return G, len(tasks)


def _check_level(level):
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), found {level!r}")


def _check_batch_size(batch_size, name="batch_size"):
    if not np.isscalar(batch_size) or not batch_size > 0:
        raise ValueError(f"{name} must be a positive number of examples, found {batch_size!r}")
