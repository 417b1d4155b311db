"""What the decision costs the line: the review rate at the reference bound and the specificity
at 99% pit recall, with bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from pitguard.core.errors import PitguardError
from pitguard.decision.certify import choose_thresholds
from pitguard.decision.review_cost import review_cost, specificity_at_recall


def _scores(n: int, seed: int = 0, gap: float = 4.0):
    rng = np.random.default_rng(seed)
    is_pit = np.arange(n) < n // 2
    logit = np.where(is_pit, rng.normal(gap / 2, 1, n), rng.normal(-gap / 2, 1, n))
    return (1 / (1 + np.exp(-logit))).astype(np.float32), is_pit


def test_the_review_rate_is_the_certified_thresholds_maybe_share():
    p, is_pit = _scores(1200)
    cost = review_cost(p, is_pit, n_boot=50)
    chosen = choose_thresholds(p, is_pit, 0.01, 0.95, 0.05)
    maybe = (p >= np.float32(chosen.t_low)) & (p < np.float32(chosen.t_high))
    assert cost.review_rate == float(maybe.mean())
    lo, hi = cost.review_rate_ci
    assert 0 <= lo <= hi <= 1 and hi - lo < 0.5
    assert cost.n == 1200 and cost.n_pits == 600


def test_better_separated_scores_cost_less_review():
    worse = review_cost(*_scores(1200, gap=3.0), n_boot=20)
    better = review_cost(*_scores(1200, gap=5.0), n_boot=20)
    assert better.review_rate < worse.review_rate
    assert better.specificity_at_recall > worse.specificity_at_recall


def test_specificity_at_recall_counts_clean_below_the_recall_threshold():
    p = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9], np.float32)
    is_pit = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    assert specificity_at_recall(p, is_pit, recall=1.0) == 1.0  # every clean below 0.6
    p[3] = 0.65  # a clean crop above the lowest pit
    assert specificity_at_recall(p, is_pit, recall=1.0) == pytest.approx(0.75)


def test_too_few_pits_name_why_there_is_no_review_rate():
    p, is_pit = _scores(200)  # 100 pits: a 1% bound at 95% needs 299
    cost = review_cost(p, is_pit, n_boot=5)
    assert cost.review_rate is None and cost.review_rate_ci is None
    assert "needs at least 299 pits" in cost.why


def test_the_reference_guarantee_is_exact_where_the_pits_allow_it_else_expected():
    from pitguard.decision.review_cost import reference_guarantee, review_rate

    assert reference_guarantee(299) == "exact"  # 299 pits, none missed: 1% at 95%
    assert reference_guarantee(298) == "expected"
    assert reference_guarantee(99) == "expected"  # (0 + 1) / (99 + 1) = 1%
    with pytest.raises(PitguardError, match=r"98 pits cannot certify.*data.fractions"):
        reference_guarantee(98)
    rng = np.random.default_rng(0)
    y = np.arange(400) < 150
    p = np.where(y, rng.uniform(0.3, 1, 400), rng.uniform(0, 0.6, 400)).astype(np.float32)
    expected = review_rate(p, y, "expected")
    # on average, with the lowest pit allowed to be missed, less goes to review than nothing
    assert 0 < expected < 1
    assert review_rate(p, y) == 1.0  # 150 pits certify no exact 1% bound: all to review
