"""Certify the thresholds of the decision: a stated bound on pits routed clean.

t_low is certified with Learn-Then-Test fixed-sequence testing: candidate thresholds are
scanned from the lowest upward, each tested with the exact one-sided Clopper-Pearson upper
bound on the rate of calibration pits scored below it, and the scan stops at the first
threshold whose bound exceeds ``max_pit_miss``. The miss rate grows with the threshold, so
every threshold before the stop is valid at level ``1 - confidence`` without a multiplicity
correction, including one picked from that set by looking at the data. The same scan, from the
top downward, certifies t_high when a false-reject limit is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.core.fmt import pct
from pitguard.core.stats import cp_upper

# Smallest float32 above 1: as t_high it routes nothing to pit even when p == 1.0 exactly,
# which saturated float32 softmax outputs do produce.
_ABOVE_ONE = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
# Cells of the (t_low x t_high) accuracy table held in memory at once.
_TABLE_CELLS = 4_000_000


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:  # also rejects NaN
        raise PitguardError(f"{name} must be strictly between 0 and 1, got {value!r}")


def _max_failures(n: int, max_rate: float, confidence: float) -> int:
    """Largest failure count whose exact upper bound stays <= max_rate (-1 if none)."""
    bounds = cp_upper(np.arange(n + 1), n, confidence)
    # bounds[n] == 1 > max_rate, so argmax finds the first bound over the limit.
    return int(np.argmax(bounds > max_rate)) - 1


def _best_supported(n: int, confidence: float, flag: str, what: str) -> str:
    """The end of a too-few refusal: the tightest bound ``n`` crops with zero failures support
    at ``confidence`` (the exact bound the fit uses), and the limit to ask for instead."""
    if n == 0:
        return f", which support no bound: calibrate on data with {what}"
    best = float(cp_upper(0, n, confidence))
    # The bound rounded up to two significant digits, so the limit suggested is accepted.
    digits = 1 - math.floor(math.log10(best))
    limit = math.ceil(best * 10**digits - 1e-9) / 10**digits
    ask = (
        f"pass {flag} {limit:.{digits}f} or more, or calibrate on more {what}"
        if limit < 1
        else f"calibrate on more {what}"
    )
    return (
        f", which support a bound of {100 * best:.2f}% at {pct(confidence, -1)} confidence at "
        f"best: {ask} (or lower --confidence)"
    )


GUARANTEE_KINDS = ("exact", "expected")


def _crc_needed(max_rate: float) -> int:
    """Fewest crops for which conformal risk control can allow a rate of ``max_rate``: with
    zero failures its bound is 1 / (n + 1)."""
    return max(1, math.ceil(1 / max_rate - 1 - 1e-9))


# What each threshold is certified on: (crops, failures, bound, the flag that sets it)
_CERTIFIED_ON = {
    "t_low": ("pits", "misses", "pit-miss", "--max-pit-miss"),
    "t_high": ("clean crops", "false rejects", "false-reject", "--max-false-reject"),
}


def _refuse_too_few(guarantee: str, n: int, rate: float, confidence: float, what: str) -> None:
    """Refuse, saying what would do, when ``n`` calibration crops cannot certify ``rate`` for
    threshold ``what`` even with no failure."""
    crops, failures, bound, flag = _CERTIFIED_ON[what]
    if guarantee == "expected" and n < _crc_needed(rate):
        raise PitguardError(
            f"cannot certify {what}: an expected rate of {pct(rate, -1)} needs at least "
            f"{_crc_needed(rate)} {crops} (conformal risk control bounds it by (failures + 1) / "
            f"({crops} + 1)); the calibration data has {n} {crops}"
        )
    need = min_pits_needed(rate, confidence)
    if guarantee == "exact" and n < need:
        raise PitguardError(
            f"cannot certify {what}: needs at least {need} {crops} with zero {failures} for a "
            f"{pct(rate, -1)} {bound} bound at {pct(confidence, -1)} confidence; the calibration data "
            f"has {n} {crops}" + _best_supported(n, confidence, flag, crops)
        )


def _allowed_failures(n: int, max_rate: float, confidence: float, guarantee: str) -> int:
    """Most calibration failures a threshold may have: the exact bound's at ``confidence``, or
    conformal risk control's, (k + 1) / (n + 1) <= max_rate, for the expected rate."""
    if guarantee == "expected":
        return math.floor(max_rate * (n + 1) - 1 + 1e-9)
    return _max_failures(n, max_rate, confidence)


