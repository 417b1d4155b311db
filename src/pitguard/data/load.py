"""Decode crops into one uint8 tensor (N, C, H, W), with explicit rules for odd files and a cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pitguard.config import ModeRule, SizeRule, choices
from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_path
from pitguard.core.progress import Progress
from pitguard.data.layout import DatasetIndex, Item

CACHE_VERSION = 1
# Pixels an image may declare before it is refused unread: a decompression bomb's header says
# 12000x12000 while the file is a few hundred KB. Crops are 128x128; 4096x4096 is no crop.
MAX_PIXELS = 4096 * 4096
# Bytes a crop file may hold before it is refused unread: a 128 px PNG crop is about 50 KB, and a
# file past this (a disk image, a link to /dev/urandom) would only fill memory on its way to the
# decoder. 64 MiB still takes an uncompressed 4096x4096 RGB image.
MAX_CROP_BYTES = 64 * 2**20
MODE_RULES = choices(ModeRule)
SIZE_RULES = choices(SizeRule)


@dataclass(frozen=True)
class DecodeOptions:
    """How to treat files that are not plain RGB crops of the expected size."""

    size: int = 128  # side of the square crops the line produces
    modes: str = "skip"  # "skip" lists non-RGB files; "convert" converts them by the rules below
    sizes: str = "skip"  # "skip" lists other sizes; "resize" rescales; "pad" centre-pads/crops
    strict: bool = False  # stop at the first bad file instead of skipping and listing it

    def validate(self) -> None:
        problems = []
        if self.modes not in MODE_RULES:
            problems.append(f"modes={self.modes!r}: use one of {', '.join(MODE_RULES)}")
        if self.sizes not in SIZE_RULES:
            problems.append(f"sizes={self.sizes!r}: use one of {', '.join(SIZE_RULES)}")
        if self.size < 8:
            problems.append(f"size={self.size}: crops must be at least 8 px")
        if problems:
            raise PitguardError("decode options: " + "; ".join(problems))


@dataclass(frozen=True)
class Problem:
    """A file that was not loaded as it is, and why."""

    path: str
    kind: str  # "unreadable" or "odd"
    reason: str
    action: str  # "skipped" or what was done (e.g. "converted LA->RGB")


@dataclass
class Crops:
    """Decoded crops in memory, ready for batched training on any device."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    paths: list[str]
    classes: tuple[str, ...]
    problems: list[Problem] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, mask: Sequence[bool] | np.ndarray) -> Crops:
        idx = np.flatnonzero(np.asarray(mask))
        t = torch.as_tensor(idx, dtype=torch.long)
        return Crops(
            self.images[t],
            self.labels[t],
            [self.paths[i] for i in idx],
            self.classes,
            [],
            [self.splits[i] for i in idx] if self.splits else [],
            [self.groups[i] for i in idx] if self.groups else [],
        )

    def split(self, name: str) -> Crops:
        return self.select([s == name for s in self.splits])


# Mode conversions applied with modes="convert". The masked background is black, so alpha
# is multiplied in (transparent pixels become background) rather than dropped.
def _to_rgb(img: Image.Image) -> tuple[np.ndarray, str]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        scale = 257 if arr.max(initial=0) > 255 else 1
        gray = (arr // scale).clip(0, 255).astype(np.uint8)
        return np.stack([gray] * 3, -1), f"{mode}->RGB (16-bit scaled to 8-bit, gray replicated)"
    if mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] // 255).astype(np.uint8)
        return rgb, f"{mode}->RGB (alpha multiplied into the colour)"
    if mode == "L":
        gray = np.asarray(img, dtype=np.uint8)
        return np.stack([gray] * 3, -1), "L->RGB (gray replicated)"
    return np.asarray(img.convert("RGB"), dtype=np.uint8), f"{mode}->RGB"


