"""``pitguard export``: a run becomes a bundle whose every file decides as was certified.

What ships is the calibrated model itself: the run's network and its decision policy, with the
input normalization kept as the graph's first operations (folded into the first convolution,
that convolution's padding would see other values than in training, and border crops would be
scored otherwise). Each file is checked on the calibration crops against that model before the
bundle is written:

- the weights and the fp32 ONNX graph route every crop as the calibrated model does, p(pit)
  within ``MAX_PROB_DIFF``;
- an INT8 or FP16 graph, which cannot score exactly alike, carries thresholds certified again on
  its own scores of the calibration crops, with the run's bound and confidence; where export
  cannot score the crops the guarantee was established on (a cross-fitted run, or
  ``--calib-data`` other than the calibration data), such a graph must route every crop as the
  calibrated model does.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pitguard import __version__
from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_path, file_sha256, read_json
from pitguard.decision.certify import choose_thresholds
from pitguard.deploy.bundle import DeployModule, sanitize_denormals, save_weights
from pitguard.deploy.graphs import (
    OPSET,
    convert_fp16,
    export_onnx,
    held_policy,
    quantize_int8,
    run_onnx,
    run_torch,
    set_thresholds,
    stamp_graph,
)
from pitguard.models.runfolder import (
    EvalData,
    RunModel,
    RunPaths,
    evaluated_part,
    load_part,
    load_run,
    refuse_unfinished,
)
from pitguard.runtime.backends import BACKENDS, ort_session
from pitguard.runtime.bundle import (
    guard_stamp,
    is_bundle,
    make_bundle_readable,
    write_bundle_json,
)
from pitguard.runtime.policy import DecisionPolicy, Route, maybe_index, route

MAX_PROB_DIFF = 1e-4  # fp32 ONNX against the calibrated model on the calib crops
INT8_MAX_ACCURACY_DROP = 0.01  # argmax accuracy on calib may drop by at most 1 point
FP16_MAX_ACCURACY_DROP = 0.005
INT8_CALIBRATION_CROPS = 512  # train crops that set the INT8 activation ranges
VARIANTS = {  # key: (backend, extra bundle.json facts)
    "int8": (
        "onnx-int8",
        {"method": "onnxruntime static QDQ, per-channel, activation ranges from train crops"},
    ),
    "fp16": ("onnx-fp16", {"input_dtype": "float16"}),
}


def _gate_stats(labels: np.ndarray, pit_index: int, ref, new) -> dict:
    ref_logits, ref_p, ref_route = ref
    logits, p, route_ids = new
    is_pit = labels == pit_index
    return {
        "n": len(labels),
        "max_prob_diff": float(np.abs(ref_p - p).max()),
        "route_mismatches": int((ref_route != route_ids).sum()),
        "accuracy_ref": float((ref_logits.argmax(1) == labels).mean()),
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "pit_misses_ref": int((is_pit & (ref_route == Route.CLEAN)).sum()),
        "pit_misses": int((is_pit & (route_ids == Route.CLEAN)).sum()),
        "n_pits": int(is_pit.sum()),
    }


def _train_crops(run: RunModel) -> torch.Tensor | None:
    """The crops the run trained on (None for a run without its own split)."""
    if "train" not in run.meta.get("data", {}).get("counts", {}):
        return None
    return load_part(run, None, "train").crops.images


def _input_guard(run: RunModel, crops: torch.Tensor) -> dict:
    """The guard fitted on the crops the run trained on, or, for a run trained elsewhere (an
    imported one), on the crops it is calibrated on."""
    from pitguard.runtime.guard import InputGuard

    return InputGuard.fit(crops.numpy(), run.net.contract.channels).to_dict()


def _check_part(run: RunModel) -> str:
    """The run's own crops the exported graph is checked on: calib, or, for a cross-fitted run
    (which trained on its calib crops), the pooled crops; never the test part."""
    parts = run.meta.get("data", {}).get("counts", {})
    return "calib" if "calib" in parts or not parts else "train"


def _latest_test_metrics(run_dir: Path) -> dict | None:
    best = None
    keep = ("data", "n", "accuracy", "accuracy_ci", "balanced_accuracy", "macro_f1", "roc_auc")
    for path in RunPaths(run_dir).eval_metrics():
        m = read_json(path) or {}
        if evaluated_part(m)[1] == "test":
            best = {k: m[k] for k in (*keep, "policy") if k in m}
    return best


def _prepare_out(out: Path, replace: bool) -> None:
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


def _policy_record(run: RunModel, allow_uncalibrated: bool) -> tuple[DecisionPolicy, dict | None]:
    """The calibrated policy and its record (policy.json), checked against the run's weights."""
    paths = RunPaths(run.run)
    record = read_json(paths.policy)
    if record is None:
        if not allow_uncalibrated:
            raise PitguardError(
                f"{run.run}: not calibrated; run `pitguard calibrate {run.run}` first "
                "(or --allow-uncalibrated to route by argmax with no maybe)"
            )
        return DecisionPolicy(1.0, 0.5, 0.5, run.pit_index, maybe_index(run.classes)), None
    fitted = record.get("model_sha256")
    if fitted and fitted != file_sha256(paths.weights):
        raise PitguardError(
            f"{paths.policy}: calibrated for other weights than the run's "
            f"{paths.weights.name} (trained again since?); run pitguard calibrate {run.run} "
            "again, then export"
        )
    return DecisionPolicy.from_dict(record["policy"]), record


