"""Evaluation metrics, each with a 95% interval and its N, plus the diagnostic plots.

Intervals:

* proportions with a fixed denominator (per-class precision and recall) use the exact
  Clopper-Pearson interval, which stays honest at 0 or N events (a bootstrap collapses there);
* everything else (accuracy, balanced accuracy, F1, AUCs, log loss, Brier, ECE) uses a
  percentile bootstrap over items. One index matrix is drawn per report, so every metric is
  computed on the same resamples, and the per-resample statistics are vectorised with numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

CONFIDENCE = 0.95
POSITIVE_CLASS = "pit"
# Upper bound on the number of elements of one (resamples x items) block held in memory.
_BLOCK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------- exact intervals


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval for k successes out of n; n == 0 -> (0, 1)."""
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def cp_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided exact upper bound: the largest p with P(Bin(n, p) <= k) >= 1 - confidence.

    n == 0 -> 1.0. For k == 0 this is 1 - (1 - confidence) ** (1 / n) (the "rule of three").
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0 or k == n:
        return 1.0
    return float(stats.beta.ppf(confidence, k + 1, n - k))


# --------------------------------------------------------------------------- bootstrap


def _bootstrap_index_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (rows, n) blocks of resampling indices, n_boot rows in all, from one seeded stream."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite values; (nan, nan) when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    stat_fn: Callable[..., Any],
    arrays: tuple[np.ndarray, ...],
    n_boot: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    *,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of stat_fn(*arrays), resampling rows jointly across arrays.

    With vectorized=True, stat_fn receives each array indexed by a (B, N) index matrix, i.e.
    shape (B, N, ...), and must return B values; otherwise it is called once per resample.
    Resamples whose statistic is nan are dropped; (nan, nan) if none remain.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    if n == 0 or n_boot < 1:
        return float("nan"), float("nan")
    values = []
    for idx in _bootstrap_index_blocks(n, n_boot, seed):
        if vectorized:
            out = np.asarray(stat_fn(*(a[idx] for a in arrays)), dtype=float).reshape(-1)
            if out.shape[0] != idx.shape[0]:
                raise ValueError(
                    f"vectorized stat_fn returned {out.shape[0]} values for {idx.shape[0]} resamples"
                )
            values.append(out)
        else:
            values.append(np.array([float(stat_fn(*(a[row] for a in arrays))) for row in idx]))
    return _percentile_ci(np.concatenate(values), confidence)


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


def _num(x: Any) -> float | None:
    """A plain float, or None for nan/inf/None (keeps the report strict JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _ci(pair: tuple[float, float]) -> list[float | None]:
    return [_num(pair[0]), _num(pair[1])]


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
    for idx in _bootstrap_index_blocks(n, n_boot, seed):
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
        return _ci(_percentile_ci(boot[key], CONFIDENCE))

    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "precision": _num(precision[c]),
            "precision_ci": _ci(clopper_pearson(tp[c], predicted[c]))
            if predicted[c]
            else [None, None],
            "recall": _num(recall[c]),
            "recall_ci": _ci(clopper_pearson(tp[c], support[c])) if support[c] else [None, None],
            "f1": _num(f1[c]),
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
        "accuracy": _num(n_correct / n),
        "accuracy_ci": boot_ci("accuracy"),
        "accuracy_ci_exact": _ci(clopper_pearson(n_correct, n)),
        "balanced_accuracy": _num(balanced_accuracy),
        "balanced_accuracy_ci": boot_ci("balanced_accuracy"),
        "macro_f1": _num(skm.f1_score(labels, preds, average="macro", zero_division=0)),
        "macro_f1_ci": boot_ci("macro_f1"),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "n_pit": n_pit,
        "roc_auc": _num(skm.roc_auc_score(is_pit, p_pit)) if both_present else None,
        "roc_auc_ci": boot_ci("roc_auc"),
        "pr_auc": _num(skm.average_precision_score(is_pit, p_pit)) if both_present else None,
        "pr_auc_ci": boot_ci("pr_auc"),
        "log_loss": _num(skm.log_loss(labels, probs, labels=class_ids)),
        "log_loss_ci": boot_ci("log_loss"),
        "brier": _num(skm.brier_score_loss(labels, probs, labels=class_ids, scale_by_half=False)),
        "brier_ci": boot_ci("brier"),
        "ece": _num(expected_calibration_error(probs, labels, n_bins=n_bins)),
        "ece_ci": boot_ci("ece"),
        "ece_n_bins": n_bins,
        "pit_recall": per_class[POSITIVE_CLASS]["recall"],
        "pit_recall_ci": per_class[POSITIVE_CLASS]["recall_ci"],
        "pit_missed": pit_missed,
        "pit_miss_rate": _num(pit_missed / n_pit) if n_pit else None,
        "pit_miss_rate_upper": _num(cp_upper(pit_missed, n_pit)) if n_pit else None,
        "ci_method": {
            "precision_ci, recall_ci, pit_recall_ci, accuracy_ci_exact": "Clopper-Pearson exact, two-sided",
            "pit_miss_rate_upper": "Clopper-Pearson exact, one-sided upper bound",
            "other *_ci": "percentile bootstrap over items, shared resamples",
        },
    }
    return report


# --------------------------------------------------------------------------- paired comparisons


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test: two-sided binomial test (p = 1/2) on the discordant pairs."""
    a = np.asarray(correct_a).astype(bool).reshape(-1)
    b = np.asarray(correct_b).astype(bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.size} items but correct_b has {b.size}")
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    discordant = a_only + b_only
    p = float(stats.binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "n": int(a.size),
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "both_correct": int((a & b).sum()),
        "both_wrong": int((~a & ~b).sum()),
        "p_value": min(p, 1.0),
    }


