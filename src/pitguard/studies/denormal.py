"""How much denormal floats cost on this CPU: eager latency with flush-to-zero on and off.

``torch.set_flush_denormal`` sets the flush-to-zero flags of the calling thread only; the intra-op
worker threads keep the flags they inherited when they were created (at the first parallel op).
With more than one thread, each flag setting is therefore timed in a fresh process that sets the
flags before any parallel work.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from pitguard.deploy.bench import random_module, resolve_target
from pitguard.deploy.bundle import load_deploy_module
from pitguard.deploy.timing import (
    check_batch_sizes,
    check_threads,
    check_timing,
    crops_nchw,
    measure,
)
from pitguard.runtime.bundle import read_bundle_json

FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # 1.18e-38: below this a float32 is denormal


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
            module = random_module(target, size)
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
        x = torch.from_numpy(crops_nchw(batch, size))
        torch.set_flush_denormal(flush)
        torch.set_num_threads(threads)
        times = {}
        for name, m in subjects.items():

            @torch.no_grad()
            def call(m=m):
                return m(x.float() / 255)

            times[name] = measure(call, batch, cuda_events=False, **timing)
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
    batch = check_batch_sizes([batch_size])[0]
    threads = check_threads(threads)
    check_timing(warmup, min_runs, min_seconds)
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
