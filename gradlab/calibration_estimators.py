"""Per-Gramian moment estimators of the calibration (re-exported by :mod:`gradlab.calibration`,
whose docstring gives the model, the layout and the estimators' definitions).

The Gramian [..., K*T, K*T] of K replicate batch gradients of T tasks (replicate-major: row
a*T + i is replicate a of task i) -> its sufficient moments (`moments`, pooled over probe
steps by `pool`) and the estimators that are ratios of them, broadcast over leading dims.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "LAYOUTS",
    "conflict_probability",
    "expected_cosines",
    "mean_sq_norms",
    "moments",
    "mu_gramian",
    "noise_only_conflict_band",
    "noise_scale",
    "noise_traces",
    "num_replicates",
    "pool",
    "predicted_raw_cosines",
    "raw_cosine_sd",
    "raw_cosines",
    "reorder_gramian",
    "signal_share",
    "split_replicates",
    "within_task_cosines",
]

LAYOUTS = ("replicate_major", "task_major")
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



# --- argument checks ---------------------------------------------------------------------------


def _check_level(level):
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), found {level!r}")


def _check_batch_size(batch_size, name="batch_size"):
    if not np.isscalar(batch_size) or not batch_size > 0:
        raise ValueError(f"{name} must be a positive number of examples, found {batch_size!r}")
