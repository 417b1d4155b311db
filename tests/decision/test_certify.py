"""Tests for pitguard.decision.certify."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from pitguard.core.errors import PitguardError
from pitguard.decision.certify import choose_thresholds, min_pits_needed, operating_curve
from pitguard.runtime.policy import route
from tests.scores import CLEAN_AB, PIT_AB, draw_scores


def _reference(p, y, max_pit_miss, confidence, max_false_reject=None):
    """Literal, loop-by-loop version of the selection rule."""
    p = p.astype(np.float32)
    n_pits, n_clean = int(y.sum()), int((~y).sum())
    above_one = float(np.nextafter(np.float32(1), np.float32(2)))
    scores = sorted({float(v) for v in p} | {0.0, 1.0, above_one})
    cands = [scores[0]]  # then halfway between neighbouring scores, in float32
    for lo, hi in itertools.pairwise(scores):
        mid = float(np.float32((lo + hi) / 2))
        cands.append(mid if mid > lo else hi)

    def cp(k, n):
        return 1.0 if k == n else float(stats.beta.ppf(confidence, k + 1, n - k))

    lows = []
    for t in cands:  # fixed sequence, safest first
        if cp(int(np.sum(y & (p < t))), n_pits) > max_pit_miss:
            break
        lows.append(t)
    highs = None
    if max_false_reject is not None:
        highs = []
        for t in reversed(cands):
            if cp(int(np.sum(~y & (p >= t))), n_clean) > max_false_reject:
                break
            highs.append(t)

    def acc(tl, th):
        correct = int(np.sum(~y & (p < tl))) + int(np.sum(y & (p >= th)))
        decided = int(np.sum(p < tl)) + int(np.sum(p >= th))
        return Fraction(correct, decided) if decided else Fraction(-1)

    best = None
    for tl in lows:
        if highs is None:
            options = [th for th in cands if th >= tl]
            th = max(options, key=lambda h: (acc(tl, h), -h))
        else:
            th = min(h for h in highs if h >= tl)  # certified t_high form a suffix
        maybe = int(np.sum((p >= tl) & (p < th)))
        key = (maybe, -acc(tl, th), tl)
        if best is None or key < best[0]:
            best = (key, tl, th)
    return best[1], best[2]


def test_min_pits_needed_exact():
    n = min_pits_needed(0.01, 0.95)
    assert n == 299
    assert 1 - 0.05 ** (1 / 299) <= 0.01 < 1 - 0.05 ** (1 / 298)
    # Same number from the general Clopper-Pearson bound at zero failures.
    assert stats.beta.ppf(0.95, 1, n) <= 0.01 < stats.beta.ppf(0.95, 1, n - 1)
    assert min_pits_needed(0.02, 0.9) == 114


def test_refuses_when_too_few_pits():
    rng = np.random.default_rng(2)
    p, y = draw_scores(rng, 120, 500)
    with pytest.raises(PitguardError) as err:
        choose_thresholds(p, y, max_pit_miss=0.01, confidence=0.95)
    msg = str(err.value)
    assert "299" in msg and "120 pits" in msg and "1%" in msg and "95%" in msg


def test_refuses_when_too_few_clean_for_false_reject_bound():
    rng = np.random.default_rng(3)
    p, y = draw_scores(rng, 400, 50)
    with pytest.raises(PitguardError) as err:
        choose_thresholds(p, y, 0.02, 0.95, max_false_reject=0.01)
    assert "299" in str(err.value) and "50 clean" in str(err.value)


def test_exactly_enough_pits_with_no_overlap_is_accepted():
    p = np.concatenate([np.full(299, 0.9), np.full(100, 0.1)])
    y = np.arange(p.size) < 299
    th = choose_thresholds(p, y, 0.01, 0.95)
    assert th.calib_pit_misses == 0 and th.pit_miss_bound <= 0.01
    # halfway between the clean crops' 0.1 and the pits' 0.9: no crop sits on a threshold
    assert th.t_low == th.t_high == pytest.approx(0.5)
    assert th.calib_maybe_rate == 0.0


def test_thresholds_never_sit_on_a_calibration_score():
    # A threshold equal to a calibration score lets float rounding in another runtime flip
    # that crop's route; halfway between neighbouring scores, a 1e-7 change flips nothing.
    rng = np.random.default_rng(12)
    p, y = draw_scores(rng, 400, 400)
    for fr in (None, 0.05):
        th = choose_thresholds(p, y, 0.02, 0.9, max_false_reject=fr)
        for t in (th.t_low, th.t_high):
            assert np.abs(p - np.float32(t)).min() > 0
        routes = route(p, th.t_low, th.t_high)
        for eps in (1e-7, -1e-7):
            assert np.array_equal(route(p + np.float32(eps), th.t_low, th.t_high), routes)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("false_reject", [None, 0.1])
def test_choice_matches_reference(seed, false_reject):
    rng = np.random.default_rng(100 + seed)
    p, y = draw_scores(rng, 80, 70)
    if seed % 2:  # coarse scores: many ties and repeated values
        p = np.round(p, 1)
    th = choose_thresholds(p, y, 0.15, 0.8, max_false_reject=false_reject)
    assert (th.t_low, th.t_high) == _reference(p, y, 0.15, 0.8, false_reject)


def test_choice_consistent_with_its_own_numbers_and_curve():
    rng = np.random.default_rng(11)
    p, y = draw_scores(rng, 500, 500)
    th = choose_thresholds(p, y, 0.03, 0.9)
    r = route(p, th.t_low, th.t_high)
    assert th.calib_pit_misses == int(np.sum(y & (r == 0)))
    assert th.calib_maybe_rate == pytest.approx(np.mean(r == 1))
    assert th.pit_miss_bound == pytest.approx(
        stats.beta.ppf(0.9, th.calib_pit_misses + 1, 500 - th.calib_pit_misses)
    )
    assert th.pit_miss_bound <= 0.03
    assert th.false_reject_bound is None
    assert (th.n_pits, th.n_clean) == (500, 500)

    curve = operating_curve(p, y, confidence=0.9)
    n = len(curve["t_low"])
    for key in ("t_high", "pit_miss_bound", "pit_miss_rate", "maybe_rate", "accuracy"):
        assert len(curve[key]) == n
    assert np.all(np.diff(curve["t_low"]) > 0)
    assert np.all(np.diff(curve["pit_miss_bound"]) >= 0)
    assert np.all(np.asarray(curve["t_high"]) >= np.asarray(curve["t_low"]))
    k = curve["t_low"].index(th.t_low)
    assert curve["t_high"][k] == th.t_high
    assert curve["maybe_rate"][k] == pytest.approx(th.calib_maybe_rate)
    # Every threshold up to the chosen one is certified (fixed-sequence prefix).
    assert max(curve["pit_miss_bound"][: k + 1]) <= 0.03


def test_thresholds_ordered_even_for_a_bad_classifier():
    rng = np.random.default_rng(5)
    for _ in range(20):
        p, y = draw_scores(rng, 200, 200)
        y = rng.permutation(y) if rng.random() < 0.5 else ~y  # useless or inverted scores
        for fr in (None, 0.05):
            th = choose_thresholds(p, y, 0.05, 0.9, max_false_reject=fr)
            assert 0.0 <= th.t_low <= th.t_high
            assert th.pit_miss_bound <= 0.05


def test_overlapping_certified_ranges_leave_no_maybe():
    rng = np.random.default_rng(6)
    p = np.concatenate([rng.uniform(0.8, 1.0, 400), rng.uniform(0.0, 0.2, 400)])
    y = np.arange(800) < 400
    th = choose_thresholds(p, y, 0.02, 0.95, max_false_reject=0.02)
    assert th.t_low == th.t_high and th.calib_maybe_rate == 0.0
    assert th.pit_miss_bound <= 0.02 and th.false_reject_bound <= 0.02


def test_pit_miss_guarantee_by_simulation():
    rng = np.random.default_rng(20240611)
    draws, alpha = 300, 0.02
    true_miss, t_low = [], []
    for _ in range(draws):
        p, y = draw_scores(rng, 600, 600)
        th = choose_thresholds(p, y, max_pit_miss=alpha, confidence=0.9)
        true_miss.append(stats.beta.cdf(th.t_low, *PIT_AB))
        t_low.append(th.t_low)
    true_miss = np.asarray(true_miss)
    coverage = np.mean(true_miss <= alpha)
    assert coverage >= 0.87, coverage  # nominal 0.90; 300 draws leave ~0.017 of noise
    # Not vacuous: thresholds are well above 0 and the miss rate is of the order of the limit.
    assert np.mean(np.asarray(t_low) > 0) >= 0.99
    assert np.median(true_miss) >= 0.25 * alpha


def test_false_reject_guarantee_by_simulation():
    rng = np.random.default_rng(20240612)
    draws, limit = 300, 0.02
    false_reject, pit_miss, t_high = [], [], []
    for _ in range(draws):
        p, y = draw_scores(rng, 600, 600)
        th = choose_thresholds(p, y, max_pit_miss=limit, confidence=0.9, max_false_reject=limit)
        assert th.t_low <= th.t_high and th.false_reject_bound <= limit
        false_reject.append(stats.beta.sf(th.t_high, *CLEAN_AB))
        pit_miss.append(stats.beta.cdf(th.t_low, *PIT_AB))
        t_high.append(th.t_high)
    assert np.mean(np.asarray(false_reject) <= limit) >= 0.87
    assert np.mean(np.asarray(pit_miss) <= limit) >= 0.87
    assert np.mean(np.asarray(t_high) < 1.0) >= 0.99
    assert np.median(false_reject) >= 0.25 * limit


def test_too_few_pits_names_the_tightest_bound_they_support():
    p = np.concatenate([np.full(60, 0.9), np.full(100, 0.1)])
    y = np.arange(p.size) < 60
    with pytest.raises(PitguardError) as err:
        choose_thresholds(p, y, max_pit_miss=0.01, confidence=0.95)
    msg = str(err.value)
    assert f"{1 - 0.05 ** (1 / 60):.4f}" == "0.0487"  # the exact zero-miss bound on 60 pits
    assert "has 60 pits, which support a bound of 4.87% at 95% confidence at best" in msg
    assert "pass --max-pit-miss 0.049 or more, or calibrate on more pits" in msg
    th = choose_thresholds(p, y, max_pit_miss=0.049, confidence=0.95)  # the advice holds
    assert th.calib_pit_misses == 0 and th.pit_miss_bound <= 0.049


def test_too_few_clean_crops_name_the_false_reject_bound_they_support():
    p = np.concatenate([np.full(400, 0.9), np.full(50, 0.1)])
    y = np.arange(p.size) < 400
    with pytest.raises(PitguardError) as err:
        choose_thresholds(p, y, 0.02, 0.95, max_false_reject=0.01)
    assert f"{1 - 0.05 ** (1 / 50):.4f}" == "0.0582"
    assert "which support a bound of 5.82% at 95% confidence at best" in str(err.value)
    assert "pass --max-false-reject 0.059 or more" in str(err.value)
    th = choose_thresholds(p, y, 0.02, 0.95, max_false_reject=0.059)
    assert th.false_reject_bound is not None and th.false_reject_bound <= 0.059


def test_no_pits_at_all_support_no_bound():
    with pytest.raises(PitguardError, match="0 pits, which support no bound"):
        choose_thresholds(np.full(10, 0.1), np.zeros(10, bool), 0.01, 0.95)


def test_the_operating_table_certifies_each_point_and_names_those_it_cannot():
    from pitguard.decision.certify import FALSE_REJECT_CAPS, PIT_MISS_BOUNDS, operating_table

    rng = np.random.default_rng(0)
    is_pit = np.arange(800) < 400  # 400 pits: enough for 1% at 95% (299), not for 0.5% (598)
    p = np.where(is_pit, rng.beta(5, 1, 800), rng.beta(1, 5, 800)).astype(np.float32)
    rows = operating_table(p, is_pit, 0.95)
    assert len(rows) == len(PIT_MISS_BOUNDS) * len(FALSE_REJECT_CAPS)
    half = [r for r in rows if r["max_pit_miss"] == 0.005]
    assert all(r["maybe_rate"] is None and "needs at least 598 pits" in r["why"] for r in half)
    for cap in FALSE_REJECT_CAPS:
        rates = [r["maybe_rate"] for r in rows if r["max_false_reject"] == cap][1:]
        assert rates == sorted(rates, reverse=True)  # a looser bound never costs more review
    for r in rows[4:]:
        assert r["pit_miss_bound"] <= r["max_pit_miss"]
        clean = p < np.float32(r["t_low"])
        maybe = ~clean & (p < np.float32(r["t_high"]))
        assert r["maybe_rate"] == float(maybe.mean())
        if r["max_false_reject"] == 0:
            assert not (p >= np.float32(r["t_high"])).any()  # nothing routed pit


def test_the_expected_guarantee_allows_what_conformal_risk_control_allows():
    rng = np.random.default_rng(1)
    is_pit = np.arange(600) < 300
    p = np.where(is_pit, rng.uniform(0, 1, 600), rng.uniform(0, 0.2, 600)).astype(np.float32)
    chosen = choose_thresholds(p, is_pit, 0.05, guarantee="expected")
    k = chosen.calib_pit_misses
    assert k == int(np.floor(0.05 * 301 - 1))  # (k + 1) / (n + 1) <= 0.05: 14 misses of 300
    assert chosen.pit_miss_bound == (k + 1) / 301 <= 0.05
    exact = choose_thresholds(p, is_pit, 0.05, 0.95)
    assert exact.calib_pit_misses < k and exact.t_low < chosen.t_low  # the exact bound is stricter
    with pytest.raises(PitguardError, match=r"an expected rate of 1% needs at least 99 pits"):
        choose_thresholds(p[:100], is_pit[:100] & (np.arange(100) < 50), 0.01, guarantee="expected")


def test_the_expected_miss_rate_holds_on_average_over_calibrations():
    """Pits score uniformly, so a threshold t misses a share t of all pits: averaged over many
    calibrations of 200 pits, conformal risk control keeps that share at most the bound. Clean
    crops score uniformly below 0.5, so accuracy pushes t_low to the largest allowed."""
    rng = np.random.default_rng(2)
    misses = []
    for _ in range(400):
        p = rng.uniform(0, 1, 400).astype(np.float32)
        is_pit = np.arange(400) < 200
        p[~is_pit] = p[~is_pit] * 0.5
        misses.append(choose_thresholds(p, is_pit, 0.05, guarantee="expected").t_low)
    assert np.mean(misses) <= 0.05 + 0.002  # the bound, within the simulation's noise
    assert np.mean(misses) > 0.04  # and not far below it: the guarantee is not wasted
