"""Shared fixtures: synthetic crops made once per test session, never committed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_TRAIN = (
    Path(__file__).resolve().parents[1].parent / "shared/data/cherry_classification/train"
)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Tests never read or fill the user's crop cache.
    os.environ["PITGUARD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """240 balanced synthetic crops in class folders."""
    from pitguard.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "crops"
    synthesize(out, count=240, seed=0)
    return out


@pytest.fixture(scope="session")
def shared_train() -> Path:
    if not (SHARED_TRAIN / "cherry_clean").is_dir():
        pytest.skip(f"shared crops not found at {SHARED_TRAIN}")
    return SHARED_TRAIN


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def random_crop(seed: int, size: int = 128) -> np.ndarray:
    """A distinct cherry-like disk: position, radius and exposure levels vary with the seed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    radius = rng.uniform(0.15, 0.3) * size
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    for c, level in zip((0, 2), rng.uniform(60, 180, 2), strict=True):
        img[inside, c] = (level + rng.normal(0, 20, inside.sum())).clip(1, 255)
    return img


def train_tiny(root: Path, name: str = "run", count: int = 240, seed: int = 0, sets=()) -> Path:
    """Train pitguard_tiny on synthetic crops in ROOT/crops (made on first use); the run folder."""
    from pitguard.config import load_config
    from pitguard.data.synth import synthesize
    from pitguard.train import train

    crops = root / "crops"
    if not crops.exists():
        synthesize(crops, count=count, seed=seed)
    base = ["model.name=pitguard_tiny", "train.epochs=1", "train.threads=1"]
    cfg = load_config("cpu-fast", sets=[*base, *sets], extra={"data.path": str(crops)})
    train(cfg, root / name)
    return root / name
