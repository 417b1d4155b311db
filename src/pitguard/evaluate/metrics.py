"""Evaluation metrics, each with a 95% interval and its N (the figures are in ``plots``).

Intervals:

* proportions with a fixed denominator (per-class precision and recall) use the exact
  Clopper-Pearson interval, which stays honest at 0 or N events (a bootstrap collapses there);
* everything else (accuracy, balanced accuracy, F1, AUCs, log loss, Brier, ECE) uses a
  percentile bootstrap over items. One index matrix is drawn per report, so every metric is
  computed on the same resamples, and the per-resample statistics are vectorised with numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from pitguard.core.stats import (
    CONFIDENCE,
    bootstrap_index_blocks,
    clopper_pearson,
    cp_upper,
    finite_or_none,
    percentile_ci,
)
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


# --------------------------------------------------------------------------- vectorised stats
# Each takes arrays already indexed by a (B, N) resampling matrix and returns B values.


def _roc_auc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Row-wise ROC AUC via the Mann-Whitney rank sum (ties count one half, as in sklearn)."""
    n_pos = y.sum(axis=1).astype(float)
    n_neg = y.shape[1] - n_pos
    ranks = stats.rankdata(score, axis=1)
    rank_sum = np.where(y, ranks, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _average_precision_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Row-wise average precision, the same step-wise sum over distinct thresholds as sklearn."""
    b, n = y.shape
    order = np.argsort(-score, axis=1, kind="stable")
    s = np.take_along_axis(score, order, axis=1)
    ys = np.take_along_axis(y, order, axis=1).astype(float)
    tp = np.cumsum(ys, axis=1)
    precision = tp / np.arange(1, n + 1)
    # Precision is read at the last item of each group of tied scores (one threshold per group).
    group_end = np.ones((b, n), dtype=bool)
    group_end[:, :-1] = s[:, 1:] != s[:, :-1]
    end_pos = np.where(group_end, np.arange(n), n)
    end_pos = np.minimum.accumulate(end_pos[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(precision, end_pos, axis=1)
    n_pos = tp[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (ys * precision_at_end).sum(axis=1) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def _class_counts_rows(yt: np.ndarray, yp: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """Per resample and class: true positives, support and predicted counts, each (B, C)."""
    tp = np.stack([((yt == c) & (yp == c)).sum(axis=1) for c in range(n_classes)], axis=1)
    support = np.stack([(yt == c).sum(axis=1) for c in range(n_classes)], axis=1)
    predicted = np.stack([(yp == c).sum(axis=1) for c in range(n_classes)], axis=1)
    return tp.astype(float), support.astype(float), predicted.astype(float)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    valid = np.isfinite(x)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, np.where(valid, x, 0.0).sum(axis=1) / count, np.nan)


def _ece_rows(bins: np.ndarray, conf: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    b, n = bins.shape
    key = (np.arange(b)[:, None] * n_bins + bins).ravel()
    gap = np.bincount(key, weights=(correct - conf).ravel(), minlength=b * n_bins)
    return np.abs(gap.reshape(b, n_bins)).sum(axis=1) / n


def _report_rows(
    yt: np.ndarray,
    yp: np.ndarray,
    item_log_loss: np.ndarray,
    item_brier: np.ndarray,
    bins: np.ndarray,
    conf: np.ndarray,
    is_pit: np.ndarray | None,
    p_pit: np.ndarray | None,
    n_classes: int,
    n_bins: int,
) -> dict[str, np.ndarray]:
    """All bootstrapped statistics of classification_report for a block of resamples."""
    correct = (yt == yp).astype(float)
    tp, support, predicted = _class_counts_rows(yt, yp, n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    out = {
        "accuracy": correct.mean(axis=1),
        "balanced_accuracy": _nanmean_rows(recall),
        "macro_f1": _nanmean_rows(f1),
        "log_loss": item_log_loss.mean(axis=1),
        "brier": item_brier.mean(axis=1),
        "ece": _ece_rows(bins, conf, correct, n_bins),
    }
    for c in range(n_classes):
        out[f"f1_{c}"] = f1[:, c]
    if is_pit is not None and p_pit is not None:
        out["roc_auc"] = _roc_auc_rows(is_pit, p_pit)
        out["pr_auc"] = _average_precision_rows(is_pit, p_pit)
    return out


# --------------------------------------------------------------------------- report


def _ci(pair: tuple[float, float]) -> list[float | None]:
    return [finite_or_none(pair[0]), finite_or_none(pair[1])]


def classification_report(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str] | tuple[str, ...],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Every metric with its 95% interval and N, as a JSON-serialisable dict.

    Predictions are the argmax of probs. "pit" (which must be in classes) is the positive class
    for ROC/PR AUC and the pit recall; AUCs are None when only one of pit / not-pit is present.
    Precision and recall intervals are exact Clopper-Pearson; the rest are percentile bootstrap
    intervals over items from n_boot resamples shared by all metrics.
    """
    probs, labels = _check_probs(probs, labels)
    classes = [str(c) for c in classes]
    n, n_classes = probs.shape
    if len(classes) != n_classes:
        raise ValueError(f"{len(classes)} class names for {n_classes} probability columns")
    if POSITIVE_CLASS not in classes:
        raise ValueError(f"classes {classes} do not include {POSITIVE_CLASS!r}")
    if n == 0:
        raise ValueError("classification_report needs at least one item")
    pit = classes.index(POSITIVE_CLASS)
    class_ids = list(range(n_classes))
    n_bins = 15

    preds = probs.argmax(axis=1)
    cm = skm.confusion_matrix(labels, preds, labels=class_ids)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, preds, labels=class_ids, zero_division=np.nan
    )

    # Per-item quantities for the bootstrap.
    eps = np.finfo(float).eps
    item_log_loss = -np.log(np.clip(probs[np.arange(n), labels], eps, 1 - eps))
    item_brier = ((probs - np.eye(n_classes)[labels]) ** 2).sum(axis=1)
    conf = probs.max(axis=1)
    bins = _confidence_bins(conf, n_bins)
    is_pit = labels == pit
    p_pit = probs[:, pit]
    both_present = bool(is_pit.any() and (~is_pit).any())

    blocks: list[dict[str, np.ndarray]] = []
    for idx in bootstrap_index_blocks(n, n_boot, seed):
        blocks.append(
            _report_rows(
                labels[idx],
                preds[idx],
                item_log_loss[idx],
                item_brier[idx],
                bins[idx],
                conf[idx],
                is_pit[idx] if both_present else None,
                p_pit[idx] if both_present else None,
                n_classes,
                n_bins,
            )
        )
    boot = (
        {key: np.concatenate([blk[key] for blk in blocks]) for key in blocks[0]} if blocks else {}
    )

    def boot_ci(key: str) -> list[float | None]:
        if key not in boot:
            return [None, None]
        return _ci(percentile_ci(boot[key], CONFIDENCE))

    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "precision": finite_or_none(precision[c]),
            "precision_ci": _ci(clopper_pearson(tp[c], predicted[c]))
            if predicted[c]
            else [None, None],
            "recall": finite_or_none(recall[c]),
            "recall_ci": _ci(clopper_pearson(tp[c], support[c])) if support[c] else [None, None],
            "f1": finite_or_none(f1[c]),
            "f1_ci": boot_ci(f"f1_{c}"),
            "support": int(support[c]),
            "predicted": int(predicted[c]),
            "tp": int(tp[c]),
        }

    with warnings.catch_warnings():
        # Classes predicted but absent from labels are left out of the mean recall, as documented.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced_accuracy = skm.balanced_accuracy_score(labels, preds)
    n_correct = int(tp.sum())
    n_pit = int(support[pit])
    pit_missed = n_pit - int(tp[pit])
    report = {
        "n": int(n),
        "classes": classes,
        "confidence": CONFIDENCE,
        "n_boot": int(n_boot),
        "seed": int(seed),
        "accuracy": finite_or_none(n_correct / n),
        "accuracy_ci": boot_ci("accuracy"),
        "accuracy_ci_exact": _ci(clopper_pearson(n_correct, n)),
        "balanced_accuracy": finite_or_none(balanced_accuracy),
        "balanced_accuracy_ci": boot_ci("balanced_accuracy"),
        "macro_f1": finite_or_none(skm.f1_score(labels, preds, average="macro", zero_division=0)),
        "macro_f1_ci": boot_ci("macro_f1"),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "n_pit": n_pit,
        "roc_auc": finite_or_none(skm.roc_auc_score(is_pit, p_pit)) if both_present else None,
        "roc_auc_ci": boot_ci("roc_auc"),
        "pr_auc": finite_or_none(skm.average_precision_score(is_pit, p_pit))
        if both_present
        else None,
        "pr_auc_ci": boot_ci("pr_auc"),
        "log_loss": finite_or_none(skm.log_loss(labels, probs, labels=class_ids)),
        "log_loss_ci": boot_ci("log_loss"),
        "brier": finite_or_none(
            skm.brier_score_loss(labels, probs, labels=class_ids, scale_by_half=False)
        ),
        "brier_ci": boot_ci("brier"),
        "ece": finite_or_none(expected_calibration_error(probs, labels, n_bins=n_bins)),
        "ece_ci": boot_ci("ece"),
        "ece_n_bins": n_bins,
        "pit_recall": per_class[POSITIVE_CLASS]["recall"],
        "pit_recall_ci": per_class[POSITIVE_CLASS]["recall_ci"],
        "pit_missed": pit_missed,
        "pit_miss_rate": finite_or_none(pit_missed / n_pit) if n_pit else None,
        "pit_miss_rate_upper": finite_or_none(cp_upper(pit_missed, n_pit)) if n_pit else None,
        "ci_method": {
            "precision_ci, recall_ci, pit_recall_ci, accuracy_ci_exact": "Clopper-Pearson exact, two-sided",
            "pit_miss_rate_upper": "Clopper-Pearson exact, one-sided upper bound",
            "other *_ci": "percentile bootstrap over items, shared resamples",
        },
    }
    return report


