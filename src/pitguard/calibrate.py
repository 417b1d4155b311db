"""Calibrate a run's clean/maybe/pit decision on its calib part, and measure routed crops."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from pitguard import metrics
from pitguard.errors import PitguardError
from pitguard.evaluate import load_eval_data, run_logits
from pitguard.policy import (
    ROUTES,
    DecisionPolicy,
    choose_thresholds,
    fit_temperature,
    operating_curve,
    plot_operating_curve,
)
from pitguard.runs import RunModel, load_run, write_json

FORBIDDEN_PARTS = ("train", "val", "test")


def load_policy(run_dir: str | Path) -> DecisionPolicy | None:
    """The calibrated decision of a run folder, or None when it has not been calibrated."""
    path = Path(run_dir) / "policy.json"
    if not path.is_file():
        return None
    return DecisionPolicy.from_dict(json.loads(path.read_text())["policy"])


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
) -> dict:
    """Fit temperature, then thresholds with the pit-miss guarantee; write policy.json and a report."""
    run = load_run(run_dir)
    if data is None:
        part = part or "calib"
        _require_part(run, part)
    if part in FORBIDDEN_PARTS:
        raise PitguardError(
            f"--split {part}: calibration never uses the train, val or test parts; use calib (the default)"
        )
    ev = load_eval_data(run, data, part)
    logits = run_logits(run, ev.crops).double().numpy()
    labels = ev.labels
    pit = run.pit_index
    n_pits = int((labels == pit).sum())
    print(f"calibrating on {ev.description}: {len(labels)} crops, {n_pits} pits", flush=True)

    probs_before = softmax(logits, axis=1)
    temperature = fit_temperature(logits, labels)
    probs_after = softmax(logits / temperature, axis=1)
    ece_before = metrics.expected_calibration_error(probs_before, labels)
    ece_after = metrics.expected_calibration_error(probs_after, labels)

    policy = DecisionPolicy(temperature, pit_index=pit)
    p_pit = policy(torch.from_numpy(logits).float())[0].numpy()
    is_pit = labels == pit
    chosen = choose_thresholds(p_pit, is_pit, max_pit_miss, confidence, max_false_reject)
    policy = DecisionPolicy(temperature, chosen.t_low, chosen.t_high, pit)

    out = run.run / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    curve = operating_curve(p_pit, is_pit, confidence)
    plot_operating_curve(curve, chosen, out / "operating_curve.png")
    metrics.plot_reliability(
        metrics.reliability_bins(probs_before, labels),
        metrics.reliability_bins(probs_after, labels),
        out / "reliability.png",
    )
    calib_routes = policy(torch.from_numpy(logits).float())[1].numpy()
    record = {
        "policy": policy.to_dict(),
        "guarantee": {
            "max_pit_miss": max_pit_miss,
            "confidence": confidence,
            "max_false_reject": max_false_reject,
            "method": "exact Clopper-Pearson upper bound, fixed-sequence (Learn-Then-Test) scan",
        },
        "calibration_data": {
            "data": ev.description,
            "n": len(labels),
            "n_pits": n_pits,
            "n_clean": int((labels == run.classes.index("clean")).sum()),
        },
        "thresholds": asdict(chosen),
        "ece_before": ece_before,
        "ece_after": ece_after,
        "calib_routes": {name: int((calib_routes == i).sum()) for i, name in enumerate(ROUTES)},
        "outputs": {
            "operating_curve": str(out / "operating_curve.png"),
            "reliability": str(out / "reliability.png"),
        },
    }
    write_json(out / "policy_report.json", {**record, "operating_curve": curve})
    write_json(run.run / "policy.json", record)
    return record


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


def plot_sweep(sweep: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    t = [r["threshold"] for r in sweep["rows"]]
    for key in ("accuracy", "precision", "recall", "f1", "specificity"):
        ax.plot(t, [np.nan if r[key] is None else r[key] for r in sweep["rows"]], label=key)
    ax.axhline(
        sweep["min_recall"],
        color="grey",
        linestyle=":",
        label=f"recall floor {sweep['min_recall']}",
    )
    if sweep["best"]:
        ax.axvline(
            sweep["best"]["threshold"], color="black", linestyle="--", label="best F1 meeting floor"
        )
    ax.set_xlabel("threshold on p(pit)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
    ev = load_eval_data(run, data, part)
    logits = run_logits(run, ev.crops)
    policy = load_policy(run.run) or DecisionPolicy(pit_index=run.pit_index)
    p_pit = policy(logits)[0].numpy()
    sweep = threshold_sweep(p_pit, ev.labels == run.pit_index, min_recall)
    sweep["data"] = ev.description
    sweep["n"] = len(ev.labels)
    out = run.run / "thresholds"
    out.mkdir(parents=True, exist_ok=True)
    plot_sweep(sweep, out / "sweep.png")
    write_json(out / "sweep.json", sweep)
    sweep["outputs"] = str(out)
    return sweep
