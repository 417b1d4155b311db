"""``pitguard export``: a run becomes a bundle, with ONNX, INT8 and FP16 graphs behind parity gates."""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from pitguard import __version__
from pitguard.bundle import BUNDLE_SCHEMA, DeployModule, sanitize_denormals
from pitguard.calibrate import load_policy
from pitguard.errors import PitguardError
from pitguard.evaluate import load_eval_data
from pitguard.models import fold_normalization
from pitguard.policy import DecisionPolicy
from pitguard.runs import load_run, write_json

OPSET = 17
MAX_PROB_DIFF = 1e-4  # fp32 ONNX against PyTorch on the calib crops
INT8_MAX_ACCURACY_DROP = 0.01  # argmax accuracy on calib may drop by at most 1 point
FP16_MAX_ACCURACY_DROP = 0.005
EXTRA_PIT_MISSES_ALLOWED = 0  # a quantized graph may not route more calib pits clean than fp32


def ort_session(path: Path, threads: int = 0, device: str = "cpu"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), opts, providers=providers)


def run_onnx(
    session, crops_u8: torch.Tensor, batch: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    outs: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(crops_u8), batch):
        x = (crops_u8[start : start + batch].numpy().astype(np.float32) / np.float32(255)).astype(
            dtype
        )
        for acc, value in zip(outs, session.run(None, {"crops": x}), strict=True):
            acc.append(value.astype(np.float32) if value.dtype == np.float16 else value)
    logits, p_pit, route = (np.concatenate(o) for o in outs)
    return logits, p_pit, route


@torch.no_grad()
def run_torch(module: DeployModule, crops_u8: torch.Tensor, batch: int = 128):
    outs: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(crops_u8), batch):
        x = crops_u8[start : start + batch].float() / 255
        for acc, value in zip(outs, module(x), strict=True):
            acc.append(value.numpy())
    return tuple(np.concatenate(o) for o in outs)


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
        "pit_misses_ref": int((is_pit & (ref_route == 0)).sum()),
        "pit_misses": int((is_pit & (route == 0)).sum()),
        "n_pits": int(is_pit.sum()),
    }


def export_onnx(module: DeployModule, path: Path, size: int) -> None:
    dummy = torch.rand(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # the TorchScript exporter is chosen on purpose
        _export(module, dummy, path)


def _export(module: DeployModule, dummy: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        module,
        (dummy,),
        str(path),
        input_names=["crops"],
        output_names=["logits", "p_pit", "route"],
        dynamic_axes={
            "crops": {0: "batch"},
            "logits": {0: "batch"},
            "p_pit": {0: "batch"},
            "route": {0: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter handles these CNNs and the policy ops reliably
    )


class _CalibReader:
    """Feeds calibration crops to onnxruntime's static quantization."""

    def __init__(self, crops_u8: torch.Tensor, batch: int = 32):
        self.batches = [
            {"crops": crops_u8[i : i + batch].numpy().astype(np.float32) / np.float32(255)}
            for i in range(0, len(crops_u8), batch)
        ]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return self.batches[self.pos - 1]

    def rewind(self):
        self.pos = 0


def quantize_int8(fp32: Path, out: Path, crops_u8: torch.Tensor) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = out.with_name("prep.onnx")
    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    reader = _CalibReader(crops_u8)
    CalibrationDataReader.register(_CalibReader)
    quantize_static(
        str(prep),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "Gemm", "MatMul"],  # the decision stays in float
    )
    prep.unlink(missing_ok=True)


def convert_fp16(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    # The whole graph in fp16, inputs and outputs too: the converter's mixed-precision and
    # kept-io modes produce invalid graphs here. The gate measures what the thresholds' fp16
    # rounding does to the routes.
    half = convert_float_to_float16(model, keep_io_types=False)
    onnx.save(half, str(out))


def _latest_test_metrics(run_dir: Path) -> dict | None:
    best = None
    for path in sorted((run_dir / "eval").glob("*/metrics.json")):
        m = json.loads(path.read_text())
        if m.get("data", "").endswith("[test]"):
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
) -> dict:
    run = load_run(run_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PitguardError(f"{out}: exists and is not empty; choose a new --out")
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
        guarantee = json.loads((run.run / "policy.json").read_text())
    if int8 or fp16:
        onnx = True

    net = fold_normalization(copy.deepcopy(run.net).eval())
    module = DeployModule(net, policy).eval()
    denormals = sanitize_denormals(module)
    ev = load_eval_data(run, calib_data, None if calib_data else "calib")
    crops = ev.crops.images

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta: dict[str, Any] = {
            "schema_version": BUNDLE_SCHEMA,
            "model_name": run.model_name,
            "model_kwargs": run.model_kwargs,
            "classes": list(run.classes),
            "input": net.contract.to_dict(),
            "input_note": "float32 crops scaled to [0, 1], (N, 3, H, W), all three channels as the line sends them; "
            "channel selection, normalization (folded) and pooling are inside the graph",
            "outputs": {
                "logits": "(N, classes)",
                "p_pit": "(N,) calibrated",
                "route": "(N,) 0 clean, 1 maybe, 2 pit",
            },
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
            "files": {"weights": "model.safetensors"},
        }
        ref = run_torch(module, crops)
        if onnx:
            export_onnx(module, tmp / "model.onnx", net.contract.size)
            stats = _gate_stats(
                ev.labels, run.pit_index, ref, run_onnx(ort_session(tmp / "model.onnx"), crops)
            )
            stats["data"] = ev.description
            if stats["max_prob_diff"] > MAX_PROB_DIFF or stats["route_mismatches"]:
                raise PitguardError(
                    f"ONNX parity failed on {ev.description}: max p(pit) difference {stats['max_prob_diff']:.2e} "
                    f"(limit {MAX_PROB_DIFF:.0e}), {stats['route_mismatches']} of {stats['n']} routes differ; no bundle written"
                )
            meta["files"]["onnx"] = "model.onnx"
            meta["onnx"] = {"opset": OPSET, "parity": stats}
        variants: list[tuple[str, str, float, Callable[..., None], tuple, dict]] = []
        if int8:
            method = {
                "method": "onnxruntime static QDQ, per-channel, calibrated on the calib crops"
            }
            variants.append(
                ("int8", "model.int8.onnx", INT8_MAX_ACCURACY_DROP, quantize_int8, (crops,), method)
            )
        if fp16:
            variants.append(
                (
                    "fp16",
                    "model.fp16.onnx",
                    FP16_MAX_ACCURACY_DROP,
                    convert_fp16,
                    (),
                    {"input_dtype": "float16"},
                )
            )
        for key, filename, max_drop, make, extra_args, info in variants:
            make(tmp / "model.onnx", tmp / filename, *extra_args)
            stats = _gate_stats(
                ev.labels, run.pit_index, ref, run_onnx(ort_session(tmp / filename), crops)
            )
            _quantized_gate(key.upper(), stats, max_drop, ev.description)
            meta["files"][f"onnx_{key}"] = filename
            meta[key] = {
                **info,
                "gate": stats,
                "tolerances": {
                    "max_accuracy_drop": max_drop,
                    "extra_pit_misses": EXTRA_PIT_MISSES_ALLOWED,
                },
            }
        write_json(tmp / "bundle.json", meta)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
