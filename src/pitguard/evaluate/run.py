"""Evaluate a run on any dataset layout: metrics with intervals, per-item predictions, plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_write, file_sha256, write_json
from pitguard.core.stats import clopper_pearson
from pitguard.data.load import Crops
from pitguard.evaluate import metrics, plots
from pitguard.models.runfolder import (
    EVAL_CONFUSION,
    EVAL_METRICS,
    EVAL_PREDICTIONS,
    EVAL_ROC_PR,
    RunModel,
    RunPaths,
    load_part,
    load_run,
    run_logits,
)
from pitguard.runtime.policy import PREDICTION_COLUMNS, DecisionPolicy, Route, maybe_index


def write_predictions(
    path: Path,
    crops: Crops,
    labels: np.ndarray,
    probs: np.ndarray,
    classes,
    p_pit: np.ndarray,
    routes=None,
    reasons=None,
) -> None:
    """Per-crop rows in the one prediction schema (``PREDICTION_COLUMNS``); ``p_pit`` is the
    policy's calibrated p(pit), the number its thresholds apply to, as a bundle reports it."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(PREDICTION_COLUMNS)
            for i, p in enumerate(crops.paths):
                writer.writerow(
                    [
                        p,
                        classes[labels[i]],
                        classes[int(probs[i].argmax())],
                        f"{p_pit[i]:.6f}",
                        routes[i] if routes is not None else "",
                        "",
                        reasons[i] if reasons is not None else "",
                    ]
                )

    atomic_write(path, write)


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    part: str | None = None,
    out_dir: str | Path | None = None,
    n_boot: int = 1000,
    classes: str | None = None,
    device: str = "auto",
    policy: torch.nn.Module | None = None,
    calibration: dict | None = None,
) -> dict:
    """Metrics of a run's argmax predictions, and of the routes of ``policy`` (logits -> p_pit,
    route); ``calibration`` is the policy's record (policy.json), whose mode and guarantee the
    routed metrics carry."""
    if n_boot < 1:
        raise PitguardError(f"--n-boot {n_boot}: give at least 1 bootstrap resample (default 1000)")
    run = load_run(run_dir)
    ev = load_part(run, data, part, classes)
    logits = run_logits(run, ev.crops, device)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    report = metrics.classification_report(ev.labels, probs, list(run.classes), n_boot=n_boot)
    result = {
        "run": str(run.run),
        "data": ev.description,
        "source": str(ev.source),
        "part": ev.part,
        "n": len(ev.labels),
        **report,
        "model_sha256": file_sha256(RunPaths(run.run).weights),
    }
    out = Path(out_dir) if out_dir else RunPaths(run.run).eval_dir(ev)
    out.mkdir(parents=True, exist_ok=True)
    routes = None
    flagged = _input_guard(run, ev.crops.images.numpy())
    if flagged is not None:
        k = int(sum(bool(r) for r in flagged))
        result["input_guard"] = {
            "flagged": k,
            "n": len(flagged),
            "rate": k / len(flagged),
            "rate_ci": list(clopper_pearson(k, len(flagged))),
            "note": "crops unlike the run's train part; the bundle routes them to maybe",
        }
    # p(pit) as the bundle computes it: the calibrated policy's, or temperature 1 without one
    with torch.no_grad():
        default = DecisionPolicy(pit_index=run.pit_index, maybe_index=maybe_index(run.classes))
        p_pit, route_ids = (policy or default)(logits)
    p_pit, route_ids = p_pit.numpy(), route_ids.numpy().copy()
    if policy is not None:
        if flagged is not None:  # what the bundle does: flagged crops go to review
            route_ids[[bool(r) for r in flagged]] = int(Route.MAYBE)
        result["policy"] = metrics.routed_metrics(route_ids, ev.labels, run.classes)
        record = calibration or {}
        result["policy"]["calibration_mode"] = record.get("mode", "holdout")
        result["policy"]["guarantee"] = record.get("guarantee")
        result["policy"]["policy_used"] = record.get("policy")  # what staleness is checked on
        result["plain_summary"] = plain_summary(result["policy"])
        routes = [Route(int(r)).label for r in route_ids]
    write_predictions(
        out / EVAL_PREDICTIONS,
        ev.crops,
        ev.labels,
        probs,
        run.classes,
        p_pit,
        routes,
        flagged,
    )
    plots.plot_confusion_matrix(
        np.array(report["confusion_matrix"]), list(run.classes), out / EVAL_CONFUSION
    )
    plots.plot_roc_pr(
        (ev.labels == run.pit_index).astype(int), probs[:, run.pit_index], out / EVAL_ROC_PR
    )
    result["outputs"] = str(out)
    write_json(out / EVAL_METRICS, result)
    return result


