"""A seeded, stratified, duplicate-aware split written as a CSV manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.data.audit import duplicate_groups
from pitguard.data.layout import DatasetIndex, find_dataset
from pitguard.data.load import Crops, DecodeOptions, load_crops
from pitguard.data.manifest import ManifestRow, write_manifest

# Default parts: calib holds ~340 pits of the shared crops, enough for a 1% pit-miss bound at 95%
# (299 pits with zero misses are the minimum); test is never used for any choice.
DEFAULT_FRACTIONS = {"train": 0.55, "val": 0.10, "calib": 0.20, "test": 0.15}


def parse_fractions(spec: str | None) -> dict[str, float]:
    if not spec:
        return dict(DEFAULT_FRACTIONS)
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not name.strip() or not 0 < frac < 1:
            raise PitguardError(
                f"--fractions: cannot read {part!r}; write NAME=FRACTION pairs with fractions in "
                "(0, 1), e.g. train=0.55,val=0.1,calib=0.2,test=0.15"
            )
        out[name.strip()] = frac
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise PitguardError(
            f"--fractions: the fractions add up to {total:g}; they must add up to 1"
        )
    if "train" not in out:
        raise PitguardError("--fractions: a 'train' part is required")
    return out


def assign_splits(
    labels: np.ndarray, groups: list[list[int]], fractions: dict[str, float], seed: int
) -> list[str]:
    """Split names per item; each group stays whole, classes keep the fractions."""
    n = len(labels)
    units: list[list[int]] = [list(g) for g in groups]
    grouped = {i for g in groups for i in g}
    units += [[i] for i in range(n) if i not in grouped]
    rng = np.random.default_rng(seed)
    names = list(fractions)
    out = [""] * n
    for cls in np.unique(labels):
        # A group goes with its majority class, so mixed groups still land in one part.
        cls_units = [u for u in units if np.bincount(labels[u]).argmax() == cls]
        order = rng.permutation(len(cls_units))
        cls_units = [cls_units[i] for i in order]
        # Bigger groups first so the greedy fill still hits the fractions.
        cls_units.sort(key=len, reverse=True)
        total = sum(len(u) for u in cls_units)
        filled = dict.fromkeys(names, 0)
        for unit in cls_units:
            deficit = {s: fractions[s] * total - filled[s] for s in names}
            target = max(names, key=lambda s: (deficit[s], fractions[s]))
            filled[target] += len(unit)
            for i in unit:
                out[i] = target
    return out


def split_dataset(
    data: str | Path | DatasetIndex,
    out: str | Path,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    opts: DecodeOptions | None = None,
    crops: Crops | None = None,
) -> dict:
    """Write a manifest (path,label,split,group) and return the counts per split and class."""
    index = data if isinstance(data, DatasetIndex) else find_dataset(data)
    fractions = fractions or dict(DEFAULT_FRACTIONS)
    crops = crops if crops is not None else load_crops(index, opts)
    if len(crops) == 0:
        raise PitguardError(f"{index.root}: no readable crops to split")
    groups = duplicate_groups(crops)
    labels = crops.labels.numpy()
    splits = assign_splits(labels, groups, fractions, seed)
    group_of = {i: f"g{k}" for k, g in enumerate(groups) for i in g}

    out = write_manifest(
        out,
        (
            ManifestRow(index.root / rel, crops.classes[labels[i]], splits[i], group_of.get(i))
            for i, rel in enumerate(crops.paths)
        ),
    )

    counts = {s: dict.fromkeys(crops.classes, 0) for s in fractions}
    for lab, s in zip(labels, splits, strict=True):
        counts[s][crops.classes[lab]] += 1
    return {
        "manifest": str(out),
        "seed": seed,
        "fractions": fractions,
        "counts": counts,
        "groups_kept_whole": len(groups),
        "skipped": [p.path for p in crops.problems if p.action.startswith("skipped")],
    }
