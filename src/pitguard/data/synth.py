"""Synthetic cherry crops that mimic the conveyor camera, for tests and demos without real data.

Each crop is a 3-channel HDR composite like the real ones: two exposures in R and B, G always 0,
and the background outside the cherry mask exactly (0, 0, 0). A pit shows as a compact brighter
red, bluer-dark region inside the cherry; clean cherries carry diffuse reddish flesh patches that
can look similar. ``difficulty`` in [0, 1] makes pits fainter, smaller and more often hidden near
the rim, and confounders stronger.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from pitguard.core.errors import PitguardError

CLASS_FOLDERS = ("cherry_clean", "cherry_pit")

# Files a previous synthesize() run leaves in a class folder; anything else there is the user's.
_SYNTH_NAME = re.compile(r"synth_\d{5,}\.png")
# Low-resolution grid for smooth noise fields: upsampling it is far cheaper than wide blurs.
_LOWRES = 16
_Rng = np.random.Generator


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 32:
        raise PitguardError(f"size must be an integer >= 32 (pixels per side), got {size!r}")


def _check_difficulty(difficulty: float) -> None:
    ok = isinstance(difficulty, int | float | np.integer | np.floating) and not isinstance(
        difficulty, bool
    )
    if not ok or not 0.0 <= float(difficulty) <= 1.0:
        raise PitguardError(f"difficulty must be a number in [0, 1], got {difficulty!r}")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=8)
def _upsampler(size: int) -> np.ndarray:
    """(size, _LOWRES) Gaussian interpolation weights: turns a coarse grid into a smooth field."""
    pos = (np.arange(size, dtype=np.float32) + 0.5) * (_LOWRES / size) - 0.5
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(_LOWRES, dtype=np.float32)) / 1.2) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w.flags.writeable = False
    return w


def _smooth_noise(rng: np.random.Generator, size: int, channels: int = 1) -> np.ndarray:
    """Unit-std low-frequency noise (blobs about size/8 across), shape (channels, size, size)."""
    w = _upsampler(size)
    up = w @ rng.standard_normal((channels, _LOWRES, _LOWRES), dtype=np.float32) @ w.T
    up -= up.mean(axis=(1, 2), keepdims=True)
    return up / (up.std(axis=(1, 2), keepdims=True) + 1e-6)


def _blob(
    rng: np.random.Generator,
    size: int,
    cy: float,
    cx: float,
    radius: float,
    aspect: float,
    theta: float,
    wobble: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Irregular ellipse: (depth in px inside the rim, along-axis coord u, across-axis coord v)."""
    yy, xx = _grid(size)
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / aspect
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    # Low-order radial harmonics give the lumpy, not-quite-elliptic outline of real cherries.
    rim = np.ones_like(rho)
    for k in (2, 3, 4, 5):
        rim += (wobble / k) * rng.uniform(0.3, 1.0) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return radius * rim - rho, u, v


