"""Calibrate a run's clean/maybe/pit decision: temperature, then certified thresholds.

Two sources of scores, two guarantees:

* ``holdout`` (a plain run): the model's own scores on its calib part, crops it never trained
  on. The bound is exact in finite samples: with probability >= the confidence over the draw of
  the calibration crops, pits routed clean are at most the stated rate among crops like them.
* ``oof`` (a run trained with ``--folds K``): every crop outside the test part, each scored by
  the fold model that did not train on it. Far more pits certify the bound, but the model that
  ships is the final one, trained on all of them: the bound holds only as far as the final
  model scores like the fold models. This is the cross-conformal / CV+ family (Vovk 2015;
  Barber, Candes, Ramdas and Tibshirani 2021), whose worst-case coverage for a target
  1 - alpha is only 1 - 2 alpha; it sits near the target when the fold models and the final
  model score alike, and below it when they differ. ``benchmarks/oof_coverage.py`` measures it.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy import optimize, special
from scipy.special import softmax

from pitguard.core.errors import PitguardError
from pitguard.core.files import commit_together, file_sha256, json_text, temp_name, write_json
from pitguard.decision.cascade import (
    second_look_logits,
    second_look_record,
    second_look_request,
)
from pitguard.decision.certify import choose_thresholds, operating_curve, operating_table
from pitguard.decision.review_cost import review_cost
from pitguard.evaluate import metrics, plots
from pitguard.evaluate.oof import read_oof
from pitguard.models.runfolder import (
    CALIB_OPERATING_CURVE,
    CALIB_RELIABILITY,
    CALIB_REPORT,
    SWEEP_JSON,
    SWEEP_PNG,
    RunModel,
    RunPaths,
    load_part,
    load_policy,
    load_run,
    refuse_unfinished,
    run_logits,
)
from pitguard.models.second_stage import second_model_facts
from pitguard.runtime.policy import DecisionPolicy, Route, maybe_index

_log = logging.getLogger(__name__)

# Search range for the temperature, as log T. Wide enough for any sane network; perfectly
# separated logits push the optimum to the lower edge instead of towards T = 0.
_LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))
FORBIDDEN_PARTS = ("train", "val", "test")
SCORE_SOURCES = ("holdout", "oof")
GUARANTEES = {
    "holdout": "exact finite-sample: with the stated confidence over the draw of the "
    "calibration crops, the rate of pits routed clean is at most the bound for crops drawn "
    "like them; the shipped model scored them and never trained on them",
    "oof": "cross-fit (cross-conformal / CV+ family): the bound is certified on out-of-fold "
    "scores of the fold models and holds for the shipped final model as far as it scores like "
    "them; not exact (worst case 1 - 2 alpha coverage), measured by simulation and on the test "
    "part",
}
# --guarantee expected: conformal risk control (Angelopoulos, Bates, Fisch, Lei and Schuster 2022)
EXPECTED_STATEMENT = (
    "expected (conformal risk control): averaged over the draw of the calibration crops, the "
    "rate of pits routed clean is at most the bound; one calibration may exceed it, so it is "
    "weaker than the exact bound and sends fewer crops to review"
)
METHODS = {
    "exact": "exact Clopper-Pearson upper bound, fixed-sequence (Learn-Then-Test) scan",
    "expected": "conformal risk control: largest t_low with (misses + 1) / (pits + 1) <= bound",
}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) on held-out data."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] < 2:
        raise PitguardError(f"logits must have shape (N, C) with C >= 2, got {z.shape}")
    if y.shape != (z.shape[0],):
        raise PitguardError(f"labels must have shape ({z.shape[0]},), got {y.shape}")
    if z.shape[0] == 0:
        raise PitguardError("cannot fit a temperature on zero samples")
    if not np.all(np.isfinite(z)):
        raise PitguardError("logits contain NaN or infinite values")
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= z.shape[1]:
        raise PitguardError(f"labels must be integers in [0, {z.shape[1]})")
    y = y.astype(np.int64)
    rows = np.arange(z.shape[0])

    def nll(log_t: float) -> float:
        return float(-special.log_softmax(z * math.exp(-log_t), axis=1)[rows, y].mean())

    # The NLL is convex in 1/T, hence unimodal in log T: a bounded scalar search finds it.
    res = optimize.minimize_scalar(
        nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-7}
    )
    return float(math.exp(res.x))


def _require_part(run: RunModel, part: str) -> None:
    """Refuse early, and say why, when the run's own split lacks the part to calibrate on."""
    parts = run.meta.get("data", {}).get("counts", {})
    if parts and part not in parts:
        raise PitguardError(
            f"{run.run}: its split has no {part} part (parts: {', '.join(sorted(parts))}); "
            "calibration needs crops kept out of training and selection: pass --data with "
            "held-out crops, or train on pitguard's default split, which keeps a calib part"
        )


