"""Tests for pitguard.evaluate.results: the typed metrics.json, written and read back."""

from __future__ import annotations

import json

import numpy as np

from pitguard.evaluate import metrics as M
from pitguard.evaluate.results import ClassMetrics, EvalReport, RoutedMetrics
from tests.scores import CLASSES, dirichlet_probs, sample_labels


def _report(n: int = 200, seed: int = 1) -> EvalReport:
    rng = np.random.default_rng(seed)
    probs = dirichlet_probs(rng, n, 3)
    return M.eval_report(sample_labels(rng, probs), probs, CLASSES, n_boot=50, seed=2)


def _evaluation() -> dict:
    """What evaluate_run writes: what was evaluated around the metrics, a guard and a policy."""
    routes = np.random.default_rng(3).integers(0, 3, 200)
    labels = np.random.default_rng(4).integers(0, 3, 200)
    return {
        "run": "runs/a",
        "data": "runs/a/split.csv [test]",
        "source": "runs/a/split.csv",
        "part": "test",
        **_report().to_dict(),
        "model_sha256": "0" * 64,
        "input_guard": {"flagged": 1, "n": 200, "rate": 0.005, "rate_ci": [0.0, 0.03], "note": "x"},
        "policy": {
            **M.routed_metrics(routes, labels, CLASSES),
            "calibration_mode": "holdout",
            "guarantee": None,  # an evaluation given a policy without its record
            "policy_used": None,
        },
        "plain_summary": "Of 10,000 crops like these ...",
        "outputs": "runs/a/eval/test",
    }


def test_the_dict_is_classification_reports_keys_in_order():
    report = _report()
    d = report.to_dict()
    assert list(d)[:5] == ["n", "classes", "confidence", "n_boot", "seed"]
    assert list(d)[-1] == "ci_method" and "run" not in d and "policy" not in d
    assert isinstance(report.per_class["pit"], ClassMetrics)
    assert d["per_class"]["pit"]["recall"] == report.per_class["pit"].recall == report.pit_recall
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_an_evaluation_reads_and_writes_back_unchanged():
    d = _evaluation()
    report = EvalReport.from_dict(json.loads(json.dumps(d)))
    assert isinstance(report.policy, RoutedMetrics) and report.policy.guarantee is None
    assert report.input_guard is not None and report.input_guard.flagged == 1
    assert json.dumps(report.to_dict()) == json.dumps(d)  # same keys, values and order
    assert report.evaluated_part() == ("runs/a/split.csv", "test")


def test_routed_metrics_without_a_policy_record_write_none_of_its_keys():
    routes = np.array([0, 1, 2, 2])
    d = M.routed_metrics(routes, np.array([0, 2, 2, 0]), CLASSES)
    assert not {"calibration_mode", "guarantee", "policy_used"} & set(d)
    assert RoutedMetrics.from_dict(d).to_dict() == d


def test_an_older_file_reads_with_none_for_what_it_lacks():
    d = _evaluation()
    old = {
        k: v
        for k, v in d.items()
        if k not in ("source", "part", "model_sha256", "ece_n_bins", "pit_miss_rate_upper")
    }
    old["policy"] = {
        k: v for k, v in d["policy"].items() if k not in ("calibration_mode", "policy_used")
    }
    old["per_class"] = {
        name: {k: v for k, v in m.items() if k != "tp"} for name, m in d["per_class"].items()
    }
    report = EvalReport.from_dict(old)
    assert report.source is None and report.part is None and report.model_sha256 is None
    assert report.ece_n_bins is None and report.pit_miss_rate_upper is None
    assert report.per_class["pit"].tp is None and report.per_class["pit"].recall is not None
    assert report.policy is not None and report.policy.policy_used is None
    assert report.policy.calibration_mode is None and "guarantee" in report.to_dict()["policy"]
    # the part of a file older than "source" and "part" is read from its "data"
    assert report.evaluated_part() == ("runs/a/split.csv", "test")
    assert report.to_dict() == old  # what it lacked is not written back


def test_an_evaluation_without_guard_or_policy_writes_neither():
    d = {k: v for k, v in _evaluation().items() if k not in ("input_guard", "policy")}
    d.pop("plain_summary")
    report = EvalReport.from_dict(d)
    assert report.input_guard is None and report.policy is None
    assert report.to_dict() == d