def _bound(k: int, n: int, confidence: float, guarantee: str) -> float:
    """The bound a threshold with ``k`` of ``n`` calibration failures certifies."""
    if guarantee == "expected":
        return (k + 1) / (n + 1)
    return float(cp_upper(k, n, confidence))


def min_pits_needed(max_pit_miss: float, confidence: float) -> int:
    """Smallest n whose exact bound with zero misses, 1 - (1-confidence)**(1/n), is <= max_pit_miss."""
    _check_fraction("max_pit_miss", max_pit_miss)
    _check_fraction("confidence", confidence)
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-max_pit_miss)))
    # The closed form can land one off through rounding; settle on the bound the fit uses.
    while cp_upper(0, n, confidence) > max_pit_miss:
        n += 1
    while n > 1 and cp_upper(0, n - 1, confidence) <= max_pit_miss:
        n -= 1
    return n


@dataclass(frozen=True)
class Thresholds:
    """Chosen thresholds and what the calibration set says about them."""

    t_low: float
    t_high: float
    pit_miss_bound: float
    false_reject_bound: float | None
    n_pits: int
    n_clean: int
    calib_pit_misses: int
    calib_maybe_rate: float


def _prepare(p_pit: np.ndarray, is_pit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_pit)
    y = np.asarray(is_pit)
    if p.ndim != 1 or y.shape != p.shape:
        raise PitguardError(
            f"p_pit and is_pit must be 1-D arrays of the same length, got {p.shape} and {y.shape}"
        )
    if p.size == 0:
        raise PitguardError("the calibration set is empty")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise PitguardError("p_pit must hold finite probabilities in [0, 1]")
    if y.dtype != np.bool_:
        if not np.all((y == 0) | (y == 1)):
            raise PitguardError("is_pit must be boolean or 0/1")
        y = y == 1
    return p.astype(np.float32), y


def _midpoints(u: np.ndarray) -> np.ndarray:
    """``u[0]``, then for each later value the float32 midpoint with its predecessor.

    Where two scores are one float32 step apart the midpoint is not representable; the upper
    score itself is kept, so every candidate stays above its predecessor and at most its score.
    """
    lo, hi = u[:-1].astype(np.float64), u[1:].astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    mid = np.where(mid > u[:-1], mid, u[1:])
    return np.concatenate([u[:1], mid])