def calibrate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    part: str | None = None,
    max_pit_miss: float = 0.01,
    confidence: float = 0.95,
    max_false_reject: float | None = None,
    scores: str | None = None,
    allow_unfinished: bool = False,
    guarantee: str = "exact",
    second_look: str | None = None,
    second_look_model: str | Path | None = None,
) -> dict:
    """Fit temperature, then thresholds with the pit-miss guarantee; write policy.json and a report.

    ``scores`` is ``holdout`` (the calib part, or DATA) or ``oof`` (the run's out-of-fold
    scores); by default ``oof`` for a cross-fitted run and ``holdout`` otherwise. A run whose
    training is unfinished is refused unless ``allow_unfinished``. ``guarantee`` is ``exact``
    (a bound that holds with ``confidence``) or ``expected`` (on average; conformal risk control).
    ``second_look`` (``hflip``, ``rot4`` or ``d8``; default: the recipe's ``model.second_look``;
    ``none``: one stage) adds a cascade whose second stage scores the crops in doubt again under
    those test-time views (:mod:`pitguard.decision.cascade`); ``second_look_model`` (a run
    trained on the same split, cross-fitted for ``oof``) makes its model the second stage (views
    default ``none`` then).
    """
    run = load_run(run_dir)
    look = second_look_request(run, second_look, second_look_model, max_false_reject)
    unfinished = refuse_unfinished(run.run, allow_unfinished, "calibrate")
    mode, (logits, labels, described) = _scores(run, data, part, scores)
    pit = run.pit_index
    n_pits = int((labels == pit).sum())
    _log.info("calibrating on %s: %d crops, %d pits", described, len(labels), n_pits)

    probs_before = softmax(logits, axis=1)
    temperature = fit_temperature(logits, labels)
    probs_after = softmax(logits / temperature, axis=1)
    ece_before = metrics.expected_calibration_error(probs_before, labels)
    ece_after = metrics.expected_calibration_error(probs_after, labels)

    maybe = maybe_index(run.classes)
    policy = DecisionPolicy(temperature, pit_index=pit, maybe_index=maybe)
    p_pit = policy(torch.from_numpy(logits).float())[0].numpy()
    is_pit = labels == pit
    chosen = choose_thresholds(p_pit, is_pit, max_pit_miss, confidence, max_false_reject, guarantee)
    policy = DecisionPolicy(temperature, chosen.t_low, chosen.t_high, pit, maybe)

    paths = RunPaths(run.run)
    out = paths.calibration
    curve = operating_curve(p_pit, is_pit, confidence)
    stated = {"max_pit_miss": max_pit_miss, "confidence": confidence}
    bound = _guarantee(mode, guarantee, **stated, max_false_reject=max_false_reject)
    record: dict = {
        "policy": policy.to_dict(),
        "model_sha256": file_sha256(paths.weights),  # the weights this policy was fitted to
        "training": {"finished": unfinished is None, "unfinished": unfinished},
        "mode": mode,
        "guarantee": bound,
        "calibration_data": _described(run, described, labels, mode, data, part),
        "thresholds": asdict(chosen),
        "ece_before": ece_before,
        "ece_after": ece_after,
        "calib_routes": _route_counts(policy, logits),
        "outputs": {
            "operating_curve": str(out / CALIB_OPERATING_CURVE),
            "reliability": str(out / CALIB_RELIABILITY),
        },
    }
    table = operating_table(p_pit, is_pit, confidence)
    record["review_cost"] = review_cost(p_pit, is_pit).to_dict()  # what a recipe is chosen on
    if look is not None:
        logits2 = second_look_logits(run, mode, data, part, *look)
        _add_second_look(record, look, p_pit, logits, logits2, labels, policy, bound)
    report = {**record, "operating_curve": curve, "operating_table": table}
    _commit(
        paths, record, report, lambda d: _plot(curve, chosen, probs_before, probs_after, labels, d)
    )
    return {**record, "operating_table": table}


