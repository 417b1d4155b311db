"""Tests for pitguard.runtime.guard: crops unlike the training crops are flagged with a reason, crops
like them are not, and a bundle routes the flagged ones to review."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pitguard
from pitguard.data.synth import make_crops
from pitguard.runtime.guard import InputGuard


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    images, _ = make_crops(400, seed=1)
    return images.transpose(0, 3, 1, 2)


def _flagged(guard: InputGuard, x: np.ndarray) -> int:
    return sum(bool(r) for r in guard.check(x))


def test_crops_like_the_training_ones_pass_and_odd_ones_are_flagged(crops):
    guard = InputGuard.fit(crops[:300], (0, 2))
    assert guard.n == 300 and guard.names[0] == "log_foreground"
    assert _flagged(guard, crops[300:]) <= 3  # about 0.5% by construction
    empty = np.zeros((4, 3, 128, 128), np.uint8)
    saturated = crops[300:320].copy()
    saturated[saturated > 0] = 255
    assert _flagged(guard, empty) == 4 and _flagged(guard, saturated) == 20
    swapped = crops[300:, [2, 1, 0]]
    assert _flagged(guard, swapped) >= 30
    reason = guard.check(empty)[0]
    assert reason.startswith("unlike the training crops") and "log_foreground -9.21" in reason


def test_the_guard_survives_its_json_form(crops):
    guard = InputGuard.fit(crops[:100], (0, 2))
    again = InputGuard.from_dict(guard.to_dict())
    np.testing.assert_allclose(again.distance(crops[100:120]), guard.distance(crops[100:120]))


def test_the_bundle_routes_an_empty_crop_to_review_with_the_reason(bundle):
    predictor = pitguard.load(bundle)
    assert predictor.guard is not None
    x = np.zeros((2, 128, 128, 3), np.uint8)
    pred = predictor.predict(x)
    assert pred.routes == ["maybe", "maybe"]
    assert all(r.startswith("unlike the training crops") for r in pred.reasons)


@pytest.mark.shared_data
def test_on_the_real_crops_few_are_flagged_and_broken_ones_all_are(shared_train: Path):
    from pitguard.data.layout import find_dataset
    from pitguard.data.load import load_crops

    images = load_crops(find_dataset(shared_train)).images.numpy()
    order = np.random.default_rng(0).permutation(len(images))
    fit, rest = images[order[:1800]], images[order[1800:]]
    guard = InputGuard.fit(fit, (0, 2))
    assert _flagged(guard, rest) / len(rest) <= 0.015
    empty = np.zeros((8, 3, 128, 128), np.uint8)
    saturated = rest[:200].copy()
    saturated[saturated > 0] = 255
    assert _flagged(guard, empty) == 8 and _flagged(guard, saturated) == 200
    assert _flagged(guard, rest[:, [2, 1, 0]]) / len(rest) >= 0.5  # 59% when measured


def _three_live(n: int, seed: int) -> np.ndarray:
    """Crops as the line stacks them: three live channels, the last the brightest."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, 32, 32), np.uint8)
    for i in range(n):
        for c, level in enumerate((60, 110, 180)):
            x[i, c, 8:24, 8:24] = np.clip(level + rng.normal(0, 15, (16, 16)), 1, 255)
    return x


def test_crops_in_bgr_order_are_flagged():
    """An OpenCV array handed over as it is (BGR) reverses the line's channel order."""
    guard = InputGuard.fit(_three_live(300, 0), (0, 1, 2))
    assert sum(bool(r) for r in guard.check(_three_live(100, 1))) <= 3
    reasons = guard.check(_three_live(100, 1)[:, ::-1])
    assert all(reasons)


def test_a_dead_training_channel_that_carries_image_is_named(crops):
    guard = InputGuard.fit(crops, (0, 2))  # synthetic 2022-style crops: G is 0
    assert guard.dead == ((1, 0.0),)
    live = crops[:10].copy()
    live[:, 1] = live[:, 0]
    assert all("channel 1 carries image" in r for r in guard.check(live))
    assert InputGuard.from_dict(guard.to_dict()) == guard
