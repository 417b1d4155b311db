"""Where tensors run: the one choice of device, and what the CPU can do (cores, native bf16)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from pitguard.core.errors import PitguardError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(
    name: str = "auto", what: str = "device", allowed: tuple[str, ...] = DEVICES
) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; ``what`` names the setting in errors."""
    if name not in allowed:
        raise PitguardError(f"{what}={name!r}: use {' or '.join(allowed)}")
    if name == "cuda" and not torch.cuda.is_available():
        other = " or ".join(d for d in allowed if d != "cuda")
        raise PitguardError(f"{what}=cuda but no CUDA device is available here; use {other}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX): autocast then pays off.

    Elsewhere bf16 is emulated and slower than fp32, so training stays in fp32. Read once per
    process: every epoch asks.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
