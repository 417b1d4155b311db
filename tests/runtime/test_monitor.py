"""The rolling summary of the line stage's recent frames."""

from __future__ import annotations

import math

import numpy as np

from pitguard.runtime.line import LineResult
from pitguard.runtime.monitor import LineMonitor


def result(codes: list[int], guarded: int = 0, error: str = "", ms: float = 1.0) -> LineResult:
    n = len(codes)
    reasons = np.array(["unlike"] * guarded + [""] * (n - guarded), dtype=object)
    return LineResult(
        codes=np.array(codes, dtype=np.int64),
        confidence_probs=np.zeros((n, 3), np.float32),
        p_pit=np.zeros(n, np.float32),
        reasons=reasons if not error else np.full(n, error, dtype=object),
        error=error,
        ms=ms,
    )


def test_rates_are_shares_of_the_crops_in_the_window():
    mon = LineMonitor(window=3)
    mon.add(result([1, 1, 2, 5], guarded=1, ms=2))
    mon.add(result([5, 5], error="1000 values for 2 crops", ms=4))
    s = mon.summary()
    assert (s.frames, s.crops, s.refused_frames) == (2, 6, 1)
    assert math.isclose(s.maybe_rate, 3 / 6) and math.isclose(s.clean_rate, 2 / 6)
    assert math.isclose(s.guard_rate, 1 / 6)  # a refused frame's crops are not the guard's
    assert s.p50_ms == 3.0 and "2 frames, 6 crops" in s.line()


def test_the_window_forgets_old_frames():
    mon = LineMonitor(window=2)
    for codes in ([2], [1], [1]):
        mon.add(result(codes))
    assert mon.summary().pit_rate == 0 and mon.summary().frames == 2


def test_an_empty_window_has_no_rates():
    s = LineMonitor().summary()
    assert s.frames == 0 and math.isnan(s.maybe_rate) and math.isnan(s.p99_ms)
