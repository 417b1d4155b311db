"""Tests for pitguard.core.stats."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from pitguard.core import stats as S


def test_clopper_pearson_known_values():
    lo, hi = S.clopper_pearson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    lo, hi = S.clopper_pearson(10, 10)
    assert hi == 1.0
    assert lo == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    lo, hi = S.clopper_pearson(3, 20)
    assert lo == pytest.approx(stats.beta.ppf(0.025, 3, 18), rel=1e-9)
    assert hi == pytest.approx(stats.beta.ppf(0.975, 4, 17), rel=1e-9)
    assert S.clopper_pearson(0, 0) == (0.0, 1.0)


def test_cp_upper_known_values():
    assert S.cp_upper(0, 299, 0.95) == pytest.approx(0.00997, abs=5e-5)
    assert S.cp_upper(0, 299, 0.95) == pytest.approx(1 - 0.05 ** (1 / 299), rel=1e-9)
    assert S.cp_upper(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10), rel=1e-9)
    # Definition: the largest p with P(Bin(n, p) <= k) >= 1 - confidence.
    for k, n in [(0, 50), (3, 40), (17, 200)]:
        u = S.cp_upper(k, n)
        assert stats.binom.cdf(k, n, u) == pytest.approx(0.05, rel=1e-6)
        assert stats.binom.cdf(k, n, u * 1.001) < 0.05
    assert S.cp_upper(0, 0) == 1.0
    assert S.cp_upper(5, 5) == 1.0


def test_intervals_monotone():
    uppers = [S.cp_upper(k, 100) for k in range(101)]
    assert all(a < b for a, b in itertools.pairwise(uppers))
    assert all(S.cp_upper(2, n) > S.cp_upper(2, n + 10) for n in range(10, 200, 10))
    cps = [S.clopper_pearson(k, 50) for k in range(51)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(cps))
    assert all(lo <= k / 50 <= hi for k, (lo, hi) in enumerate(cps))
    # More confidence, wider interval; one-sided upper bound tighter than the two-sided one.
    lo90, hi90 = S.clopper_pearson(7, 60, 0.90)
    lo99, hi99 = S.clopper_pearson(7, 60, 0.99)
    assert lo99 < lo90 and hi99 > hi90
    assert S.cp_upper(7, 60) < S.clopper_pearson(7, 60)[1]


def test_invalid_counts_raise():
    with pytest.raises(ValueError):
        S.clopper_pearson(5, 3)
    with pytest.raises(ValueError):
        S.cp_upper(-1, 3)


def test_cp_upper_coverage_by_simulation():
    p, n, draws = 0.05, 200, 2000
    k = np.random.default_rng(123).binomial(n, p, size=draws)
    upper = {int(v): S.cp_upper(int(v), n) for v in np.unique(k)}
    covered = np.mean([upper[int(v)] >= p for v in k])
    assert covered >= 0.95


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(7).normal(3.0, 1.0, size=500)
    lo, hi = S.bootstrap_ci(np.mean, (x,), n_boot=1000, seed=1)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(500), rel=0.2)
    assert S.bootstrap_ci(np.mean, (x,), n_boot=1000, seed=1) == (lo, hi)
    assert S.bootstrap_ci(np.mean, (x,), n_boot=1000, seed=2) != (lo, hi)


def test_bootstrap_ci_covers_true_mean():
    rng = np.random.default_rng(8)
    covered = []
    for seed in range(200):
        x = rng.exponential(2.0, size=150)
        lo, hi = S.bootstrap_ci(
            lambda v: v.mean(axis=1), (x,), n_boot=400, seed=seed, vectorized=True
        )
        covered.append(lo < 2.0 < hi)
    assert 0.88 <= np.mean(covered) <= 0.99


def test_bootstrap_ci_vectorized_matches_loop_and_resamples_jointly():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.1, size=200)
    loop = S.bootstrap_ci(lambda u, v: np.mean(u - v), (a, b), n_boot=300, seed=5)
    vec = S.bootstrap_ci(
        lambda u, v: (u - v).mean(axis=1), (a, b), n_boot=300, seed=5, vectorized=True
    )
    assert loop == pytest.approx(vec, rel=1e-12)
    # Rows are resampled jointly: the paired difference stays narrow although a itself varies a lot.
    assert vec[1] - vec[0] < 0.05


def test_bootstrap_ci_drops_nan_resamples():
    y = np.array([0] * 48 + [1] * 2)

    def share_of_ones_given_any(v):
        return v.mean() if v.any() else float("nan")

    lo, hi = S.bootstrap_ci(share_of_ones_given_any, (y,), n_boot=500, seed=0)
    assert np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi
    assert all(math.isnan(v) for v in S.bootstrap_ci(lambda v: float("nan"), (y,), n_boot=20))


def test_mcnemar_exact_hand_example():
    a = np.array([1] * 10 + [1] * 7 + [0] * 2 + [0] * 3, dtype=bool)
    b = np.array([1] * 10 + [0] * 7 + [1] * 2 + [0] * 3, dtype=bool)
    res = S.mcnemar_exact(a, b)
    assert res["n"] == 22
    assert res["a_only_correct"] == 7 and res["b_only_correct"] == 2
    assert res["p_value"] == pytest.approx(stats.binomtest(7, 9, 0.5).pvalue)
    assert res["p_value"] == pytest.approx(2 * stats.binom.cdf(2, 9, 0.5))
    assert S.mcnemar_exact(b, a)["p_value"] == pytest.approx(res["p_value"])
    assert S.mcnemar_exact(a, a)["p_value"] == 1.0
    json.dumps(res)


def test_paired_bootstrap_diff_noise_and_real_difference():
    rng = np.random.default_rng(21)
    n = 600
    same_a = rng.random(n) < 0.8
    same_b = rng.random(n) < 0.8
    res = S.paired_bootstrap_diff(same_a, same_b, seed=0)
    assert res["within_noise"] is True
    assert res["ci"][0] <= 0 <= res["ci"][1]
    assert res["n"] == n

    truth = rng.integers(0, 2, n)
    good = np.where(rng.random(n) < 0.95, truth, 1 - truth) == truth
    poor = np.where(rng.random(n) < 0.70, truth, 1 - truth) == truth
    res = S.paired_bootstrap_diff(good, poor, seed=0)
    assert res["within_noise"] is False
    assert res["diff"] == pytest.approx(good.mean() - poor.mean())
    assert 0 < res["ci"][0] < res["diff"] < res["ci"][1]
    json.dumps(res, allow_nan=False)
