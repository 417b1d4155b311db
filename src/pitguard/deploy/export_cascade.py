"""A cascade's second stage in a bundle: its graph, checked against the eager second stage, and
what ``bundle.json`` states of it (:mod:`pitguard.decision.cascade` certifies it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.core.files import file_sha256, read_json
from pitguard.deploy.bundle import (
    DeployModule,
    sanitize_denormals,
    save_weights,
    second_look_module,
)
from pitguard.deploy.export_checks import MAX_PROB_DIFF, Reference
from pitguard.deploy.graphs import export_onnx, run_onnx, run_torch
from pitguard.models.nets import PitguardNet
from pitguard.models.runfolder import RunModel, RunPaths
from pitguard.models.second_stage import load_second_model
from pitguard.runtime.backends import ort_session

SECOND_LOOK_GRAPH = "model.second_look.onnx"  # the second stage's graph in a bundle
SECOND_LOOK_WEIGHTS_FILE = "model.second_look.safetensors"  # another run's network, when it is one


def refuse_cascade_variants(run: RunModel, variants: list[str]) -> None:
    """A second look ships in float32 only: its thresholds are certified on the float model's
    scores of both stages, which an INT8 or FP16 graph does not reproduce."""
    record = read_json(RunPaths(run.run).policy) or {}
    if variants and "second_look" in record:
        flags = " and ".join(f"--{k}" for k in variants)
        raise PitguardError(
            f"{run.run}: calibrated with a second look, which ships in float32 only; export "
            f"without {flags}, or calibrate again without --second-look for a {flags[2:]} bundle"
        )


def second_look_graph(
    module: DeployModule, look: dict, tmp: Path, ref: Reference, net: PitguardNet | None = None
) -> dict:
    """The second stage's graph (on ``net``, another run's network, else on ``module``'s),
    checked on the checked crops against the eager second stage: every route alike, p(pit)
    within ``MAX_PROB_DIFF``."""
    eager = second_look_module(module, look, net)
    path = tmp / SECOND_LOOK_GRAPH
    export_onnx(eager, path, module.net.contract.size)
    images = ref.ev.crops.images
    want = run_torch(eager, images)
    got = run_onnx(ort_session(path), images)
    diff = float(np.abs(want[1] - got[1]).max())
    mismatches = int((want[2] != got[2]).sum())
    if diff > MAX_PROB_DIFF or mismatches:
        raise PitguardError(
            f"second-look ONNX parity failed on {ref.ev.description}: max p(pit) difference "
            f"{diff:.2e} (limit {MAX_PROB_DIFF:.0e}), {mismatches} of {len(images)} routes differ "
            "from the calibrated second look's; no bundle written"
        )
    return {"n": len(images), "max_prob_diff": diff, "route_mismatches": 0}


def second_look_net(meta: dict, record: dict | None) -> PitguardNet | None:
    """Another run's network when the cascade's second look is one (None otherwise), checked
    unchanged since calibration, its denormal weights zeroed; ``meta``'s ``second_look`` gets
    what the bundle states of it."""
    look: dict = (record or {}).get("second_look") or {}
    run2 = load_second_model(look)
    if run2 is None or "second_look" not in meta:
        return None
    meta["second_look"]["model"] = {
        "model_name": run2.model_name,
        "model_kwargs": run2.model_kwargs,
        "input": run2.net.contract.to_dict(),
        "run": look["model"]["run"],
        "run_sha256": look["model"]["sha256"],
    }
    sanitize_denormals(run2.net)
    return run2.net


def save_second_weights(net: PitguardNet, tmp: Path, look: dict) -> str:
    """The second stage's network as its own safetensors file; ``look`` records its sha256,
    which the first stage's weights then hold."""
    save_weights(net, tmp, {}, SECOND_LOOK_WEIGHTS_FILE)
    look["model"]["weights_sha256"] = file_sha256(tmp / SECOND_LOOK_WEIGHTS_FILE)
    return SECOND_LOOK_WEIGHTS_FILE


def second_look_meta(record: dict | None) -> dict:
    """bundle.json's ``second_look``: the cascade's second stage as calibrated (none without)."""
    look = (record or {}).get("second_look")
    if not look:
        return {}
    keep = ("views", "policy", "share", "thresholds", "statement")
    return {"second_look": {k: look[k] for k in keep}}
