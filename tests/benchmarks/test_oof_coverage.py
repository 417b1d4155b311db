"""Tests for benchmarks/oof_coverage.py's simulation: where the truth is known, a bound holds as often as it says, and
the simulation does catch a final model that scores unlike its fold models."""

import numpy as np
import pytest

from pitguard.core.errors import PitguardError
from tests.conftest import load_benchmark

coverage = load_benchmark("oof_coverage")
ScoreModel = coverage.ScoreModel
resampled_test_misses = coverage.resampled_test_misses
simulate_coverage = coverage.simulate_coverage

N_PITS, N_CLEAN, DRAWS = 600, 700, 150


def test_hold_out_calibration_holds_its_bound_in_at_least_the_stated_share_of_draws():
    r = simulate_coverage("holdout", N_PITS, N_CLEAN, draws=DRAWS, max_pit_miss=0.02)
    # exact at 95%: with 150 draws, a share below 0.9 would be a 3-sigma event
    assert r["coverage"] >= 0.9
    assert len(r["true_miss_rates"]) == DRAWS and r["miss_rate"]["mean"] < 0.02


def test_cross_fit_calibration_holds_when_the_final_model_scores_like_the_fold_models():
    same = ScoreModel(offset=0.0)
    r = simulate_coverage(
        "oof", N_PITS, N_CLEAN, folds=5, draws=DRAWS, max_pit_miss=0.02, model=same
    )
    assert r["coverage"] >= 0.9 and r["folds"] == 5


def test_the_simulation_catches_a_final_model_that_scores_pits_lower_than_its_folds():
    drifted = ScoreModel(offset=0.0, drift=-0.5)
    ok = simulate_coverage("oof", N_PITS, N_CLEAN, draws=60, max_pit_miss=0.02, seed=1)
    bad = simulate_coverage(
        "oof", N_PITS, N_CLEAN, draws=60, max_pit_miss=0.02, model=drifted, seed=1
    )
    assert bad["coverage"] < 0.5 < ok["coverage"]
    assert bad["miss_rate"]["mean"] > ok["miss_rate"]["mean"]


def test_more_calibration_pits_send_fewer_crops_to_review():
    few = simulate_coverage("holdout", 300, 350, draws=40, max_pit_miss=0.02)
    many = simulate_coverage("holdout", 1500, 1750, draws=40, max_pit_miss=0.02)
    assert many["maybe_rate"]["mean"] < few["maybe_rate"]["mean"]


def test_an_unknown_mode_is_refused():
    with pytest.raises(PitguardError, match="holdout or oof"):
        simulate_coverage("bootstrap", 100, 100)


def test_resampled_thresholds_applied_to_a_test_part():
    rng = np.random.default_rng(0)
    calib_pit = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    calib_p = np.where(calib_pit, rng.beta(8, 2, 800), rng.beta(2, 8, 800)).astype(np.float32)
    test_pit = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    test_p = np.where(test_pit, rng.beta(8, 2, 600), rng.beta(2, 8, 600)).astype(np.float32)
    r = resampled_test_misses(calib_p, calib_pit, test_p, test_pit, draws=30, max_pit_miss=0.02)
    assert r["n_calib_pits"] == 400 and r["n_test_pits"] == 300 and r["draws"] == 30
    assert r["test_miss_within_bound"] >= 0.8
    assert 0 < r["test_maybe_rate"]["mean"] < 1