def _candidates(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (ascending) with the pits and clean crops scored below each.

    Counts only change at observed scores, so these candidates make the search exact. Each
    candidate lies halfway between two neighbouring scores rather than on one: the counts are
    the same, and each calibration crop keeps half the gap to its neighbour as a margin against
    float rounding in another runtime (ONNX), instead of sitting on the threshold.
    """
    ends = np.array([0.0, 1.0, _ABOVE_ONE], dtype=np.float32)
    t = _midpoints(np.unique(np.concatenate([p, ends])))
    pits_below = np.searchsorted(np.sort(p[y]), t, side="left")
    clean_below = np.searchsorted(np.sort(p[~y]), t, side="left")
    return t, pits_below.astype(np.int64), clean_below.astype(np.int64)


def _accuracy(
    i: np.ndarray, j: np.ndarray, pits_below: np.ndarray, clean_below: np.ndarray, n_pits: int
) -> np.ndarray:
    """Accuracy among non-maybe crops for t_low index i and t_high index j (broadcasts)."""
    # The top candidate lies above every score, so the last counts are the class totals.
    n_total = n_pits + int(clean_below[-1])
    correct = clean_below[i] + (n_pits - pits_below[j])
    decided = pits_below[i] + clean_below[i] + (n_total - pits_below[j] - clean_below[j])
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = correct / decided
    # Nothing decided (everything maybe) has no accuracy; never prefer it.
    return np.where(decided > 0, acc, -np.inf)


def _accuracy_t_high(
    rows: np.ndarray, pits_below: np.ndarray, clean_below: np.ndarray, n_pits: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each t_low index in rows (ascending), the t_high index >= it with the best accuracy.

    Ties go to the smallest t_high, i.e. the smallest maybe rate.
    """
    m = pits_below.size
    best_j = np.empty(rows.size, dtype=np.int64)
    best_acc = np.empty(rows.size, dtype=np.float64)
    step = max(1, _TABLE_CELLS // m)
    for s in range(0, rows.size, step):
        r = rows[s : s + step]
        cols = np.arange(r[0], m)  # t_high >= t_low, and rows ascend
        acc = _accuracy(r[:, None], cols[None, :], pits_below, clean_below, n_pits)
        acc[cols[None, :] < r[:, None]] = -np.inf
        j = np.argmax(acc, axis=1)  # first maximum -> smallest t_high among ties
        best_j[s : s + r.size] = cols[j]
        best_acc[s : s + r.size] = acc[np.arange(r.size), j]
    return best_j, best_acc


def _lowest_certified_t_high(
    clean_below: np.ndarray, n_clean: int, max_false_reject: float, confidence, guarantee
) -> int:
    """Index of the lowest t_high whose false-reject bound is certified, scanning downward."""
    _refuse_too_few(guarantee, n_clean, max_false_reject, confidence, "t_high")
    false_rejects = n_clean - clean_below  # never increases with t
    kf_max = _allowed_failures(n_clean, max_false_reject, confidence, guarantee)
    # The certified t_high form a suffix; the top candidate (above 1) rejects nothing, so the
    # suffix is never empty.
    return int(np.argmax(false_rejects <= kf_max))


def choose_thresholds(
    p_pit: np.ndarray,
    is_pit: np.ndarray,
    max_pit_miss: float = 0.01,
    confidence: float = 0.95,
    max_false_reject: float | None = None,
    guarantee: str = "exact",
) -> Thresholds:
    """Pick t_low <= t_high from calibration scores so that, with probability >= confidence,
    the rate of pits routed clean is <= max_pit_miss (``guarantee="exact"``), or so that its
    expected value is (``"expected"``: conformal risk control, Angelopoulos et al. 2022; the
    confidence is then unused).

    t_low ranges over the thresholds certified by the fixed-sequence scan. With
    max_false_reject, t_high ranges over thresholds certified the same way for clean crops
    routed pit (scanned downward); otherwise t_high is the one maximising accuracy among
    non-maybe calibration crops. The pair with the smallest calibration maybe rate wins
    (ties: higher accuracy, then the lower, safer t_low). Raises PitguardError when the data
    cannot support a bound even with zero misses.
    """
    p, y = _prepare(p_pit, is_pit)
    _check_fraction("max_pit_miss", max_pit_miss)
    _check_fraction("confidence", confidence)
    if max_false_reject is not None:
        _check_fraction("max_false_reject", max_false_reject)
    n_pits = int(y.sum())
    n_clean = int(y.size - n_pits)
    n_total = y.size

    if guarantee not in GUARANTEE_KINDS:
        raise PitguardError(f"guarantee {guarantee!r}: choose {' or '.join(GUARANTEE_KINDS)}")
    _refuse_too_few(guarantee, n_pits, max_pit_miss, confidence, "t_low")

    t, pits_below, clean_below = _candidates(p, y)
    below = pits_below + clean_below
    # Misses never decrease with t, so "stop at the first bound over the limit" keeps exactly
    # the candidates with at most k_max misses: a prefix, never empty since t = 0 misses none.
    k_max = _allowed_failures(n_pits, max_pit_miss, confidence, guarantee)
    rows = np.arange(int(np.searchsorted(pits_below, k_max, side="right")))

    if max_false_reject is None:
        cols, acc = _accuracy_t_high(rows, pits_below, clean_below, n_pits)
    else:
        j_min = _lowest_certified_t_high(
            clean_below, n_clean, max_false_reject, confidence, guarantee
        )
        # Below j_min nothing is certified; above it the smallest t_high minimises maybe.
        # When the certified ranges overlap, t_high = t_low removes the maybe band.
        cols = np.maximum(rows, j_min)
        acc = _accuracy(rows, cols, pits_below, clean_below, n_pits)

    maybe = below[cols] - below[rows]
    best = int(np.lexsort((rows, -acc, maybe))[0])
    i, j = int(rows[best]), int(cols[best])

    fr_bound = None
    if max_false_reject is not None:
        fr_bound = _bound(n_clean - int(clean_below[j]), n_clean, confidence, guarantee)
    return Thresholds(
        t_low=float(t[i]),
        t_high=float(t[j]),
        pit_miss_bound=_bound(int(pits_below[i]), n_pits, confidence, guarantee),
        false_reject_bound=fr_bound,
        n_pits=n_pits,
        n_clean=n_clean,
        calib_pit_misses=int(pits_below[i]),
        calib_maybe_rate=float(maybe[best]) / n_total,
    )


def operating_curve(p_pit: np.ndarray, is_pit: np.ndarray, confidence: float = 0.95) -> dict:
    """Maybe rate against the certified pit-miss bound, one point per candidate t_low.

    t_high is chosen per point as in `choose_thresholds` without max_false_reject. Returns
    lists "t_low", "t_high", "pit_miss_bound", "pit_miss_rate" (calibration), "maybe_rate",
    "accuracy" (among non-maybe crops), plus "confidence", "n_pits", "n_clean".
    """
    p, y = _prepare(p_pit, is_pit)
    _check_fraction("confidence", confidence)
    n_pits = int(y.sum())
    n_clean = int(y.size - n_pits)
    if n_pits == 0:
        raise PitguardError("the calibration data has no pits; the pit-miss rate is undefined")
    t, pits_below, clean_below = _candidates(p, y)
    below = pits_below + clean_below
    rows = np.arange(t.size)
    cols, acc = _accuracy_t_high(rows, pits_below, clean_below, n_pits)
    bound_by_misses = cp_upper(np.arange(n_pits + 1), n_pits, confidence)
    return {
        "t_low": t.astype(np.float64).tolist(),
        "t_high": t[cols].astype(np.float64).tolist(),
        "pit_miss_bound": bound_by_misses[pits_below].tolist(),
        "pit_miss_rate": (pits_below / n_pits).tolist(),
        "maybe_rate": ((below[cols] - below) / y.size).tolist(),
        "accuracy": acc.tolist(),
        "confidence": float(confidence),
        "n_pits": n_pits,
        "n_clean": n_clean,
    }


PIT_MISS_BOUNDS = (0.005, 0.01, 0.02, 0.05)  # the operating table's rows
FALSE_REJECT_CAPS = (0.0, 0.02, 0.05, 0.10)  # and columns; 0: nothing is routed pit


def operating_table(p_pit: np.ndarray, is_pit: np.ndarray, confidence: float = 0.95) -> list[dict]:
    """The certified operating points a plant chooses from: for each pit-miss bound and
    false-reject cap, the thresholds certified on these scores and the share of crops they send
    to review; a point the data cannot certify says why."""
    p, y = _prepare(p_pit, is_pit)
    rows = []
    for bound in PIT_MISS_BOUNDS:
        for cap in FALSE_REJECT_CAPS:
            row: dict = {"max_pit_miss": bound, "max_false_reject": cap}
            try:
                chosen = choose_thresholds(p, y, bound, confidence, cap or None)
            except PitguardError as err:
                rows.append({**row, "maybe_rate": None, "why": str(err).split(";")[0]})
                continue
            t_high = chosen.t_high if cap else _ABOVE_ONE  # a cap of 0: no crop routed pit
            clean = p < np.float32(chosen.t_low)
            maybe = ~clean & (p < np.float32(t_high))
            rows.append(
                {
                    **row,
                    "t_low": chosen.t_low,
                    "t_high": t_high,
                    "maybe_rate": float(maybe.mean()),
                    "pit_miss_bound": chosen.pit_miss_bound,
                    "false_reject_bound": chosen.false_reject_bound if cap else 0.0,
                }
            )
    return rows
