"""Audit a dataset: counts, image statistics, unreadable and odd files, duplicates and leakage."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pitguard.data.layout import DatasetIndex
from pitguard.data.load import Crops, DecodeOptions, load_crops, unreadable_reason

# Near duplicates: RMS difference of 16x16 block-mean thumbnails, in grey levels (0-255).
# On the shared crops exact pairs sit at 0, the next-nearest distinct crops at >= 4.9.
NEAR_DUP_POOL = 8
NEAR_DUP_THRESHOLD = 3.0


def pixel_digests(images: torch.Tensor) -> list[str]:
    """A digest of each crop's pixels: equal digests mean identical crops."""
    arr = images.numpy()
    return [hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest() for a in arr]


def _union_groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[root(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def exact_duplicate_groups(images: torch.Tensor) -> list[list[int]]:
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(pixel_digests(images)):
        by_digest[d].append(i)
    return [g for g in by_digest.values() if len(g) > 1]


def near_duplicate_groups(
    images: torch.Tensor, threshold: float = NEAR_DUP_THRESHOLD, chunk: int = 1024
) -> list[list[int]]:
    """Groups of crops whose thumbnails differ by at most ``threshold`` grey levels RMS."""
    if len(images) < 2:
        return []
    thumbs = F.avg_pool2d(images.float(), NEAR_DUP_POOL).flatten(1)
    scale = thumbs.shape[1] ** 0.5
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(thumbs), chunk):
        block = torch.cdist(thumbs[start : start + chunk], thumbs) / scale
        rows, cols = torch.nonzero(block <= threshold, as_tuple=True)
        rows = rows + start
        keep = rows < cols
        pairs += list(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    return _union_groups(len(thumbs), pairs)


def duplicate_groups(crops: Crops, near_threshold: float = NEAR_DUP_THRESHOLD) -> list[list[int]]:
    """Exact and near duplicates and manifest groups merged: what a split must keep together."""
    pairs = [(g[0], j) for g in exact_duplicate_groups(crops.images) for j in g[1:]]
    pairs += [(g[0], j) for g in near_duplicate_groups(crops.images, near_threshold) for j in g[1:]]
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, grp in enumerate(crops.groups):
        if grp:
            by_group[grp].append(i)
    pairs += [(g[0], j) for g in by_group.values() for j in g[1:]]
    return _union_groups(len(crops), pairs)


def _sizes_and_modes(index: DatasetIndex) -> tuple[Counter, Counter]:
    sizes: Counter = Counter()
    modes: Counter = Counter()
    for it in index.items:
        try:
            if unreadable_reason(os.stat(it.path)):  # a pipe or device is never opened
                continue
            with Image.open(it.path) as img:
                sizes[f"{img.size[0]}x{img.size[1]}"] += 1
                modes[img.mode] += 1
        except Exception:  # counted among the unreadable by the decoder
            continue
    return sizes, modes


def _summary(hist: np.ndarray) -> dict:
    """Min, max, mean and sample std of uint8 values from their 256-bin histogram (exact)."""
    n = int(hist.sum())
    if n == 0:
        return {"n": 0, "min": 0, "max": 0, "mean": 0.0, "std": 0.0}
    levels = np.arange(hist.size, dtype=np.float64)
    present = np.flatnonzero(hist)
    mean = float((hist * levels).sum() / n)
    var = float((hist * (levels - mean) ** 2).sum() / (n - 1)) if n > 1 else 0.0
    return {
        "n": n,
        "min": int(present[0]),
        "max": int(present[-1]),
        "mean": round(mean, 3),
        "std": round(var**0.5, 3),
    }


def channel_stats(images: torch.Tensor) -> list[dict]:
    """Per-channel min, max, mean and std over all pixels and over the cherry (non-background).

    Read off per-channel histograms of the uint8 values: exact, and no float copy of the stack.
    Background pixels are 0 in every channel, so the cherry's histogram is the channel's with
    the background count taken from bin 0.
    """
    background = int((images.amax(dim=1) == 0).sum()) if images.numel() else 0
    out = []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].flatten(), minlength=256).numpy()
        every = _summary(hist)
        hist[0] -= background
        cherry = _summary(hist)
        out.append(
            {
                "channel": "RGB"[c] if images.shape[1] == 3 else str(c),
                "min": every["min"],
                "max": every["max"],
                "mean": every["mean"],
                "std": every["std"],
                "mean_inside": cherry["mean"],
                "std_inside": cherry["std"],
                "constant": bool(every["n"] and every["min"] == every["max"]),
            }
        )
    return out


