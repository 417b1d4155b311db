"""``pitguard export``: a run becomes a bundle, with ONNX, INT8 and FP16 graphs behind parity gates."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pitguard import __version__
from pitguard.deploy.backends import BACKENDS, ort_session
from pitguard.deploy.bundle import (
    DeployModule,
    is_bundle,
    sanitize_denormals,
    save_weights,
    write_bundle_json,
)
from pitguard.deploy.graphs import (
    OPSET,
    convert_fp16,
    export_onnx,
    quantize_int8,
    run_onnx,
    run_torch,
)
from pitguard.errors import PitguardError
from pitguard.files import atomic_path, file_sha256, read_json
from pitguard.models import fold_normalization
from pitguard.policy import DecisionPolicy, Route
from pitguard.runfolder import (
    RunModel,
    RunPaths,
    evaluated_part,
    load_part,
    load_policy,
    load_run,
)

MAX_PROB_DIFF = 1e-4  # fp32 ONNX against PyTorch on the calib crops
INT8_MAX_ACCURACY_DROP = 0.01  # argmax accuracy on calib may drop by at most 1 point
FP16_MAX_ACCURACY_DROP = 0.005
EXTRA_PIT_MISSES_ALLOWED = 0  # a quantized graph may not route more calib pits clean than fp32


def _gate_stats(labels: np.ndarray, pit_index: int, ref, new) -> dict:
    ref_logits, ref_p, ref_route = ref
    logits, p, route = new
    is_pit = labels == pit_index
    return {
        "n": len(labels),
        "max_prob_diff": float(np.abs(ref_p - p).max()),
        "route_mismatches": int((ref_route != route).sum()),
        "accuracy_ref": float((ref_logits.argmax(1) == labels).mean()),
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "pit_misses_ref": int((is_pit & (ref_route == Route.CLEAN)).sum()),
        "pit_misses": int((is_pit & (route == Route.CLEAN)).sum()),
        "n_pits": int(is_pit.sum()),
    }


def _input_guard(run: RunModel) -> dict | None:
    """The guard fitted on the crops the run trained on (none for a run without its own split)."""
    from pitguard.guard import InputGuard

    parts = run.meta.get("data", {}).get("counts", {})
    if "train" not in parts:
        return None
    train = load_part(run, None, "train")
    return InputGuard.fit(train.crops.images.numpy(), run.net.contract.channels).to_dict()


def _check_part(run: RunModel) -> str:
    """The run's own crops the exported graph is checked on: calib, or, for a cross-fitted run
    (which trained on its calib crops), the pooled crops; never the test part."""
    parts = run.meta.get("data", {}).get("counts", {})
    return "calib" if "calib" in parts or not parts else "train"


def _latest_test_metrics(run_dir: Path) -> dict | None:
    best = None
    for path in RunPaths(run_dir).eval_metrics():
        m = read_json(path) or {}
        if evaluated_part(m)[1] == "test":
            keep = (
                "data",
                "n",
                "accuracy",
                "accuracy_ci",
                "balanced_accuracy",
                "macro_f1",
                "roc_auc",
                "policy",
            )
            best = {k: m[k] for k in keep if k in m}
    return best


def export_run(
    run_dir: str | Path,
    out: str | Path,
    onnx: bool = False,
    int8: bool = False,
    fp16: bool = False,
    calib_data: str | Path | None = None,
    allow_uncalibrated: bool = False,
    replace: bool = False,
) -> dict:
    """Export RUN as a bundle in OUT; ``replace`` swaps an existing bundle there for the new one
    (only once the new one has passed its gates; a folder that is no bundle is never replaced)."""
    run = load_run(run_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PitguardError(f"--out {out}: is a file; give a folder for the bundle")
    if out.exists() and any(out.iterdir()):
        if not replace:
            raise PitguardError(
                f"{out}: exists and is not empty; choose a new --out, or --force to replace "
                "the bundle there"
            )
        if not is_bundle(out):
            raise PitguardError(
                f"{out}: holds files but no bundle.json; --force replaces only a bundle, "
                "so choose a new --out"
            )
    policy = load_policy(run.run)
    guarantee = None
    if policy is None:
        if not allow_uncalibrated:
            raise PitguardError(
                f"{run.run}: not calibrated; run `pitguard calibrate {run.run}` first "
                "(or --allow-uncalibrated to route by argmax with no maybe)"
            )
        policy = DecisionPolicy(1.0, 0.5, 0.5, run.pit_index)
    else:
        guarantee = read_json(RunPaths(run.run).policy)
        fitted = (guarantee or {}).get("model_sha256")
        if fitted and fitted != file_sha256(RunPaths(run.run).weights):
            raise PitguardError(
                f"{RunPaths(run.run).policy}: calibrated for other weights than the run's "
                f"{RunPaths(run.run).weights.name} (trained again since?); run pitguard "
                f"calibrate {run.run} again, then export"
            )
    if int8 or fp16:
        onnx = True

    net = fold_normalization(copy.deepcopy(run.net).eval())
    module = DeployModule(net, policy).eval()
    denormals = sanitize_denormals(module)
    ev = load_part(run, calib_data, None if calib_data else _check_part(run))
    crops = ev.crops.images

    old = out.with_name(f".{out.name}.replaced{os.getpid()}")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        meta: dict[str, Any] = {
            "model_name": run.model_name,
            "model_kwargs": run.model_kwargs,
            "classes": list(run.classes),
            "input": net.contract.to_dict(),
            "input_note": "float32 crops scaled to [0, 1], (N, 3, H, W), all three channels as the line sends them; "
            "channel selection, normalization (folded) and pooling are inside the graph",
            "policy": policy.to_dict(),
            "guarantee": guarantee["guarantee"] if guarantee else None,
            "calibration": guarantee["thresholds"] if guarantee else None,
            "metrics": {
                "selected_on": run.meta.get("selected_on"),
                "test": _latest_test_metrics(run.run),
            },
            "provenance": {
                "run": str(run.run.resolve()),
                "data": run.meta.get("data"),
                "config": run.meta.get("config"),
                "pitguard_version": __version__,
                "torch_version": torch.__version__,
            },
            "denormals_zeroed": denormals,
            "input_guard": _input_guard(run),
            "files": {"weights": save_weights(module, tmp)},
        }
        ref = run_torch(module, crops)
        if onnx:
            fp32 = tmp / BACKENDS["onnx"].file_name
            export_onnx(module, fp32, net.contract.size)
            stats = _gate_stats(ev.labels, run.pit_index, ref, run_onnx(ort_session(fp32), crops))
            stats["data"] = ev.description
            if stats["max_prob_diff"] > MAX_PROB_DIFF or stats["route_mismatches"]:
                raise PitguardError(
                    f"ONNX parity failed on {ev.description}: max p(pit) difference {stats['max_prob_diff']:.2e} "
                    f"(limit {MAX_PROB_DIFF:.0e}), {stats['route_mismatches']} of {stats['n']} routes differ; no bundle written"
                )
            meta["files"]["onnx"] = fp32.name
            limits = {"max_prob_diff": MAX_PROB_DIFF, "route_mismatches": 0}
            meta["onnx"] = {"opset": OPSET, "parity": stats, "tolerances": limits}
        variants: list[tuple[str, str, float, Callable[..., None], tuple, dict]] = []
        if int8:
            method = {
                "method": "onnxruntime static QDQ, per-channel, calibrated on the calib crops"
            }
            variants.append(
                (
                    "int8",
                    BACKENDS["onnx-int8"].file_name,
                    INT8_MAX_ACCURACY_DROP,
                    quantize_int8,
                    (crops,),
                    method,
                )
            )
        if fp16:
            variants.append(
                (
                    "fp16",
                    BACKENDS["onnx-fp16"].file_name,
                    FP16_MAX_ACCURACY_DROP,
                    convert_fp16,
                    (),
                    {"input_dtype": "float16"},
                )
            )
        for key, filename, max_drop, make, extra_args, info in variants:
            make(fp32, tmp / filename, *extra_args)
            stats = _gate_stats(
                ev.labels, run.pit_index, ref, run_onnx(ort_session(tmp / filename), crops)
            )
            _quantized_gate(key.upper(), stats, max_drop, ev.description)
            meta["files"][BACKENDS[f"onnx-{key}"].file_key] = filename
            meta[key] = {
                **info,
                "gate": stats,
                "tolerances": {
                    "max_accuracy_drop": max_drop,
                    "extra_pit_misses": EXTRA_PIT_MISSES_ALLOWED,
                },
            }
        write_bundle_json(tmp, meta)
        if out.exists():
            if any(out.iterdir()):  # the bundle --force replaces, moved aside at the last step
                os.replace(out, old)
            else:
                out.rmdir()  # an empty folder given as --out
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return meta


def _quantized_gate(name: str, stats: dict, max_drop: float, where: str) -> None:
    drop = stats["accuracy_ref"] - stats["accuracy"]
    extra = stats["pit_misses"] - stats["pit_misses_ref"]
    if drop > max_drop or extra > EXTRA_PIT_MISSES_ALLOWED:
        raise PitguardError(
            f"{name} refused on {where}: accuracy {100 * stats['accuracy']:.2f}% vs fp32 {100 * stats['accuracy_ref']:.2f}% "
            f"(max drop {100 * max_drop:.1f} points), pits routed clean {stats['pit_misses']} vs fp32 "
            f"{stats['pit_misses_ref']} (max extra {EXTRA_PIT_MISSES_ALLOWED}); no bundle written"
        )