def _commit(paths: RunPaths, record: dict, report: dict, plot) -> None:
    """The report and the plots (``plot(folder)``) staged beside ``calibration/``, then put in
    place with ``policy.json`` at once: a signal leaves the old set or the new set."""
    staged = temp_name(paths.calibration)
    shutil.rmtree(staged, ignore_errors=True)
    try:
        staged.mkdir(parents=True)
        plot(staged)
        write_json(staged / CALIB_REPORT, report)
        commit_together(staged, paths.calibration, paths.policy, json_text(record))
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _described(run: RunModel, described: str, labels: np.ndarray, mode: str, data, part) -> dict:
    """``policy.json``'s ``calibration_data``: which crops, how many of each class."""
    return {
        "data": described,
        # the run's own part, named apart from the path spelled on the command line
        "run_part": (part or "calib") if mode == "holdout" and data is None else None,
        "n": len(labels),
        "n_pits": int((labels == run.pit_index).sum()),
        "n_clean": int((labels == run.classes.index("clean")).sum()),
    }


def _plot(curve, chosen, probs_before, probs_after, labels, out: Path) -> None:
    """The operating curve and the reliability diagram before and after the temperature."""
    plots.plot_operating_curve(curve, chosen, out / CALIB_OPERATING_CURVE)
    plots.plot_reliability(
        metrics.reliability_bins(probs_before, labels),
        metrics.reliability_bins(probs_after, labels),
        out / CALIB_RELIABILITY,
    )


def _route_counts(policy: DecisionPolicy, logits: np.ndarray) -> dict[str, int]:
    routes = policy(torch.from_numpy(logits).float())[1].numpy()
    return {r.label: int((routes == r).sum()) for r in Route}


def _add_second_look(
    record: dict, stage2: tuple, p_pit, logits, logits2, labels, policy: DecisionPolicy, bound: dict
) -> None:
    """The cascade certified into ``record``: stage 1 holds the cascade's thresholds, and what
    they certify alone becomes the record's thresholds; the single-stage ones are kept beside."""
    views, run2 = stage2
    model = second_model_facts(run2) if run2 is not None else None
    temperature = fit_temperature(logits2, labels)
    first, alone, look = second_look_record(
        views, p_pit, logits2, labels, policy, bound, temperature, model
    )
    look["without_second_look"] = record["thresholds"]
    record["policy"], record["thresholds"] = first.to_dict(), asdict(alone)
    record["calib_routes"] = _route_counts(first, logits)
    record["second_look"] = look
    bound["cascade"] = look["statement"]


def _scores(run: RunModel, data, part, scores: str | None) -> tuple[str, tuple]:
    """The score source (holdout or oof) and its logits, labels and description."""
    has_oof = RunPaths(run.run).oof.is_file()
    mode = scores or ("oof" if has_oof and data is None and part is None else "holdout")
    if mode not in SCORE_SOURCES:
        raise PitguardError(f"--scores {mode}: choose {' or '.join(SCORE_SOURCES)}")
    if mode == "holdout":
        return mode, _holdout_logits(run, data, part)
    if data is not None or part is not None:
        raise PitguardError(
            "--scores oof calibrates on the run's out-of-fold scores; drop --data/--split"
        )
    return mode, _oof_logits(run)


