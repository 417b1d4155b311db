"""The shipped decision: calibrated pit probability and the clean / maybe / pit route.

A crop with pit probability p goes clean when p < t_low, pit when p >= t_high, and to human
review ("maybe") otherwise. ``DecisionPolicy`` holds temperature and thresholds as buffers, so the
exported graph carries exactly what was calibrated; ``certify`` chooses the thresholds.

All comparisons are made in float32, the precision of the exported graph, so that `route`,
`DecisionPolicy.forward` and the calibration counts agree bit for bit.
"""

from __future__ import annotations

import math
from enum import IntEnum

import numpy as np
import torch

from pitguard.errors import PitguardError


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


def _pit_prob_torch(
    logits: torch.Tensor, temperature: torch.Tensor, pit_index: int
) -> torch.Tensor:
    return torch.softmax(logits.to(torch.float32) / temperature, dim=-1)[..., pit_index]


def pit_probability(logits: np.ndarray, temperature: float, pit_index: int) -> np.ndarray:
    """Calibrated pit probability (float32, shape (N,)), computed exactly as the exported graph does."""
    z = np.asarray(logits, dtype=np.float32)
    if z.ndim != 2 or not 0 <= pit_index < z.shape[1]:
        raise PitguardError(
            f"need logits of shape (N, C) with pit_index {pit_index} < C, got {z.shape}"
        )
    if not temperature > 0:
        raise PitguardError(f"temperature must be positive, got {temperature!r}")
    with torch.no_grad():
        t = torch.tensor(float(temperature), dtype=torch.float32)
        return _pit_prob_torch(torch.from_numpy(z), t, int(pit_index)).numpy()


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


def _route_torch(p: torch.Tensor, t_low: torch.Tensor, t_high: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as `route`, branch-free so it traces and exports.
    return int(Route.MAYBE) + (p >= t_high).to(torch.int64) - (p < t_low).to(torch.int64)


class DecisionPolicy(torch.nn.Module):
    """Temperature + thresholds as buffers, so the exported graph carries exactly what was calibrated."""

    temperature: torch.Tensor
    t_low: torch.Tensor
    t_high: torch.Tensor

    def __init__(
        self, temperature: float = 1.0, t_low: float = 0.5, t_high: float = 0.5, pit_index: int = 1
    ):
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise PitguardError(f"temperature must be a positive number, got {temperature!r}")
        if not t_low <= t_high:
            raise PitguardError(f"t_low must be <= t_high, got {t_low!r} > {t_high!r}")
        if int(pit_index) < 0:
            raise PitguardError(f"pit_index must be >= 0, got {pit_index!r}")
        self.pit_index = int(pit_index)
        # float32 rounding is monotone, so t_low <= t_high survives it.
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.register_buffer("t_low", torch.tensor(float(t_low), dtype=torch.float32))
        self.register_buffer("t_high", torch.tensor(float(t_high), dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_pit float32 (N,), route int64 (N,)) from logits (N, C)."""
        p = _pit_prob_torch(logits, self.temperature, self.pit_index)
        return p, _route_torch(p, self.t_low, self.t_high)

    def to_dict(self) -> dict:
        """Plain, JSON-ready values (the exact float32 numbers held by the buffers)."""
        return {
            "temperature": float(self.temperature.item()),
            "t_low": float(self.t_low.item()),
            "t_high": float(self.t_high.item()),
            "pit_index": self.pit_index,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DecisionPolicy:
        """Inverse of `to_dict`."""
        missing = [k for k in ("temperature", "t_low", "t_high", "pit_index") if k not in d]
        if missing:
            raise PitguardError(f"decision policy is missing {', '.join(missing)}")
        return cls(
            temperature=float(d["temperature"]),
            t_low=float(d["t_low"]),
            t_high=float(d["t_high"]),
            pit_index=int(d["pit_index"]),
        )
