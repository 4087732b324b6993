"""Gradient-conflict statistics as pure functions of task Gramians.

Every function takes the Gramian G = J Jᵀ [..., T, T] of the task gradients J [T, P] (float64)
and broadcasts over the leading dims, so a whole run's Gramians [N, T, T] go through one call.
Nothing here needs the gradients themselves: G_ij = g_i·g_j holds every length and angle.

Undefined values are NaN, never an exception or a warning: a task whose gradient is zero
(norm <= ``eps``) has no direction, so its cosines, conflicts and curvature measures are NaN
("missing"), while its norm is 0.

Papers:
  PCGrad  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", arXiv:2001.06782
          (Def. 1 conflict, Def. 2 gradient magnitude similarity, Def. 5 curvature bounding).
  Recon   Shi (Guangyuan) et al., ICLR 2023, "Recon: Reducing Conflicting Gradients from the
          Root for Multi-Task Learning", arXiv:2302.11289 (S-conflict score).
  GradVac Wang et al., ICLR 2021, "Gradient Vaccine", arXiv:2010.05874 (cosine targets).
  Aligned-MTL Senushkin et al., CVPR 2023, arXiv:2305.19000 (condition number of J).

Example:
    >>> import numpy as np
    >>> J = np.array([[1.0, 0.0], [-1.0, 1.0]])
    >>> G = J @ J.T
    >>> float(cosines(G)[0, 1].round(4)), float(conflict(G)[0, 1])
    (-0.7071, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "blockwise_update_gramian", "combination_cosine", "condition_number", "conflict", "cosines",
    "curvature_bounding_measure", "magnitude_similarity", "plane_coordinates",
    "predicted_loss_change", "rolling_rate", "s_conflict_count", "task_norms", "update_gramian",
    "update_mean_cosine", "update_norm", "update_statistics", "update_task_cosines",
]

EPS = 1e-12  # norms at or below this are treated as zero gradients


def task_norms(G: np.ndarray) -> np.ndarray:
    """Gradient norms ‖g_i‖ = √G_ii, [..., T, T] -> [..., T].

    Tiny negative diagonals from rounding are clipped to 0.
    """
    G = _as_gramian(G)
    return np.sqrt(np.clip(np.diagonal(G, axis1=-2, axis2=-1), 0.0, None))


def cosines(G: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Pairwise cosine similarities cos φ_ij = G_ij / (‖g_i‖ ‖g_j‖), [..., T, T] -> [..., T, T].

    NaN in every row and column of a task whose norm is <= ``eps``; the diagonal is exactly 1
    elsewhere; values are clipped to [-1, 1] against rounding. Cosines are the quantity PCGrad
    (Yu et al. 2020, arXiv:2001.06782, Def. 1) thresholds at 0 and GradVac (Wang et al. 2021,
    arXiv:2010.05874) tracks as an EMA to set per-pair cosine targets.
    """
    G = _as_gramian(G)
    n = task_norms(G)
    valid = n > eps
    both = valid[..., :, None] & valid[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cos = G / (n[..., :, None] * n[..., None, :])
    cos = np.clip(cos, -1.0, 1.0)
    T = G.shape[-1]
    cos = np.where(np.eye(T, dtype=bool), 1.0, cos)
    return np.where(both, cos, np.nan)


def conflict(G: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Conflict indicator, [..., T, T]: 1.0 where cos φ_ij < 0, 0.0 where >= 0, NaN undefined.

    PCGrad (Yu et al. 2020, arXiv:2001.06782), Def. 1: g_i and g_j conflict when cos φ_ij < 0.
    """
    cos = cosines(G, eps)
    return np.where(np.isnan(cos), np.nan, (cos < 0).astype(float))


def magnitude_similarity(G: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Gradient magnitude similarity Φ_ij = 2 ‖g_i‖ ‖g_j‖ / (‖g_i‖² + ‖g_j‖²), [..., T, T].

    PCGrad (Yu et al. 2020, arXiv:2001.06782), Def. 2. In [0, 1]: 1 for equal norms, near 0
    when one gradient dwarfs the other; 0 when exactly one is zero, NaN when both are.
    """
    G = _as_gramian(G)
    n = task_norms(G)
    sq = n**2
    denom = sq[..., :, None] + sq[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gms = 2.0 * n[..., :, None] * n[..., None, :] / denom
    gms = np.clip(gms, 0.0, 1.0)
    either = (n > eps)[..., :, None] | (n > eps)[..., None, :]
    return np.where(either, gms, np.nan)


def curvature_bounding_measure(G: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Curvature bounding measure ξ_ij = (1 - cos² φ_ij) ‖g_i - g_j‖² / ‖g_i + g_j‖², [..., T, T].

    PCGrad (Yu et al. 2020, arXiv:2001.06782), Def. 5, with ‖g_i ± g_j‖² = G_ii + G_jj ± 2 G_ij.
    NaN where the cosine is undefined or g_i + g_j = 0 (exactly opposite gradients of equal
    length, up to a relative tolerance of 1e-12); 0 on the diagonal.
    """
    G = _as_gramian(G)
    cos = cosines(G, eps)
    d = np.clip(np.diagonal(G, axis1=-2, axis2=-1), 0.0, None)
    total = d[..., :, None] + d[..., None, :]
    diff_sq = np.clip(total - 2.0 * G, 0.0, None)
    sum_sq = np.clip(total + 2.0 * G, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        xi = (1.0 - cos**2) * diff_sq / sum_sq
    return np.where(sum_sq > 1e-12 * total, xi, np.nan)


def condition_number(G: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Condition number of J: κ = σ_max / σ_min = √(λ_max(G) / λ_min(G)), [..., T, T] -> [...].

    The quantity Aligned-MTL (Senushkin et al. 2023, arXiv:2305.19000) drives to 1. κ = 1 for
    T = 1 and for orthogonal gradients of equal norm; inf when G is singular (rank-deficient J,
    e.g. identical or exactly opposite gradients, a zero gradient among nonzero ones), detected
    as λ_min <= rtol · λ_max (so finite values are below 1/√rtol = 1e6 by default). NaN when G
    is entirely zero (no gradient at all) or not finite.
    """
    G = _as_gramian(G)
    finite = np.all(np.isfinite(G), axis=(-2, -1))
    lam = np.linalg.eigvalsh(np.where(finite[..., None, None], G, 0.0))
    lmin, lmax = lam[..., 0], lam[..., -1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kappa = np.sqrt(lmax / lmin)
    kappa = np.where(lmin <= rtol * lmax, np.inf, kappa)
    return np.where(finite & (lmax > 0), kappa, np.nan)


def update_norm(G: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Norm of the update d = wᵀJ: ‖d‖ = √(wᵀ G w), G [..., T, T], w [..., T] -> [...]."""
    G, w = _as_gramian_and_weights(G, w)
    return np.sqrt(np.clip(_quad(G, w, w), 0.0, None))


def update_task_cosines(G: np.ndarray, w: np.ndarray, eps: float = EPS) -> np.ndarray:
    """cos(d, g_i) = (G w)_i / (‖d‖ ‖g_i‖) for the update d = wᵀJ, [..., T].

    NaN where ‖d‖ or ‖g_i‖ is <= ``eps``. Negative for a task the update works against.
    """
    G, w = _as_gramian_and_weights(G, w)
    Gw = np.einsum("...ij,...j->...i", G, w)
    dn = update_norm(G, w)[..., None]
    n = task_norms(G)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cos = np.clip(Gw / (dn * n), -1.0, 1.0)
    return np.where((dn > eps) & (n > eps), cos, np.nan)


def update_mean_cosine(G: np.ndarray, w: np.ndarray, eps: float = EPS) -> np.ndarray:
    """cos(d, ḡ) between the update d = wᵀJ and the mean gradient ḡ = (1/T) Σ_i g_i, [...].

    = wᵀ G 1 / √(wᵀ G w · 1ᵀ G 1); NaN when either vector is zero.
    """
    G, w = _as_gramian_and_weights(G, w)
    ones = np.ones(G.shape[-1])
    return combination_cosine(G, w, ones, eps)


def combination_cosine(G: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Cosine between two combinations u = aᵀJ and v = bᵀJ: aᵀGb / √(aᵀGa · bᵀGb), [...].

    a, b: [..., T]. NaN when either combination has norm <= ``eps``.
    """
    G, a = _as_gramian_and_weights(G, a, name="a")
    G, b = _as_gramian_and_weights(G, b, name="b")
    na = np.sqrt(np.clip(_quad(G, a, a), 0.0, None))
    nb = np.sqrt(np.clip(_quad(G, b, b), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cos = np.clip(_quad(G, a, b) / (na * nb), -1.0, 1.0)
    return np.where((na > eps) & (nb > eps), cos, np.nan)


def update_gramian(G: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Gramian of [g_1 .. g_T, d] for the update d = wᵀJ, [..., T+1, T+1].

    [[G, G w], [wᵀG, wᵀ G w]]. Sums over disjoint parameter blocks, so the update of a
    blockwise method (d restricted to block b is w_bᵀ J_b) has Gramian Σ_b update_gramian(G_b,
    w_b); every statistic of d then follows by treating it as task T+1.
    """
    G, w = _as_gramian_and_weights(G, w)
    shape = np.broadcast_shapes(G.shape[:-2], w.shape[:-1])
    T = G.shape[-1]
    G = np.broadcast_to(G, (*shape, T, T))
    Gw = np.einsum("...ij,...j->...i", G, w)
    out = np.empty((*shape, T + 1, T + 1))
    out[..., :T, :T] = G
    out[..., :T, T] = Gw
    out[..., T, :T] = Gw
    out[..., T, T] = _quad(G, w, w)
    return out


def blockwise_update_gramian(G: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Gramian of [g_1 .. g_T, d] for a blockwise update d: G [..., B, T, T], W [..., B, T] ->
    [..., T+1, T+1].

    A blockwise method (PCGrad per layer, GradVac) combines block b's gradients J_b with its
    own weights w_b, so d = [w_1ᵀJ_1, ..., w_BᵀJ_B]. Blocks are disjoint parameters, so the
    Gramian is Σ_b update_gramian(G_b, w_b) (summed in block order). A task absent from a
    block's update has weight 0 there.
    """
    G, W = _as_gramian_and_weights(G, W, name="W")
    if G.ndim < 3 or W.ndim < 2 or G.shape[-3] != W.shape[-2]:
        raise ValueError(f"G [..., B, T, T] and W [..., B, T] must have the same B, got "
                         f"{G.shape} and {W.shape}")
    total = update_gramian(G[..., 0, :, :], W[..., 0, :])
    for b in range(1, G.shape[-3]):
        total = total + update_gramian(G[..., b, :, :], W[..., b, :])
    return total


def update_statistics(Gu: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of the update d from the Gramian Gu [..., T+1, T+1] of (g_1 .. g_T, d).

    Returns {"update_norm": ‖d‖ [...], "cos_update_task": cos(d, g_i) [..., T],
    "cos_update_mean": cos(d, mean_i g_i) [...]}, NaN where a vector is zero. Gu comes from
    `update_gramian` (one weight vector) or `blockwise_update_gramian`; d is task T+1.
    """
    Gu = _as_gramian(Gu)
    T = Gu.shape[-1] - 1
    if T < 1:
        raise ValueError(f"Gu must have shape [..., T+1, T+1] with T >= 1, got {Gu.shape}")
    d = np.zeros(T + 1)
    d[T] = 1.0
    mean = np.r_[np.full(T, 1.0 / T), 0.0]
    return {"update_norm": update_norm(Gu, d),
            "cos_update_task": update_task_cosines(Gu, d)[..., :T],
            "cos_update_mean": combination_cosine(Gu, d, mean)}


def predicted_loss_change(G: np.ndarray, w: np.ndarray, lr: float | np.ndarray) -> np.ndarray:
    """First-order change of each task loss after the step θ <- θ - lr d, d = wᵀJ, [..., T].

    ΔL_i ≈ -lr g_iᵀ d = -lr (G w)_i. ``lr`` is a scalar or broadcasts against [...].
    """
    G, w = _as_gramian_and_weights(G, w)
    Gw = np.einsum("...ij,...j->...i", G, w)
    return -np.asarray(lr, dtype=float)[..., None] * Gw


def rolling_rate(x: np.ndarray, window: int, steps: np.ndarray | None = None) -> np.ndarray:
    """Trailing mean of the non-NaN values of a 1-D series, [N] -> [N].

    Entry n averages x over the trailing window: the last ``window`` entries (n - window, n]
    when ``steps`` is None, else the entries whose step lies in (steps[n] - window, steps[n]]
    (``steps`` sorted ascending), so a window of 50 steps spans 5 probe steps logged every 10.
    NaN where the window holds no non-NaN value. Used for conflict and projection rates.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"rolling_rate: x must be 1-D, got shape {x.shape}")
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f"rolling_rate: window must be an integer >= 1, got {window!r}")
    n = x.shape[0]
    pos = np.arange(n) if steps is None else np.asarray(steps)
    if pos.shape != (n,):
        raise ValueError(f"rolling_rate: steps must have shape ({n},), got {pos.shape}")
    if n and np.any(np.diff(pos) < 0):
        raise ValueError("rolling_rate: steps must be sorted ascending")
    start = np.searchsorted(pos, pos - window, side="right")
    valid = ~np.isnan(x)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, x, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    end = np.arange(1, n + 1)
    total, count = sums[end] - sums[start], counts[end] - counts[start]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(count > 0, total / count, np.nan)


def s_conflict_count(cos: np.ndarray, S: float = 0.0, axis: int | None = None) -> int | np.ndarray:
    """Number of steps whose cosine is below S (NaN never counts), int (or array along ``axis``).

    Recon (Shi et al. 2023, arXiv:2302.11289) calls gradients S-conflicting when cos < S,
    S ∈ (-1, 0], and scores a layer by how often its task pairs S-conflict during training.
    """
    S = float(S)
    if not -1.0 <= S <= 1.0:
        raise ValueError(f"s_conflict_count: S must be in [-1, 1], got {S}")
    below = np.asarray(cos, dtype=float) < S
    if axis is None:
        return int(np.count_nonzero(below))
    return np.count_nonzero(below, axis=axis)


def plane_coordinates(
    G: np.ndarray,
    coeffs: np.ndarray,
    basis: str = "pair",
    pair: Sequence[int] = (0, 1),
    rtol: float = 1e-12,
    eps: float = EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact 2-D coordinates of vectors v_k = coeffs_k · J in a plane of the task gradients.

    G [..., T, T], coeffs [..., K, T] (row e_i is task i's gradient, row w an update wᵀJ) ->
    (xy [..., K, 2], outside [..., K]). Only G is used: a direction u = Jᵀ b of unit length
    (bᵀ G b = 1) gives v_k · u = coeffs_k G b.

    basis='pair' (pair=(i, j)): Gram-Schmidt of g_i, g_j in coefficient space. The x axis is
    g_i / ‖g_i‖ (b_1 = e_i / ‖g_i‖); the y axis is the part of g_j orthogonal to g_i, so g_j
    has y >= 0 (b_2 = (e_j - G_ij/G_ii e_i) / √(G_jj - G_ij²/G_ii)). All NaN when g_i = 0;
    y = 0 for every vector when g_j is parallel to g_i or zero.

    basis='pca': the top-2 principal directions of the task gradients, J's right singular
    vectors u_k = Jᵀ a_k / σ_k with (a_k, σ_k²) the top eigenpairs of G, so the coordinate of
    v = c·J is c G a_k / σ_k. Signs are oriented so that the sum of the task gradients Σ_i g_i
    has positive coordinates (if that coordinate is 0, the largest |a_k| entry is made
    positive). A direction with σ_k² <= rtol σ_1² (T = 1, rank-1 J) gives coordinate 0.

    outside = √(‖v‖² - ‖xy‖²) / ‖v‖ is the share of each vector's length off the plane (0 for
    vectors in it; NaN for a zero vector).
    """
    G = _as_gramian(G)
    T = G.shape[-1]
    C = np.asarray(coeffs, dtype=float)
    if C.ndim < 2 or C.shape[-1] != T:
        raise ValueError(f"plane_coordinates: coeffs must have shape [..., K, {T}], got {C.shape}")
    if basis == "pair":
        B = _pair_basis(G, pair, rtol, eps)
    elif basis == "pca":
        B = _pca_basis(G, rtol)
    else:
        raise ValueError(f"plane_coordinates: basis must be 'pair' or 'pca', got {basis!r}")
    xy = np.einsum("...kt,...ts,...ls->...kl", C, G, B)
    vv = np.clip(np.einsum("...kt,...ts,...ks->...k", C, G, C), 0.0, None)
    rest = vv - np.sum(xy**2, axis=-1)
    rest = np.where(rest <= 64 * np.finfo(float).eps * vv, 0.0, rest)
    vn = np.sqrt(vv)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        outside = np.clip(np.sqrt(np.clip(rest, 0.0, None)) / vn, 0.0, 1.0)
    outside = np.where(vn > eps, outside, np.nan)
    outside = np.where(np.isnan(xy).any(axis=-1), np.nan, outside)
    return xy, outside


def _pair_basis(G: np.ndarray, pair: Sequence[int], rtol: float, eps: float) -> np.ndarray:
    """[..., 2, T] coefficient vectors of the Gram-Schmidt basis of (g_i, g_j)."""
    T = G.shape[-1]
    try:
        i, j = (int(p) for p in pair)
    except (TypeError, ValueError):
        raise ValueError(
            f"plane_coordinates: pair must be two task indices, got {pair!r}") from None
    if not (0 <= i < T and 0 <= j < T) or i == j:
        raise ValueError(
            f"plane_coordinates: pair must be two different task indices in [0, {T}), got "
            f"{tuple(pair)!r}" + (" (use basis='pca' for T=1)" if T == 1 else "")
        )
    gii, gjj, gij = G[..., i, i], G[..., j, j], G[..., i, j]
    ni = np.sqrt(np.clip(gii, 0.0, None))
    B = np.zeros((*G.shape[:-2], 2, T))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        B[..., 0, i] = 1.0 / ni
        r2 = gjj - gij**2 / gii  # squared length of g_j's part orthogonal to g_i
        ok = r2 > rtol * np.clip(gjj, 0.0, None)
        r = np.sqrt(np.where(ok, r2, 1.0))
        B[..., 1, j] = np.where(ok, 1.0 / r, 0.0)
        B[..., 1, i] = np.where(ok, -gij / gii / r, 0.0)
    return np.where((ni > eps)[..., None, None], B, np.nan)


def _pca_basis(G: np.ndarray, rtol: float) -> np.ndarray:
    """[..., 2, T] coefficient vectors a_k / σ_k of J's top-2 right singular vectors."""
    T = G.shape[-1]
    finite = np.all(np.isfinite(G), axis=(-2, -1))
    lam, vec = np.linalg.eigh(np.where(finite[..., None, None], G, 0.0))
    B = np.zeros((*G.shape[:-2], 2, T))
    lmax = lam[..., -1]
    ones = np.ones(T)
    for k in range(min(2, T)):
        a = vec[..., :, T - 1 - k]
        lk = lam[..., T - 1 - k]
        ok = (lk > rtol * lmax) & (lk > 0)
        sigma = np.sqrt(np.where(ok, lk, 1.0))
        b = np.where(ok[..., None], a / sigma[..., None], 0.0)
        s = np.einsum("t,...ts,...s->...", ones, G, b)  # coordinate of Σ g_i on this axis
        biggest = np.take_along_axis(a, np.argmax(np.abs(a), axis=-1)[..., None], -1)[..., 0]
        tie = np.abs(s) <= 1e-12 * np.sqrt(np.clip(np.einsum("...ts->...", G), 0.0, None))
        sign = np.where(tie, np.sign(biggest), np.sign(s))
        B[..., k, :] = b * np.where(sign == 0, 1.0, sign)[..., None]
    return np.where((finite & (lmax > 0))[..., None, None], B, np.nan)


def _quad(G: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...ij,...j->...", a, G, b)


def _as_gramian(G: np.ndarray) -> np.ndarray:
    G = np.asarray(G, dtype=float)
    if G.ndim < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must have shape [..., T, T], got {G.shape}")
    return G


def _as_gramian_and_weights(
    G: np.ndarray, w: np.ndarray, name: str = "w"
) -> tuple[np.ndarray, np.ndarray]:
    G = _as_gramian(G)
    w = np.asarray(w, dtype=float)
    if w.ndim < 1 or w.shape[-1] != G.shape[-1]:
        raise ValueError(f"{name} must have shape [..., {G.shape[-1]}], got {w.shape}")
    return G, w
