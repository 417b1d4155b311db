"""The input guard: crops unlike anything the model trained on go to review, never to clean.

Each crop is summarised by a few numbers a person can read: the foreground share (the line
masks the background to 0), the mean and spread of each channel the model reads over the
cherry, and, with two or more, how often the last is the brighter and by how much (a swapped
channel pair flips these). The guard keeps the mean and covariance of these numbers over the
training crops and flags a crop whose Mahalanobis distance exceeds the ``quantile`` of the
training crops' distances: by construction about 1 - quantile of crops like the training ones
are flagged, while an empty, saturated or swapped crop lies far outside.

A channel that held one value in every training crop (the 2022 crops' G = 0) is dead to the
model: a crop whose dead channel carries image comes from another camera set-up or channel order
(today's line stacks three live images), and is flagged with a reason that says so, whatever
its distance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_QUANTILE = 0.995  # share of training crops inside the guard
_FLOOR = 1e-4  # smallest foreground share taken into the log (an empty crop)


def feature_names(channels: tuple[int, ...]) -> list[str]:
    names = ["log_foreground"]
    for c in channels:
        names += [f"mean_{c}", f"sd_{c}"]
    if len(channels) >= 2:
        names += [
            f"share_{channels[-1]}_above_{channels[0]}",
            f"log_{channels[-1]}_over_{channels[0]}",
        ]
    return names


def crop_features(x: np.ndarray, channels: tuple[int, ...]) -> np.ndarray:
    """(N, F) float64 features of uint8 crops (N, C, H, W)."""
    x = np.asarray(x, dtype=np.float32)
    fg = x.max(axis=1) > 0
    n = fg.sum(axis=(1, 2)).clip(min=1)
    cols = [np.log(fg.mean(axis=(1, 2)).clip(min=_FLOOR))]
    for c in channels:
        v = x[:, c]
        mean = (v * fg).sum(axis=(1, 2)) / n
        var = (((v - mean[:, None, None]) ** 2) * fg).sum(axis=(1, 2)) / n
        cols += [mean, np.sqrt(var)]
    if len(channels) >= 2:
        a, b = x[:, channels[0]], x[:, channels[-1]]
        cols.append(((b > a) & fg).sum(axis=(1, 2)) / n)
        cols.append((np.log((b + 1) / (a + 1)) * fg).sum(axis=(1, 2)) / n)
    return np.stack(cols, axis=1).astype(np.float64)


@dataclass(frozen=True)
class InputGuard:
    channels: tuple[int, ...]
    names: tuple[str, ...]
    mean: tuple[float, ...]
    inverse_covariance: tuple[tuple[float, ...], ...]
    threshold: float  # Mahalanobis distance; farther is flagged
    quantile: float
    n: int  # training crops it was fitted on
    lows: tuple[float, ...]  # per-feature minimum and maximum over the training crops,
    highs: tuple[float, ...]  # for the reason given to a person
    dead: tuple[tuple[int, float], ...] = ()  # (channel, its one value) in every training crop

    @classmethod
    def fit(
        cls, crops: np.ndarray, channels: tuple[int, ...], quantile: float = DEFAULT_QUANTILE
    ) -> InputGuard:
        feats = crop_features(crops, channels)
        mean = feats.mean(axis=0)
        cov = np.cov(feats, rowvar=False) + 1e-6 * np.eye(feats.shape[1])
        inv = np.linalg.inv(cov)
        z = feats - mean
        dist = np.sqrt(np.einsum("ij,jk,ik->i", z, inv, z))
        return cls(
            tuple(int(c) for c in channels),
            tuple(feature_names(tuple(channels))),
            tuple(float(v) for v in mean),
            tuple(tuple(float(v) for v in row) for row in inv),
            float(np.quantile(dist, quantile)),
            quantile,
            len(feats),
            tuple(float(v) for v in feats.min(axis=0)),
            tuple(float(v) for v in feats.max(axis=0)),
            _dead_channels(np.asarray(crops)),
        )

    def distance(self, crops: np.ndarray) -> np.ndarray:
        z = crop_features(crops, self.channels) - np.array(self.mean)
        return np.sqrt(np.einsum("ij,jk,ik->i", z, np.array(self.inverse_covariance), z))

    def check(self, crops: np.ndarray) -> list[str]:
        """A reason per crop it flags, "" for the others."""
        feats = crop_features(crops, self.channels)
        dist = self.distance(crops)
        live = self._live_dead_channels(crops)
        out = []
        for f, d, woken in zip(feats, dist, live, strict=True):
            if woken:
                out.append(woken)
                continue
            if not d > self.threshold and np.isfinite(d):
                out.append("")
                continue
            outside = [
                f"{name} {value:.3g} (training {lo:.3g} to {hi:.3g})"
                for name, value, lo, hi in zip(self.names, f, self.lows, self.highs, strict=True)
                if not lo <= value <= hi
            ]
            detail = "; ".join(outside) or "an unusual combination of its features"
            out.append(
                f"unlike the training crops (distance {d:.1f} > {self.threshold:.1f}): {detail}"
            )
        return out

    def _live_dead_channels(self, crops: np.ndarray) -> list[str]:
        """Per crop, why a channel that was dead in training carries image ("" where none)."""
        out = [""] * len(crops)
        for c, value in self.dead:
            level = np.abs(np.asarray(crops[:, c], dtype=np.float32) - value)
            for i in np.flatnonzero(level.max(axis=(1, 2)) > 0.5):
                out[i] = out[i] or (
                    f"channel {c} carries image (mean {level[i].mean():.3g} away from {value:g}), "
                    f"but held {value:g} in every training crop: a crop of another camera set-up "
                    "or channel order than the model was trained for"
                )
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> InputGuard:
        return cls(
            tuple(d["channels"]),
            tuple(d["names"]),
            tuple(d["mean"]),
            tuple(tuple(r) for r in d["inverse_covariance"]),
            float(d["threshold"]),
            float(d["quantile"]),
            int(d["n"]),
            tuple(d["lows"]),
            tuple(d["highs"]),
            tuple((int(c), float(v)) for c, v in d.get("dead", ())),
        )


def _dead_channels(crops: np.ndarray) -> tuple[tuple[int, float], ...]:
    """Channels that hold one value in every crop (N, C, H, W), with that value."""
    dead = []
    for c in range(crops.shape[1]):
        lo, hi = crops[:, c].min(), crops[:, c].max()
        if lo == hi:
            dead.append((c, float(lo)))
    return tuple(dead)
