"""The shipped decision: calibrated pit probability and the clean / maybe / pit route.

A crop with pit probability p goes clean when p < t_low, pit when p >= t_high, and to human
review ("maybe") otherwise. ``DecisionPolicy`` holds temperature and thresholds as buffers, so the
exported graph carries exactly what was calibrated; ``certify`` chooses the thresholds.

For a model with a maybe class (the line's clean/maybe/pit ResNet50), p(pit) is the probability
of "not clean": p(pit) + p(maybe). Mass the model puts on maybe then counts against the clean
route exactly as pit mass does, so it can never help certify a crop clean; p(pit) alone would
send a crop the model calls maybe with p(maybe) 0.9 and p(pit) 0.001 to clean.

All comparisons are made in float32, the precision of the exported graph, so that `route`,
`DecisionPolicy.forward` and the calibration counts agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.runtime.routes import PREDICTION_COLUMNS, ROUTES, Route, route

__all__ = ["PREDICTION_COLUMNS", "ROUTES", "DecisionPolicy", "Route", "pit_probability", "route"]


def maybe_index(classes) -> int | None:
    """Index of the maybe class among ``classes``, or None."""
    return list(classes).index("maybe") if "maybe" in classes else None


def _pit_prob_torch(
    logits: torch.Tensor, temperature: torch.Tensor, pit_index: int, maybe: int | None = None
) -> torch.Tensor:
    probs = torch.softmax(logits.to(torch.float32) / temperature, dim=-1)
    if maybe is None:
        return probs[..., pit_index]
    return probs[..., pit_index] + probs[..., maybe]


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


def _route_torch(p: torch.Tensor, t_low: torch.Tensor, t_high: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as `route`, branch-free so it traces and exports.
    return int(Route.MAYBE) + (p >= t_high).to(torch.int64) - (p < t_low).to(torch.int64)


class DecisionPolicy(torch.nn.Module):
    """Temperature + thresholds as buffers, so the exported graph carries exactly what was calibrated."""

    temperature: torch.Tensor
    t_low: torch.Tensor
    t_high: torch.Tensor

    def __init__(
        self,
        temperature: float = 1.0,
        t_low: float = 0.5,
        t_high: float = 0.5,
        pit_index: int = 1,
        maybe_index: int | None = None,
    ):
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise PitguardError(f"temperature must be a positive number, got {temperature!r}")
        if not t_low <= t_high:
            raise PitguardError(f"t_low must be <= t_high, got {t_low!r} > {t_high!r}")
        if int(pit_index) < 0:
            raise PitguardError(f"pit_index must be >= 0, got {pit_index!r}")
        self.pit_index = int(pit_index)
        self.maybe_index = None if maybe_index is None else int(maybe_index)
        # float32 rounding is monotone, so t_low <= t_high survives it.
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.register_buffer("t_low", torch.tensor(float(t_low), dtype=torch.float32))
        self.register_buffer("t_high", torch.tensor(float(t_high), dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_pit float32 (N,), route int64 (N,)) from logits (N, C)."""
        p = _pit_prob_torch(logits, self.temperature, self.pit_index, self.maybe_index)
        return p, _route_torch(p, self.t_low, self.t_high)

    def to_dict(self) -> dict:
        """Plain, JSON-ready values (the exact float32 numbers held by the buffers)."""
        out = {
            "temperature": float(self.temperature.item()),
            "t_low": float(self.t_low.item()),
            "t_high": float(self.t_high.item()),
            "pit_index": self.pit_index,
        }
        if self.maybe_index is not None:  # p(pit) is then p(pit) + p(maybe)
            out["maybe_index"] = self.maybe_index
        return out

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
            maybe_index=None if d.get("maybe_index") is None else int(d["maybe_index"]),
        )