def paired_bootstrap_diff(
    values_a: np.ndarray,
    values_b: np.ndarray,
    n_boot: int = 2000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """Bootstrap interval of mean(a) - mean(b) for per-item values measured on the same items."""
    a = np.asarray(values_a, dtype=float).reshape(-1)
    b = np.asarray(values_b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"values_a has {a.size} items but values_b has {b.size}")
    diff = a - b
    lo, hi = bootstrap_ci(
        lambda d: d.mean(axis=1),
        (diff,),
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        vectorized=True,
    )
    point = float(diff.mean()) if diff.size else float("nan")
    within = not (np.isfinite(lo) and np.isfinite(hi)) or bool(lo <= 0.0 <= hi)
    return {
        "n": int(a.size),
        "diff": _num(point),
        "ci": [_num(lo), _num(hi)],
        "confidence": confidence,
        "within_noise": within,
    }


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly, so pyplot's global state is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    fig.clear()
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str], path: str | Path
) -> Path:
    """Counts (rows = true, columns = predicted) with the row share in brackets, as a PNG."""
    cm = np.asarray(cm, dtype=int)
    row_total = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_total, out=np.zeros(cm.shape, dtype=float), where=row_total > 0)
    fig = _new_figure(1.6 + 1.2 * len(classes), 1.2 + 1.1 * len(classes))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes))
    ax.set_yticks(ticks, labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n({share[i, j]:.0%})", ha="center", va="center", color=color)
    ax.set_title(f"confusion matrix (N={int(cm.sum())})")
    return _save(fig, path)


def plot_roc_pr(labels_pit: np.ndarray, p_pit: np.ndarray, path: str | Path) -> Path:
    """ROC and precision-recall curves for pit (1) vs rest (0), side by side, as a PNG."""
    y = np.asarray(labels_pit).astype(int).reshape(-1)
    s = np.asarray(p_pit, dtype=float).reshape(-1)
    n_pos = int(y.sum())
    fig = _new_figure(10, 4.5)
    ax_roc, ax_pr = fig.subplots(1, 2)
    if 0 < n_pos < y.size:
        fpr, tpr, _ = skm.roc_curve(y, s)
        prec, rec, _ = skm.precision_recall_curve(y, s)
        ax_roc.plot(fpr, tpr, label=f"AUC = {skm.roc_auc_score(y, s):.3f}")
        ax_pr.step(rec, prec, where="post", label=f"AP = {skm.average_precision_score(y, s):.3f}")
        ax_pr.axhline(n_pos / y.size, color="grey", linestyle=":", label="prevalence")
        ax_roc.legend(loc="lower right")
        ax_pr.legend(loc="lower left")
    else:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "only one class present", ha="center", va="center")
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax_roc.set(xlabel="false positive rate", ylabel="pit recall (TPR)", title="ROC, pit vs rest")
    ax_pr.set(xlabel="pit recall", ylabel="pit precision", title="precision-recall, pit vs rest")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    fig.suptitle(f"N={y.size}, pit={n_pos}")
    return _save(fig, path)


def plot_reliability(bins_before: dict, bins_after: dict | None, path: str | Path) -> Path:
    """Reliability diagram (accuracy vs mean confidence per bin) before and optionally after calibration."""
    fig = _new_figure(5.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for bins, name, marker in ((bins_before, "before", "o"), (bins_after, "after", "s")):
        if bins is None:
            continue
        pts = [
            (c, a, k)
            for c, a, k in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True)
            if k and c is not None and a is not None
        ]
        if not pts:
            continue
        conf, acc, count = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        size = 20 + 200 * count / count.max()
        (line,) = ax.plot(conf, acc, marker=marker, label=f"{name} (N={int(count.sum())})")
        ax.scatter(conf, acc, s=size, alpha=0.3, color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="mean confidence", ylabel="accuracy")
    ax.set_title("reliability (marker area ~ bin count)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def routed_metrics(
    routes: np.ndarray, labels: np.ndarray, classes: Sequence[str], confidence: float = CONFIDENCE
) -> dict:
    """Pit-miss, false-reject and maybe rates and accuracy on decided crops, each with an exact interval."""
    pit, clean = list(classes).index("pit"), list(classes).index("clean")
    is_pit, is_clean = labels == pit, labels == clean
    decided = routes != 1
    correct_decided = (is_pit & (routes == 2)) | (is_clean & (routes == 0))

    def rate(k: int, n: int) -> tuple[float | None, list[float]]:
        lo, hi = clopper_pearson(k, n, confidence)
        return (k / n if n else None), [lo, hi]

    miss, miss_ci = rate(int((is_pit & (routes == 0)).sum()), int(is_pit.sum()))
    fr, fr_ci = rate(int((is_clean & (routes == 2)).sum()), int(is_clean.sum()))
    maybe, maybe_ci = rate(int((~decided).sum()), len(routes))
    acc, acc_ci = rate(int((correct_decided & decided).sum()), int(decided.sum()))
    return {
        "n": len(routes),
        "n_pits": int(is_pit.sum()),
        "pits_routed_clean": int((is_pit & (routes == 0)).sum()),
        "pit_miss_rate": miss,
        "pit_miss_ci": miss_ci,
        "pit_miss_upper": cp_upper(
            int((is_pit & (routes == 0)).sum()), int(is_pit.sum()), confidence
        ),
        "false_reject_rate": fr,
        "false_reject_ci": fr_ci,
        "maybe_rate": maybe,
        "maybe_ci": maybe_ci,
        "accuracy_decided": acc,
        "accuracy_decided_ci": acc_ci,
        "routes": {
            name: int((routes == i).sum()) for i, name in enumerate(("clean", "maybe", "pit"))
        },
        "interval": "exact Clopper-Pearson, 95%",
    }