def export_run(
    run_dir: str | Path,
    out: str | Path,
    onnx: bool = False,
    int8: bool = False,
    fp16: bool = False,
    calib_data: str | Path | None = None,
    allow_uncalibrated: bool = False,
    replace: bool = False,
    allow_unfinished: bool = False,
) -> dict:
    """Export RUN as a bundle in OUT; ``replace`` swaps an existing bundle there for the new one
    (only once the new one has passed its gates; a folder that is no bundle is never replaced)."""
    run = load_run(run_dir)
    out = Path(out)
    _prepare_out(out, replace)
    unfinished = refuse_unfinished(run.run, allow_unfinished, "export")
    policy, record = _policy_record(run, allow_uncalibrated)
    calibrated = DeployModule(run.net, policy).eval()  # what calibrate certified, eval measures
    module = copy.deepcopy(calibrated)
    denormals = sanitize_denormals(module)
    ev = load_part(run, calib_data, None if calib_data else _check_part(run))
    train = _train_crops(run)
    guard = _input_guard(run, train if train is not None else ev.crops.images)
    ref = run_torch(calibrated, ev.crops.images)
    if denormals:  # weights changed by zeroing: they must still route as the calibrated model
        eager = run_torch(module, ev.crops.images)
        _require_same_routes("the bundle's weights differ", ev, run.pit_index, ref, eager)
    meta = _bundle_meta(run, module, policy, record, unfinished, denormals, guard)
    old = out.with_name(f".{out.name}.replaced{os.getpid()}")
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            meta["files"] = {"weights": save_weights(module, tmp, guard_stamp(guard))}
            if onnx or int8 or fp16:
                meta.update(_fp32_graph(module, tmp, ev, ref, run.pit_index))
                meta["files"]["onnx"] = BACKENDS["onnx"].file_name
            for key, wanted in (("int8", int8), ("fp16", fp16)):
                if wanted:
                    quant = train if train is not None else ev.crops.images
                    meta[key] = _variant(key, tmp, ev, ref, run, record, quant)
                    meta["files"][BACKENDS[VARIANTS[key][0]].file_key] = meta[key].pop("file")
            for name in meta["files"].values():
                if name.endswith(".onnx"):
                    stamp_graph(tmp / name, guard)
            write_bundle_json(tmp, meta)
            make_bundle_readable(tmp)
            if out.exists():
                if any(out.iterdir()):  # the bundle --force replaces, moved aside at the last step
                    os.replace(out, old)
                else:
                    out.rmdir()  # an empty folder given as --out
    except OSError as err:
        if err.filename is None:  # a full disk reports no path: name the bundle being written
            raise OSError(err.errno, err.strerror or str(err), str(out)) from err
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return meta


def _bundle_meta(run, module, policy, record, unfinished, denormals, guard) -> dict[str, Any]:
    return {
        "model_name": run.model_name,
        "model_kwargs": run.model_kwargs,
        "classes": list(run.classes),
        "input": module.net.contract.to_dict(),
        "input_note": "float32 crops scaled to [0, 1], (N, 3, H, W), all three channels as the "
        "line sends them; channel selection, normalization and pooling are inside the graph",
        "policy": policy.to_dict(),
        "guarantee": record["guarantee"] if record else None,
        "calibration": record["thresholds"] if record else None,
        "training": {"finished": unfinished is None, "unfinished": unfinished},
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
        "input_guard": guard,
    }


def _require_same_routes(what: str, ev: EvalData, pit_index: int, ref, new) -> dict:
    """Refuse ``new`` unless it routes every crop as the calibrated model, p(pit) within
    ``MAX_PROB_DIFF``; returns the comparison."""
    stats = {**_gate_stats(ev.labels, pit_index, ref, new), "data": ev.description}
    if stats["max_prob_diff"] > MAX_PROB_DIFF or stats["route_mismatches"]:
        raise PitguardError(
            f"{what} on {ev.description}: max p(pit) difference {stats['max_prob_diff']:.2e} "
            f"(limit {MAX_PROB_DIFF:.0e}), {stats['route_mismatches']} of {stats['n']} routes "
            "differ from the calibrated model's; no bundle written"
        )
    return stats


