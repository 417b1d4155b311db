"""Shared fixtures, made once per test session and never committed: synthetic crops, one trained
run, its calibrated copy and its bundle. Tests that change a run or a bundle copy it first."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

SHARED_TRAIN = (
    Path(__file__).resolve().parents[1].parent / "shared/data/cherry_classification/train"
)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    # Under pytest-xdist each worker is a process of its own: one torch thread each keeps the
    # workers from competing for the same cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    # Under pytest-xdist the tests on the real crops run on one worker, one after the other:
    # the second finds the crops decoded in the shared cache instead of decoding them again.
    for item in items:
        if item.get_closest_marker("shared_data"):
            item.add_marker(pytest.mark.xdist_group("shared_data"))


def _session_root(tmp_path_factory) -> Path:
    """A folder shared by every pytest-xdist worker of this run (the run's own base otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Tests never read or fill the user's crop cache; the workers of one run share theirs
    # (entries are written whole, then renamed into place).
    os.environ["PITGUARD_CACHE"] = str(_session_root(tmp_path_factory) / "crop-cache")


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


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py imported as a module (the folder is no package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


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


def train_tiny(
    root: Path, name: str = "run", count: int = 240, seed: int = 0, sets=(), difficulty=0.5
) -> Path:
    """Train pitguard_tiny on synthetic crops in ROOT/crops (made on first use); the run folder."""
    from pitguard.config import load_config
    from pitguard.data.synth import synthesize
    from pitguard.train.loop import train

    crops = root / "crops"
    if not crops.exists():
        synthesize(crops, count=count, seed=seed, difficulty=difficulty)
    # no time budget: a budgeted run is timed before it starts (tests/test_budget.py)
    base = ["model.name=pitguard_tiny", "train.epochs=1", "train.threads=1", "train.max_minutes=0"]
    cfg = load_config("small-fast", sets=[*base, *sets], extra={"data.path": str(crops)})
    train(cfg, root / name)
    return root / name


# The one trained model of the suite: 600 crops so the calib part holds enough pits for a 5%
# bound; EMA off, since over a few epochs the averaged weights stay near the untrained start.
SESSION_RUN_SETS = ("train.epochs=6", "train.ema_decay=0", "model.normalize=data")
# Easier crops than the default: six epochs then give a model whose INT8 graph decides as its
# float one does, so the export gates are tested on a model that has learned.
SESSION_DIFFICULTY = 0.2
SESSION_MAX_PIT_MISS, SESSION_CONFIDENCE = 0.05, 0.9


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """pitguard_tiny trained on 600 synthetic crops (ROOT/crops); uncalibrated. Do not modify."""
    root = tmp_path_factory.mktemp("session")
    return train_tiny(root, count=600, seed=5, sets=SESSION_RUN_SETS, difficulty=SESSION_DIFFICULTY)


@pytest.fixture(scope="session")
def calibrated_run(trained_run, tmp_path_factory) -> Path:
    """A copy of ``trained_run`` with a calibrated decision (5% bound at 90%). Do not modify."""
    from pitguard.decision.calibrate import calibrate_run

    run = copy_run(trained_run, tmp_path_factory.mktemp("calibrated") / "run")
    calibrate_run(run, max_pit_miss=SESSION_MAX_PIT_MISS, confidence=SESSION_CONFIDENCE)
    return run


@pytest.fixture(scope="session")
def bundle(calibrated_run, tmp_path_factory) -> Path:
    """``calibrated_run`` exported with ONNX and INT8 graphs. Do not modify."""
    from pitguard.deploy.export import export_run

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export_run(calibrated_run, out, onnx=True, int8=True)
    return out


CROSSFIT_SETS = (
    "model.name=pitguard_tiny",
    "train.epochs=2",
    "train.threads=1",
    "train.max_minutes=0",
    "train.ema_decay=0",
)
CROSSFIT_FOLDS = 3


@pytest.fixture(scope="session")
def crossfit_crops(tmp_path_factory) -> Path:
    """300 easy synthetic crops for the cross-fitted run."""
    from pitguard.data.synth import synthesize

    out = tmp_path_factory.mktemp("crossfit") / "crops"
    synthesize(out, count=300, seed=3, difficulty=0.2)
    return out


@pytest.fixture(scope="session")
def crossfit_run(crossfit_crops, tmp_path_factory) -> Path:
    """A 3-fold cross-fitted run of pitguard_tiny (oof.csv, folds/, a final model). Do not modify."""
    from pitguard.config import load_config
    from pitguard.train.crossfit import crossfit

    cfg = load_config(
        "small-fast", sets=list(CROSSFIT_SETS), extra={"data.path": str(crossfit_crops)}
    )
    run = tmp_path_factory.mktemp("crossfit-run") / "run"
    crossfit(cfg, run, CROSSFIT_FOLDS)
    return run


def copy_run(run: Path, dest: Path) -> Path:
    """A run folder copied for a test that changes it; its split still points at the same crops."""
    shutil.copytree(run, dest)
    from pitguard.data.manifest import read_manifest, write_manifest
    from pitguard.models.runfolder import RunPaths

    manifest = RunPaths(dest).split
    if manifest.is_file():  # its paths are relative to the run folder: rewrite them
        write_manifest(manifest, read_manifest(RunPaths(run).split))
    return dest
