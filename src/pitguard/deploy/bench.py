"""``pitguard bench``: latency and throughput of bundles and timm models, end to end from uint8 crops.

Every measurement goes through :class:`pitguard.deploy.predict.Predictor`, the path the line uses: uint8
crops -> float / 255 -> graph -> logits, p(pit) and route. A timm model name becomes a throwaway
bundle with random weights (2 classes, default input contract) in a temporary folder, so it is timed
through exactly the same code as a shipped bundle.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pitguard.core.devices import pick_device
from pitguard.core.errors import PitguardError
from pitguard.deploy.bench_cascade import cascade_record, second_stage
from pitguard.deploy.bench_result import BenchRecord, BenchResult
from pitguard.deploy.bundle import DeployModule, save_weights
from pitguard.deploy.timing import (
    check_backends,
    check_batch_sizes,
    check_threads,
    check_timing,
    crops_nchw,
    hardware,
    loadavg,
    measure,
)
from pitguard.runtime.backends import BACKENDS
from pitguard.runtime.bundle import (
    guard_stamp,
    is_bundle,
    read_bundle_json,
    write_bundle_json,
)
from pitguard.runtime.contract import contract_stamp
from pitguard.runtime.policy import DecisionPolicy

_log = logging.getLogger(__name__)

CALIB_CROPS = 64  # synthetic crops that calibrate INT8 for a timm name


def resolve_target(target: str) -> str:
    """``"bundle"`` or ``"timm"``; a PitguardError says why the target is neither."""
    path = Path(target)
    if path.is_dir():
        if not is_bundle(path):
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

    import pitguard.models.nets  # noqa: F401  (registers pitguard_tiny and pitguard_small with timm)

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


# --------------------------------------------------------------------------- timm names


def random_module(name: str, size: int) -> DeployModule:
    """``name`` with random weights (2 classes, default input contract) and a neutral policy."""
    from pitguard.models.nets import InputContract, build_model

    net = build_model(name, 2, InputContract(size=size))
    return DeployModule(net, DecisionPolicy(1.0, 0.5, 0.5, pit_index=1)).eval()


def _timm_bundle(name: str, folder: Path, size: int, wanted: Sequence[str]) -> dict[str, str]:
    """Write ``name`` with random weights as a bundle; returns backend -> why its graph is missing."""
    from pitguard.deploy.graphs import convert_fp16, export_onnx, quantize_int8, stamp_graph

    module = random_module(name, size)
    folder.mkdir(parents=True)
    meta: dict = {
        "model_name": name,
        "model_kwargs": {"num_classes": 2, "drop_rate": 0.0},
        "classes": ["clean", "pit"],
        "input": module.net.contract.to_dict(),
        "policy": module.policy.to_dict(),
        "note": "random weights, written by pitguard bench for timing only",
    }
    stamps = {**guard_stamp(None), **contract_stamp(meta)}
    files = {"weights": save_weights(module, folder, stamps)}
    failed: dict[str, str] = {}
    onnx_wanted = [b for b in wanted if BACKENDS[b].runtime == "onnx"]
    if onnx_wanted:
        try:
            export_onnx(module, folder / BACKENDS["onnx"].file_name, size)
            stamp_graph(folder / BACKENDS["onnx"].file_name, None, meta)
            files["onnx"] = BACKENDS["onnx"].file_name
        except Exception as exc:  # some timm architectures do not export; time the rest
            for b in onnx_wanted:
                failed[b] = f"ONNX export of {name} failed: {type(exc).__name__}: {exc}"
    if "onnx" in files and "onnx-int8" in wanted:
        crops = torch.from_numpy(crops_nchw(CALIB_CROPS, size))
        try:
            quantize_int8(folder / files["onnx"], folder / BACKENDS["onnx-int8"].file_name, crops)
            stamp_graph(folder / BACKENDS["onnx-int8"].file_name, None, meta)
            files["onnx_int8"] = BACKENDS["onnx-int8"].file_name
        except Exception as exc:
            failed["onnx-int8"] = f"INT8 quantization of {name} failed: {type(exc).__name__}: {exc}"
    if "onnx" in files and "onnx-fp16" in wanted:
        try:
            convert_fp16(folder / files["onnx"], folder / BACKENDS["onnx-fp16"].file_name)
            stamp_graph(folder / BACKENDS["onnx-fp16"].file_name, None, meta)
            files["onnx_fp16"] = BACKENDS["onnx-fp16"].file_name
        except Exception as exc:
            failed["onnx-fp16"] = f"FP16 conversion of {name} failed: {type(exc).__name__}: {exc}"
    write_bundle_json(folder, {**meta, "files": files})
    return failed


# --------------------------------------------------------------------------- bench


def _why_unavailable(backend: str, meta: dict, device: str, failed: dict[str, str]) -> str | None:
    if backend in failed:
        return failed[backend]
    if BACKENDS[backend].file_key not in meta.get("files", {}):
        return (
            f"bundle has no {backend} graph; re-export it with "
            f"`pitguard export RUN --out DIR {BACKENDS[backend].export_flag}`"
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
    from pitguard.deploy.predict import Predictor

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
            crops_cache[side] = crops_nchw(max(sizes), side)
        crops = crops_cache[side]
        for backend in wanted:
            reason = _why_unavailable(backend, meta, device, failed)
            if reason:
                skipped.append({"target": target, "backend": backend, "reason": reason})
                continue
            spec = BACKENDS[backend]
            serving = "eager" if spec.runtime == "torch" else backend
            # a cascade's stages are timed apart, and summed at the share that takes the second
            predictor = Predictor(folder, serving, device, threads, second_look=False)
            second = second_stage(folder, meta, backend, device, threads)
            if spec.runtime == "torch":
                ran_on = device
            else:
                ran_on = (
                    "cuda" if predictor.session.get_providers()[0].startswith("CUDA") else "cpu"
                )
            # Events time the GPU stream; onnxruntime returns host arrays, so a host clock is exact there.
            cuda_events = ran_on == "cuda" and spec.runtime == "torch"
            dtype = getattr(torch, spec.autocast) if spec.autocast else None
            for batch in sizes:
                x = np.ascontiguousarray(crops[:batch])
                if dtype is None:
                    call = functools.partial(predictor.predict_uint8, x)
                else:
                    call = functools.partial(_predict_autocast, predictor, x, dtype)
                stats = measure(call, batch, cuda_events=cuda_events, **timing)
                _log.info(  # a line per measurement: a long bench is never silent
                    "bench: %s %s batch %d: %.3f ms per crop (%d runs)",
                    Path(target).name,
                    backend,
                    batch,
                    stats["ms_per_crop"],
                    stats["runs"],
                )
                records.append(
                    {
                        "target": target,
                        "backend": backend,
                        "batch_size": batch,
                        **stats,
                        "device": ran_on,
                    }
                )
                if second is not None:
                    timed = measure(
                        functools.partial(second, x), batch, cuda_events=cuda_events, **timing
                    )
                    records.append(cascade_record(records[-1], timed, meta["second_look"]))
            del predictor, second
    return records, skipped


@torch.no_grad()
def _predict_autocast(predictor, crops: np.ndarray, dtype: torch.dtype):
    """``Predictor.predict_uint8`` under autocast (which yields half-precision outputs)."""

    x = crops.astype(np.float32) / np.float32(255)
    with torch.autocast(device_type=predictor.device, dtype=dtype):
        outs = predictor.module(torch.from_numpy(x).to(predictor.device))
    logits, p, route = (
        t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy() for t in outs
    )
    return predictor.decide(crops, logits, p, route)


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
    ``eager`` also brings ``eager-fp16`` and ``eager-bf16`` (autocast). Returns what bench.json
    holds (``BenchResult.to_dict()``).
    """
    targets = list(dict.fromkeys(str(t) for t in targets))
    if not targets:
        raise PitguardError(
            "no target given; name a bundle folder or a timm model such as resnet50"
        )
    sizes = check_batch_sizes(batch_sizes)
    wanted = list(check_backends(backends))
    device = pick_device(device, "--device", allowed=("cpu", "cuda")).type
    threads = check_threads(threads)
    check_timing(warmup, min_runs, min_seconds)
    if device == "cuda" and "eager" in wanted:
        at = wanted.index("eager") + 1
        extra = [b.name for b in BACKENDS.values() if b.autocast and b.name not in wanted]
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
    info["loadavg_end"] = loadavg()
    return BenchResult(
        hardware=info,
        threads=threads,
        settings={**timing, "device": device, "size": size, "batch_sizes": list(sizes)},
        results=[BenchRecord.from_dict(r) for r in records],
        skipped=skipped,
        baseline=baseline,
        ratios=compute_ratios(records, baseline),
    ).to_dict()


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
