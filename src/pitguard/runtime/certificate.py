"""A bundle's stated guarantee, recomputed from the calibration counts it records.

``bundle.json`` states what was certified (pits routed clean at most ``max_pit_miss`` with
``confidence``) and the counts it rests on (``calib_pit_misses`` of ``n_pits`` calibration pits
below ``t_low``). The bound those counts certify is computed again here, torch- and scipy-free,
and a statement the counts do not support is refused: a guarantee written over another policy's
cannot load as if it had been certified.
"""

from __future__ import annotations

import math
from pathlib import Path

from pitguard.core.errors import PitguardError

TOLERANCE = 1e-6  # between this module's bound and the recorded one (scipy's beta quantile)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), summed in log space."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def cp_upper(k: int, n: int, confidence: float) -> float:
    """The exact one-sided Clopper-Pearson upper bound: the largest p with
    P(Bin(n, p) <= k) >= 1 - confidence."""
    if n <= 0 or k >= n:
        return 1.0
    if k == 0:
        return -math.expm1(math.log1p(-confidence) / n)
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) >= 1 - confidence:
            lo = mid
        else:
            hi = mid
    return lo


def certified_bound(misses: int, n: int, confidence: float, kind: str) -> float:
    """The bound ``misses`` of ``n`` certify: exact (Clopper-Pearson) or expected (conformal
    risk control, (k + 1) / (n + 1))."""
    if kind == "expected":
        return (misses + 1) / (n + 1)
    return cp_upper(misses, n, confidence)


def prove_guarantee(where: Path, what: str, guarantee: dict | None, counts: dict | None) -> None:
    """Refuse a stated pit-miss guarantee that the recorded counts do not certify."""
    if not guarantee or not counts or guarantee.get("max_pit_miss") is None:
        return
    needed = ("n_pits", "calib_pit_misses")
    if any(counts.get(k) is None for k in needed):
        return  # a guarantee established by identical routes, not by counts of its own
    try:
        stated, confidence = float(guarantee["max_pit_miss"]), float(guarantee["confidence"])
        misses, n = int(counts["calib_pit_misses"]), int(counts["n_pits"])
    except (KeyError, TypeError, ValueError) as err:
        raise PitguardError(f"{where}: {what} is not readable ({err}); export again") from err
    kind = str(guarantee.get("kind", "exact"))
    bound = certified_bound(misses, n, confidence, kind)
    recorded = counts.get("pit_miss_bound")
    if bound > stated + TOLERANCE or (
        recorded is not None and abs(float(recorded) - bound) > TOLERANCE
    ):
        raise PitguardError(
            f"{where}: {what} states pits routed clean <= {stated:.4%} with {confidence:.1%} "
            f"confidence ({kind}), but its calibration counts ({misses} of {n} pits below t_low) "
            f"certify {bound:.4%} at that confidence: the statement was edited or belongs to "
            "another policy; restore bundle.json or calibrate and export again"
        )
