"""How often a certified pit-miss bound holds: simulated score models whose truth is known, and
resampled calibration sets applied to a test part.

In the simulation a crop's score (on the logit scale) is

    score = class mean + hardness + model noise + model offset

where hardness is the crop's own (shared by every model), model noise is drawn afresh per model
and crop, and each model has an offset of its own. Hold-out calibration scores calib crops with
the shipped model itself; cross-fitting scores each fold with its fold model and ships another
(final) model, optionally shifted by ``drift`` (negative: the final model scores pits lower than
the fold models did, the case the cross-fit bound is not protected against). The realised miss
rate of the shipped model at the certified t_low is then exact (a normal tail), not estimated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from pitguard.certify import choose_thresholds
from pitguard.errors import PitguardError

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
