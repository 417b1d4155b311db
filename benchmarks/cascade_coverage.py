"""How often the cascade's certified bound is broken on fresh crops, by simulation.

The cascade (``pitguard calibrate --second-look``) routes by two scores and one pair of
thresholds, the upper certified on the clean crops, the lower on the pits given the upper
(:mod:`pitguard.decision.cascade`). This script draws many calibration sets from a known pair
of score distributions (a crop's second-look score correlated with its first), calibrates the
cascade on each exactly as ``calibrate`` does, and measures each cascade's true pit-miss rate on
a large fresh sample. The exact guarantee holds when the share of calibrations whose true rate
exceeds the bound is at most 1 - confidence. ``--naive`` measures instead the two-step cascade
this replaced: stage 1's own certified band, then stage 2 certified on the cascade's scores.

    .venv/bin/python benchmarks/cascade_coverage.py --draws 400 --json results/cascade-coverage.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pitguard.core.stats import clopper_pearson
from pitguard.decision.cascade import cascade_routes, certify_cascade
from pitguard.decision.certify import choose_thresholds
from pitguard.runtime.policy import Route, route


def draw(rng: np.random.Generator, n: int, pit_share: float = 0.45, rho: float = 0.7):
    """``n`` crops: labels, stage-1 and stage-2 scores in (0, 1). The second look is a noisier
    copy of the same evidence with more separation (its logit mean gap is wider)."""
    is_pit = rng.random(n) < pit_share
    z1 = rng.normal(0, 1, n)
    z2 = rho * z1 + np.sqrt(1 - rho**2) * rng.normal(0, 1, n)
    sign = np.where(is_pit, 1.0, -1.0)
    p1 = 1 / (1 + np.exp(-(1.6 * sign + 1.2 * z1)))
    p2 = 1 / (1 + np.exp(-(2.0 * sign + 1.2 * z2)))
    return is_pit, p1.astype(np.float32), p2.astype(np.float32)


def naive(p1, p2, is_pit, bound: float, confidence: float):
    """The two-step cascade: stage 1's own certified thresholds set the band, then stage 2's are
    certified on scores 0 (stage 1 clean), 1 (stage 1 pit) or p2 (in the band)."""
    first = choose_thresholds(p1, is_pit, bound, confidence, 0.05)
    r1 = route(p1, first.t_low, first.t_high)
    s = np.where(r1 == 0, np.float32(0), np.where(r1 == 2, np.float32(1), p2))
    second = choose_thresholds(s, is_pit, bound, confidence, 0.05)
    return (first.t_low, first.t_high), (second.t_low, second.t_high)


def one_calibration(rng, n: int, bound: float, confidence: float, fresh, two_step: bool) -> dict:
    is_pit, p1, p2 = draw(rng, n)
    f_pit, f1, f2 = fresh
    if two_step:
        t1, t2 = naive(p1, p2, is_pit, bound, confidence)
        r1 = route(f1, *t1)
        routes = np.where(r1 == int(Route.MAYBE), route(f2, *t2), r1)
        alone = r1
    else:
        cascade, _ = certify_cascade(p1, p2, is_pit, bound, confidence, 0.05)
        routes = cascade_routes(f1, f2, cascade.t_low, cascade.t_high)
        alone = route(f1, cascade.t_low, cascade.t_high)
    single = choose_thresholds(p1, is_pit, bound, confidence, 0.05)
    return {
        "true_miss_rate": float((routes[f_pit] == int(Route.CLEAN)).mean()),
        "stage1_true_miss_rate": float((alone[f_pit] == int(Route.CLEAN)).mean()),
        "maybe_rate": float((routes == int(Route.MAYBE)).mean()),
        "single_stage_maybe_rate": float((route(f1, single.t_low, single.t_high) == 1).mean()),
    }


def simulate(
    draws: int, n: int, bound: float, confidence: float, seed: int = 0, two_step: bool = False
) -> dict:
    rng = np.random.default_rng(seed)
    fresh = draw(rng, 200_000)
    runs = [one_calibration(rng, n, bound, confidence, fresh, two_step) for _ in range(draws)]
    broken = sum(r["true_miss_rate"] > bound for r in runs)
    broken1 = sum(r["stage1_true_miss_rate"] > bound for r in runs)
    return {
        "draws": draws,
        "n_calibration": n,
        "bound": bound,
        "confidence": confidence,
        "broken": broken,
        "broken_share": broken / draws,
        "broken_share_ci": list(clopper_pearson(broken, draws)),
        "stage1_broken": broken1,
        "mean_maybe_rate": float(np.mean([r["maybe_rate"] for r in runs])),
        "mean_single_stage_maybe_rate": float(
            np.mean([r["single_stage_maybe_rate"] for r in runs])
        ),
        "procedure": "two-step (stage 1's band, then the cascade's scores)"
        if two_step
        else "pitguard's: t_high on clean crops, then t_low on pits",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=400, help="calibration sets drawn (default 400)")
    ap.add_argument("--n", type=int, default=3000, help="crops in each (default 3000)")
    ap.add_argument("--bound", type=float, default=0.01, help="pit-miss bound (default 0.01)")
    ap.add_argument("--confidence", type=float, default=0.95, help="(default 0.95)")
    ap.add_argument("--naive", action="store_true", help="the two-step cascade instead")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = simulate(args.draws, args.n, args.bound, args.confidence, two_step=args.naive)
    lo, hi = result["broken_share_ci"]
    print(
        f"{result['draws']} calibrations of {result['n_calibration']} crops, bound "
        f"{100 * args.bound:g}% at {100 * args.confidence:g}%: true rate over the bound in "
        f"{result['broken']} ({100 * result['broken_share']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]; "
        f"allowed {100 * (1 - args.confidence):g}%); stage 1 alone {result['stage1_broken']}; "
        f"maybe rate {100 * result['mean_maybe_rate']:.1f}% against "
        f"{100 * result['mean_single_stage_maybe_rate']:.1f}% without a second look"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
