"""Paired comparisons of runs on the same crops: is a difference more than noise?"""

from __future__ import annotations

from pathlib import Path

import torch

from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json
from pitguard.core.stats import mcnemar_exact, paired_bootstrap_diff
from pitguard.models.runfolder import (
    RunPaths,
    load_part,
    load_policy,
    load_run,
    run_logits,
    split_parts,
)
from pitguard.runtime.policy import Route


def same_split(run_dirs) -> bool:
    """True when every run was trained on the same split, so their test parts are the same crops."""
    parts = {split_parts(Path(r)) for r in run_dirs}
    return len(parts) == 1 and None not in parts


def compare_runs(
    run_dirs: list[str | Path],
    data: str | Path | None = None,
    part: str | None = None,
    n_boot: int = 2000,
) -> dict:
    """The first run is the baseline; each other run is compared with it on identical crops."""
    if len(run_dirs) < 2:
        raise PitguardError("compare needs at least two runs")
    runs = [load_run(r) for r in run_dirs]
    if data is None and not same_split([r.run for r in runs]):
        raise PitguardError(
            "the runs were trained on different splits, so one run's test part may be another's training data; "
            "pass --data with crops none of them trained on"
        )
    ev = load_part(runs[0], data, part)
    for run in runs:
        if run.classes != runs[0].classes:
            raise PitguardError(
                f"{run.run}: classes {run.classes} differ from {runs[0].run}: {runs[0].classes}"
            )
    per_run = [_scored(run, ev) for run in runs]
    rows = [_compared(per_run[0], other, n_boot) for other in per_run[1:]]
    return {"data": ev.description, "n": len(ev.labels), "comparisons": rows}


def _scored(run, ev) -> dict:
    """Which crops of EV the run's argmax gets right and, with a policy, which it routes to maybe."""
    logits = run_logits(run, ev.crops)
    correct = (logits.argmax(1).numpy() == ev.labels).astype(float)
    policy = load_policy(run.run)
    entry = {
        "run": str(run.run),
        "accuracy": float(correct.mean()),
        "correct": correct,
        "maybe": None,
        "guarantee": None,
    }
    if policy is not None:
        with torch.no_grad():
            routes = policy(logits)[1].numpy()
        entry["maybe"] = (routes == Route.MAYBE).astype(float)
        entry["maybe_rate"] = float(entry["maybe"].mean())
        entry["guarantee"] = (read_json(RunPaths(run.run).policy) or {}).get("guarantee")
    return entry


def _compared(base: dict, other: dict, n_boot: int) -> dict:
    """OTHER against BASE: paired accuracy difference, McNemar, and maybe rates under one bound."""
    row = {
        "baseline": base["run"],
        "run": other["run"],
        "accuracy_baseline": base["accuracy"],
        "accuracy_run": other["accuracy"],
        "mcnemar": mcnemar_exact(other["correct"].astype(bool), base["correct"].astype(bool)),
        "accuracy_diff": paired_bootstrap_diff(other["correct"], base["correct"], n_boot=n_boot),
    }
    same_guarantee = (
        base["guarantee"] is not None
        and other["guarantee"] is not None
        and base["guarantee"]["max_pit_miss"] == other["guarantee"]["max_pit_miss"]
        and base["guarantee"]["confidence"] == other["guarantee"]["confidence"]
    )
    if same_guarantee:
        row["maybe_rate_diff"] = paired_bootstrap_diff(other["maybe"], base["maybe"], n_boot=n_boot)
    else:
        row["maybe_rate_diff"] = None
        row["maybe_note"] = (
            "not compared: both runs need a calibrated policy with the same guarantee"
        )
    p = row["mcnemar"]["p_value"]
    row["verdict"] = (
        "within noise"
        if p >= 0.05 and row["accuracy_diff"]["within_noise"]
        else "difference beyond noise"
    )
    return row


def format_comparison(result: dict) -> str:
    lines = [f"{result['data']}  n={result['n']} (paired: every run sees the same crops)"]
    lines.append(f"{'run':<34}{'acc':>8}{'base':>8}{'diff [95% CI]':>26}{'McNemar p':>11}  verdict")
    for row in result["comparisons"]:
        d = row["accuracy_diff"]
        diff = f"{100 * d['diff']:+.2f} [{100 * d['ci'][0]:+.2f}, {100 * d['ci'][1]:+.2f}]"
        lines.append(
            f"{Path(row['run']).name[:33]:<34}{100 * row['accuracy_run']:>7.2f}%{100 * row['accuracy_baseline']:>7.2f}%"
            f"{diff:>26}{row['mcnemar']['p_value']:>11.4f}  {row['verdict']}"
        )
        m = row.get("maybe_rate_diff")
        if m:
            lines.append(
                f"{'':<34}maybe-rate diff {100 * m['diff']:+.2f} [{100 * m['ci'][0]:+.2f}, {100 * m['ci'][1]:+.2f}] points"
            )
    return "\n".join(lines)
