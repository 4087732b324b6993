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

Where things live: the layout helpers, the moments and the per-Gramian estimators are in
:mod:`gradlab.calibration_estimators`; the jackknife and the tidy frames (`task_frame`,
`pair_frame`, `predicted_cosine_frame`) in :mod:`gradlab.calibration_frames`. Both are
re-exported here.

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

from gradlab.calibration_estimators import EPS as EPS
from gradlab.calibration_estimators import (
    LAYOUTS,
    conflict_probability,
    expected_cosines,
    mean_sq_norms,
    moments,
    mu_gramian,
    noise_only_conflict_band,
    noise_scale,
    noise_traces,
    num_replicates,
    pool,
    predicted_raw_cosines,
    raw_cosine_sd,
    raw_cosines,
    reorder_gramian,
    signal_share,
    split_replicates,
    within_task_cosines,
)
from gradlab.calibration_estimators import (  # statistics for `jackknife`, importable as before
    _expected_cosines as _expected_cosines,
)
from gradlab.calibration_estimators import _mu_sq as _mu_sq
from gradlab.calibration_frames import (
    JACKKNIFE_UNITS,
    format_interval,
    jackknife,
    pair_frame,
    predicted_cosine_frame,
    task_frame,
)

__all__ = [
    "JACKKNIFE_UNITS",
    "format_interval",
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
