"""Bootstrap statistics of an evaluation, vectorised over a (B, N) matrix of resamples.

Each function takes arrays already indexed by the resampling matrix and returns B values, one
per resample, so every metric of a report is computed on the same resamples in a few numpy calls.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


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


def report_rows(
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
