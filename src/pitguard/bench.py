"""``pitguard bench``: latency and throughput of bundles and timm models, end to end from uint8 crops.

Every measurement goes through :class:`pitguard.predict.Predictor`, the path the line uses: uint8
crops -> float / 255 -> graph -> logits, p(pit) and route. A timm model name becomes a throwaway
bundle with random weights (2 classes, default input contract) in a temporary folder, so it is timed
through exactly the same code as a shipped bundle.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from pitguard.bundle import (
    BUNDLE_SCHEMA,
    ROUTES,
    DeployModule,
    load_deploy_module,
    read_bundle_json,
)
from pitguard.errors import PitguardError
from pitguard.models import InputContract, build_model
from pitguard.policy import DecisionPolicy

BACKENDS = ("eager", "onnx", "onnx-int8", "onnx-fp16", "eager-fp16", "eager-bf16")
# Backend -> (Predictor backend, bundle.json "files" key).
_PREDICTOR = {
    "eager": ("torch", "weights"),
    "eager-fp16": ("torch", "weights"),
    "eager-bf16": ("torch", "weights"),
    "onnx": ("onnx", "onnx"),
    "onnx-int8": ("onnx-int8", "onnx_int8"),
    "onnx-fp16": ("onnx-fp16", "onnx_fp16"),
}
_AUTOCAST = {"eager-fp16": torch.float16, "eager-bf16": torch.bfloat16}
_EXPORT_FLAG = {"onnx": "--onnx", "onnx-int8": "--int8", "onnx-fp16": "--fp16"}
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # 1.18e-38: below this a float32 is denormal
CALIB_CROPS = 64  # synthetic crops that calibrate INT8 for a timm name


# --------------------------------------------------------------------------- input checks


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
    return _check_backends([p.strip() for p in str(text).split(",")])


def _check_backends(backends: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for b in backends:
        if b not in BACKENDS:
            raise PitguardError(
                f"backend {b!r}: unknown; choose from {', '.join(BACKENDS)} "
                "(e.g. --backends eager,onnx,onnx-int8)"
            )
        if b not in out:
            out.append(b)
    if not out:
        raise PitguardError("no backend given; use e.g. --backends eager,onnx")
    return tuple(out)


def _check_batch_sizes(batch_sizes: Iterable[int]) -> tuple[int, ...]:
    sizes = tuple(batch_sizes)
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
            raise PitguardError(
                f"batch size {b!r}: not a positive integer; give sizes such as 1,8,32"
            )
    if not sizes:
        raise PitguardError("no batch size given; use e.g. --batch-sizes 1,8,32")
    return tuple(dict.fromkeys(int(b) for b in sizes))


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return _usable_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise PitguardError(f"--threads {threads!r}: give a positive integer such as 2")
    return threads


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise PitguardError(f"--device {device!r}: use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise PitguardError("--device cuda: no CUDA device is available here; use --device cpu")
    return device


def _check_timing(warmup: int, min_runs: int, min_seconds: float) -> None:
    if warmup < 0:
        raise PitguardError(f"warmup {warmup!r}: give 0 or more runs")
    if min_runs < 1:
        raise PitguardError(f"--min-runs {min_runs!r}: give at least 1")
    if not min_seconds >= 0:
        raise PitguardError(f"--min-seconds {min_seconds!r}: give 0 or more seconds")


def resolve_target(target: str) -> str:
    """``"bundle"`` or ``"timm"``; a PitguardError says why the target is neither."""
    path = Path(target)
    if path.is_dir():
        if not (path / "bundle.json").is_file():
            raise PitguardError(
                f"bench target {target}: folder has no bundle.json; give a bundle folder written "
                "by `pitguard export RUN --out DIR`, or a timm model name such as resnet50"
            )
        read_bundle_json(path)  # schema check
        return "bundle"
    if path.exists():
        raise PitguardError(
            f"bench target {target}: is a file; give its bundle folder (the one with bundle.json)"
        )
    import timm

    import pitguard.models  # noqa: F401  (registers pitguard_tiny and pitguard_small with timm)

    if timm.is_model(target):
        return "timm"
    if "/" in target or os.sep in target or target.startswith("."):
        raise PitguardError(
            f"bench target {target}: no such folder; give an existing bundle folder "
            "or a timm model name such as resnet50"
        )
    close = timm.list_models(f"*{target.split('_')[0]}*")[:5]
    raise PitguardError(
        f"bench target {target!r}: not a bundle folder and not a timm model name; "
        f"similar names: {', '.join(close) or 'none'} (see timm.list_models())"
    )


# --------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def hardware(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    info: dict = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
        "loadavg_start": _loadavg(),
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


def _crops_nchw(count: int, size: int) -> np.ndarray:
    from pitguard.data.synth import make_crops

    images, _ = make_crops(count, seed=0, size=size)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- timing


def _measure(
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


# --------------------------------------------------------------------------- timm names


def _random_module(name: str, size: int) -> DeployModule:
    net = build_model(name, 2, InputContract(size=size))
    return DeployModule(net, DecisionPolicy(1.0, 0.5, 0.5, pit_index=1)).eval()


def _timm_bundle(name: str, folder: Path, size: int, wanted: Sequence[str]) -> dict[str, str]:
    """Write ``name`` with random weights as a bundle; returns backend -> why its graph is missing."""
    from pitguard.export import convert_fp16, export_onnx, quantize_int8

    module = _random_module(name, size)
    folder.mkdir(parents=True)
    # clone: safetensors refuses tensors that share storage
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    files = {"weights": "model.safetensors"}
    failed: dict[str, str] = {}
    onnx_wanted = [b for b in wanted if b.startswith("onnx")]
    if onnx_wanted:
        try:
            export_onnx(module, folder / "model.onnx", size)
            files["onnx"] = "model.onnx"
        except Exception as exc:  # some timm architectures do not export; time the rest
            for b in onnx_wanted:
                failed[b] = f"ONNX export of {name} failed: {type(exc).__name__}: {exc}"
    if "onnx" in files and "onnx-int8" in wanted:
        crops = torch.from_numpy(_crops_nchw(CALIB_CROPS, size))
        try:
            quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", crops)
            files["onnx_int8"] = "model.int8.onnx"
        except Exception as exc:
            failed["onnx-int8"] = f"INT8 quantization of {name} failed: {type(exc).__name__}: {exc}"
    if "onnx" in files and "onnx-fp16" in wanted:
        try:
            convert_fp16(folder / "model.onnx", folder / "model.fp16.onnx")
            files["onnx_fp16"] = "model.fp16.onnx"
        except Exception as exc:
            failed["onnx-fp16"] = f"FP16 conversion of {name} failed: {type(exc).__name__}: {exc}"
    meta = {
        "schema_version": BUNDLE_SCHEMA,
        "model_name": name,
        "model_kwargs": {"num_classes": 2, "drop_rate": 0.0},
        "classes": ["cherry_clean", "cherry_pit"],
        "input": module.net.contract.to_dict(),
        "policy": module.policy.to_dict(),
        "files": files,
        "note": "random weights, written by pitguard bench for timing only",
    }
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2))
    return failed


# --------------------------------------------------------------------------- bench


def _why_unavailable(backend: str, meta: dict, device: str, failed: dict[str, str]) -> str | None:
    if backend in failed:
        return failed[backend]
    key = _PREDICTOR[backend][1]
    if key not in meta.get("files", {}):
        return (
            f"bundle has no {backend} graph; re-export it with "
            f"`pitguard export RUN --out DIR {_EXPORT_FLAG[backend]}`"
        )
    if backend == "eager-bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16"
    return None


def _bench_target(
    target: str,
    kind: str,
    wanted: Sequence[str],
    sizes: Sequence[int],
    threads: int,
    device: str,
    size: int,
    timing: dict,
    crops_cache: dict[int, np.ndarray],
) -> tuple[list[dict], list[dict]]:
    from pitguard.predict import Predictor

    records: list[dict] = []
    skipped: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pitguard-bench-") as tmp:
        failed: dict[str, str] = {}
        if kind == "timm":
            folder = Path(tmp) / "bundle"
            failed = _timm_bundle(target, folder, size, wanted)
        else:
            folder = Path(target)
        meta = read_bundle_json(folder)
        side = int(meta["input"]["size"])
        if side not in crops_cache:
            crops_cache[side] = _crops_nchw(max(sizes), side)
        crops = crops_cache[side]
        for backend in wanted:
            reason = _why_unavailable(backend, meta, device, failed)
            if reason:
                skipped.append({"target": target, "backend": backend, "reason": reason})
                continue
            predictor = Predictor(folder, _PREDICTOR[backend][0], device, threads)
            if backend.startswith("eager"):
                ran_on = device
            else:
                ran_on = (
                    "cuda" if predictor.session.get_providers()[0].startswith("CUDA") else "cpu"
                )
            # Events time the GPU stream; onnxruntime returns host arrays, so a host clock is exact there.
            cuda_events = ran_on == "cuda" and backend.startswith("eager")
            dtype = _AUTOCAST.get(backend)
            for batch in sizes:
                x = np.ascontiguousarray(crops[:batch])
                if dtype is None:
                    call = functools.partial(predictor.predict_uint8, x)
                else:
                    call = functools.partial(_predict_autocast, predictor, x, dtype)
                stats = _measure(call, batch, cuda_events=cuda_events, **timing)
                records.append(
                    {
                        "target": target,
                        "backend": backend,
                        "batch_size": batch,
                        **stats,
                        "device": ran_on,
                    }
                )
            del predictor
    return records, skipped


@torch.no_grad()
def _predict_autocast(predictor, crops: np.ndarray, dtype: torch.dtype):
    """``Predictor.predict_uint8`` under autocast (which yields half-precision outputs)."""
    from pitguard.predict import Prediction

    x = crops.astype(np.float32) / np.float32(255)
    with torch.autocast(device_type=predictor.device, dtype=dtype):
        outs = predictor.module(torch.from_numpy(x).to(predictor.device))
    logits, p, route = (
        t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy() for t in outs
    )
    labels = [predictor.classes[i] for i in logits.argmax(1)]
    return Prediction(labels, p, [ROUTES[int(r)] for r in route])


def compute_ratios(records: list[dict], baseline: str | None) -> list[dict]:
    """Per-crop speedup of each record over the baseline's eager record at the same batch size."""
    if baseline is None:
        return []
    base = {
        r["batch_size"]: r for r in records if r["target"] == baseline and r["backend"] == "eager"
    }
    out = []
    for r in records:
        ref = base.get(r["batch_size"])
        if ref is None or ref is r:
            continue
        out.append(
            {
                "target": r["target"],
                "backend": r["backend"],
                "batch_size": r["batch_size"],
                "speedup_per_crop_vs_baseline": ref["ms_per_crop"] / r["ms_per_crop"],
            }
        )
    return out


