"""Training data for a run: found, split when it has no split (seeded, duplicate-aware), decoded."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from pitguard.config import Config
from pitguard.core.errors import PitguardError
from pitguard.data.layout import CANONICAL_ORDER, DatasetIndex, find_dataset, parse_class_mapping
from pitguard.data.load import Crops, DecodeOptions, load_crops
from pitguard.data.manifest import write_manifest
from pitguard.data.split import parse_fractions, split_dataset

REQUIRED_PARTS = ("train", "val")


def prepare_data(cfg: Config, manifest: Path) -> tuple[Crops, dict]:
    """Load the crops with a train/val/calib/test split; a class-folder dir is split here (seeded,
    duplicate-aware). ``manifest`` is where the split used is kept (written when missing)."""
    if not cfg.data.path:
        raise PitguardError(
            "data.path is not set; pass --data DIR (or set data.path in the config)"
        )
    opts = DecodeOptions(size=cfg.data.size, modes=cfg.data.modes, sizes=cfg.data.sizes)
    mapping = parse_class_mapping(cfg.data.classes)
    index = find_dataset(cfg.data.path, mapping)
    if not any(it.split for it in index.items):
        if not manifest.exists():
            split_dataset(
                index, manifest, parse_fractions(cfg.data.fractions), cfg.data.split_seed, opts
            )
        index = find_dataset(manifest, {c: c for c in CANONICAL_ORDER})
    # With fit_val the val crops are trained on: the kept split lists them as train, so nothing
    # later (eval, calibration) takes them for unseen crops.
    moved = cfg.train.fit_val and any(it.split == "val" for it in index.items)
    if moved:
        index.items = [
            replace(it, split="train") if it.split == "val" else it for it in index.items
        ]
    if moved or not manifest.exists():  # the run keeps the exact split it was trained on
        write_manifest(manifest, index.manifest_rows())
    crops = load_crops(index, opts)
    present = set(crops.splits)
    # A model that keeps its last epoch chooses nothing on val, so it may train without one.
    required = ("train",) if cfg.train.select_metric == "last" else REQUIRED_PARTS
    missing = [p for p in required if p not in present]
    if missing:
        raise PitguardError(
            f"{cfg.data.path}: the split has no {', '.join(missing)} part; found "
            f"{', '.join(sorted(str(p) for p in present))}. Give a class-folder dir (pitguard splits it) "
            "or a manifest/split folders with train and val"
        )
    info = _data_info(index, crops, opts)
    return crops, info


def _data_info(index: DatasetIndex, crops: Crops, opts: DecodeOptions) -> dict:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(crops.images.numpy().tobytes())
    digest.update(crops.labels.numpy().tobytes())
    digest.update(
        "\n".join(f"{p},{s}" for p, s in zip(crops.paths, crops.splits, strict=True)).encode()
    )
    counts: dict[str, dict[str, int]] = {}
    for lab, split in zip(crops.labels.tolist(), crops.splits, strict=True):
        per = counts.setdefault(str(split), dict.fromkeys(crops.classes, 0))
        per[crops.classes[lab]] += 1
    return {
        "root": str(index.root),
        "layout": index.layout,
        "classes": list(crops.classes),
        "fingerprint": digest.hexdigest(),
        "counts": counts,
        "problems": [p.__dict__ for p in crops.problems],
        "decode": opts.__dict__,
    }
