"""Tests for pitguard.metrics: exact intervals, bootstrap, calibration, report, paired tests."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from pitguard import metrics as M

# --------------------------------------------------------------------------- exact intervals


def test_clopper_pearson_known_values():
    lo, hi = M.clopper_pearson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    lo, hi = M.clopper_pearson(10, 10)
    assert hi == 1.0
    assert lo == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    lo, hi = M.clopper_pearson(3, 20)
    assert lo == pytest.approx(stats.beta.ppf(0.025, 3, 18), rel=1e-9)
    assert hi == pytest.approx(stats.beta.ppf(0.975, 4, 17), rel=1e-9)
    assert M.clopper_pearson(0, 0) == (0.0, 1.0)


def test_cp_upper_known_values():
    assert M.cp_upper(0, 299, 0.95) == pytest.approx(0.00997, abs=5e-5)
    assert M.cp_upper(0, 299, 0.95) == pytest.approx(1 - 0.05 ** (1 / 299), rel=1e-9)
    assert M.cp_upper(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10), rel=1e-9)
    # Definition: the largest p with P(Bin(n, p) <= k) >= 1 - confidence.
    for k, n in [(0, 50), (3, 40), (17, 200)]:
        u = M.cp_upper(k, n)
        assert stats.binom.cdf(k, n, u) == pytest.approx(0.05, rel=1e-6)
        assert stats.binom.cdf(k, n, u * 1.001) < 0.05
    assert M.cp_upper(0, 0) == 1.0
    assert M.cp_upper(5, 5) == 1.0


def test_intervals_monotone():
    uppers = [M.cp_upper(k, 100) for k in range(101)]
    assert all(a < b for a, b in itertools.pairwise(uppers))
    assert all(M.cp_upper(2, n) > M.cp_upper(2, n + 10) for n in range(10, 200, 10))
    cps = [M.clopper_pearson(k, 50) for k in range(51)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(cps))
    assert all(lo <= k / 50 <= hi for k, (lo, hi) in enumerate(cps))
    # More confidence, wider interval; one-sided upper bound tighter than the two-sided one.
    lo90, hi90 = M.clopper_pearson(7, 60, 0.90)
    lo99, hi99 = M.clopper_pearson(7, 60, 0.99)
    assert lo99 < lo90 and hi99 > hi90
    assert M.cp_upper(7, 60) < M.clopper_pearson(7, 60)[1]


def test_invalid_counts_raise():
    with pytest.raises(ValueError):
        M.clopper_pearson(5, 3)
    with pytest.raises(ValueError):
        M.cp_upper(-1, 3)


def test_cp_upper_coverage_by_simulation():
    p, n, draws = 0.05, 200, 2000
    k = np.random.default_rng(123).binomial(n, p, size=draws)
    upper = {int(v): M.cp_upper(int(v), n) for v in np.unique(k)}
    covered = np.mean([upper[int(v)] >= p for v in k])
    assert covered >= 0.95


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(7).normal(3.0, 1.0, size=500)
    lo, hi = M.bootstrap_ci(np.mean, (x,), n_boot=1000, seed=1)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(500), rel=0.2)
    assert M.bootstrap_ci(np.mean, (x,), n_boot=1000, seed=1) == (lo, hi)
    assert M.bootstrap_ci(np.mean, (x,), n_boot=1000, seed=2) != (lo, hi)


def test_bootstrap_ci_covers_true_mean():
    rng = np.random.default_rng(8)
    covered = []
    for seed in range(200):
        x = rng.exponential(2.0, size=150)
        lo, hi = M.bootstrap_ci(
            lambda v: v.mean(axis=1), (x,), n_boot=400, seed=seed, vectorized=True
        )
        covered.append(lo < 2.0 < hi)
    assert 0.88 <= np.mean(covered) <= 0.99


def test_bootstrap_ci_vectorized_matches_loop_and_resamples_jointly():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.1, size=200)
    loop = M.bootstrap_ci(lambda u, v: np.mean(u - v), (a, b), n_boot=300, seed=5)
    vec = M.bootstrap_ci(
        lambda u, v: (u - v).mean(axis=1), (a, b), n_boot=300, seed=5, vectorized=True
    )
    assert loop == pytest.approx(vec, rel=1e-12)
    # Rows are resampled jointly: the paired difference stays narrow although a itself varies a lot.
    assert vec[1] - vec[0] < 0.05


def test_bootstrap_ci_drops_nan_resamples():
    y = np.array([0] * 48 + [1] * 2)

    def share_of_ones_given_any(v):
        return v.mean() if v.any() else float("nan")

    lo, hi = M.bootstrap_ci(share_of_ones_given_any, (y,), n_boot=500, seed=0)
    assert np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi
    assert all(math.isnan(v) for v in M.bootstrap_ci(lambda v: float("nan"), (y,), n_boot=20))


# --------------------------------------------------------------------------- calibration


def _dirichlet_probs(rng, n, c, concentration=1.0):
    return rng.dirichlet(np.full(c, concentration), size=n)


def _sample_labels(rng, probs):
    u = rng.random(len(probs))[:, None]
    return (u > probs.cumsum(axis=1)).sum(axis=1)


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(11)
    true_probs = _dirichlet_probs(rng, 100_000, 3)
    labels = _sample_labels(rng, true_probs)
    assert M.expected_calibration_error(true_probs, labels) < 0.01
    sharp = true_probs**4
    sharp /= sharp.sum(axis=1, keepdims=True)
    assert M.expected_calibration_error(sharp, labels) > 0.1


def test_reliability_bins_consistent_with_ece():
    rng = np.random.default_rng(3)
    probs = _dirichlet_probs(rng, 2000, 2, concentration=0.5)
    labels = _sample_labels(rng, probs)
    bins = M.reliability_bins(probs, labels, n_bins=10)
    assert set(bins) == {"bin_lower", "bin_upper", "confidence", "accuracy", "count"}
    assert len(bins["count"]) == 10 and sum(bins["count"]) == 2000
    # Top-label confidence of two classes is >= 0.5, so the lower five bins are empty.
    assert bins["count"][:5] == [0] * 5 and bins["confidence"][0] is None
    ece = sum(
        k / 2000 * abs(a - c)
        for c, a, k in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True)
        if k
    )
    assert ece == pytest.approx(M.expected_calibration_error(probs, labels, n_bins=10), abs=1e-12)
    json.dumps(bins, allow_nan=False)


def test_ece_bin_edges_are_right_closed():
    # Confidence exactly 0.6 belongs to the bin (0.4, 0.6], not (0.6, 0.8].
    probs = np.array([[0.6, 0.4], [0.6, 0.4]])
    bins = M.reliability_bins(probs, np.array([0, 1]), n_bins=5)
    assert bins["count"] == [0, 0, 2, 0, 0]


# --------------------------------------------------------------------------- report

CLASSES = ["clean", "maybe", "pit"]
HAND_LABELS = np.array([0, 0, 0, 1, 2, 2, 2, 2])
HAND_PREDS = np.array([0, 0, 2, 1, 2, 2, 0, 1])


def _hand_probs():
    probs = np.full((len(HAND_PREDS), 3), 0.1)
    probs[np.arange(len(HAND_PREDS)), HAND_PREDS] = 0.8
    return probs


def test_classification_report_hand_example():
    rep = M.classification_report(HAND_LABELS, _hand_probs(), CLASSES, n_boot=200, seed=0)
    assert rep["n"] == 8
    assert rep["classes"] == CLASSES
    assert rep["confusion_matrix"] == [[2, 0, 1], [0, 1, 0], [1, 1, 2]]
    assert rep["accuracy"] == pytest.approx(5 / 8)
    expected = {
        "clean": (2 / 3, 2 / 3, 2 / 3, 3),
        "maybe": (1 / 2, 1.0, 2 / 3, 1),
        "pit": (2 / 3, 1 / 2, 4 / 7, 4),
    }
    for name, (precision, recall, f1, support) in expected.items():
        pc = rep["per_class"][name]
        assert pc["precision"] == pytest.approx(precision)
        assert pc["recall"] == pytest.approx(recall)
        assert pc["f1"] == pytest.approx(f1)
        assert pc["support"] == support
    assert rep["per_class"]["pit"]["recall_ci"] == pytest.approx(list(M.clopper_pearson(2, 4)))
    assert rep["per_class"]["clean"]["precision_ci"] == pytest.approx(list(M.clopper_pearson(2, 3)))
    assert rep["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 4 / 7) / 3)
    assert rep["pit_recall"] == pytest.approx(0.5)
    assert rep["pit_recall_ci"] == rep["per_class"]["pit"]["recall_ci"]
    assert rep["pit_miss_rate_upper"] == pytest.approx(M.cp_upper(2, 4))
    # pit scores 0.8/0.8/0.1/0.1 against 0.1/0.1/0.8/0.1: 6 wins and 8 ties of 16 pairs.
    assert rep["roc_auc"] == pytest.approx(10 / 16)
    assert rep["log_loss"] == pytest.approx(-(5 * math.log(0.8) + 3 * math.log(0.1)) / 8)
    assert rep["brier"] == pytest.approx((5 * 0.06 + 3 * 1.46) / 8)
    assert rep["ece"] == pytest.approx(abs(5 / 8 - 0.8))
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "ece",
    ):
        lo, hi = rep[f"{key}_ci"]
        assert lo <= hi, key


def test_classification_report_is_strict_json_and_deterministic():
    rng = np.random.default_rng(0)
    probs = _dirichlet_probs(rng, 300, 3)
    labels = _sample_labels(rng, probs)
    rep = M.classification_report(labels, probs, CLASSES, n_boot=300, seed=4)
    text = json.dumps(rep, allow_nan=False)
    assert json.loads(text) == rep
    assert rep == M.classification_report(labels, probs, CLASSES, n_boot=300, seed=4)
    # ECE is biased upwards under resampling, so only the unbiased statistics must sit inside.
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
    ):
        lo, hi = rep[f"{key}_ci"]
        assert isinstance(rep[key], float) and lo <= rep[key] <= hi, key


def test_classification_report_single_class_present():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    rep = M.classification_report(np.array([0, 0, 0]), probs, ["clean", "pit"], n_boot=50)
    assert rep["roc_auc"] is None and rep["roc_auc_ci"] == [None, None]
    assert rep["pr_auc"] is None and rep["pr_auc_ci"] == [None, None]
    assert rep["pit_recall"] is None and rep["pit_recall_ci"] == [None, None]
    assert rep["per_class"]["pit"]["precision"] == 0.0
    json.dumps(rep, allow_nan=False)


def test_classification_report_rejects_bad_input():
    probs = _hand_probs()
    with pytest.raises(ValueError):
        M.classification_report(HAND_LABELS, probs, ["clean", "maybe", "other"])
    with pytest.raises(ValueError):
        M.classification_report(HAND_LABELS, probs, ["clean", "pit"])
    with pytest.raises(ValueError):
        M.classification_report(HAND_LABELS[:-1], probs, CLASSES)


def test_vectorised_statistics_match_sklearn():
    """Each bootstrapped statistic, on the unresampled data, equals its sklearn point value."""
    rng = np.random.default_rng(5)
    for trial in range(25):
        n, c = int(rng.integers(6, 60)), int(rng.integers(2, 4))
        probs = np.round(_dirichlet_probs(rng, n, c), 1) + 1e-3  # rounding makes ties
        probs /= probs.sum(axis=1, keepdims=True)
        labels = rng.integers(0, c, n)
        labels[:2] = [0, c - 1]
        preds = probs.argmax(axis=1)
        is_pit = labels == c - 1
        conf = probs.max(axis=1)
        one_hot = np.eye(c)[labels]
        rows = M._report_rows(
            labels[None],
            preds[None],
            -np.log(probs[np.arange(n), labels])[None],
            ((probs - one_hot) ** 2).sum(axis=1)[None],
            M._confidence_bins(conf, 15)[None],
            conf[None],
            is_pit[None],
            probs[None, :, c - 1],
            c,
            15,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = {
                "accuracy": skm.accuracy_score(labels, preds),
                "balanced_accuracy": skm.balanced_accuracy_score(labels, preds),
                "macro_f1": skm.f1_score(labels, preds, average="macro", zero_division=0),
                "log_loss": skm.log_loss(labels, probs, labels=list(range(c))),
                "brier": skm.brier_score_loss(
                    labels, probs, labels=list(range(c)), scale_by_half=False
                ),
                "ece": M.expected_calibration_error(probs, labels),
                "roc_auc": skm.roc_auc_score(is_pit, probs[:, c - 1]),
                "pr_auc": skm.average_precision_score(is_pit, probs[:, c - 1]),
            }
        for key, value in ref.items():
            assert rows[key][0] == pytest.approx(value, rel=1e-9, abs=1e-12), (trial, key)


# --------------------------------------------------------------------------- paired comparisons


def test_mcnemar_exact_hand_example():
    a = np.array([1] * 10 + [1] * 7 + [0] * 2 + [0] * 3, dtype=bool)
    b = np.array([1] * 10 + [0] * 7 + [1] * 2 + [0] * 3, dtype=bool)
    res = M.mcnemar_exact(a, b)
    assert res["n"] == 22
    assert res["a_only_correct"] == 7 and res["b_only_correct"] == 2
    assert res["p_value"] == pytest.approx(stats.binomtest(7, 9, 0.5).pvalue)
    assert res["p_value"] == pytest.approx(2 * stats.binom.cdf(2, 9, 0.5))
    assert M.mcnemar_exact(b, a)["p_value"] == pytest.approx(res["p_value"])
    assert M.mcnemar_exact(a, a)["p_value"] == 1.0
    json.dumps(res)


def test_paired_bootstrap_diff_noise_and_real_difference():
    rng = np.random.default_rng(21)
    n = 600
    same_a = rng.random(n) < 0.8
    same_b = rng.random(n) < 0.8
    res = M.paired_bootstrap_diff(same_a, same_b, seed=0)
    assert res["within_noise"] is True
    assert res["ci"][0] <= 0 <= res["ci"][1]
    assert res["n"] == n

    truth = rng.integers(0, 2, n)
    good = np.where(rng.random(n) < 0.95, truth, 1 - truth) == truth
    poor = np.where(rng.random(n) < 0.70, truth, 1 - truth) == truth
    res = M.paired_bootstrap_diff(good, poor, seed=0)
    assert res["within_noise"] is False
    assert res["diff"] == pytest.approx(good.mean() - poor.mean())
    assert 0 < res["ci"][0] < res["diff"] < res["ci"][1]
    json.dumps(res, allow_nan=False)


# --------------------------------------------------------------------------- plots


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(2)
    probs = _dirichlet_probs(rng, 200, 3)
    labels = _sample_labels(rng, probs)
    rep = M.classification_report(labels, probs, CLASSES, n_boot=20)
    paths = [
        M.plot_confusion_matrix(rep["confusion_matrix"], CLASSES, tmp_path / "cm.png"),
        M.plot_roc_pr(labels == 2, probs[:, 2], tmp_path / "roc_pr.png"),
        M.plot_roc_pr(np.zeros(5, dtype=int), np.linspace(0, 1, 5), tmp_path / "one_class.png"),
        M.plot_reliability(M.reliability_bins(probs, labels), None, tmp_path / "rel1.png"),
        M.plot_reliability(
            M.reliability_bins(probs, labels),
            M.reliability_bins(probs, labels, 5),
            tmp_path / "sub" / "rel2.png",
        ),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