def _input_guard(run: RunModel, images: np.ndarray) -> list[str] | None:
    """The bundle's input guard, fitted as export fits it, applied to ``images`` (None for a
    run without a train part of its own)."""
    from pitguard.runtime.guard import InputGuard

    if "train" not in run.meta.get("data", {}).get("counts", {}):
        return None
    train = load_part(run, None, "train")
    return InputGuard.fit(train.crops.images.numpy(), run.net.contract.channels).check(images)


def plain_summary(pol: dict, per: int = 10_000) -> str:
    """The routed rates in words a line operator reads: per ``per`` crops like the evaluated ones."""
    n, n_pits = pol["n"], pol["n_pits"]
    share_pits = n_pits / n if n else 0.0
    review = round(per * (pol["maybe_rate"] or 0.0))
    missed = per * share_pits * (pol["pit_miss_rate"] or 0.0)
    missed_most = per * share_pits * pol["pit_miss_upper"]
    rejected = per * (1 - share_pits) * (pol["false_reject_rate"] or 0.0)
    return (
        f"Of {per:,} crops like these ({100 * share_pits:.0f}% pits): {review:,} go to review; "
        f"about {missed:.0f} pits pass as clean (at most {missed_most:.0f} with 95% confidence); "
        f"about {rejected:.0f} clean cherries are rejected as pits. Fewer to review: allow a "
        f"higher pit-miss bound at calibration, or train a model that separates pits better "
        f"(higher ROC-AUC); fewer pits passed: a lower bound, at the cost of more review."
    )


def format_report(result: dict) -> str:
    def ci(key):
        lo, hi = result[key + "_ci"]
        return f"{100 * result[key]:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"

    lines = [result["plain_summary"], ""] if result.get("plain_summary") else []
    lines += [
        f"{result['data']}  n={result['n']}",
        f"accuracy          {ci('accuracy')}",
        f"balanced accuracy {ci('balanced_accuracy')}",
        f"macro F1          {ci('macro_f1')}",
    ]
    for cls, m in result["per_class"].items():
        lines.append(
            f"  {cls:<6} precision {_pct(m['precision'])} recall {_pct(m['recall'])} f1 {_pct(m['f1'])} (support {m['support']})"
        )
    if result.get("roc_auc") is not None:
        lines.append(
            f"ROC-AUC {result['roc_auc']:.4f} [{result['roc_auc_ci'][0]:.4f}, {result['roc_auc_ci'][1]:.4f}]  "
            f"PR-AUC {result['pr_auc']:.4f}"
        )
    lines.append(
        f"log-loss {result['log_loss']:.4f}  Brier {result['brier']:.4f}  ECE {result['ece']:.4f}"
    )
    lines.append("confusion (rows true, cols predicted): " + str(result["confusion_matrix"]))
    guard = result.get("input_guard")
    if guard:
        lo, hi = guard["rate_ci"]
        lines.append(
            f"input guard: {guard['flagged']} of {guard['n']} crops unlike the training crops "
            f"({100 * guard['rate']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]), routed to maybe"
        )
    pol = result.get("policy")
    if pol:
        lines.append(
            f"calibrated decision ({pol.get('calibration_mode', 'holdout')} calibration; "
            "exact 95% intervals):"
        )
        for key, label in (
            ("pit_miss", "pit-miss rate"),
            ("false_reject", "false-reject rate"),
            ("maybe", "maybe rate"),
            ("accuracy_decided", "accuracy decided"),
        ):
            value = pol[key if key == "accuracy_decided" else key + "_rate"]
            lo, hi = pol[key + "_ci"]
            lines.append(f"  {label:<18} {_pct(value)} [{100 * lo:.2f}, {100 * hi:.2f}]")
        lines.append("  routes: " + ", ".join(f"{k} {v}" for k, v in pol["routes"].items()))
    return "\n".join(lines)


def _pct(x) -> str:
    return "  n/a " if x is None else f"{100 * x:6.2f}%"
