"""Test-time views: the mirrors and quarter turns of a crop whose logits a model averages."""

from __future__ import annotations

from typing import get_args

import torch

from pitguard.config import TestTimeViews

TEST_TIME_VIEWS: tuple[str, ...] = get_args(TestTimeViews)
SECOND_LOOKS = tuple(v for v in TEST_TIME_VIEWS if v != "none")  # a cascade's second-stage views


def dihedral_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of square images (N, C, S, S) that test-time augmentation averages over: the
    images themselves first, then mirrored (hflip), quarter-turned (rot4) or both (d8)."""
    if mode == "none":
        return [x]
    if mode == "hflip":
        return [x, x.flip(-1)]
    turns = [x]
    for _ in range(3):
        turns.append(turns[-1].transpose(-2, -1).flip(-1))  # a quarter turn, clockwise
    if mode == "rot4":
        return turns
    return turns + [t.flip(-1) for t in turns]