def _guarantee(mode: str, kind: str, **bound) -> dict:
    """What policy.json says was certified, in words and numbers."""
    statement = GUARANTEES[mode] if kind == "exact" else EXPECTED_STATEMENT
    return {"mode": mode, "kind": kind, "statement": statement, **bound, "method": METHODS[kind]}


def _holdout_logits(
    run: RunModel, data: str | Path | None, part: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """The shipped model's logits on crops it never trained on: its calib part, or DATA."""
    if data is None and RunPaths(run.run).oof.is_file():
        raise PitguardError(
            f"{run.run}: a cross-fitted run trained on all crops outside its test part; "
            "calibrate it with --scores oof, or give held-out crops with --data"
        )
    if data is None:
        part = part or "calib"
        _require_part(run, part)
    if part in FORBIDDEN_PARTS:
        raise PitguardError(
            f"--split {part}: calibration never uses the train, val or test parts; use calib (the default)"
        )
    ev = load_part(run, data, part)
    return run_logits(run, ev.crops).double().numpy(), ev.labels, ev.description


def _oof_logits(run: RunModel) -> tuple[np.ndarray, np.ndarray, str]:
    """Out-of-fold logits of a cross-fitted run, in the run's class order."""
    oof = read_oof(run.run)
    if tuple(oof.classes) != tuple(run.classes):
        raise PitguardError(
            f"{RunPaths(run.run).oof}: classes {', '.join(oof.classes)} differ from the model's "
            f"{', '.join(run.classes)}; train the folds again"
        )
    k = len(np.unique(oof.folds))
    return oof.logits, oof.labels, f"{RunPaths(run.run).oof} [out of fold, {k} folds]"


def threshold_sweep(
    p_pit: np.ndarray, is_pit: np.ndarray, min_recall: float = 0.99, n_points: int = 101
) -> dict:
    """The single-threshold table of the old reports: crop is pit when p_pit >= t."""
    thresholds = np.linspace(0.0, 1.0, n_points)
    rows = []
    for t in thresholds:
        pred = p_pit >= t
        tp = int((pred & is_pit).sum())
        fp = int((pred & ~is_pit).sum())
        tn = int((~pred & ~is_pit).sum())
        fn = int((~pred & is_pit).sum())
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        rows.append(
            {
                "threshold": round(float(t), 6),
                "accuracy": (tp + tn) / len(pred),
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "specificity": tn / (tn + fp) if tn + fp else None,
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
            }
        )
    meeting = [r for r in rows if r["recall"] is not None and r["recall"] >= min_recall]
    best = max(meeting, key=lambda r: (r["f1"], r["threshold"])) if meeting else None
    return {"min_recall": min_recall, "rows": rows, "best": best}


def sweep_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    part: str | None = None,
    min_recall: float = 0.99,
) -> dict:
    """Sweep thresholds on the run's calib part (or DATA) with the calibrated temperature if any."""
    run = load_run(run_dir)
    if data is None:
        part = part or "calib"
        _require_part(run, part)
    ev = load_part(run, data, part)
    logits = run_logits(run, ev.crops)
    policy = load_policy(run.run) or DecisionPolicy(
        pit_index=run.pit_index, maybe_index=maybe_index(run.classes)
    )
    p_pit = policy(logits)[0].numpy()
    sweep = threshold_sweep(p_pit, ev.labels == run.pit_index, min_recall)
    sweep["data"] = ev.description
    sweep["n"] = len(ev.labels)
    out = RunPaths(run.run).thresholds
    plots.plot_sweep(sweep, out / SWEEP_PNG)
    write_json(out / SWEEP_JSON, sweep)
    sweep["outputs"] = str(out)
    return sweep
