"""Evaluate a run on any dataset layout: metrics with intervals, per-item predictions, plots."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_write, file_sha256, write_json
from pitguard.core.fmt import pct, pct_ci
from pitguard.core.stats import clopper_pearson
from pitguard.data.load import Crops
from pitguard.evaluate import metrics, plots
from pitguard.evaluate.results import (
    EvalReport,
    InputGuardCheck,
    RoutedMetrics,
    plain_summary,
)
from pitguard.models.runfolder import (
    EVAL_CONFUSION,
    EVAL_METRICS,
    EVAL_PREDICTIONS,
    EVAL_ROC_PR,
    EvalData,
    RunModel,
    RunPaths,
    load_part,
    load_run,
    run_logits,
    view_logits,
)
from pitguard.models.second_stage import (
    check_second_model,
    crop_contents,
    load_second_model,
    refuse_seen,
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
    routed metrics carry. Returns what metrics.json holds (``EvalReport.to_dict()``)."""
    if n_boot < 1:
        raise PitguardError(f"--n-boot {n_boot}: give at least 1 bootstrap resample (default 1000)")
    run = load_run(run_dir)
    ev = load_part(run, data, part, classes)
    logits = run_logits(run, ev.crops, device)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    report = replace(
        metrics.eval_report(ev.labels, probs, list(run.classes), n_boot=n_boot),
        run=str(run.run),
        data=ev.description,
        source=str(ev.source),
        part=ev.part,
        model_sha256=file_sha256(RunPaths(run.run).weights),
    )
    out = Path(out_dir) if out_dir else RunPaths(run.run).eval_dir(ev)
    out.mkdir(parents=True, exist_ok=True)
    flagged = _input_guard(run, ev.crops.images.numpy())
    report.input_guard = _guard_check(flagged)
    look = (calibration or {}).get("second_look") if policy is not None else None
    p_pit, route_ids, looked = _decide(run, logits, policy, flagged, look, ev)
    routes = None
    if policy is not None:
        report.policy = _routed(route_ids, ev.labels, run.classes, calibration or {})
        if look is not None:
            report.policy.second_look = _second_look_check(look, looked)
        report.plain_summary = plain_summary(report.policy, part=ev.part)
        routes = [Route(int(r)).label for r in route_ids]
    write_predictions(
        out / EVAL_PREDICTIONS, ev.crops, ev.labels, probs, run.classes, p_pit, routes, flagged
    )
    plots.plot_confusion_matrix(
        np.array(report.confusion_matrix), list(run.classes), out / EVAL_CONFUSION
    )
    plots.plot_roc_pr(
        (ev.labels == run.pit_index).astype(int), probs[:, run.pit_index], out / EVAL_ROC_PR
    )
    report.outputs = str(out)
    result = report.to_dict()
    write_json(out / EVAL_METRICS, result)
    return result


def _guard_check(flagged: list[str] | None) -> InputGuardCheck | None:
    if flagged is None:
        return None
    k = int(sum(bool(r) for r in flagged))
    return InputGuardCheck(
        flagged=k,
        n=len(flagged),
        rate=k / len(flagged),
        rate_ci=list(clopper_pearson(k, len(flagged))),
        note="crops unlike the run's train part; the bundle routes them to maybe",
    )


