"""What the decision costs the line: the share of crops sent to review at a certified bound, and
the specificity at 99% pit recall, each with a 95% bootstrap interval.

These are the figures a recipe is chosen on where the line pays for review, not accuracy: the
review rate at a 1% bound is set by the lowest-scored one or two percent of pits. They are
computed on calibration scores (a cross-fitted run's out-of-fold scores cover every labelled
crop outside the test part), never on a test part. The interval resamples the crops and
certifies the thresholds again on each resample, so it covers the certification's own
variability as well as the sample's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.core.fmt import pct
from pitguard.decision.certify import choose_thresholds, min_pits_needed

# The reference point of the review rate: a 1% pit-miss bound at 95%, false rejects <= 5%.
REFERENCE = {"max_pit_miss": 0.01, "confidence": 0.95, "max_false_reject": 0.05}
RECALL = 0.99  # the pit recall the specificity is read at


@dataclass(frozen=True)
class ReviewCost:
    n: int
    n_pits: int
    review_rate: float | None  # share of crops routed maybe at the reference point
    review_rate_ci: tuple[float, float] | None
    specificity_at_recall: float  # share of clean crops below the 99%-recall threshold
    specificity_ci: tuple[float, float]
    reference: dict
    recall: float = RECALL
    why: str | None = None  # why no review rate could be certified

    def to_dict(self) -> dict:
        return asdict(self)


def _review_rate(p: np.ndarray, y: np.ndarray, guarantee: str = "exact") -> float:
    ref = REFERENCE
    chosen = choose_thresholds(
        p, y, ref["max_pit_miss"], ref["confidence"], ref["max_false_reject"], guarantee
    )
    clean = p < np.float32(chosen.t_low)
    pit = p >= np.float32(chosen.t_high)
    return float((~clean & ~pit).mean())


def specificity_at_recall(p: np.ndarray, y: np.ndarray, recall: float = RECALL) -> float:
    """Share of clean crops scored below the highest threshold that still keeps ``recall`` of
    the pits at or above it."""
    pits = np.sort(p[y])
    if not len(pits) or not (~y).any():
        raise PitguardError("specificity at a recall needs pits and clean crops")
    threshold = pits[int(np.floor((1 - recall) * len(pits)))]  # pits >= it: at least recall
    return float((p[~y] < threshold).mean())


def review_cost(
    p_pit: np.ndarray, is_pit: np.ndarray, n_boot: int = 200, seed: int = 0
) -> ReviewCost:
    """The review rate at the reference point and the specificity at 99% recall on these
    scores, with percentile intervals over ``n_boot`` resamples of the crops."""
    p = np.asarray(p_pit, dtype=np.float32)
    y = np.asarray(is_pit, dtype=bool)
    if n_boot < 1:
        raise PitguardError(f"n_boot {n_boot}: give at least 1 resample")
    try:
        rate, why = _review_rate(p, y), None
    except PitguardError as err:
        rate, why = None, str(err).split(";")[0]
    rng = np.random.default_rng(seed)
    rates, specs = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(p), len(p))
        specs.append(specificity_at_recall(p[idx], y[idx]))
        if rate is not None:
            try:
                rates.append(_review_rate(p[idx], y[idx]))
            except PitguardError:  # a resample with too few pits certifies nothing
                rates.append(1.0)
    return ReviewCost(
        n=len(p),
        n_pits=int(y.sum()),
        review_rate=rate,
        review_rate_ci=_interval(rates) if rate is not None else None,
        specificity_at_recall=specificity_at_recall(p, y),
        specificity_ci=_interval(specs),
        reference=dict(REFERENCE),
        why=why,
    )


def _interval(values: list[float]) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def reference_guarantee(n_pits: int) -> str:
    """The guarantee the reference point can be certified with on ``n_pits`` pits: ``exact``
    where they are enough for the 1% bound at 95%, else ``expected`` (conformal risk control,
    which needs far fewer). Raises PitguardError naming the fix when even that is out of reach."""
    ref = REFERENCE
    if n_pits >= min_pits_needed(ref["max_pit_miss"], ref["confidence"]):
        return "exact"
    if (n_pits + 1) * ref["max_pit_miss"] >= 1:
        return "expected"
    raise PitguardError(
        f"{n_pits} pits cannot certify a {pct(ref['max_pit_miss'], -1)} pit-miss rate even on "
        f"average (conformal risk control needs {math.ceil(1 / ref['max_pit_miss']) - 1}); give "
        "the part more crops (data.fractions) or choose on val accuracy"
    )


def review_rate(p_pit: np.ndarray, is_pit: np.ndarray, guarantee: str = "exact") -> float:
    """The share of these crops routed maybe at the reference point, certified with
    ``guarantee`` (1.0 where no thresholds can be certified: everything would go to review)."""
    p = np.asarray(p_pit, dtype=np.float32)
    y = np.asarray(is_pit, dtype=bool)
    try:
        return _review_rate(p, y, guarantee)
    except PitguardError:
        return 1.0
