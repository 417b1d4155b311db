"""Every figure pitguard draws, on one Agg set-up: no pyplot global state, no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn import metrics as skm


class ChosenPoint(Protocol):
    """What the operating curve marks of the chosen thresholds (the decision's ``Thresholds``)."""

    @property
    def t_low(self) -> float: ...
    @property
    def t_high(self) -> float: ...
    @property
    def pit_miss_bound(self) -> float: ...
    @property
    def calib_maybe_rate(self) -> float: ...
    @property
    def n_pits(self) -> int: ...
    @property
    def n_clean(self) -> int: ...


def new_figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly, so pyplot's global state is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for pages that embed it)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    fig.clear()
    return buf.getvalue()


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    fig.clear()
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str], path: str | Path
) -> Path:
    """Counts (rows = true, columns = predicted) with the row share in brackets, as a PNG."""
    return save_png(confusion_figure(cm, classes), path)


def confusion_figure(cm: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str]):
    """The confusion matrix figure (for a PNG, or TensorBoard)."""
    cm = np.asarray(cm, dtype=int)
    row_total = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_total, out=np.zeros(cm.shape, dtype=float), where=row_total > 0)
    fig = new_figure(1.6 + 1.2 * len(classes), 1.2 + 1.1 * len(classes))
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
    return fig


def plot_roc_pr(labels_pit: np.ndarray, p_pit: np.ndarray, path: str | Path) -> Path:
    """ROC and precision-recall curves for pit (1) vs rest (0), side by side, as a PNG."""
    y = np.asarray(labels_pit).astype(int).reshape(-1)
    s = np.asarray(p_pit, dtype=float).reshape(-1)
    n_pos = int(y.sum())
    fig = new_figure(10, 4.5)
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
    return save_png(fig, path)


def plot_reliability(bins_before: dict, bins_after: dict | None, path: str | Path) -> Path:
    """Reliability diagram (accuracy vs mean confidence per bin) before and optionally after calibration."""
    fig = new_figure(5.5, 5.5)
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
    return save_png(fig, path)


def plot_operating_curve(curve: dict, chosen: ChosenPoint, path: str | Path) -> Path:
    """Write a PNG of the maybe rate against the certified pit-miss bound, chosen point marked."""
    fig = new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    bound = np.asarray(curve["pit_miss_bound"], dtype=np.float64)
    maybe = 100 * np.asarray(curve["maybe_rate"], dtype=np.float64)
    ax.step(bound, maybe, where="post", color="C0", label="best accuracy t_high per t_low")
    ax.scatter(
        [chosen.pit_miss_bound],
        [100 * chosen.calib_maybe_rate],
        color="C3",
        zorder=3,
        label=f"chosen: t_low={chosen.t_low:.4g}, t_high={chosen.t_high:.4g}",
    )
    ax.axvline(chosen.pit_miss_bound, color="C3", lw=0.8, ls=":")
    ax.set_xscale("log")
    conf = curve.get("confidence")
    conf_txt = f" at {100 * conf:g}% confidence" if conf is not None else ""
    ax.set_xlabel(f"pit-miss rate, upper bound{conf_txt}")
    ax.set_ylabel("maybe rate on calibration set (%)")
    ax.set_title(f"Operating curve ({chosen.n_pits} pits, {chosen.n_clean} clean)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_sweep(sweep: dict, path: str | Path) -> Path:
    """Accuracy, precision, recall, F1 and specificity against one threshold on p(pit)."""
    fig = new_figure(6, 4)
    ax = fig.subplots()
    t = [r["threshold"] for r in sweep["rows"]]
    for key in ("accuracy", "precision", "recall", "f1", "specificity"):
        ax.plot(t, [np.nan if r[key] is None else r[key] for r in sweep["rows"]], label=key)
    ax.axhline(
        sweep["min_recall"],
        color="grey",
        linestyle=":",
        label=f"recall floor {sweep['min_recall']}",
    )
    if sweep["best"]:
        ax.axvline(
            sweep["best"]["threshold"], color="black", linestyle="--", label="best F1 meeting floor"
        )
    ax.set_xlabel("threshold on p(pit)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def plot_history(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and val (train only for a run without a val part)."""
    fig = new_figure(9, 3.5)
    epochs = [h["epoch"] for h in history]
    ax1, ax2 = fig.subplots(1, 2)
    for ax, key, name in ((ax1, "loss", "loss"), (ax2, "accuracy", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        if all(f"val_{key}" in h for h in history):
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
    fig.tight_layout()
    return save_png(fig, path)
