"""Tests for pitguard.evaluate.metrics."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from pitguard.core import stats as S
from pitguard.evaluate import metrics as M
from pitguard.evaluate import resampled as R
from tests.scores import CLASSES, dirichlet_probs, sample_labels

HAND_LABELS = np.array([0, 0, 0, 1, 2, 2, 2, 2])


HAND_PREDS = np.array([0, 0, 2, 1, 2, 2, 0, 1])


def _hand_probs():
    probs = np.full((len(HAND_PREDS), 3), 0.1)
    probs[np.arange(len(HAND_PREDS)), HAND_PREDS] = 0.8
    return probs


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(11)
    true_probs = dirichlet_probs(rng, 100_000, 3)
    labels = sample_labels(rng, true_probs)
    assert M.expected_calibration_error(true_probs, labels) < 0.01
    sharp = true_probs**4
    sharp /= sharp.sum(axis=1, keepdims=True)
    assert M.expected_calibration_error(sharp, labels) > 0.1


def test_reliability_bins_consistent_with_ece():
    rng = np.random.default_rng(3)
    probs = dirichlet_probs(rng, 2000, 2, concentration=0.5)
    labels = sample_labels(rng, probs)
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
    assert rep["per_class"]["pit"]["recall_ci"] == pytest.approx(list(S.clopper_pearson(2, 4)))
    assert rep["per_class"]["clean"]["precision_ci"] == pytest.approx(list(S.clopper_pearson(2, 3)))
    assert rep["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 4 / 7) / 3)
    assert rep["pit_recall"] == pytest.approx(0.5)
    assert rep["pit_recall_ci"] == rep["per_class"]["pit"]["recall_ci"]
    assert rep["pit_miss_rate_upper"] == pytest.approx(S.cp_upper(2, 4))
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
    probs = dirichlet_probs(rng, 300, 3)
    labels = sample_labels(rng, probs)
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
        probs = np.round(dirichlet_probs(rng, n, c), 1) + 1e-3  # rounding makes ties
        probs /= probs.sum(axis=1, keepdims=True)
        labels = rng.integers(0, c, n)
        labels[:2] = [0, c - 1]
        preds = probs.argmax(axis=1)
        is_pit = labels == c - 1
        conf = probs.max(axis=1)
        one_hot = np.eye(c)[labels]
        rows = R.report_rows(
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
