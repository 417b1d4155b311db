"""Evaluation metrics, each with a 95% interval and its N (the figures are in ``plots``).

Intervals:

* proportions with a fixed denominator (per-class precision and recall) use the exact
  Clopper-Pearson interval, which stays honest at 0 or N events (a bootstrap collapses there);
* everything else (accuracy, balanced accuracy, F1, AUCs, log loss, Brier, ECE) uses a
  percentile bootstrap over items. One index matrix is drawn per report, so every metric is
  computed on the same resamples, and the per-resample statistics are vectorised with numpy
  (``resampled``).

``eval_report`` returns the typed ``results.EvalReport``; ``classification_report`` its dict.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from pitguard.core.stats import (
    CONFIDENCE,
    bootstrap_index_blocks,
    clopper_pearson,
    cp_upper,
    finite_or_none,
    percentile_ci,
)
from pitguard.evaluate.resampled import report_rows
from pitguard.evaluate.results import POLICY_RECORD, ClassMetrics, EvalReport, RoutedMetrics
from pitguard.runtime.policy import Route

POSITIVE_CLASS = "pit"


# --------------------------------------------------------------------------- calibration


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs has {probs.shape[0]} rows but labels has {labels.shape[0]}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]")
    return probs, labels


def _confidence_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence for equal-width bins (lower, upper]; 0 goes to the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (count / N) * |accuracy - confidence|."""
    probs, labels = _check_probs(probs, labels)
    if labels.size == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    b = _confidence_bins(conf, n_bins)
    gap = np.bincount(b, weights=correct, minlength=n_bins) - np.bincount(
        b, weights=conf, minlength=n_bins
    )
    return float(np.abs(gap).sum() / labels.size)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Per-bin mean confidence, accuracy and count of the top label, for a reliability diagram.

    Empty bins have confidence and accuracy None.
    """
    probs, labels = _check_probs(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    b = _confidence_bins(conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    sum_conf = np.bincount(b, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(b, weights=correct, minlength=n_bins)
    mean_conf = [float(s / c) if c else None for s, c in zip(sum_conf, count, strict=True)]
    mean_acc = [float(s / c) if c else None for s, c in zip(sum_acc, count, strict=True)]
    return {
        "bin_lower": [float(x) for x in edges[:-1]],
        "bin_upper": [float(x) for x in edges[1:]],
        "confidence": mean_conf,
        "accuracy": mean_acc,
        "count": [int(c) for c in count],
    }


# --------------------------------------------------------------------------- report


def _ci(pair: tuple[float, float]) -> list[float | None]:
    return [finite_or_none(pair[0]), finite_or_none(pair[1])]


def _exact_ci(k: int, n: int) -> list[float | None]:
    """Clopper-Pearson interval of k in n, or no interval for n = 0."""
    return _ci(clopper_pearson(k, n)) if n else [None, None]


class _Boot:
    """Percentile intervals of the bootstrapped statistics; [None, None] for one not drawn."""

    def __init__(self, stats: dict[str, np.ndarray]) -> None:
        self.stats = stats

    def ci(self, key: str) -> list[float | None]:
        if key not in self.stats:
            return [None, None]
        return _ci(percentile_ci(self.stats[key], CONFIDENCE))


def _checked_classes(probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    if len(names) != probs.shape[1]:
        raise ValueError(f"{len(names)} class names for {probs.shape[1]} probability columns")
    if POSITIVE_CLASS not in names:
        raise ValueError(f"classes {names} do not include {POSITIVE_CLASS!r}")
    if probs.shape[0] == 0:
        raise ValueError("classification_report needs at least one item")
    return names


def _bootstrap(
    labels: np.ndarray, probs: np.ndarray, pit: int, n_boot: int, seed: int, n_bins: int
) -> _Boot:
    """Every bootstrapped statistic over the same n_boot resamples of the items."""
    n, n_classes = probs.shape
    preds = probs.argmax(axis=1)
    eps = np.finfo(float).eps
    item_log_loss = -np.log(np.clip(probs[np.arange(n), labels], eps, 1 - eps))
    item_brier = ((probs - np.eye(n_classes)[labels]) ** 2).sum(axis=1)
    conf = probs.max(axis=1)
    bins = _confidence_bins(conf, n_bins)
    is_pit = labels == pit
    both_present = bool(is_pit.any() and (~is_pit).any())  # else no AUC
    blocks = [
        report_rows(
            labels[idx],
            preds[idx],
            item_log_loss[idx],
            item_brier[idx],
            bins[idx],
            conf[idx],
            is_pit[idx] if both_present else None,
            probs[:, pit][idx] if both_present else None,
            n_classes,
            n_bins,
        )
        for idx in bootstrap_index_blocks(n, n_boot, seed)
    ]
    if not blocks:
        return _Boot({})
    return _Boot({key: np.concatenate([blk[key] for blk in blocks]) for key in blocks[0]})


def _per_class(
    labels: np.ndarray, preds: np.ndarray, classes: list[str], cm: np.ndarray, boot: _Boot
) -> dict[str, ClassMetrics]:
    """Precision and recall with exact intervals, F1 with a bootstrap one, for each class."""
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, preds, labels=list(range(len(classes))), zero_division=np.nan
    )
    return {
        name: ClassMetrics(
            precision=finite_or_none(precision[c]),
            precision_ci=_exact_ci(tp[c], predicted[c]),
            recall=finite_or_none(recall[c]),
            recall_ci=_exact_ci(tp[c], support[c]),
            f1=finite_or_none(f1[c]),
            f1_ci=boot.ci(f"f1_{c}"),
            support=int(support[c]),
            predicted=int(predicted[c]),
            tp=int(tp[c]),
        )
        for c, name in enumerate(classes)
    }


def _argmax_metrics(labels: np.ndarray, preds: np.ndarray, cm: np.ndarray, boot: _Boot) -> dict:
    """Accuracy, balanced accuracy and macro F1 of the argmax predictions (EvalReport fields)."""
    with warnings.catch_warnings():
        # Classes predicted but absent from labels are left out of the mean recall, as documented.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced_accuracy = skm.balanced_accuracy_score(labels, preds)
    n, n_correct = len(labels), int(np.diag(cm).sum())
    return {
        "accuracy": finite_or_none(n_correct / n),
        "accuracy_ci": boot.ci("accuracy"),
        "accuracy_ci_exact": _ci(clopper_pearson(n_correct, n)),
        "balanced_accuracy": finite_or_none(balanced_accuracy),
        "balanced_accuracy_ci": boot.ci("balanced_accuracy"),
        "macro_f1": finite_or_none(skm.f1_score(labels, preds, average="macro", zero_division=0)),
        "macro_f1_ci": boot.ci("macro_f1"),
    }


def _probability_metrics(
    labels: np.ndarray, probs: np.ndarray, pit: int, boot: _Boot, n_bins: int
) -> dict:
    """Pit ROC and PR AUC (None unless both pits and others are present), log loss, Brier, ECE."""
    class_ids = list(range(probs.shape[1]))
    is_pit, p_pit = labels == pit, probs[:, pit]
    both_present = bool(is_pit.any() and (~is_pit).any())
    brier = skm.brier_score_loss(labels, probs, labels=class_ids, scale_by_half=False)
    return {
        "roc_auc": finite_or_none(skm.roc_auc_score(is_pit, p_pit)) if both_present else None,
        "roc_auc_ci": boot.ci("roc_auc"),
        "pr_auc": (
            finite_or_none(skm.average_precision_score(is_pit, p_pit)) if both_present else None
        ),
        "pr_auc_ci": boot.ci("pr_auc"),
        "log_loss": finite_or_none(skm.log_loss(labels, probs, labels=class_ids)),
        "log_loss_ci": boot.ci("log_loss"),
        "brier": finite_or_none(brier),
        "brier_ci": boot.ci("brier"),
        "ece": finite_or_none(expected_calibration_error(probs, labels, n_bins=n_bins)),
        "ece_ci": boot.ci("ece"),
        "ece_n_bins": n_bins,
    }


def _pit_metrics(pit: ClassMetrics) -> dict:
    """Pit recall and the pits missed by the argmax, with an exact upper bound on the miss rate."""
    n_pit, missed = pit.support or 0, (pit.support or 0) - (pit.tp or 0)
    return {
        "pit_recall": pit.recall,
        "pit_recall_ci": pit.recall_ci,
        "pit_missed": missed,
        "pit_miss_rate": finite_or_none(missed / n_pit) if n_pit else None,
        "pit_miss_rate_upper": finite_or_none(cp_upper(missed, n_pit)) if n_pit else None,
    }


CI_METHOD = {
    "precision_ci, recall_ci, pit_recall_ci, accuracy_ci_exact": "Clopper-Pearson exact, two-sided",
    "pit_miss_rate_upper": "Clopper-Pearson exact, one-sided upper bound",
    "other *_ci": "percentile bootstrap over items, shared resamples",
}


def eval_report(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> EvalReport:
    """Every metric with its 95% interval and N.

    Predictions are the argmax of probs. "pit" (which must be in classes) is the positive class
    for ROC/PR AUC and the pit recall; AUCs are None when only one of pit / not-pit is present.
    Precision and recall intervals are exact Clopper-Pearson; the rest are percentile bootstrap
    intervals over items from n_boot resamples shared by all metrics.
    """
    probs, labels = _check_probs(probs, labels)
    names = _checked_classes(probs, classes)
    pit, n_bins = names.index(POSITIVE_CLASS), 15
    preds = probs.argmax(axis=1)
    cm = skm.confusion_matrix(labels, preds, labels=list(range(len(names))))
    boot = _bootstrap(labels, probs, pit, n_boot, seed, n_bins)
    per_class = _per_class(labels, preds, names, cm, boot)
    return EvalReport(
        n=len(labels),
        classes=names,
        confidence=CONFIDENCE,
        n_boot=int(n_boot),
        seed=int(seed),
        **_argmax_metrics(labels, preds, cm, boot),
        per_class=per_class,
        confusion_matrix=cm.astype(int).tolist(),
        n_pit=int(cm.sum(axis=1)[pit]),
        **_probability_metrics(labels, probs, pit, boot, n_bins),
        **_pit_metrics(per_class[POSITIVE_CLASS]),
        ci_method=dict(CI_METHOD),
    )


def classification_report(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """``eval_report`` as the JSON-serialisable dict metrics.json holds."""
    return eval_report(labels, probs, classes, n_boot, seed).to_dict()


def routed(
    routes: np.ndarray, labels: np.ndarray, classes: Sequence[str], confidence: float = CONFIDENCE
) -> RoutedMetrics:
    """Pit-miss, false-reject and maybe rates and accuracy on decided crops, each with an exact interval."""
    pit, clean = list(classes).index("pit"), list(classes).index("clean")
    is_pit, is_clean = labels == pit, labels == clean
    decided = routes != Route.MAYBE
    correct_decided = (is_pit & (routes == Route.PIT)) | (is_clean & (routes == Route.CLEAN))

    def rate(k: int, n: int) -> tuple[float | None, list[float]]:
        lo, hi = clopper_pearson(k, n, confidence)
        return (k / n if n else None), [lo, hi]

    pits_clean = int((is_pit & (routes == Route.CLEAN)).sum())
    miss, miss_ci = rate(pits_clean, int(is_pit.sum()))
    fr, fr_ci = rate(int((is_clean & (routes == Route.PIT)).sum()), int(is_clean.sum()))
    maybe, maybe_ci = rate(int((~decided).sum()), len(routes))
    acc, acc_ci = rate(int((correct_decided & decided).sum()), int(decided.sum()))
    return RoutedMetrics(
        n=len(routes),
        n_pits=int(is_pit.sum()),
        pits_routed_clean=pits_clean,
        pit_miss_rate=miss,
        pit_miss_ci=miss_ci,
        pit_miss_upper=cp_upper(pits_clean, int(is_pit.sum()), confidence),
        false_reject_rate=fr,
        false_reject_ci=fr_ci,
        maybe_rate=maybe,
        maybe_ci=maybe_ci,
        accuracy_decided=acc,
        accuracy_decided_ci=acc_ci,
        routes={r.label: int((routes == r).sum()) for r in Route},
        interval="exact Clopper-Pearson, 95%",
        absent=POLICY_RECORD,  # the policy's record is the evaluation's to add
    )


def routed_metrics(
    routes: np.ndarray, labels: np.ndarray, classes: Sequence[str], confidence: float = CONFIDENCE
) -> dict:
    """``routed`` as the dict an evaluation's ``policy`` holds."""
    return routed(routes, labels, classes, confidence).to_dict()
