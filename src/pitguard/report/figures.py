"""The figures the report draws itself: the most-wrong crops grid and latency against accuracy.

Drawn on ``pitguard.evaluate.plots``' Agg set-up and returned as PNG bytes, for the page to embed.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pitguard.evaluate.plots import new_figure, png_bytes

WRONG_PER_CLASS = 8  # crops of each class in the "most wrong" grid


def wrong_crops(
    predictions: Path, roots: list[Path], per_class: int = WRONG_PER_CLASS
) -> list[dict]:
    """Pits with the lowest p_pit (false clean first), then clean crops with the highest.

    Each crop's file is its path joined to the first of ROOTS under which the first crop exists.
    """
    with predictions.open(newline="") as fh:
        rows: list[dict] = [
            # files written before the one schema named the true class "label"
            {**r, "p_pit": float(r["p_pit"]), "label": r.get("true_label", r.get("label"))}
            for r in csv.DictReader(fh)
        ]
    root = next((r for r in roots if rows and (r / rows[0]["path"]).is_file()), roots[0])
    for r in rows:
        r["file"] = root / r["path"]
    pits = sorted((r for r in rows if r["label"] == "pit"), key=lambda r: r["p_pit"])
    clean = sorted((r for r in rows if r["label"] == "clean"), key=lambda r: -r["p_pit"])
    return pits[:per_class] + clean[:per_class]


def crops_grid_png(crops: list[dict], columns: int = 8) -> bytes:
    """A labelled grid of crops (title red where the argmax prediction is wrong)."""
    import numpy as np
    from PIL import Image

    rows = max(1, math.ceil(len(crops) / columns))
    fig = new_figure(1.6 * columns, 1.9 * rows)
    for i, crop in enumerate(crops):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        try:
            with Image.open(crop["file"]) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
        except OSError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=7)
        wrong = crop.get("predicted") != crop["label"]
        # a second fact after the true class: the route given, or a caller's own note
        note = crop.get("note") or (f"routed {crop['route']}" if crop.get("route") else "")
        ax.set_title(
            f"true {crop['label']}{', ' + note if note else ''}\np(pit) {crop['p_pit']:.3f}",
            fontsize=7,
            color="#b00020" if wrong else "black",
        )
    return png_bytes(fig)


def latency_accuracy_png(records: list[dict]) -> bytes | None:
    """Accuracy (with its 95% interval) against CPU ms per crop, one labelled point per run."""
    points = [r for r in records if r["latency_cpu"] and r["test"] and r["test"]["accuracy"]]
    if not points:
        return None
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for r in points:
        x = r["latency_cpu"]["ms_per_crop"]
        y = 100 * r["test"]["accuracy"]
        lo, hi = r["test"]["accuracy_ci"] or (None, None)
        yerr = [[y - 100 * lo], [100 * hi - y]] if lo is not None and hi is not None else None
        ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(r["run"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"CPU ms per crop ({points[0]['latency_cpu']['bench_file']})")
    ax.set_ylabel("test accuracy, % (95% CI)")
    ax.set_title("latency against accuracy")
    ax.grid(alpha=0.3)
    return png_bytes(fig)
