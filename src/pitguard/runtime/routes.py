"""The decision's vocabulary, torch-free: routes, their ids in the exported graph, the one
per-crop prediction schema, and the routing rule itself in numpy."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from pitguard.core.errors import PitguardError


class Route(IntEnum):
    """Where a crop goes; the values are the route ids the exported graph returns."""

    CLEAN = 0
    MAYBE = 1
    PIT = 2

    @property
    def label(self) -> str:
        return self.name.lower()


ROUTES: tuple[str, ...] = tuple(r.label for r in Route)  # ("clean", "maybe", "pit"), by id
# One schema for per-crop predictions, eval's and predict's alike: the true class where it is
# known, the argmax class, the calibrated p(pit), the route, a file's error, the guard's reason.
PREDICTION_COLUMNS = ("path", "true_label", "predicted", "p_pit", "route", "error", "reason")


def route(p_pit: np.ndarray, t_low: float, t_high: float) -> np.ndarray:
    """Route per crop (int64): 0 clean (p < t_low), 2 pit (p >= t_high), 1 maybe otherwise.

    NaN probabilities go to maybe, so a broken score reaches a person rather than a consumer.
    """
    if not t_low <= t_high:
        raise PitguardError(f"t_low must be <= t_high, got {t_low!r} > {t_high!r}")
    p = np.asarray(p_pit, dtype=np.float32)
    clean = p < np.float32(t_low)
    pit = p >= np.float32(t_high)
    return (int(Route.MAYBE) + pit.astype(np.int64) - clean.astype(np.int64)).astype(np.int64)
