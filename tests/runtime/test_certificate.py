"""The guarantee a bundle states, recomputed from its counts without scipy."""

from __future__ import annotations

import pytest

from pitguard.runtime.certificate import binomial_cdf, certified_bound, cp_upper


@pytest.mark.parametrize(("k", "n", "c"), [(0, 339, 0.95), (3, 339, 0.95), (20, 735, 0.99)])
def test_the_exact_bound_is_scipys(k, n, c):
    stats = pytest.importorskip("scipy.stats")
    assert cp_upper(k, n, c) == pytest.approx(stats.beta.ppf(c, k + 1, n - k), abs=1e-9)


def test_the_bound_is_where_the_binomial_tail_reaches_one_minus_the_confidence():
    p = cp_upper(5, 200, 0.95)
    assert binomial_cdf(5, 200, p) == pytest.approx(0.05, abs=1e-9)
    assert cp_upper(0, 0, 0.95) == 1.0 and cp_upper(7, 7, 0.95) == 1.0


def test_the_expected_bound_is_conformal_risk_controls():
    assert certified_bound(2, 99, 0.95, "expected") == 3 / 100
