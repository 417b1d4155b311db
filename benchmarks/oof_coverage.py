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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import special, stats

from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json, write_json
from pitguard.decision.certify import choose_thresholds
from pitguard.evaluate.oof import read_oof
from pitguard.models.runfolder import RunPaths, load_part, load_run, run_logits
from pitguard.runtime.policy import pit_probability

# Calibration sizes of the shared crops: the default split's calib part, and the pool of a
# cross-fitted run (everything outside the same test part).
HOLDOUT_PITS, HOLDOUT_CLEAN = 339, 396
POOL_PITS, POOL_CLEAN = 1443, 1681


# ---------------------------------------------------------------- the simulation
# How often a certified pit-miss bound holds: simulated score models whose truth is known, and
# resampled calibration sets applied to a test part.
#
# In the simulation a crop's score (on the logit scale) is
#
#     score = class mean + hardness + model noise + model offset
#
# where hardness is the crop's own (shared by every model), model noise is drawn afresh per model
# and crop, and each model has an offset of its own. Hold-out calibration scores calib crops with
# the shipped model itself; cross-fitting scores each fold with its fold model and ships another
# (final) model, optionally shifted by ``drift`` (negative: the final model scores pits lower than
# the fold models did, the case the cross-fit bound is not protected against). The realised miss
# rate of the shipped model at the certified t_low is then exact (a normal tail), not estimated.


MODES = ("holdout", "oof")


@dataclass(frozen=True)
class ScoreModel:
    """Synthetic scores; the defaults give a ROC-AUC near 0.97, like the CPU recipes."""

    separation: float = 2.66  # distance between the class means, in units of a model's score sd
    hardness: float = 0.8  # sd of the crop's own hardness, shared by every model
    noise: float = 0.6  # sd of each model's own noise per crop
    offset: float = 0.15  # sd of a model's offset (fold models and the final model)
    drift: float = 0.0  # the final model's systematic shift on pits, against the fold models

    @property
    def sd(self) -> float:
        return float(np.hypot(self.hardness, self.noise))

    def roc_auc(self) -> float:
        return float(stats.norm.cdf(self.separation / np.sqrt(2)))


def _scores(
    rng: np.random.Generator, model: ScoreModel, hard: np.ndarray, is_pit: np.ndarray, shift: float
) -> np.ndarray:
    mean = np.where(is_pit, model.separation / 2, -model.separation / 2) * model.sd
    return mean + hard + rng.normal(0.0, model.noise, hard.size) + shift


