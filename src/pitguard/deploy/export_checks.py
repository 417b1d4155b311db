"""The gates of ``pitguard export``: what each file of a bundle is checked against, and how.

The reference is the calibrated model (the run's network and its decision policy) scoring the
crops export checks on; a file passes by routing those crops as it does (the weights, the fp32
ONNX graph), or, for an INT8 or FP16 graph, by an accuracy close to its and the pit misses its
own thresholds were certified with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.deploy.bundle import DeployModule
from pitguard.models.runfolder import EvalData, RunModel
from pitguard.runtime.policy import DecisionPolicy, Route, route

MAX_PROB_DIFF = 1e-4  # fp32 ONNX against the calibrated model on the calib crops

Scores = tuple[np.ndarray, np.ndarray, np.ndarray]  # logits, p(pit), route ids of each crop


@dataclass(frozen=True)
class Reference:
    """The calibrated model a bundle's files are checked against, with what it was checked on."""

    run: RunModel
    policy: DecisionPolicy
    record: dict | None  # the run's policy.json; None for an uncalibrated export
    model: DeployModule  # the calibrated model itself
    ev: EvalData  # the crops the files are checked on
    scores: Scores  # the calibrated model's scores of them
    train: torch.Tensor | None  # the crops the run trained on (None without its own split)
    guard: dict  # the input guard the bundle ships
    run_part: str | None = None  # the run's own part checked on (None: --calib-data)

    @property
    def fit_crops(self) -> torch.Tensor:
        """The crops the input guard and the INT8 activation ranges are fitted on: the run's
        train crops, or, for a run trained elsewhere, the crops checked on."""
        return self.train if self.train is not None else self.ev.crops.images

    @property
    def is_pit(self) -> np.ndarray:
        return self.ev.labels == self.run.pit_index


def gate_stats(ref: Reference, new: Scores) -> dict:
    """How ``new`` scores the checked crops against the calibrated model."""
    ref_logits, ref_p, ref_route = ref.scores
    logits, p, route_ids = new
    labels, is_pit = ref.ev.labels, ref.is_pit
    return {
        "n": len(labels),
        "max_prob_diff": float(np.abs(ref_p - p).max()),
        "route_mismatches": int((ref_route != route_ids).sum()),
        "accuracy_ref": float((ref_logits.argmax(1) == labels).mean()),
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "pit_misses_ref": int((is_pit & (ref_route == Route.CLEAN)).sum()),
        "pit_misses": int((is_pit & (route_ids == Route.CLEAN)).sum()),
        "n_pits": int(is_pit.sum()),
        "data": ref.ev.description,
    }


def require_same_routes(what: str, ref: Reference, new: Scores) -> dict:
    """Refuse ``new`` unless it routes every crop as the calibrated model, p(pit) within
    ``MAX_PROB_DIFF``; returns the comparison."""
    stats = gate_stats(ref, new)
    if stats["max_prob_diff"] > MAX_PROB_DIFF or stats["route_mismatches"]:
        raise PitguardError(
            f"{what} on {ref.ev.description}: max p(pit) difference "
            f"{stats['max_prob_diff']:.2e} (limit {MAX_PROB_DIFF:.0e}), "
            f"{stats['route_mismatches']} of {stats['n']} routes differ from the calibrated "
            "model's; no bundle written"
        )
    return stats


def check_own_routes(key: str, is_pit: np.ndarray, scores: Scores, held: dict, own: dict) -> None:
    """The graph routes by the thresholds it holds and misses no more calib pits than certified."""
    misses = int((is_pit & (scores[2] == Route.CLEAN)).sum())
    if (route(scores[1], held["t_low"], held["t_high"]) != scores[2]).any() or misses > own[
        "calib_pit_misses"
    ]:
        raise PitguardError(
            f"{key.upper()} refused: its graph routes {misses} calibration pits clean where its "
            f"thresholds were certified with {own['calib_pit_misses']}; no bundle written"
        )


def accuracy_gate(name: str, stats: dict, max_drop: float, where: str) -> None:
    """Refuse a graph whose accuracy on the checked crops drops more than ``max_drop``."""
    drop = stats["accuracy_ref"] - stats["accuracy"]
    if drop > max_drop:
        raise PitguardError(
            f"{name} refused on {where}: accuracy {100 * stats['accuracy']:.2f}% vs fp32 "
            f"{100 * stats['accuracy_ref']:.2f}% (max drop {100 * max_drop:.1f} points), pits "
            f"routed clean {stats['pit_misses']} vs fp32 {stats['pit_misses_ref']}; no bundle written"
        )


N_CHECK_CROPS = 200  # crops whose outputs a bundle carries to prove itself where it runs


def write_check_crops(folder: Path, ref: Reference, files: dict[str, str]) -> dict:
    """``checks.npz``: up to N_CHECK_CROPS of the crops export checked on, spread evenly, their
    labels, and what each ONNX graph of the bundle (its second look's aside) outputs for them
    (:mod:`pitguard.runtime.self_check` scores them again where the bundle runs)."""
    from pitguard.deploy.graphs import run_onnx
    from pitguard.runtime.backends import ort_session
    from pitguard.runtime.bundle import SECOND_LOOK_FILE
    from pitguard.runtime.self_check import CHECKS_FILE

    crops = ref.ev.crops.images
    picked = np.unique(np.linspace(0, len(crops) - 1, min(N_CHECK_CROPS, len(crops))).round())
    idx = picked.astype(np.int64)
    chosen = crops[torch.from_numpy(idx)]
    arrays = {"crops": chosen.numpy(), "is_pit": ref.is_pit[idx]}
    graphs = [k for k, name in files.items() if name.endswith(".onnx") and k != SECOND_LOOK_FILE]
    for key in graphs:
        _, p_pit, routes = run_onnx(ort_session(folder / files[key], device="cpu"), chosen)
        arrays[f"{key}.p_pit"], arrays[f"{key}.route"] = p_pit, routes
    np.savez_compressed(folder / CHECKS_FILE, **arrays)  # type: ignore[arg-type]
    return {"n": len(idx), "data": ref.ev.description, "graphs": graphs}