def routed_metrics(
    routes: np.ndarray, labels: np.ndarray, classes: Sequence[str], confidence: float = CONFIDENCE
) -> dict:
    """Pit-miss, false-reject and maybe rates and accuracy on decided crops, each with an exact interval."""
    pit, clean = list(classes).index("pit"), list(classes).index("clean")
    is_pit, is_clean = labels == pit, labels == clean
    decided = routes != Route.MAYBE
    correct_decided = (is_pit & (routes == Route.PIT)) | (is_clean & (routes == Route.CLEAN))

    def rate(k: int, n: int) -> tuple[float | None, list[float]]:
        lo, hi = clopper_pearson(k, n, confidence)
        return (k / n if n else None), [lo, hi]

    miss, miss_ci = rate(int((is_pit & (routes == Route.CLEAN)).sum()), int(is_pit.sum()))
    fr, fr_ci = rate(int((is_clean & (routes == Route.PIT)).sum()), int(is_clean.sum()))
    maybe, maybe_ci = rate(int((~decided).sum()), len(routes))
    acc, acc_ci = rate(int((correct_decided & decided).sum()), int(decided.sum()))
    return {
        "n": len(routes),
        "n_pits": int(is_pit.sum()),
        "pits_routed_clean": int((is_pit & (routes == Route.CLEAN)).sum()),
        "pit_miss_rate": miss,
        "pit_miss_ci": miss_ci,
        "pit_miss_upper": cp_upper(
            int((is_pit & (routes == Route.CLEAN)).sum()), int(is_pit.sum()), confidence
        ),
        "false_reject_rate": fr,
        "false_reject_ci": fr_ci,
        "maybe_rate": maybe,
        "maybe_ci": maybe_ci,
        "accuracy_decided": acc,
        "accuracy_decided_ci": acc_ci,
        "routes": {r.label: int((routes == r).sum()) for r in Route},
        "interval": "exact Clopper-Pearson, 95%",
    }
