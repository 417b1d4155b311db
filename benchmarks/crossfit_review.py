"""A cross-fitted run's review rate at the reference point, in one stage and with each second look.

    .venv/bin/python benchmarks/crossfit_review.py runs/cf --views hflip,rot4,d8 \
        --models runs/cf-lite0 --json results/crossfit-cpu-fast.json

A second look is the run's own network under test-time views (``--views``) or another run's
model (``--models RUN2[:VIEWS]``, cross-fitted on the run's split: ``--data runs/cf/split.csv
--folds K``). RUN2's model alone in one stage is reported beside, paired with the run's on the
same resamples, and its test part under its own thresholds: so two recipes cross-fitted on the
same folds are compared crop by crop.

Out of fold (every crop outside the test part, each scored by the fold model that never trained
on it): the review rate at a 1% pit-miss bound (95%, false rejects <= 5%) certified as
``pitguard calibrate --scores oof`` certifies it, with a bootstrap interval (the thresholds
certified again on each resample) and, for each second look, its paired difference from one
stage on the same resamples. Then the test part, read afterwards: the final model's routes under
each decision certified out of fold, with exact intervals for the share sent to review and for
the pits routed clean. Nothing is chosen here; the run folder is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from pitguard.core.stats import clopper_pearson
from pitguard.decision.calibrate import fit_temperature
from pitguard.decision.cascade import cascade_routes, certify_cascade, oof_view_logits
from pitguard.decision.certify import choose_thresholds
from pitguard.decision.review_cost import REFERENCE, review_cost
from pitguard.evaluate import metrics
from pitguard.evaluate.oof import read_oof
from pitguard.models.runfolder import load_part, load_run, run_logits, view_logits
from pitguard.runtime.policy import Route, route

REF = (REFERENCE["max_pit_miss"], REFERENCE["confidence"], REFERENCE["max_false_reject"])


def calibrated(logits: np.ndarray, labels: np.ndarray, pit: int) -> tuple[np.ndarray, float]:
    t = fit_temperature(logits, labels)
    return softmax(logits / t, 1)[:, pit].astype(np.float32), t


def scaled(logits: np.ndarray, t: float, pit: int) -> np.ndarray:
    return softmax(logits / t, 1)[:, pit].astype(np.float32)


def test_routes(routes: np.ndarray, is_pit: np.ndarray) -> dict:
    n, k = len(routes), int((routes == int(Route.MAYBE)).sum())
    misses = int((is_pit & (routes == int(Route.CLEAN))).sum())
    return {
        "n": n,
        "review": k / n,
        "review_ci": list(clopper_pearson(k, n)),
        "pits_clean": misses,
        "n_pits": int(is_pit.sum()),
        "pits_clean_ci": list(clopper_pearson(misses, int(is_pit.sum()))),
    }


def one_stage_rate(p1, y, idx) -> float:
    try:
        return choose_thresholds(p1[idx], y[idx], *REF).calib_maybe_rate
    except Exception:  # a resample that certifies nothing sends everything to review
        return 1.0


def cascade_rate(p1, p2, y, idx) -> float:
    try:
        return certify_cascade(p1[idx], p2[idx], y[idx], *REF)[0].calib_maybe_rate
    except Exception:
        return 1.0


def alone_stage(p2, q2, y, test_pit, boots, base, single_rate: float) -> dict:
    """Another run's model in one stage: its review rate, paired with the run's on the same
    resamples, and its final model's routes on the test part under its own thresholds."""
    own = choose_thresholds(p2, y, *REF)
    rates = np.array([one_stage_rate(p2, y, i) for i in boots])
    return {
        **review_cost(p2, y, n_boot=len(boots)).to_dict(),
        "paired_diff": own.calib_maybe_rate - single_rate,
        "paired_diff_ci": [float(v) for v in np.percentile(rates - base, [2.5, 97.5])],
        "test": test_routes(route(q2, own.t_low, own.t_high), test_pit),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run trained with --folds K")
    ap.add_argument("--views", default="hflip,rot4,d8", help="second looks to measure")
    ap.add_argument(
        "--models",
        default="",
        help="comma-separated RUN2[:VIEWS]: second looks by other runs' models (default none)",
    )
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples (default 200)")
    ap.add_argument("--label", help="what the run is, for the tables (default: its folder name)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    oof = read_oof(args.run)
    pit, y = oof.pit_index, oof.labels == oof.pit_index
    p1, t1 = calibrated(oof.logits, oof.labels, pit)
    report = metrics.classification_report(oof.labels, softmax(oof.logits, 1), list(oof.classes))
    model = load_run(args.run)
    test = load_part(model, None, "test")
    test_pit = test.labels == model.pit_index
    q1 = scaled(run_logits(model, test.crops).double().numpy(), t1, pit)
    single = choose_thresholds(p1, y, *REF)
    doc: dict = {
        "run": args.label or args.run.name,
        "n": len(y),
        "n_pits": int(y.sum()),
        "oof_accuracy": [report["accuracy"], report["accuracy_ci"]],
        "oof_roc_auc": [report["roc_auc"], report["roc_auc_ci"]],
        "single": {
            **review_cost(p1, y, n_boot=args.boot).to_dict(),
            "test": test_routes(route(q1, single.t_low, single.t_high), test_pit),
        },
        "second_looks": {},
    }
    rng = np.random.default_rng(1)
    boots = [rng.integers(0, len(y), len(y)) for _ in range(args.boot)]
    base = np.array([one_stage_rate(p1, y, i) for i in boots])
    every = np.arange(len(y))
    looks = [(v, v, None) for v in filter(None, args.views.split(","))]
    for spec in filter(None, args.models.split(",")):
        path, _, views = spec.partition(":")
        looks.append((f"{Path(path).name}:{views or 'none'}", views or "none", Path(path)))
    for key, views, other in looks:
        z2 = oof_view_logits(args.run, oof.paths, views, other)
        p2, t2 = calibrated(z2, oof.labels, pit)
        cascade, _ = certify_cascade(p1, p2, y, *REF)
        rates = np.array([cascade_rate(p1, p2, y, i) for i in boots])
        diff = rates - base
        net2 = load_run(other).net if other is not None else model.net
        q2 = scaled(view_logits(net2, test.crops.images, views).double().numpy(), t2, pit)
        doc["second_looks"][key] = {
            "cascade_review": cascade.calib_maybe_rate,
            "cascade_ci": [float(v) for v in np.percentile(rates, [2.5, 97.5])],
            "paired_diff": cascade.calib_maybe_rate - one_stage_rate(p1, y, every),
            "paired_diff_ci": [float(v) for v in np.percentile(diff, [2.5, 97.5])],
            "share": float((route(p1, cascade.t_low, cascade.t_high) == int(Route.MAYBE)).mean()),
            "calib_pit_misses": cascade.calib_pit_misses,
            "pit_miss_bound": cascade.pit_miss_bound,
            "test": test_routes(cascade_routes(q1, q2, cascade.t_low, cascade.t_high), test_pit),
        }
        if other is not None:  # the other model in one stage, on the same crops
            doc["second_looks"][key]["model_alone"] = alone_stage(
                p2, q2, y, test_pit, boots, base, single.calib_maybe_rate
            )
        print(key, json.dumps(doc["second_looks"][key]), flush=True)
    one = doc["single"]
    print(
        f"one stage: out-of-fold review {100 * one['review_rate']:.1f}% "
        f"{[round(100 * v, 1) for v in one['review_rate_ci']]}; test {one['test']}"
    )
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