def bench(
    targets: list[str],
    batch_sizes: Sequence[int] = (1, 8, 32),
    backends: Sequence[str] = ("eager", "onnx"),
    threads: int | None = None,
    baseline: str | None = None,
    warmup: int = 5,
    min_runs: int = 20,
    min_seconds: float = 2.0,
    device: str = "cpu",
    size: int = 128,
) -> dict:
    """Time each target (bundle folder or timm name) on each backend and batch size.

    Each batch is timed ``warmup`` times untimed, then until both ``min_runs`` runs and
    ``min_seconds`` have passed. The baseline is timed as ``eager`` in the same run; on CUDA
    ``eager`` also brings ``eager-fp16`` and ``eager-bf16`` (autocast).
    """
    targets = list(dict.fromkeys(str(t) for t in targets))
    if not targets:
        raise PitguardError(
            "no target given; name a bundle folder or a timm model such as resnet50"
        )
    sizes = _check_batch_sizes(batch_sizes)
    wanted = list(_check_backends(backends))
    device = _check_device(device)
    threads = _check_threads(threads)
    _check_timing(warmup, min_runs, min_seconds)
    if device == "cuda" and "eager" in wanted:
        at = wanted.index("eager") + 1
        extra = [b for b in ("eager-fp16", "eager-bf16") if b not in wanted]
        wanted[at:at] = extra

    plan = [(t, list(wanted)) for t in targets]
    if baseline is not None:
        baseline = str(baseline)
        for t, bs in plan:
            if t == baseline and "eager" not in bs:
                bs.insert(0, "eager")
        if baseline not in targets:
            plan.insert(0, (baseline, ["eager"]))
    # Every target is checked before any timing, so a typo fails in seconds, not minutes.
    kinds = {t: resolve_target(t) for t, _ in plan}

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    flush_supported = torch.set_flush_denormal(True)
    info = hardware(device)
    info["flush_denormal"] = flush_supported
    timing = {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds}
    records: list[dict] = []
    skipped: list[dict] = []
    crops_cache: dict[int, np.ndarray] = {}
    try:
        for t, bs in plan:
            recs, skips = _bench_target(
                t, kinds[t], bs, sizes, threads, device, size, timing, crops_cache
            )
            records += recs
            skipped += skips
    finally:
        torch.set_num_threads(previous_threads)
    info["loadavg_end"] = _loadavg()
    return {
        "hardware": info,
        "threads": threads,
        "settings": {**timing, "device": device, "size": size, "batch_sizes": list(sizes)},
        "results": records,
        "skipped": skipped,
        "baseline": baseline,
        "ratios": compute_ratios(records, baseline),
    }


