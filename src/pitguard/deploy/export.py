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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pitguard import __version__
from pitguard.core.errors import PitguardError
from pitguard.core.files import (
    file_sha256,
    read_json,
)
from pitguard.decision.certify import choose_thresholds
from pitguard.deploy.bundle import (
    DeployModule,
    prepare_bundle_out,
    sanitize_denormals,
    save_weights,
    write_bundle_folder,
)
from pitguard.deploy.export_cascade import (
    SECOND_LOOK_GRAPH,
    refuse_cascade_variants,
    save_second_weights,
    second_look_graph,
    second_look_meta,
    second_look_net,
)
from pitguard.deploy.export_checks import (
    MAX_PROB_DIFF,
    Reference,
    Scores,
    accuracy_gate,
    check_own_routes,
    gate_stats,
    require_same_routes,
    write_check_crops,
)
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
from pitguard.models.nets import PitguardNet
from pitguard.models.runfolder import (
    RunModel,
    RunPaths,
    evaluated_part,
    load_part,
    load_run,
    refuse_unfinished,
)
from pitguard.runtime.backends import BACKENDS, ort_session
from pitguard.runtime.bundle import (
    SECOND_LOOK_FILE,
    SECOND_LOOK_WEIGHTS,
    guard_stamp,
    make_bundle_readable,
    second_look_stamp,
    write_bundle_json,
)
from pitguard.runtime.contract import contract_stamp
from pitguard.runtime.policy import DecisionPolicy, maybe_index
from pitguard.runtime.self_check import CHECKS_FILE, CHECKS_KEY
from pitguard.runtime.trust import sign_bundle, signing_key

__all__ = ["MAX_PROB_DIFF", "export_run"]

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
    sign: str | Path | None = None,
) -> dict:
    """Export RUN as a bundle in OUT; ``replace`` swaps an existing bundle there for the new one
    (only once the new one has passed its gates; a folder that is no bundle is never replaced)."""
    run = load_run(run_dir)
    out = Path(out)
    if sign is not None:
        signing_key(sign)  # a key that cannot sign stops it before any work
    prepare_bundle_out(out, replace)
    unfinished = refuse_unfinished(run.run, allow_unfinished, "export")
    variants = [key for key, wanted in (("int8", int8), ("fp16", fp16)) if wanted]
    refuse_cascade_variants(run, variants)
    ref = _reference(run, calib_data, allow_uncalibrated)
    module, denormals = _shipped_module(ref)
    meta = _bundle_meta(ref, module, unfinished, denormals)
    net2 = second_look_net(meta, ref.record)
    graphs = onnx or bool(variants)

    def write(tmp: Path) -> None:
        _write_files(tmp, ref, module, meta, graphs, variants, net2)
        if sign is not None:
            meta["signed_by"] = sign_bundle(tmp, sign)
        make_bundle_readable(tmp)

    write_bundle_folder(out, write)
    return meta


def _reference(run: RunModel, calib_data: str | Path | None, allow_uncalibrated: bool) -> Reference:
    """The calibrated model (what calibrate certified, eval measures) and its scores of the
    crops the bundle is checked on."""
    policy, record = _policy_record(run, allow_uncalibrated)
    calibrated = DeployModule(run.net, policy).eval()
    run_part = None if calib_data else _check_part(run)
    ev = load_part(run, calib_data, run_part)
    train = _train_crops(run)
    guard = _input_guard(run, train if train is not None else ev.crops.images)
    scores = run_torch(calibrated, ev.crops.images)
    return Reference(run, policy, record, calibrated, ev, scores, train, guard, run_part)


def _shipped_module(ref: Reference) -> tuple[DeployModule, int]:
    """The weights that ship: the calibrated model's, denormals zeroed; the count zeroed."""
    module = copy.deepcopy(ref.model)
    denormals = sanitize_denormals(module)
    if denormals:  # weights changed by zeroing: they must still route as the calibrated model
        eager = run_torch(module, ref.ev.crops.images)
        require_same_routes("the bundle's weights differ", ref, eager)
    return module, denormals


def _write_files(
    tmp: Path,
    ref: Reference,
    module: DeployModule,
    meta: dict,
    graphs: bool,
    variants: list,
    net2: PitguardNet | None,
) -> None:
    """The bundle's files in ``tmp``, each past its gate, and bundle.json naming them; ``net2``
    is the second look's own network, when it has one."""
    look = meta.get("second_look")
    second = {SECOND_LOOK_WEIGHTS: save_second_weights(net2, tmp, look)} if net2 and look else {}
    stamps = {**guard_stamp(ref.guard), **second_look_stamp(look), **contract_stamp(meta)}
    meta["files"] = {"weights": save_weights(module, tmp, stamps), **second}
    if graphs:
        meta.update(_fp32_graph(module, tmp, ref))
        meta["files"]["onnx"] = BACKENDS["onnx"].file_name
        if look is not None:
            look["parity"] = second_look_graph(module, look, tmp, ref, net2)
            meta["files"][SECOND_LOOK_FILE] = SECOND_LOOK_GRAPH
    for key in variants:
        meta[key] = _variant(key, tmp, ref)
        meta["files"][BACKENDS[VARIANTS[key][0]].file_key] = meta[key].pop("file")
    for name in meta["files"].values():
        if name.endswith(".onnx"):
            stamp_graph(tmp / name, ref.guard, meta)
    if graphs:
        meta["checks"] = write_check_crops(tmp, ref, meta["files"])
        meta["files"][CHECKS_KEY] = CHECKS_FILE
    write_bundle_json(tmp, meta)