def _spot(
    size: int, cy: float, cx: float, ry: float, rx: float, theta: float, power: float
) -> np.ndarray:
    """Soft elliptic spot with peak 1; larger ``power`` gives a flatter top and sharper edge."""
    yy, xx = _grid(size)
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    r2 = ((dx * c + dy * s) / rx) ** 2 + ((-dx * s + dy * c) / ry) ** 2
    return np.exp(-(r2 ** (power / 2)))


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the last two axes by (dy, dx) pixels, filling with zeros instead of wrapping."""
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def _frame_mask(
    rng: np.random.Generator, visible: np.ndarray
) -> tuple[np.ndarray, tuple[float, float]]:
    """Foreground mask as the segmenter draws it: the cherry's box, corners often chopped off.

    Real masks fill ~96% of their bounding box; the round look comes from the dark rim inside it.
    Returns the mask and the box centre, which the detector puts in the middle of the crop.
    """
    size = visible.shape[0]
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    y0, y1, x0, x1 = float(rows[0]), float(rows[-1]), float(cols[0]), float(cols[-1])
    if rng.random() < 0.1:
        # Partial view: the box cuts straight through the cherry on one side.
        side, frac = rng.integers(4), rng.uniform(0.1, 0.35)
        if side == 0:
            y0 += frac * (y1 - y0)
        elif side == 1:
            y1 -= frac * (y1 - y0)
        elif side == 2:
            x0 += frac * (x1 - x0)
        else:
            x1 -= frac * (x1 - x0)
    yy, xx = _grid(size)
    mask = (yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1)
    short = min(y1 - y0, x1 - x0)
    for cy, cx, sy, sx in ((y0, x0, 1, 1), (y0, x1, 1, -1), (y1, x0, -1, 1), (y1, x1, -1, -1)):
        if rng.random() < 0.3:
            a, b = rng.uniform(0.6, 1.4, 2)
            cut = rng.uniform(0.05, 0.3) * short
            mask &= a * sy * (yy - cy) + b * sx * (xx - cx) >= cut
    if rng.random() < 0.3:
        # Tiny detached specks the segmenter keeps just outside the box.
        for _ in range(rng.integers(1, 4)):
            y = int(np.clip(rng.uniform(y0, y1), 0, size - 2))
            x = int(np.clip(rng.uniform(x0, x1), 0, size - 2))
            if rng.random() < 0.5:
                y = int(np.clip(y0 - 3 if rng.random() < 0.5 else y1 + 2, 0, size - 2))
            else:
                x = int(np.clip(x0 - 3 if rng.random() < 0.5 else x1 + 2, 0, size - 2))
            mask[y : y + 2, x : x + 2] = True
    return mask, ((y0 + y1) / 2, (x0 + x1) / 2)


class _Cherry:
    """A crop being drawn: make_crop calls the steps in order, each taking its draws from ``rng``
    in turn and keeping on the instance what later steps use."""

    def __init__(self, rng: _Rng, size: int, difficulty: float) -> None:
        self.rng, self.size, self.d, self.sc = rng, size, float(difficulty), size / 128.0

    def body(self) -> None:
        """One lumpy ellipse, sometimes a second touching cherry."""
        rng, size, sc = self.rng, self.size, self.sc
        mid = (size - 1) / 2.0
        radius = rng.uniform(24.0, 37.0) * sc
        aspect = rng.uniform(0.75, 1.0) if rng.random() < 0.85 else rng.uniform(0.55, 0.75)
        theta = rng.uniform(0, np.pi)
        cy, cx = mid, mid
        wobble = rng.uniform(0.03, 0.12)
        twin = None
        if rng.random() < 0.08:
            r2 = radius * rng.uniform(0.6, 0.95)
            ang = rng.uniform(0, 2 * np.pi)
            dist = (radius + r2) * rng.uniform(0.55, 0.75)
            # Shift both so the pair stays in frame; the final re-centring does the rest.
            share = r2 / (radius + r2)
            oy, ox = dist * math.sin(ang), dist * math.cos(ang)
            cy, cx = cy - oy * share, cx - ox * share
            twin = (cy + oy, cx + ox, r2, rng.uniform(0.75, 1.0), rng.uniform(0, np.pi))
        depth, self.u, _ = _blob(rng, size, cy, cx, radius, aspect, theta, wobble)
        if twin is not None:
            depth = np.maximum(depth, _blob(rng, size, *twin, wobble)[0])
        self.depth, self.depth_c = depth, np.clip(depth, 0, None)  # px inside the rim
        self.radius, self.aspect, self.cy, self.cx = radius, aspect, cy, cx

    def shade(self) -> None:
        """Rim fall-off, bright blue rim ring, uneven light, flesh speckle."""
        rng, depth, depth_c, sc = self.rng, self.depth, self.depth_c, self.sc
        # Brightness falls off towards the rim and leaves a faint glow just outside it.
        inside = 1.0 - 0.8 * np.exp(-depth_c / (rng.uniform(2.5, 4.0) * sc))
        outside = 0.2 * np.exp(np.clip(depth, -30, 0) / (2.5 * sc))
        self.fade = np.where(depth > 0, inside, outside)
        ring = np.exp(-(((depth_c - 7.0 * sc) / (5.0 * sc)) ** 2))
        light = 1.0 + rng.uniform(0.0, 0.2) * (self.u / self.radius)
        self.r0 = r0 = float(np.clip(rng.normal(112, 22), 60, 190))
        self.b0 = b0 = float(np.clip(r0 * rng.normal(1.45, 0.2) + rng.normal(0, 20), 70, 245))
        self.smooth = smooth = _smooth_noise(rng, self.size, 3)
        # Unit-variance white noise; the optical blur at the end turns it into fine speckle.
        # Uniform draws are several times cheaper than normal ones and look the same once blurred.
        speckle = (rng.random((2, self.size, self.size), dtype=np.float32) - 0.5) * math.sqrt(12.0)
        # The pitting hole darkens the blue exposure towards the centre even in clean cherries.
        centre = np.clip(depth_c / (self.radius * 0.8), 0, 1) ** 1.5
        self.red = r0 * light * (1.0 + 0.12 * smooth[0] + 0.12 * speckle[0])
        glow, hole = rng.uniform(0.15, 0.6), rng.uniform(0.0, 0.3)
        wash = 1.0 + glow * ring - hole * centre + 0.12 * smooth[1] + 0.15 * speckle[1]
        self.blue = b0 * light * wash

    def confounders(self, is_pit: bool) -> None:
        """Diffuse, low-compactness reddish flesh (both classes, stronger if clean)."""
        rng, d, radius = self.rng, self.d, self.radius
        conf_amp = rng.uniform(0.1, 0.35 + 0.55 * d) * (1.0 if not is_pit else 0.6)
        patch = np.clip(self.smooth[2], 0, None) ** 1.3
        patch /= patch.max() + 1e-6
        self.red += 90.0 * conf_amp * patch
        self.blue *= 1.0 - 0.35 * conf_amp * patch * rng.uniform(0.3, 1.0)
        if not is_pit and rng.random() < 0.1 + 0.45 * d:
            # A broad red centre that only a careful look tells apart from a pit: wide, soft edges.
            pr = radius * rng.uniform(0.35, 0.6)
            ang, off = rng.uniform(0, 2 * np.pi), radius * rng.uniform(0, 0.35)
            sy, sx = self.cy + off * math.sin(ang), self.cx + off * math.cos(ang)
            ry, theta = pr * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
            spot = _spot(self.size, sy, sx, ry, pr, theta, rng.uniform(1.2, 2.0))
            amp = rng.uniform(20, 45 + 60 * d)
            self.red += amp * spot
            self.blue *= 1.0 - amp / 130.0 * rng.uniform(0.2, 0.6) * spot

    def pit(self) -> None:
        """Compact, brighter red, darker blue; sometimes faint, small or near the rim."""
        rng, d, radius, size = self.rng, self.d, self.radius, self.size
        strength = rng.uniform(0.5, 1.0) * (1.0 - 0.5 * d)
        if rng.random() < 0.03 + 0.4 * d:
            strength *= rng.uniform(0.25, 0.6)  # faint
        pr = radius * rng.uniform(0.2, 0.34) * (1.0 - 0.35 * d * rng.random())
        near_rim = rng.random() < 0.05 + 0.3 * d
        frac = rng.uniform(0.45, 0.75) if near_rim else rng.uniform(0.0, 0.4)
        ang = rng.uniform(0, 2 * np.pi)
        py = self.cy + frac * radius * self.aspect * math.sin(ang)
        px = self.cx + frac * radius * math.cos(ang)
        # Pits are stones seen from above: often elongated, with a flat-topped profile.
        ry, rx = pr * rng.uniform(0.5, 0.95), pr * rng.uniform(1.0, 1.4)
        spot = _spot(size, py, px, ry, rx, rng.uniform(0, np.pi), rng.uniform(2, 4))
        halo = _spot(size, py, px, pr * 2.2, pr * 2.2, 0.0, 2.0)
        # Flesh partly covers the pit: lumpy visibility, and less of it close to the rim.
        lumps = np.clip(1.0 + 0.3 * self.smooth[2], 0.3, 1.3)
        cover = lumps * np.clip(self.depth_c / (6.0 * self.sc), 0, 1)
        amp = 130.0 * strength
        self.red += amp * (spot + 0.25 * halo) * cover
        # Blue drops by a fraction, never to zero: the pit absorbs the blue exposure.
        drop = strength * rng.uniform(0.5, 0.9) * (spot + 0.2 * halo) * cover
        self.blue *= 1.0 - np.clip(drop, 0, 0.75)

    def stem(self, img: np.ndarray, visible: np.ndarray) -> None:
        """A thin dark line leaving the rim, drawn into ``img`` and ``visible``."""
        rng, sc = self.rng, self.sc
        yy, xx = _grid(self.size)
        ang = rng.uniform(0, 2 * np.pi)
        sy = self.cy + self.radius * self.aspect * 0.9 * math.sin(ang)
        sx = self.cx + self.radius * 0.9 * math.cos(ang)
        out_ang = ang + rng.normal(0, 0.4)
        length = rng.uniform(8, 18) * sc
        ey, ex = sy + length * math.sin(out_ang), sx + length * math.cos(out_ang)
        vy, vx = ey - sy, ex - sx
        t = np.clip(((yy - sy) * vy + (xx - sx) * vx) / (vy * vy + vx * vx), 0, 1)
        stem = np.hypot(yy - (sy + t * vy), xx - (sx + t * vx)) < rng.uniform(0.8, 1.6) * sc
        stem &= self.depth < 2
        img[:, stem] = np.array([[self.r0 * 0.5], [self.b0 * 0.45]], np.float32)
        visible |= stem

    def camera(self, img: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """Slight blur and noise; the mask makes the background exact; the box is centred."""
        rng, size = self.rng, self.size
        blur = rng.uniform(0.6, 1.0) * self.sc
        img = ndi.gaussian_filter(img, (0, blur, blur))
        # Shot-like noise: dim pixels stay dim, so R/B ratios near the rim are not dominated by it.
        noise = rng.random((2, *img.shape), dtype=np.float32).sum(axis=0) - 1.0  # triangular
        noise *= math.sqrt(6.0)
        img += noise * (0.4 + rng.uniform(0.15, 0.3) * np.sqrt(np.clip(img, 0, None)))
        mask, (by, bx) = _frame_mask(rng, visible)
        img = np.clip(np.rint(img), 0, 255)
        # Real crops never hold B == 0 inside the mask, which keeps the mask recoverable.
        img[1] = np.maximum(img[1], 1)
        img *= mask
        # Centre the box in the crop, as the detector does (real box centres sit within ~1 px).
        mid = (size - 1) / 2.0
        dy = round(mid - by + rng.normal(0, 0.7))
        dx = round(mid - bx + rng.normal(0, 0.7))
        img = _shift(img, dy, dx)
        out = np.zeros((size, size, 3), np.uint8)
        out[..., 0] = img[0]
        out[..., 2] = img[1]
        return out


def make_crop(rng: _Rng, is_pit: bool, size: int = 128, difficulty: float = 0.5) -> np.ndarray:
    """One synthetic crop, uint8 array (size, size, 3), green channel 0, background exactly 0."""
    _check_size(size)
    _check_difficulty(difficulty)
    cherry = _Cherry(rng, size, difficulty)
    cherry.body()
    cherry.shade()
    cherry.confounders(is_pit)
    if is_pit:
        cherry.pit()
    img = np.stack([cherry.red * cherry.fade, cherry.blue * cherry.fade])
    # The segmenter's box sits a little inside the rim, so the cherry fills it edge to edge.
    visible = cherry.depth > rng.uniform(1.0, 6.0) * cherry.sc
    if rng.random() < 0.12:
        cherry.stem(img, visible)
    return cherry.camera(img, visible)


def make_crops(
    count: int, seed: int = 0, size: int = 128, difficulty: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """`count` crops, half clean and half pit in seeded order: uint8 (N, size, size, 3), int64 (N,).

    Labels are 0 clean, 1 pit; the same seed gives the same crops and labels.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise PitguardError(f"count must be an integer >= 0, got {count!r}")
    _check_size(size)
    _check_difficulty(difficulty)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count, dtype=np.int64) % 2)
    images = np.empty((count, size, size, 3), np.uint8)
    for i, lab in enumerate(labels):
        images[i] = make_crop(rng, bool(lab), size, difficulty)
    return images, labels


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PitguardError(f"out must be a folder, but {out} is a file")
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in CLASS_FOLDERS)
    for name in CLASS_FOLDERS:
        folder = out / name
        if folder.exists() and not folder.is_dir():
            foreign.append(name)
        elif folder.is_dir():
            foreign += [
                f"{name}/{p.name}"
                for p in sorted(folder.iterdir())
                if not _SYNTH_NAME.fullmatch(p.name)
            ]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise PitguardError(
            f"out folder {out} already holds files that synthesize did not write ({shown}); "
            "choose a new or empty folder"
        )


