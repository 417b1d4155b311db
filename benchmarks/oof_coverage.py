"""How often the certified pit-miss bound holds, hold-out against cross-fit (out-of-fold)
calibration: on simulated scores whose truth is known, and on real runs' test parts.

    .venv/bin/python benchmarks/oof_coverage.py [--run RUN ...] [--draws 1000] [--json OUT]

Simulation: for each scenario, DRAWS calibration sets are drawn, thresholds certified as
`pitguard calibrate` does, and the shipped model's true pit-miss rate computed exactly; the
coverage is the share of draws within the bound (the target is the confidence, 95%).
Each --run (calibrated with `pitguard calibrate`): its calibration scores (the calib part for a
plain run, oof.csv for a --folds run) are bootstrapped DRAWS times, each resample certified and
applied to the run's own test part, which no choice used. For a --folds run the spread of the
fold models' mean scores is also measured, and the simulation is rerun with that spread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pitguard.coverage import ScoreModel, resampled_test_misses, simulate_coverage
from pitguard.files import read_json, write_json
from pitguard.oof import read_oof
from pitguard.policy import pit_probability
from pitguard.runfolder import RunPaths, load_part, load_run, run_logits

# Calibration sizes of the shared crops: the default split's calib part, and the pool of a
# cross-fitted run (everything outside the same test part).
HOLDOUT_PITS, HOLDOUT_CLEAN = 339, 396
POOL_PITS, POOL_CLEAN = 1443, 1681


def fold_offset_sd(run: Path) -> float | None:
    """Between-fold SD of the fold models' mean pit-minus-clean logit, per class, beyond what the
    folds' own sampling explains, in units of the scores' within-class SD."""
    oof = read_oof(run)
    margin = oof.logits[:, oof.pit_index] - np.delete(oof.logits, oof.pit_index, 1).max(1)
    excess = []
    for cls in np.unique(oof.labels):
        mine = oof.labels == cls
        sd = margin[mine].std()
        means = [margin[mine & (oof.folds == f)].mean() for f in np.unique(oof.folds)]
        sizes = [int((mine & (oof.folds == f)).sum()) for f in np.unique(oof.folds)]
        sampling = np.mean([sd**2 / n for n in sizes])
        excess.append(max(0.0, float(np.var(means, ddof=1)) - sampling) / sd**2)
    return float(np.sqrt(np.mean(excess)))


def real_run(run: Path, args: argparse.Namespace) -> dict:
    record = read_json(RunPaths(run).policy)
    if record is None:
        raise SystemExit(f"{run}: not calibrated; run pitguard calibrate {run} first")
    model = load_run(run)
    temperature = record["policy"]["temperature"]
    if record.get("mode") == "oof":
        oof = read_oof(run)
        calib_logits, calib_pit = oof.logits, oof.labels == oof.pit_index
    else:
        ev = load_part(model, None, "calib")
        calib_logits, calib_pit = run_logits(model, ev.crops).numpy(), ev.labels == model.pit_index
    test = load_part(model, None, "test")
    test_logits = run_logits(model, test.crops).numpy()
    out = resampled_test_misses(
        pit_probability(calib_logits, temperature, model.pit_index),
        calib_pit,
        pit_probability(test_logits, temperature, model.pit_index),
        test.labels == model.pit_index,
        draws=args.draws,
        max_pit_miss=args.max_pit_miss,
        confidence=args.confidence,
        max_false_reject=args.max_false_reject,
    )
    out.update(run=str(run), mode=record.get("mode", "holdout"), data=test.description)
    if out["mode"] == "oof":
        out["fold_offset_sd"] = fold_offset_sd(run)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", default=[], help="a calibrated run (repeatable)")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--max-pit-miss", type=float, default=0.01)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--max-false-reject", type=float, default=0.05)
    parser.add_argument("--json", default="runs/oof_coverage.json")
    args = parser.parse_args()

    runs = [real_run(Path(r), args) for r in args.run]
    measured = [r["fold_offset_sd"] for r in runs if r.get("fold_offset_sd") is not None]
    scenarios = [
        ("holdout", HOLDOUT_PITS, HOLDOUT_CLEAN, ScoreModel()),
        ("oof", POOL_PITS, POOL_CLEAN, ScoreModel(offset=0.0)),
        ("oof", POOL_PITS, POOL_CLEAN, ScoreModel()),
        ("oof", POOL_PITS, POOL_CLEAN, ScoreModel(offset=0.0, drift=-0.2)),
    ] + [("oof", POOL_PITS, POOL_CLEAN, ScoreModel(offset=m)) for m in measured]
    sims = []
    for mode, n_pits, n_clean, model in scenarios:
        sim = simulate_coverage(
            mode,
            n_pits,
            n_clean,
            draws=args.draws,
            max_pit_miss=args.max_pit_miss,
            confidence=args.confidence,
            max_false_reject=args.max_false_reject,
            model=model,
        )
        sim.pop("true_miss_rates")
        sims.append(sim)
    write_json(args.json, {"simulation": sims, "runs": runs, "settings": vars(args)})

    print(
        f"simulated ({args.draws} draws; bound {100 * args.max_pit_miss:g}% at "
        f"{100 * args.confidence:g}%; coverage target {100 * args.confidence:g}%)"
    )
    print(
        f"{'mode':<8}{'pits':>6}{'offset':>8}{'drift':>7}{'coverage':>10}{'miss mean':>11}"
        f"{'miss p95':>10}{'maybe':>8}"
    )
    for s in sims:
        m = s["model"]
        print(
            f"{s['mode']:<8}{s['n_pits']:>6}{m['offset']:>8.3f}{m['drift']:>7.2f}"
            f"{100 * s['coverage']:>9.1f}%{100 * s['miss_rate']['mean']:>10.2f}%"
            f"{100 * s['miss_rate']['p95']:>9.2f}%{100 * s['maybe_rate']['mean']:>7.1f}%"
        )
    for r in runs:
        print(
            f"{r['run']} ({r['mode']}, {r['n_calib_pits']} calibration pits; test {r['n_test']} "
            f"crops, {r['n_test_pits']} pits): test pit-miss within the bound in "
            f"{100 * r['test_miss_within_bound']:.1f}% of {r['draws']} resamples, mean "
            f"{100 * r['test_miss_rate']['mean']:.2f}%, maybe {100 * r['test_maybe_rate']['mean']:.1f}%"
            + (f"; fold offset SD {r['fold_offset_sd']:.3f}" if "fold_offset_sd" in r else "")
        )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