def format_table(result: dict) -> str:
    """A side-by-side table of the records, then skips and the hardware line."""
    speed = {
        (r["target"], r["backend"], r["batch_size"]): r["speedup_per_crop_vs_baseline"]
        for r in result.get("ratios", [])
    }
    baseline = result.get("baseline")
    rows = []
    for r in result["results"]:
        key = (r["target"], r["backend"], r["batch_size"])
        if baseline is not None and r["target"] == baseline and r["backend"] == "eager":
            x = "base"
        elif key in speed:
            x = f"{speed[key]:.2f}x"
        else:
            x = ""
        rows.append(
            [
                r["target"],
                r["backend"],
                str(r["batch_size"]),
                f"{r['p50_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['ms_per_crop']:.3f}",
                f"{r['crops_per_s']:.1f}",
                x,
            ]
        )
    header = ["target", "backend", "batch", "p50 ms", "p90", "p99", "ms/crop", "crops/s"]
    header.append("x baseline" if baseline else "")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        left = [f"{c:<{w}}" for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [f"{c:>{w}}" for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    out = [line(header)] + [line(row) for row in rows]
    for s in result.get("skipped", []):
        out.append(f"skipped {s['target']} {s['backend']}: {s['reason']}")
    hw = result["hardware"]
    gpu = f", gpu {hw['gpu']}" if hw.get("gpu") else ""
    out.append(
        f"{result['threads']} thread(s) on {hw['cpu']} ({hw['usable_cores']} usable cores{gpu}), "
        f"torch {hw['torch']}, onnxruntime {hw.get('onnxruntime')}, load avg "
        f"{hw.get('loadavg_start')} -> {hw.get('loadavg_end')}"
    )
    if baseline:
        out.append(f"x baseline: {baseline} eager ms/crop divided by this row's (higher is faster)")
    return "\n".join(out)


# --------------------------------------------------------------------------- denormals
#
# torch.set_flush_denormal sets the flush-to-zero flags of the calling thread only; the intra-op
# worker threads keep the flags they inherited when they were created (at the first parallel op).
# With more than one thread, each flag setting is therefore timed in a fresh process that sets the
# flags before any parallel work.


def count_denormals(module: torch.nn.Module) -> dict:
    """Floating weights and buffers: how many values, how many are denormal (0 < |w| < 1.18e-38)."""
    total = tiny = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            total += t.numel()
            tiny += int(((t.abs() < FLOAT32_TINY) & (t != 0)).sum())
    return {"values": total, "denormal": tiny}


@torch.no_grad()
def _scale_into_denormals(module: torch.nn.Module, scale: float) -> None:
    # With flush-to-zero on, the products would be flushed to 0 and no denormal would remain.
    torch.set_flush_denormal(False)
    for p in module.parameters():
        if p.ndim > 1:  # conv and linear weights, not norms or biases
            p.mul_(scale)


def _denormal_subjects(
    target: str, kind: str, size: int, scaled: bool, scale: float
) -> dict[str, torch.nn.Module]:
    if kind == "bundle":
        module, _ = load_deploy_module(target)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random weights in every process
            module = _random_module(target, size)
    subjects: dict[str, torch.nn.Module] = {"as_is": module}
    if scaled:
        twin = copy.deepcopy(module)
        _scale_into_denormals(twin, scale)
        subjects["scaled_copy"] = twin
    return subjects


def _denormal_times(
    target: str,
    kind: str,
    size: int,
    batch: int,
    threads: int,
    flush: bool,
    scaled: bool,
    scale: float,
    timing: dict,
) -> dict:
    """Eager p50 etc. of each subject with flush-to-zero ``flush``; also the weights' denormal counts."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # models are made without starting worker threads
    try:
        subjects = _denormal_subjects(target, kind, size, scaled, scale)
        counts = {name: count_denormals(m) for name, m in subjects.items()}
        x = torch.from_numpy(_crops_nchw(batch, size))
        torch.set_flush_denormal(flush)
        torch.set_num_threads(threads)
        times = {}
        for name, m in subjects.items():

            @torch.no_grad()
            def call(m=m):
                return m(x.float() / 255)

            times[name] = _measure(call, batch, cuda_events=False, **timing)
    finally:
        torch.set_flush_denormal(True)
        torch.set_num_threads(previous)
    return {"counts": counts, "times": times}


def _in_fresh_process(fn: Callable[..., dict], **kwargs) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, **kwargs).result()


def denormal_effect(
    bundle_or_model: str,
    batch_size: int = 32,
    threads: int | None = None,
    *,
    scaled: bool = True,
    scale: float = 1e-39,
    warmup: int = 2,
    min_runs: int = 10,
    min_seconds: float = 1.0,
    size: int = 128,
) -> dict:
    """Eager latency with flush-to-zero on and off, for the model as it is and (``scaled``) for a
    copy whose conv/linear weights were multiplied by ``scale`` into the denormal range.

    The scaled copy's outputs are meaningless; it shows what denormal arithmetic costs on this CPU.
    A bundle's weights were already cleaned of denormals at export (``denormals_zeroed``); a timm
    name gets random weights (seed 0). With ``threads`` > 1 each setting runs in a fresh process.
    """
    target = str(bundle_or_model)
    batch = _check_batch_sizes([batch_size])[0]
    threads = _check_threads(threads)
    _check_timing(warmup, min_runs, min_seconds)
    kind = resolve_target(target)
    zeroed = None
    model_name = target
    if kind == "bundle":
        meta = read_bundle_json(target)
        size = int(meta["input"]["size"])
        zeroed = meta.get("denormals_zeroed")
        model_name = meta["model_name"]
    supported = torch.set_flush_denormal(True)
    args: dict[str, Any] = {
        "target": target,
        "kind": kind,
        "size": size,
        "batch": batch,
        "threads": threads,
        "scaled": scaled,
        "scale": scale,
        "timing": {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds},
    }
    isolated = threads > 1
    runs = {}
    for flush in (True, False):
        if isolated:
            runs[flush] = _in_fresh_process(_denormal_times, flush=flush, **args)
        else:
            runs[flush] = _denormal_times(flush=flush, **args)
    result: dict = {
        "model": target,
        "kind": kind,
        "model_name": model_name,
        "weights_source": "bundle" if kind == "bundle" else "random init (seed 0)",
        "batch_size": batch,
        "threads": threads,
        "separate_processes": isolated,
        "flush_denormal_supported": supported,
        "denormals_zeroed_at_export": zeroed,
    }
    for name, counts in runs[True]["counts"].items():
        on, off = runs[True]["times"][name], runs[False]["times"][name]
        result[name] = {
            "weights": counts,
            "flush_on": on,
            "flush_off": off,
            "slowdown_without_flush": off["p50_ms"] / on["p50_ms"],
        }
    if scaled:
        result["scaled_copy"]["scale"] = scale
        result["scaled_copy"]["note"] = (
            f"copy of {model_name} with conv/linear weights times {scale:g}; outputs "
            "meaningless, the timing shows what denormal arithmetic costs"
        )
    return result
