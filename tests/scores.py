"""Synthetic scores and labels whose true rates are known, for the statistics tests."""

from __future__ import annotations

import numpy as np

# Pit and clean scores drawn from Beta laws: the true error rate at any threshold is known.
PIT_AB = (5.0, 1.5)
CLEAN_AB = (1.5, 5.0)
CLASSES = ["clean", "maybe", "pit"]


def draw_scores(
    rng: np.random.Generator, n_pits: int, n_clean: int
) -> tuple[np.ndarray, np.ndarray]:
    p = np.concatenate([rng.beta(*PIT_AB, n_pits), rng.beta(*CLEAN_AB, n_clean)])
    y = np.concatenate([np.ones(n_pits, bool), np.zeros(n_clean, bool)])
    return p, y


def dirichlet_probs(rng: np.random.Generator, n: int, c: int, concentration: float = 1.0):
    return rng.dirichlet(np.full(c, concentration), size=n)


def sample_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    u = rng.random(len(probs))[:, None]
    return (u > probs.cumsum(axis=1)).sum(axis=1)