def synthesize(
    out: str | Path, count: int = 400, seed: int = 0, size: int = 128, difficulty: float = 0.5
) -> dict:
    """Write `count` crops as OUT/cherry_clean/synth_NNNNN.png and OUT/cherry_pit/synth_NNNNN.png.

    NNNNN is the crop's index in ``make_crops(count, seed, size, difficulty)``. Returns a summary
    with the folder, counts per class and the settings used.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 2:
        raise PitguardError(
            f"count must be an integer >= 2 (one crop per class at least), got {count!r}"
        )
    _check_size(size)
    _check_difficulty(difficulty)
    out = Path(out)
    _check_out(out)
    images, labels = make_crops(count, seed=seed, size=size, difficulty=difficulty)
    written: set[Path] = set()
    for name in CLASS_FOLDERS:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        path = out / CLASS_FOLDERS[lab] / f"synth_{i:05d}.png"
        Image.fromarray(img).save(path)
        written.add(path)
    # Drop crops left by an earlier, larger run so the folders match the counts returned.
    for name in CLASS_FOLDERS:
        for p in (out / name).iterdir():
            if _SYNTH_NAME.fullmatch(p.name) and p not in written:
                p.unlink()
    counts = {name: int((labels == k).sum()) for k, name in enumerate(CLASS_FOLDERS)}
    return {
        "out": str(out),
        "count": int(count),
        "classes": counts,
        "seed": seed,
        "size": int(size),
        "difficulty": float(difficulty),
    }