def _fp32_graph(module: DeployModule, tmp: Path, ev: EvalData, ref, pit_index) -> dict:
    fp32 = tmp / BACKENDS["onnx"].file_name
    export_onnx(module, fp32, module.net.contract.size)
    scores = run_onnx(ort_session(fp32), ev.crops.images)
    stats = _require_same_routes("ONNX parity failed", ev, pit_index, ref, scores)
    limits = {"max_prob_diff": MAX_PROB_DIFF, "route_mismatches": 0}
    return {"onnx": {"opset": OPSET, "parity": stats, "tolerances": limits}}


def _variant(key, tmp, ev, ref, run, record, quant_crops) -> dict:
    """An INT8 or FP16 graph with a guarantee established on its own scores (see the module)."""
    backend, info = VARIANTS[key]
    max_drop = INT8_MAX_ACCURACY_DROP if key == "int8" else FP16_MAX_ACCURACY_DROP
    path = tmp / BACKENDS[backend].file_name
    fp32 = tmp / BACKENDS["onnx"].file_name
    if key == "int8":
        step = max(1, len(quant_crops) // INT8_CALIBRATION_CROPS)
        quantize_int8(fp32, path, quant_crops[::step][:INT8_CALIBRATION_CROPS])
    else:
        convert_fp16(fp32, path)
    scores = run_onnx(ort_session(path), ev.crops.images)
    own = _recertify(path, ev, scores, run, record)
    if own is not None:
        scores = run_onnx(ort_session(path), ev.crops.images)
    stats = _gate_stats(ev.labels, run.pit_index, ref, scores)
    stats["data"] = ev.description
    _accuracy_gate(key.upper(), stats, max_drop, ev.description)
    held = held_policy(path)
    if own is None:
        if stats["route_mismatches"]:
            raise PitguardError(
                f"{key.upper()} refused on {ev.description}: {stats['route_mismatches']} of "
                f"{stats['n']} routes differ from the calibrated model's, and its guarantee "
                "cannot be certified again here (the run was calibrated on other scores than "
                "these crops'); export without it, or calibrate on held-out crops and pass them "
                "with --calib-data; no bundle written"
            )
        guarantee = {"established_on": "routes identical to the calibrated model's", **stats}
    else:
        _check_own_routes(key, ev.labels == run.pit_index, scores, held, own)
        guarantee = {"established_on": f"{path.name}'s own scores of {ev.description}", **own}
    return {
        **info,
        "file": path.name,
        "gate": stats,
        "policy": {**_policy_dict(record, run), **held},
        "guarantee": guarantee,
        "tolerances": {"max_accuracy_drop": max_drop},
    }


def _policy_dict(record: dict | None, run: RunModel) -> dict:
    return (
        dict(record["policy"])
        if record
        else DecisionPolicy(pit_index=run.pit_index, maybe_index=maybe_index(run.classes)).to_dict()
    )


def _recertify(path: Path, ev: EvalData, scores, run: RunModel, record: dict | None):
    """Thresholds certified on the graph's own scores and written into it; None where the
    guarantee was not established on these crops (oof, other data, or no calibration)."""
    if not record or record.get("mode", "holdout") != "holdout":
        return None
    if (record.get("calibration_data") or {}).get("data") != ev.description:
        return None
    g = record["guarantee"]
    is_pit = ev.labels == run.pit_index
    chosen = choose_thresholds(
        scores[1],
        is_pit,
        g["max_pit_miss"],
        g["confidence"],
        g.get("max_false_reject"),
        g.get("kind", "exact"),
    )
    set_thresholds(path, chosen.t_low, chosen.t_high)
    return asdict(chosen)


def _check_own_routes(key: str, is_pit: np.ndarray, scores, held: dict, own: dict) -> None:
    """The graph routes by the thresholds it holds and misses no more calib pits than certified."""
    misses = int((is_pit & (scores[2] == Route.CLEAN)).sum())
    if (route(scores[1], held["t_low"], held["t_high"]) != scores[2]).any() or misses > own[
        "calib_pit_misses"
    ]:
        raise PitguardError(
            f"{key.upper()} refused: its graph routes {misses} calibration pits clean where its "
            f"thresholds were certified with {own['calib_pit_misses']}; no bundle written"
        )


def _accuracy_gate(name: str, stats: dict, max_drop: float, where: str) -> None:
    drop = stats["accuracy_ref"] - stats["accuracy"]
    if drop > max_drop:
        raise PitguardError(
            f"{name} refused on {where}: accuracy {100 * stats['accuracy']:.2f}% vs fp32 "
            f"{100 * stats['accuracy_ref']:.2f}% (max drop {100 * max_drop:.1f} points), pits "
            f"routed clean {stats['pit_misses']} vs fp32 {stats['pit_misses_ref']}; no bundle written"
        )