def _fit_size(arr: np.ndarray, size: int, rule: str) -> np.ndarray:
    if rule == "resize":
        return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)  # "pad": centre the crop on black background
    h, w = arr.shape[:2]
    sy, sx = max((h - size) // 2, 0), max((w - size) // 2, 0)
    dy, dx = max((size - h) // 2, 0), max((size - w) // 2, 0)
    ch, cw = min(h, size), min(w, size)
    out[dy : dy + ch, dx : dx + cw] = arr[sy : sy + ch, sx : sx + cw]
    return out


def decode_bytes(
    data: bytes, name: str, opts: DecodeOptions
) -> tuple[np.ndarray | None, Problem | None]:
    """Decode one file's bytes to (H, W, 3) uint8, or return why it was skipped or changed."""
    if not data:
        return None, Problem(name, "unreadable", "empty file (0 bytes)", "skipped")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            mode, (w, h) = img.mode, img.size
            if w * h > MAX_PIXELS:  # checked before a single pixel is decoded
                return None, Problem(
                    name,
                    "unreadable",
                    f"{w}x{h} px is no crop (limit {MAX_PIXELS:,} px); not decoded",
                    "skipped",
                )
            frames = int(getattr(img, "n_frames", 1))
            if frames > 1:
                return None, Problem(name, "odd", f"{frames} frames, expected one image", "skipped")
            img.load()
            if mode == "RGB":
                arr, change = np.asarray(img, dtype=np.uint8), None
            elif opts.modes == "convert":
                arr, change = _to_rgb(img)
            else:
                return None, Problem(
                    name, "odd", f"mode {mode}, expected RGB", "skipped (use modes=convert)"
                )
    except UnidentifiedImageError:
        reason = "cannot decode: not an image file PIL can read (PNG/JPEG/BMP/TIFF)"
        return None, Problem(name, "unreadable", reason, "skipped")
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        return None, Problem(name, "unreadable", f"cannot decode: {exc}", "skipped")
    if (w, h) != (opts.size, opts.size):
        if opts.sizes == "skip":
            return None, Problem(
                name,
                "odd",
                f"size {w}x{h}, expected {opts.size}x{opts.size}",
                "skipped (use sizes=resize or sizes=pad)",
            )
        arr = _fit_size(arr, opts.size, opts.sizes)
        change = (
            change + "; " if change else ""
        ) + f"{w}x{h}->{opts.size}x{opts.size} ({opts.sizes})"
    if change:
        return np.ascontiguousarray(arr), Problem(name, "odd", f"mode {mode}, size {w}x{h}", change)
    return np.ascontiguousarray(arr), None


def unreadable_reason(info: os.stat_result) -> str | None:
    """Why a file with this status is not read as a crop, or None: only regular files up to
    ``MAX_CROP_BYTES`` are (a named pipe blocks the reader, a device never ends)."""
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        kinds = (
            (stat.S_ISFIFO, "a named pipe"),
            (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"),
            (stat.S_ISDIR, "a folder"),
        )
        kind = next((name for test, name in kinds if test(mode)), "a special file")
        return f"not a regular file ({kind}); not read"
    if info.st_size > MAX_CROP_BYTES:
        return f"{info.st_size:,} bytes is no crop (the limit is {MAX_CROP_BYTES:,}); not read"
    return None


def read_crop(path: str | Path) -> bytes | str:
    """A crop file's bytes, or why they were not read (symbolic links followed). The file is
    checked before it is opened, and again once open, so nothing but a regular file of at most
    ``MAX_CROP_BYTES`` is ever read."""
    try:
        reason = unreadable_reason(os.stat(path))
        if reason:
            return reason
        # O_NONBLOCK: a file swapped for a named pipe since the check opens without waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            reason = unreadable_reason(os.fstat(fh.fileno()))
            data = b"" if reason else fh.read(MAX_CROP_BYTES + 1)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if len(data) > MAX_CROP_BYTES:  # it grew while it was read
        return f"over {MAX_CROP_BYTES:,} bytes is no crop; not read"
    return reason or data


def default_cache_dir() -> Path:
    env = os.environ.get("PITGUARD_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pitguard"


def cache_entries(cache_dir: Path | None = None) -> list[tuple[Path, int]]:
    """The decoded-crop cache's entries with their sizes in bytes, largest first."""
    root = cache_dir or default_cache_dir()
    if not root.is_dir():
        return []
    entries = [
        (e, sum(f.stat().st_size for f in e.rglob("*") if f.is_file()))
        for e in root.glob("crops-*")
        if e.is_dir()
    ]
    return sorted(entries, key=lambda t: -t[1])


def clear_cache(cache_dir: Path | None = None) -> tuple[int, int]:
    """Remove every cache entry; returns (entries, bytes) removed. Only ``crops-*`` folders
    are touched, so a cache folder pointed at a wrong place loses nothing else."""
    import shutil

    entries = cache_entries(cache_dir)
    for path, _ in entries:
        shutil.rmtree(path, ignore_errors=True)
    return len(entries), sum(size for _, size in entries)


def _read_all(paths: list[Path]) -> list[bytes | str]:
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(read_crop, paths))


def load_crops(
    index: DatasetIndex,
    opts: DecodeOptions | None = None,
    *,
    items: list[Item] | None = None,
    cache: bool = True,
    cache_dir: Path | None = None,
) -> Crops:
    """Decode the dataset's crops; files that cannot be used as they are go to ``problems``."""
    opts = opts or DecodeOptions()
    opts.validate()
    items = index.items if items is None else items
    names = [index.relpath(it.path) for it in items]
    blobs = _read_all([it.path for it in items])

    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps([CACHE_VERSION, opts.size, opts.modes, opts.sizes]).encode())
    for name, blob in zip(names, blobs, strict=True):
        digest.update(name.encode() + b"\0")
        digest.update(
            hashlib.blake2b(blob, digest_size=16).digest() if isinstance(blob, bytes) else b"!"
        )
    key = digest.hexdigest()
    cache_path = (cache_dir or default_cache_dir()) / f"crops-{key}"

    arrays: list[np.ndarray | None]
    problems: list[Problem]
    if cache and (cache_path / "meta.json").exists():
        # A plain .npy reads at disk speed; an .npz member would be copied through zipfile.
        stack = np.load(cache_path / "images.npy")
        meta = json.loads((cache_path / "meta.json").read_text())
        keep = np.asarray(meta["keep"], dtype=bool)
        problems = [Problem(**p) for p in meta["problems"]]
        if opts.strict and problems:
            raise PitguardError(_strict_message(problems[0]))
    else:
        arrays, problems = [], []
        progress = Progress("decoding crops", len(names), "files")
        for name, blob in zip(names, blobs, strict=True):
            progress.update()
            prob: Problem | None
            if isinstance(blob, str):
                arr, prob = None, Problem(name, "unreadable", blob, "skipped")
            else:
                arr, prob = decode_bytes(blob, name, opts)
            if prob is not None:
                if opts.strict:
                    raise PitguardError(_strict_message(prob))
                problems.append(prob)
            arrays.append(arr)
        progress.close()
        keep = np.array([a is not None for a in arrays], dtype=bool)
        kept = [a for a in arrays if a is not None]
        stack = (
            np.stack(kept).transpose(0, 3, 1, 2)
            if kept
            else np.zeros((0, 3, opts.size, opts.size), np.uint8)
        )
        stack = np.ascontiguousarray(stack)
        if cache:
            _write_cache(cache_path, stack, keep, problems)

    kept_items = [it for it, k in zip(items, keep, strict=True) if k]
    return Crops(
        images=torch.from_numpy(stack),
        labels=torch.tensor([it.label for it in kept_items], dtype=torch.long),
        paths=[n for n, k in zip(names, keep, strict=True) if k],
        classes=index.classes,
        problems=problems,
        splits=[it.split for it in kept_items],
        groups=[it.group for it in kept_items],
    )


def _strict_message(p: Problem) -> str:
    return f"{p.path}: {p.reason} (strict mode stops at the first bad file; drop --strict to skip and list)"


def _write_cache(path: Path, stack: np.ndarray, keep: np.ndarray, problems: list[Problem]) -> None:
    meta = {"keep": keep.tolist(), "problems": [p.__dict__ for p in problems]}
    try:
        with atomic_path(path) as tmp:  # the folder appears whole or not at all
            tmp.mkdir()
            np.save(tmp / "images.npy", stack)
            (tmp / "meta.json").write_text(json.dumps(meta))
    except OSError:
        pass  # a read-only cache folder only costs speed