def audit(data: str | Path | DatasetIndex, opts: DecodeOptions | None = None, **find_kw) -> dict:
    """Everything the audit reports, as a JSON-ready dict with paths relative to the dataset root."""
    from pitguard.data.layout import find_dataset

    index = data if isinstance(data, DatasetIndex) else find_dataset(data, **find_kw)
    crops = load_crops(index, opts)
    sizes, modes = _sizes_and_modes(index)
    has_splits = any(s is not None for s in crops.splits)

    def names(group: list[int]) -> list[str]:
        return sorted(crops.paths[i] for i in group)

    exact = exact_duplicate_groups(crops.images)
    near = near_duplicate_groups(crops.images)
    labels = crops.labels.tolist()
    conflicts = [g for g in exact + near if len({labels[i] for i in g}) > 1]
    cross = [g for g in exact if has_splits and len({crops.splits[i] for i in g}) > 1]
    near_cross = [g for g in near if has_splits and len({crops.splits[i] for i in g}) > 1]

    classes = {c: 0 for c in index.classes}
    splits: dict[str, dict[str, int]] = {}
    for lab, split in zip(labels, crops.splits, strict=True):
        classes[index.classes[lab]] += 1
        if has_splits:
            per = splits.setdefault(split or "-", {c: 0 for c in index.classes})
            per[index.classes[lab]] += 1
    background = (
        float((crops.images.amax(dim=1) == 0).float().mean()) if len(crops) else float("nan")
    )
    report = {
        "root": str(index.root),
        "layout": index.layout,
        "class_mapping": index.class_mapping,
        "n_files": len(index.items),
        "n_loaded": len(crops),
        "classes": classes,
        "sizes": dict(sizes),
        "modes": dict(modes),
        "channels": channel_stats(crops.images) if len(crops) else [],
        "background_fraction": round(background, 4),
        "unreadable": [
            {"path": p.path, "error": p.reason} for p in crops.problems if p.kind == "unreadable"
        ],
        "odd": [
            {"path": p.path, "issue": p.reason, "action": p.action}
            for p in crops.problems
            if p.kind == "odd"
        ],
        "ignored_files": [index.relpath(p) for p in index.ignored],
        "duplicates": [names(g) for g in exact],
        "near_duplicates": [names(g) for g in near],
        "near_duplicate_method": {
            "method": f"RMS difference of block-mean thumbnails, each pixel the mean of a "
            f"{NEAR_DUP_POOL}x{NEAR_DUP_POOL} block (16x16 thumbnails for 128 px crops)",
            "threshold_grey_levels": NEAR_DUP_THRESHOLD,
        },
        "cross_split_duplicates": [names(g) for g in cross],
        "cross_split_near_duplicates": [names(g) for g in near_cross],
        "label_conflicts": [names(g) for g in conflicts],
    }
    if has_splits:
        report["splits"] = splits
    return report


def format_audit(report: dict) -> str:
    """A short human summary of an audit report."""
    lines = [f"{report['root']}  ({report['layout']}, {report['n_files']} files)"]
    lines.append("classes: " + ", ".join(f"{k} {v}" for k, v in report["classes"].items()))
    for split, per in report.get("splits", {}).items():
        lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    lines.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in report["sizes"].items()))
    lines.append("modes: " + ", ".join(f"{k} ({v})" for k, v in report["modes"].items()))
    for ch in report["channels"]:
        flag = "  CONSTANT" if ch["constant"] else ""
        lines.append(
            f"channel {ch['channel']}: mean {ch['mean']:.1f} (inside cherry {ch['mean_inside']:.1f}), "
            f"range {ch['min']}-{ch['max']}{flag}"
        )
    lines.append(f"masked background: {100 * report['background_fraction']:.1f}% of pixels")
    lines.append(
        f"unreadable: {len(report['unreadable'])}, odd: {len(report['odd'])}, "
        f"exact duplicate groups: {len(report['duplicates'])}, "
        f"near-duplicate groups: {len(report['near_duplicates'])} "
        f"(<= {report['near_duplicate_method']['threshold_grey_levels']} grey levels RMS)"
    )
    lines.append(
        f"cross-split duplicate groups: {len(report['cross_split_duplicates'])}, "
        f"label conflicts: {len(report['label_conflicts'])}"
    )
    for group in report["label_conflicts"][:10]:
        lines.append("  label conflict: " + ", ".join(map(str, group)))
    for entry in report["unreadable"][:10]:
        lines.append(f"  unreadable {entry['path']}: {entry['error']}")
    for entry in report["odd"][:10]:
        lines.append(f"  odd {entry['path']}: {entry['issue']} -> {entry['action']}")
    return "\n".join(lines)