def _bundle_meta(
    ref: Reference, module: DeployModule, unfinished: str | None, denormals: int
) -> dict[str, Any]:
    run, record = ref.run, ref.record
    return {
        "model_name": run.model_name,
        "model_kwargs": run.model_kwargs,
        "classes": list(run.classes),
        "input": module.net.contract.to_dict(),
        "input_note": "float32 crops scaled to [0, 1], (N, 3, H, W), all three channels as the "
        "line sends them; channel selection, normalization and pooling are inside the graph",
        "policy": ref.policy.to_dict(),
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
        "input_guard": ref.guard,
        **second_look_meta(record),
    }


def _fp32_graph(module: DeployModule, tmp: Path, ref: Reference) -> dict:
    fp32 = tmp / BACKENDS["onnx"].file_name
    export_onnx(module, fp32, module.net.contract.size)
    scores = run_onnx(ort_session(fp32), ref.ev.crops.images)
    stats = require_same_routes("ONNX parity failed", ref, scores)
    limits = {"max_prob_diff": MAX_PROB_DIFF, "route_mismatches": 0}
    return {"onnx": {"opset": OPSET, "parity": stats, "tolerances": limits}}


def _variant(key: str, tmp: Path, ref: Reference) -> dict:
    """An INT8 or FP16 graph with a guarantee established on its own scores (see the module)."""
    backend, info = VARIANTS[key]
    max_drop = INT8_MAX_ACCURACY_DROP if key == "int8" else FP16_MAX_ACCURACY_DROP
    path = tmp / BACKENDS[backend].file_name
    fp32 = tmp / BACKENDS["onnx"].file_name
    if key == "int8":
        step = max(1, len(ref.fit_crops) // INT8_CALIBRATION_CROPS)
        quantize_int8(fp32, path, ref.fit_crops[::step][:INT8_CALIBRATION_CROPS])
    else:
        convert_fp16(fp32, path)
    scores = run_onnx(ort_session(path), ref.ev.crops.images)
    own = _recertify(path, ref, scores)
    if own is not None:
        scores = run_onnx(ort_session(path), ref.ev.crops.images)
    stats = gate_stats(ref, scores)
    accuracy_gate(key.upper(), stats, max_drop, ref.ev.description)
    held = held_policy(path)
    return {
        **info,
        "file": path.name,
        "gate": stats,
        "policy": {**_policy_dict(ref), **held},
        "guarantee": _variant_guarantee(key, path, ref, scores, stats, held, own),
        "tolerances": {"max_accuracy_drop": max_drop},
    }


def _variant_guarantee(
    key: str, path: Path, ref: Reference, scores: Scores, stats: dict, held: dict, own: dict | None
) -> dict:
    """Where the graph's guarantee comes from: its own certified thresholds, or, where those
    cannot be certified here, routes identical to the calibrated model's."""
    if own is None:
        if stats["route_mismatches"]:
            raise PitguardError(
                f"{key.upper()} refused on {ref.ev.description}: {stats['route_mismatches']} of "
                f"{stats['n']} routes differ from the calibrated model's, and its guarantee "
                "cannot be certified again here (the run was calibrated on other scores than "
                "these crops'); export without it, or calibrate on held-out crops and pass them "
                "with --calib-data; no bundle written"
            )
        return {"established_on": "routes identical to the calibrated model's", **stats}
    check_own_routes(key, ref.is_pit, scores, held, own)
    return {"established_on": f"{path.name}'s own scores of {ref.ev.description}", **own}


def _policy_dict(ref: Reference) -> dict:
    record, run = ref.record, ref.run
    return (
        dict(record["policy"])
        if record
        else DecisionPolicy(pit_index=run.pit_index, maybe_index=maybe_index(run.classes)).to_dict()
    )


def _calibrated_on(calibration_data: dict, ref: Reference) -> bool:
    """Whether the run was calibrated on the crops the bundle is checked on: the run's own part
    (however the run's path was spelled then and now), or the same data named alike."""
    own = calibration_data.get("run_part")
    if own is not None and ref.run_part is not None:
        return own == ref.run_part
    return calibration_data.get("data") == ref.ev.description


def _recertify(path: Path, ref: Reference, scores: Scores) -> dict | None:
    """Thresholds certified on the graph's own scores and written into it; None where the
    guarantee was not established on these crops (oof, other data, or no calibration)."""
    record = ref.record
    if not record or record.get("mode", "holdout") != "holdout":
        return None
    if not _calibrated_on(record.get("calibration_data") or {}, ref):
        return None
    g = record["guarantee"]
    chosen = choose_thresholds(
        scores[1],
        ref.is_pit,
        g["max_pit_miss"],
        g["confidence"],
        g.get("max_false_reject"),
        g.get("kind", "exact"),
    )
    set_thresholds(path, chosen.t_low, chosen.t_high)
    return asdict(chosen)