def simulate_coverage(
    mode: str,
    n_pits: int,
    n_clean: int,
    folds: int = 5,
    draws: int = 1000,
    max_pit_miss: float = 0.01,
    confidence: float = 0.95,
    max_false_reject: float | None = 0.05,
    model: ScoreModel | None = None,
    seed: int = 0,
) -> dict:
    """Draw calibration sets, certify thresholds, and measure the shipped model's true rates.

    ``n_pits`` and ``n_clean`` are the calibration crops (hold-out: the calib part; oof: every
    pooled crop). Returns the share of draws whose true pit-miss rate is within
    ``max_pit_miss`` (``coverage``; the target is ``confidence``) and the true rates per draw.
    """
    if mode not in MODES:
        raise PitguardError(f"mode {mode!r}: choose {' or '.join(MODES)}")
    if mode == "oof" and folds < 2:
        raise PitguardError(f"folds {folds}: cross-fitting needs 2 or more")
    model = model or ScoreModel()
    rng = np.random.default_rng(seed)
    is_pit = np.r_[np.ones(n_pits, bool), np.zeros(n_clean, bool)]
    scale = model.sd * model.separation / 2
    miss, reject, maybe = np.empty(draws), np.empty(draws), np.empty(draws)
    for d in range(draws):
        hard = rng.normal(0.0, model.hardness, is_pit.size)
        final_shift = rng.normal(0.0, model.offset)
        if mode == "holdout":
            scores = _scores(rng, model, hard, is_pit, final_shift)
        else:
            fold = rng.permutation(is_pit.size) % folds
            scores = np.empty(is_pit.size)
            for f in range(folds):
                held = fold == f
                scores[held] = _scores(
                    rng, model, hard[held], is_pit[held], rng.normal(0, model.offset)
                )
        chosen = choose_thresholds(
            special.expit(scores), is_pit, max_pit_miss, confidence, max_false_reject
        )
        lo, hi = special.logit(chosen.t_low), special.logit(chosen.t_high)
        # The shipped model's scores: pits ~ N(scale + shift + drift, sd), clean ~ N(-scale + shift, sd)
        pit_mean = scale + final_shift + (model.drift if mode == "oof" else 0.0)
        clean_mean = -scale + final_shift
        miss[d] = stats.norm.cdf(lo, pit_mean, model.sd)
        reject[d] = stats.norm.sf(hi, clean_mean, model.sd)
        p = n_pits / is_pit.size
        maybe[d] = p * (stats.norm.cdf(hi, pit_mean, model.sd) - miss[d]) + (1 - p) * (
            stats.norm.cdf(hi, clean_mean, model.sd) - stats.norm.cdf(lo, clean_mean, model.sd)
        )
    return {
        "mode": mode,
        "n_pits": n_pits,
        "n_clean": n_clean,
        "folds": folds if mode == "oof" else None,
        "draws": draws,
        "max_pit_miss": max_pit_miss,
        "confidence": confidence,
        "max_false_reject": max_false_reject,
        "model": {**asdict(model), "roc_auc": model.roc_auc()},
        "coverage": float(np.mean(miss <= max_pit_miss)),
        "false_reject_coverage": (
            float(np.mean(reject <= max_false_reject)) if max_false_reject is not None else None
        ),
        "miss_rate": {"mean": float(miss.mean()), "p95": float(np.quantile(miss, 0.95))},
        "maybe_rate": {"mean": float(maybe.mean())},
        "true_miss_rates": miss.tolist(),
    }


def resampled_test_misses(
    calib_p: np.ndarray,
    calib_is_pit: np.ndarray,
    test_p: np.ndarray,
    test_is_pit: np.ndarray,
    draws: int = 500,
    max_pit_miss: float = 0.01,
    confidence: float = 0.95,
    max_false_reject: float | None = 0.05,
    seed: int = 0,
) -> dict:
    """Bootstrap the calibration scores, certify each resample, apply it to a test part.

    The test part's pit-miss rate per resample shows how the bound fares on crops the choice
    never used (its own sampling error included: with 255 test pits one miss is 0.4%).
    """
    rng = np.random.default_rng(seed)
    calib_p, test_p = np.asarray(calib_p), np.asarray(test_p)
    calib_is_pit, test_is_pit = np.asarray(calib_is_pit, bool), np.asarray(test_is_pit, bool)
    misses, maybes = np.empty(draws), np.empty(draws)
    for d in range(draws):
        idx = rng.integers(0, calib_p.size, calib_p.size)
        chosen = choose_thresholds(
            calib_p[idx], calib_is_pit[idx], max_pit_miss, confidence, max_false_reject
        )
        clean = test_p < np.float32(chosen.t_low)
        pit = test_p >= np.float32(chosen.t_high)
        misses[d] = float(np.mean(clean[test_is_pit]))
        maybes[d] = float(np.mean(~clean & ~pit))
    return {
        "draws": draws,
        "n_calib": int(calib_p.size),
        "n_calib_pits": int(calib_is_pit.sum()),
        "n_test": int(test_p.size),
        "n_test_pits": int(test_is_pit.sum()),
        "test_miss_within_bound": float(np.mean(misses <= max_pit_miss)),
        "test_miss_rate": {
            "mean": float(misses.mean()),
            "p95": float(np.quantile(misses, 0.95)),
        },
        "test_maybe_rate": {"mean": float(maybes.mean())},
    }


# ---------------------------------------------------------------- on a run


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
