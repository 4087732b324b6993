"""Paired tests and t intervals over seeds, against hand-computed scipy values."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from gradlab import significance
from gradlab.significance import compare_methods, paired_test, seed_summary, t_interval


def test_docstring_example():
    assert doctest.testmod(significance).failed == 0


def test_paired_test_matches_scipy_by_hand():
    a = np.array([0.52, 0.55, 0.49, 0.58])
    b = np.array([0.50, 0.51, 0.50, 0.53])
    d = a - b  # [0.02, 0.04, -0.01, 0.05]
    half = sps.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    r = paired_test(a, b)
    assert r["n"] == 4
    assert r["mean_diff"] == pytest.approx(0.025)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.025 - half, 0.025 + half))
    t = d.mean() / (d.std(ddof=1) / 2)
    assert r["p_value"] == pytest.approx(2 * sps.t.sf(abs(t), 3))
    assert r["p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert r["within_noise"] is (r["ci_low"] <= 0 <= r["ci_high"])
    assert r["within_noise"]  # half ≈ 0.042 > 0.025
    w = paired_test(a, b, test="wilcoxon")
    assert w["p_value"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert w["ci_low"] == r["ci_low"]


def test_a_consistent_difference_is_outside_seed_noise():
    a = [0.70, 0.72, 0.71, 0.69, 0.73]
    b = [0.60, 0.61, 0.62, 0.60, 0.61]
    r = paired_test(a, b)
    assert not r["within_noise"] and r["ci_low"] > 0 and r["p_value"] < 1e-3
    assert paired_test(b, a)["mean_diff"] == pytest.approx(-r["mean_diff"])


def test_paired_test_edge_cases():
    one = paired_test([0.5], [0.4])
    assert one["n"] == 1 and one["within_noise"] and math.isnan(one["ci_low"])
    assert math.isnan(one["p_value"])
    nan_pair = paired_test([0.5, np.nan, 0.7, 0.6], [0.4, 0.3, 0.5, 0.6])
    assert nan_pair["n"] == 3 and nan_pair["mean_diff"] == pytest.approx(0.1)
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean_diff"] == 0 and same["within_noise"]
    assert (same["ci_low"], same["ci_high"]) == (0, 0)
    shifted = paired_test([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])  # every seed +0.1 exactly
    assert shifted["ci_low"] == pytest.approx(0.1) and not shifted["within_noise"]
    assert paired_test([0.5, 0.6], [0.5, 0.6], test="wilcoxon")["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal length"):
        paired_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="test"):
        paired_test([1, 2], [1, 2], test="z")
    with pytest.raises(ValueError, match="confidence"):
        paired_test([1, 2], [1, 2], confidence=95)


def test_t_interval_and_seed_summary():
    x = np.array([0.3, 0.5, 0.4])
    low, high = t_interval(x)
    half = sps.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)  # 4.303 * 0.1 / 1.732
    assert (low, high) == pytest.approx((0.4 - half, 0.4 + half))
    assert t_interval(x, 0.9)[1] < high
    df = pd.DataFrame({"method": ["sum"] * 3 + ["pcgrad"] * 2, "task": "sst",
                       "value": [0.3, 0.5, 0.4, 0.6, np.nan]})
    s = seed_summary(df, "value", ["method", "task"])
    assert list(s.columns) == ["method", "task", "n", "mean", "std", "ci_low", "ci_high"]
    first = s.iloc[0]
    assert (first["method"], first["n"], first["mean"]) == ("sum", 3, pytest.approx(0.4))
    assert (first["ci_low"], first["ci_high"]) == pytest.approx((low, high))
    second = s.iloc[1]
    assert second["n"] == 1 and second["mean"] == 0.6 and math.isnan(second["ci_low"])
    assert list(seed_summary(df, "value", "method")["method"]) == ["sum", "pcgrad"]
    with pytest.raises(ValueError, match="lacks columns"):
        seed_summary(df, "score", "method")


def _results() -> pd.DataFrame:
    rows = []
    values = {"sum": [0.50, 0.52, 0.48], "pcgrad": [0.51, 0.55, 0.47],
              "mgda": [0.60, 0.61, 0.59]}
    for method, accs in values.items():
        for seed, acc in enumerate(accs):
            rows.append((method, seed, "sst", "accuracy", acc))
            rows.append((method, seed, "sts", "pearson", 0.3 + 0.01 * seed))
    return pd.DataFrame(rows, columns=["method", "seed", "task", "metric", "value"])


def test_compare_methods_pairs_by_seed():
    results = _results().sample(frac=1.0, random_state=0)  # row order must not matter
    table = compare_methods(results, baseline="sum")
    assert list(table.columns) == ["method", "task", "metric", "n", "mean", "std", "ci_low",
                                   "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p_value",
                                   "p_holm", "n_pairs", "within_seed_noise"]
    assert table["method"].iloc[0] == "sum" and len(table) == 6
    row = table.set_index(["method", "task"]).loc[("pcgrad", "sst")]
    by_hand = paired_test([0.51, 0.55, 0.47], [0.50, 0.52, 0.48])
    assert row["diff"] == pytest.approx(by_hand["mean_diff"])
    assert row["p_value"] == pytest.approx(sps.ttest_rel([0.51, 0.55, 0.47],
                                                         [0.50, 0.52, 0.48]).pvalue)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(
        (by_hand["ci_low"], by_hand["ci_high"]))
    assert row["within_seed_noise"] and row["n_pairs"] == 3
    mgda = table.set_index(["method", "task"]).loc[("mgda", "sst")]
    assert not mgda["within_seed_noise"] and mgda["diff"] == pytest.approx(0.1)
    sts = table.set_index(["method", "task"]).loc[("mgda", "sts")]  # identical to the baseline
    assert sts["diff"] == 0 and sts["within_seed_noise"]
    base = table.set_index(["method", "task"]).loc[("sum", "sst")]
    assert base["diff"] == 0 and pd.isna(base["within_seed_noise"])
    sst = table[(table.task == "sst") & (table.method != "sum")].set_index("method")
    p = sst["p_value"].sort_values()  # Holm by hand: two methods tested on sst accuracy
    assert sst.loc[p.index[0], "p_holm"] == pytest.approx(min(1, 2 * p.iloc[0]))
    assert sst.loc[p.index[1], "p_holm"] == pytest.approx(max(min(1, 2 * p.iloc[0]), p.iloc[1]))
    assert pd.isna(base["p_holm"])


def test_holm_by_brute_force():
    from itertools import permutations

    from gradlab.significance import holm

    rng = np.random.default_rng(0)
    for m in (1, 2, 4, 7):
        p = rng.uniform(0, 0.2, size=m)
        adjusted = holm(p)
        # brute force from the definition: for each hypothesis, the max over the step-down
        # path of min(1, (m - j) p_(j)), j = 0..rank
        order = np.argsort(p)
        for rank, i in enumerate(order):
            expected = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
            assert adjusted[i] == pytest.approx(expected)
        # it never depends on the order in which the p-values are listed
        for perm in list(permutations(range(m)))[:6]:
            np.testing.assert_allclose(holm(p[list(perm)]), adjusted[list(perm)])
    assert np.isnan(holm([0.01, np.nan, 0.02])[1])
    np.testing.assert_allclose(holm([0.01, np.nan, 0.02])[[0, 2]], [0.02, 0.02])


def test_compare_methods_pairs_only_shared_seeds_and_checks_input():
    results = _results()
    results = results[~((results["method"] == "pcgrad") & (results["seed"] == 2))]
    row = compare_methods(results).set_index(["method", "task"]).loc[("pcgrad", "sst")]
    assert row["n"] == 2 and row["n_pairs"] == 2
    assert row["diff"] == pytest.approx(np.mean([0.01, 0.03]))
    with pytest.raises(ValueError, match="baseline='uw'"):
        compare_methods(results, baseline="uw")
    with pytest.raises(ValueError, match="share"):
        compare_methods(pd.concat([results, results.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks columns"):
        compare_methods(results.drop(columns="seed"))
