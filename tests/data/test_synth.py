"""Synthetic crops: format, statistics, determinism, and the folder writer's guards."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from pitguard.core.errors import PitguardError
from pitguard.data.synth import CLASS_FOLDERS, make_crop, make_crops, synthesize


def _red_peak(crop: np.ndarray) -> float:
    """Mean of the top 1% R/(B+1) over lit foreground pixels: high where a pit shows."""
    r = crop[..., 0].astype(np.float64)
    b = crop[..., 2].astype(np.float64)
    # Dim rim pixels have noisy ratios; the pit sits in the lit body.
    ratio = np.sort((r / (b + 1))[(r + b) >= 64])
    return float(ratio[-max(1, ratio.size // 100) :].mean())


@pytest.fixture(scope="module")
def separations() -> dict[float, tuple[float, float]]:
    """(clean mean, pit mean) of the red peak over 200 crops per difficulty."""
    out = {}
    for difficulty in (0.0, 0.5, 1.0):
        images, labels = make_crops(200, seed=5, difficulty=difficulty)
        peaks = np.array([_red_peak(x) for x in images])
        out[difficulty] = (peaks[labels == 0].mean(), peaks[labels == 1].mean())
    return out


def test_make_crop_format() -> None:
    rng = np.random.default_rng(0)
    for is_pit in (False, True):
        crop = make_crop(rng, is_pit)
        assert crop.shape == (128, 128, 3)
        assert crop.dtype == np.uint8
        assert not crop[..., 1].any()
        assert crop[..., 0].max() > 0 and crop[..., 2].max() > 0


@pytest.mark.parametrize("size", [32, 64, 96])
def test_make_crop_other_sizes(size: int) -> None:
    crop = make_crop(np.random.default_rng(1), True, size=size)
    assert crop.shape == (size, size, 3)
    assert not crop[..., 1].any()


def test_make_crops_format_and_background() -> None:
    images, labels = make_crops(60, seed=2)
    assert images.shape == (60, 128, 128, 3) and images.dtype == np.uint8
    assert labels.shape == (60,) and labels.dtype == np.int64
    assert not images[..., 1].any()
    background = (images.sum(axis=3) == 0).mean(axis=(1, 2))
    # Real crops are about 84% masked background.
    assert 0.6 <= background.mean() <= 0.95
    assert background.min() > 0.3 and background.max() < 0.99


def test_make_crops_deterministic_per_seed() -> None:
    a, la = make_crops(12, seed=7)
    b, lb = make_crops(12, seed=7)
    c, _ = make_crops(12, seed=8)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("count", [0, 1, 2, 9, 40])
def test_make_crops_balanced(count: int) -> None:
    _, labels = make_crops(count, seed=3, size=32)
    assert set(labels.tolist()) <= {0, 1}
    assert abs(int((labels == 1).sum()) - int((labels == 0).sum())) <= 1


def test_labels_are_shuffled() -> None:
    _, labels = make_crops(40, seed=3, size=32)
    assert not np.array_equal(labels, np.arange(40) % 2)


def test_pits_show_a_brighter_red_region(separations) -> None:
    clean, pit = separations[0.5]
    assert pit > clean + 0.5


def test_difficulty_narrows_the_gap(separations) -> None:
    gaps = [pit - clean for clean, pit in (separations[d] for d in (0.0, 0.5, 1.0))]
    assert gaps[0] > gaps[1] + 0.5
    assert gaps[1] > gaps[2] + 0.5


def test_synthesize_writes_class_folders(tmp_path) -> None:
    out = tmp_path / "synth"
    summary = synthesize(out, count=9, seed=4, size=64, difficulty=0.3)
    assert summary == {
        "out": str(out),
        "count": 9,
        "classes": summary["classes"],
        "seed": 4,
        "size": 64,
        "difficulty": 0.3,
    }
    assert sum(summary["classes"].values()) == 9
    assert set(summary["classes"]) == set(CLASS_FOLDERS)
    assert sorted(p.name for p in out.iterdir()) == sorted(CLASS_FOLDERS)
    images, labels = make_crops(9, seed=4, size=64, difficulty=0.3)
    for k, name in enumerate(CLASS_FOLDERS):
        files = sorted((out / name).glob("synth_*.png"))
        assert len(files) == summary["classes"][name] == int((labels == k).sum())
        for path in files:
            with Image.open(path) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
                pixels = np.asarray(im)
            index = int(path.stem.split("_")[1])
            assert labels[index] == k
            assert np.array_equal(pixels, images[index])


def test_synthesize_rerun_replaces_its_own_crops(tmp_path) -> None:
    synthesize(tmp_path, count=10, size=32)
    summary = synthesize(tmp_path, count=4, size=32, seed=1)
    written = sorted(p.name for name in CLASS_FOLDERS for p in (tmp_path / name).iterdir())
    assert len(written) == 4 == sum(summary["classes"].values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 1}, "count must be an integer >= 2 (one crop per class at least), got 1"),
        ({"count": 2.5}, "count must be an integer >= 2 (one crop per class at least), got 2.5"),
        ({"size": 16}, "size must be an integer >= 32 (pixels per side), got 16"),
        ({"difficulty": 1.5}, "difficulty must be a number in [0, 1], got 1.5"),
        ({"difficulty": -0.1}, "difficulty must be a number in [0, 1], got -0.1"),
        ({"difficulty": float("nan")}, "difficulty must be a number in [0, 1], got nan"),
    ],
)
def test_synthesize_rejects_bad_arguments(tmp_path, kwargs, message) -> None:
    with pytest.raises(PitguardError, match=f"^{re.escape(message)}$"):
        synthesize(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_make_crop_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(PitguardError, match=r"^size must be an integer >= 32"):
        make_crop(rng, True, size=31)
    with pytest.raises(PitguardError, match=re.escape("difficulty must be a number in [0, 1]")):
        make_crop(rng, True, difficulty=2)
    with pytest.raises(PitguardError, match=r"^count must be an integer >= 0, got -1$"):
        make_crops(-1)


def test_synthesize_keeps_user_files(tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    message = (
        f"out folder {tmp_path} already holds files that synthesize did not write "
        "(notes.txt); choose a new or empty folder"
    )
    with pytest.raises(PitguardError, match=f"^{re.escape(message)}$"):
        synthesize(tmp_path, count=4, size=32)
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_synthesize_keeps_user_files_in_class_folders(tmp_path) -> None:
    (tmp_path / "cherry_pit").mkdir()
    photo = tmp_path / "cherry_pit" / "photo_1.png"
    photo.write_bytes(b"not really a png")
    message = (
        f"out folder {tmp_path} already holds files that synthesize did not write "
        "(cherry_pit/photo_1.png); choose a new or empty folder"
    )
    with pytest.raises(PitguardError, match=f"^{re.escape(message)}$"):
        synthesize(tmp_path, count=4, size=32)
    assert photo.read_bytes() == b"not really a png"


def test_synthesize_rejects_a_file_as_out(tmp_path) -> None:
    target = tmp_path / "crops"
    target.write_text("x")
    with pytest.raises(
        PitguardError, match=f"^{re.escape(f'out must be a folder, but {target} is a file')}$"
    ):
        synthesize(target, count=4, size=32)
    assert target.read_text() == "x"
