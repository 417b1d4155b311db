"""Timing for benchmarks: checked settings, the machine measured on, repeatable crops, one loop."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from pitguard.core.devices import usable_cores
from pitguard.core.errors import PitguardError
from pitguard.runtime.backends import get_backend


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); a PitguardError names the bad part."""
    parts = [p.strip() for p in str(text).split(",")]
    sizes = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise PitguardError(
                f"--batch-sizes {text!r}: {part!r} is not a positive integer; "
                "give comma-separated sizes such as 1,8,32"
            )
        sizes.append(int(part))
    return tuple(sizes)


def parse_backends(text: str) -> tuple[str, ...]:
    """``"eager,onnx"`` -> ("eager", "onnx"), checked against the known backends."""
    return check_backends([p.strip() for p in str(text).split(",")])


def check_backends(backends: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for b in backends:
        name = get_backend(b).name
        if name not in out:
            out.append(name)
    if not out:
        raise PitguardError("no backend given; use e.g. --backends eager,onnx")
    return tuple(out)


def check_batch_sizes(batch_sizes: Iterable[int]) -> tuple[int, ...]:
    sizes = tuple(batch_sizes)
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
            raise PitguardError(
                f"batch size {b!r}: not a positive integer; give sizes such as 1,8,32"
            )
    if not sizes:
        raise PitguardError("no batch size given; use e.g. --batch-sizes 1,8,32")
    return tuple(dict.fromkeys(int(b) for b in sizes))


def check_threads(threads: int | None) -> int:
    if threads is None:
        return usable_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise PitguardError(f"--threads {threads!r}: give a positive integer such as 2")
    return threads


def check_timing(warmup: int, min_runs: int, min_seconds: float) -> None:
    if warmup < 0:
        raise PitguardError(f"warmup {warmup!r}: give 0 or more runs")
    if min_runs < 1:
        raise PitguardError(f"--min-runs {min_runs!r}: give at least 1")
    if not min_seconds >= 0:
        raise PitguardError(f"--min-seconds {min_seconds!r}: give 0 or more seconds")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def hardware(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    info: dict = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
        "loadavg_start": loadavg(),
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        info["cuda"] = torch.version.cuda
    return info


def crops_nchw(count: int, size: int) -> np.ndarray:
    from pitguard.data.synth import make_crops

    images, _ = make_crops(count, seed=0, size=size)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def measure(
    call: Callable[[], object],
    batch: int,
    warmup: int,
    min_runs: int,
    min_seconds: float,
    cuda_events: bool,
) -> dict:
    for _ in range(warmup):
        call()
    times_ms: list[float] = []
    start = time.perf_counter()
    while len(times_ms) < min_runs or time.perf_counter() - start < min_seconds:
        if cuda_events:
            # GPU timestamps around the whole call: the host-side /255 and copies show up
            # as gaps between the two events, so the figure stays end to end.
            t0 = torch.cuda.Event(enable_timing=True)
            t1 = torch.cuda.Event(enable_timing=True)
            t0.record()
            call()
            t1.record()
            t1.synchronize()
            times_ms.append(float(t0.elapsed_time(t1)))
        else:
            t = time.perf_counter()
            call()
            times_ms.append((time.perf_counter() - t) * 1000.0)
    arr = np.asarray(times_ms)
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    mean = float(arr.mean())
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "ms_per_crop": p50 / batch,
        "crops_per_s": batch / (mean / 1000.0),
        "runs": len(times_ms),
    }
