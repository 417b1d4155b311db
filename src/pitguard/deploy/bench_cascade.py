"""What a cascade bundle costs: its two stages timed apart, summed at the share of crops that
takes the second look.

Bench crops are synthetic, so the share they would send to the second stage says nothing about
the line; the share measured on the calibration crops (``bundle.json``'s ``second_look.share``)
weights the second stage's cost instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pitguard.runtime.bundle import INPUT_NAME

SECOND_LOOK_BACKENDS = ("eager", "onnx")  # the float32 backends a second look runs on


def second_stage(folder: Path, meta: dict, backend: str, device: str, threads: int):
    """A call that runs a cascade bundle's second stage on uint8 crops (None without one)."""
    look = meta.get("second_look")
    if look is None or backend not in SECOND_LOOK_BACKENDS:
        return None
    if backend == "onnx":
        from pitguard.runtime.classifier import Classifier

        session = Classifier(folder, "onnx", device, threads).second
        if session is None:
            return None

        def run_graph(crops: np.ndarray):
            x = crops.astype(np.float32) / np.float32(255)
            return session.run(None, {INPUT_NAME: x})

        return run_graph
    from pitguard.deploy.bundle import load_deploy_module, load_second_stage

    module, _ = load_deploy_module(folder, meta)
    stage = load_second_stage(folder, meta, module).to(device)

    @torch.no_grad()
    def run_module(crops: np.ndarray):
        x = torch.from_numpy(crops.astype(np.float32) / np.float32(255)).to(device)
        return [t.cpu() for t in stage(x)]

    return run_module


def cascade_record(first: dict, second: dict, look: dict) -> dict:
    """The cascade's expected cost: stage 1 on every crop plus the second stage on the share of
    crops its calibration sent there (``bundle.json``'s ``second_look.share``)."""
    share = float(look["share"])
    timed = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "ms_per_crop")
    cost = {k: first[k] + share * second[k] for k in timed}
    return {
        **first,
        **cost,
        "backend": f"{first['backend']}+second-look",
        "crops_per_s": 1000.0 / cost["ms_per_crop"],
        "runs": min(first["runs"], second["runs"]),
        "second_look": {
            "views": look["views"],
            "share": share,
            "share_from": "the calibration crops",
            "stage1_ms_per_crop": first["ms_per_crop"],
            "second_ms_per_crop": second["ms_per_crop"],
        },
    }