def _decide(
    run: RunModel,
    logits: torch.Tensor,
    policy: torch.nn.Module | None,
    flagged,
    look: dict | None,
    ev: EvalData,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(pit), routes and the second-look mask as the bundle computes them: the calibrated
    policy's (with its second look, if calibrated with one), or temperature 1 without one; with
    a policy, crops the input guard flagged go to review, as in the bundle."""
    if look is not None and isinstance(policy, DecisionPolicy):
        net = _second_net(run, look, ev)

        def second(rows: np.ndarray) -> torch.Tensor:
            return view_logits(net, ev.crops.images[torch.from_numpy(rows)], look["views"])

        policy2 = DecisionPolicy.from_dict(look["policy"])
        p_pit, route_ids, looked = _cascade(policy, policy2, logits, second)
    else:
        with torch.no_grad():
            default = DecisionPolicy(pit_index=run.pit_index, maybe_index=maybe_index(run.classes))
            p_pit, route_ids = (t.numpy().copy() for t in (policy or default)(logits))
        looked = np.zeros(len(route_ids), dtype=bool)
    if policy is not None and flagged is not None:
        route_ids[[bool(r) for r in flagged]] = int(Route.MAYBE)
    return p_pit, route_ids, looked


def _second_net(run: RunModel, look: dict, ev: EvalData) -> torch.nn.Module:
    """The second stage's network: the run's own, or the run ``look`` names, which must never
    have trained on the crops evaluated."""
    run2 = load_second_model(look)
    if run2 is None:
        return run.net
    check_second_model(run, run2)
    refuse_seen(run2, crop_contents(ev), "crops evaluated")
    return run2.net


def _cascade(
    policy1: DecisionPolicy,
    policy2: DecisionPolicy,
    logits1: torch.Tensor,
    second: Callable[[np.ndarray], torch.Tensor],  # rows -> stage-2 logits of those crops
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(pit), routes and the second-look mask of a cascade (:mod:`pitguard.decision.cascade`):
    stage 1 on ``logits1``, stage 2 on ``second(rows)`` for the rows stage 1 routes maybe."""
    with torch.no_grad():
        p1, r1 = (t.numpy().copy() for t in policy1(logits1.float()))
    rows = np.flatnonzero(r1 == int(Route.MAYBE))
    looked = np.zeros(len(r1), dtype=bool)
    if len(rows):
        with torch.no_grad():
            p2, r2 = (t.numpy() for t in policy2(second(rows).float()))
        p1[rows], r1[rows], looked[rows] = p2, r2, True
    return p1, r1, looked


def _second_look_check(look: dict, looked: np.ndarray) -> dict:
    """How many crops took the cascade's second look here, with the exact interval."""
    k, n = int(looked.sum()), len(looked)
    return {
        "views": look["views"],
        "n_second": k,
        "share": k / n if n else None,
        "share_ci": list(clopper_pearson(k, n)) if n else None,
        "calib_share": look.get("share"),
        "model": (look.get("model") or {}).get("model_name"),  # None: the run's own network
    }


def _routed(route_ids: np.ndarray, labels: np.ndarray, classes, record: dict) -> RoutedMetrics:
    """The routes measured, with the calibration mode and guarantee of the policy's record."""
    return replace(
        metrics.routed(route_ids, labels, classes),
        calibration_mode=record.get("mode", "holdout"),
        guarantee=record.get("guarantee"),
        policy_used=record.get("policy"),  # what staleness is checked on
        absent=frozenset(),
    )


def _input_guard(run: RunModel, images: np.ndarray) -> list[str] | None:
    """The bundle's input guard, fitted as export fits it, applied to ``images`` (None for a
    run without a train part of its own)."""
    from pitguard.runtime.guard import InputGuard

    if "train" not in run.meta.get("data", {}).get("counts", {}):
        return None
    train = load_part(run, None, "train")
    return InputGuard.fit(train.crops.images.numpy(), run.net.contract.channels).check(images)


def format_report(result: dict) -> str:
    """An evaluation (what ``evaluate_run`` returns) as lines for the terminal."""
    r = EvalReport.from_dict(result)
    lines = [r.plain_summary, ""] if r.plain_summary else []
    lines += [
        f"{r.data}  n={r.n}",
        f"accuracy          {pct(r.accuracy)}{pct_ci(r.accuracy_ci)}",
        f"balanced accuracy {pct(r.balanced_accuracy)}{pct_ci(r.balanced_accuracy_ci)}",
        f"macro F1          {pct(r.macro_f1)}{pct_ci(r.macro_f1_ci)}",
    ]
    for cls, m in r.per_class.items():
        lines.append(
            f"  {cls:<6} precision {pct(m.precision, width=7)} recall {pct(m.recall, width=7)} "
            f"f1 {pct(m.f1, width=7)} (support {m.support})"
        )
    if r.roc_auc is not None:
        lo, hi = r.roc_auc_ci or (None, None)
        ci = f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
        lines.append(f"ROC-AUC {r.roc_auc:.4f}{ci}  PR-AUC {r.pr_auc:.4f}")
    lines.append(f"log-loss {r.log_loss:.4f}  Brier {r.brier:.4f}  ECE {r.ece:.4f}")
    lines.append("confusion (rows true, cols predicted): " + str(r.confusion_matrix))
    guard = r.input_guard
    if guard:
        lines.append(
            f"input guard: {guard.flagged} of {guard.n} crops unlike the training crops "
            f"({pct(guard.rate)}{pct_ci(guard.rate_ci)}), routed to maybe"
        )
    if r.policy:
        lines += _format_policy(r.policy)
    return "\n".join(lines)


def _format_policy(pol: RoutedMetrics) -> list[str]:
    lines = [
        f"calibrated decision ({pol.calibration_mode or 'holdout'} calibration; "
        "exact 95% intervals):"
    ]
    for label, value, ci in (
        ("pit-miss rate", pol.pit_miss_rate, pol.pit_miss_ci),
        ("false-reject rate", pol.false_reject_rate, pol.false_reject_ci),
        ("maybe rate", pol.maybe_rate, pol.maybe_ci),
        ("accuracy decided", pol.accuracy_decided, pol.accuracy_decided_ci),
    ):
        lines.append(f"  {label:<18} {pct(value, width=7)}{pct_ci(ci)}")
    lines.append("  routes: " + ", ".join(f"{k} {v}" for k, v in (pol.routes or {}).items()))
    if pol.second_look:
        look = pol.second_look
        lines.append(
            f"  second look ({look.get('model') or 'same network'}, views {look['views']}): "
            f"{look['n_second']} crops in doubt scored again "
            f"({pct(look['share'])}{pct_ci(look['share_ci'])}); the rates above are the cascade's"
        )
    return lines
