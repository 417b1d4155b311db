"""The exact statistical bounds and resampling every stage uses: Clopper-Pearson, bootstrap, McNemar."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, overload

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Upper bound on the number of elements of one (resamples x items) block held in memory.
_BLOCK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------- exact intervals


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval for k successes out of n; n == 0 -> (0, 1)."""
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


@overload
def cp_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float: ...
@overload
def cp_upper(k: np.ndarray, n: int, confidence: float = CONFIDENCE) -> np.ndarray: ...
def cp_upper(k, n, confidence=CONFIDENCE):
    """One-sided exact upper bound: the largest p with P(Bin(n, p) <= k) >= 1 - confidence.

    ``k`` may be an array of failure counts. n == 0 or k == n -> 1.0. For k == 0 the closed
    form 1 - (1 - confidence) ** (1 / n) (the "rule of three") is used.
    """
    n = int(n)
    ks = np.asarray(k, dtype=np.int64)
    if n < 0 or np.any(ks < 0) or np.any(ks > max(n, 0)):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    out = np.ones(ks.shape, dtype=np.float64)
    if n > 0:
        out[ks == 0] = -math.expm1(math.log1p(-confidence) / n)
        mid = (ks > 0) & (ks < n)
        out[mid] = stats.beta.ppf(confidence, ks[mid] + 1, n - ks[mid])
    return float(out) if ks.ndim == 0 else out


def finite_or_none(x: Any) -> float | None:
    """A plain float, or None for nan/inf/None (keeps the report strict JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


# --------------------------------------------------------------------------- bootstrap


def bootstrap_index_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (rows, n) blocks of resampling indices, n_boot rows in all, from one seeded stream."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite values; (nan, nan) when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    stat_fn: Callable[..., Any],
    arrays: tuple[np.ndarray, ...],
    n_boot: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    *,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of stat_fn(*arrays), resampling rows jointly across arrays.

    With vectorized=True, stat_fn receives each array indexed by a (B, N) index matrix, i.e.
    shape (B, N, ...), and must return B values; otherwise it is called once per resample.
    Resamples whose statistic is nan are dropped; (nan, nan) if none remain.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    if n == 0 or n_boot < 1:
        return float("nan"), float("nan")
    values = []
    for idx in bootstrap_index_blocks(n, n_boot, seed):
        if vectorized:
            out = np.asarray(stat_fn(*(a[idx] for a in arrays)), dtype=float).reshape(-1)
            if out.shape[0] != idx.shape[0]:
                raise ValueError(
                    f"vectorized stat_fn returned {out.shape[0]} values for {idx.shape[0]} resamples"
                )
            values.append(out)
        else:
            values.append(np.array([float(stat_fn(*(a[row] for a in arrays))) for row in idx]))
    return percentile_ci(np.concatenate(values), confidence)


# --------------------------------------------------------------------------- paired comparisons


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test: two-sided binomial test (p = 1/2) on the discordant pairs."""
    a = np.asarray(correct_a).astype(bool).reshape(-1)
    b = np.asarray(correct_b).astype(bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.size} items but correct_b has {b.size}")
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    discordant = a_only + b_only
    p = float(stats.binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "n": int(a.size),
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "both_correct": int((a & b).sum()),
        "both_wrong": int((~a & ~b).sum()),
        "p_value": min(p, 1.0),
    }


def paired_bootstrap_diff(
    values_a: np.ndarray,
    values_b: np.ndarray,
    n_boot: int = 2000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """Bootstrap interval of mean(a) - mean(b) for per-item values measured on the same items."""
    a = np.asarray(values_a, dtype=float).reshape(-1)
    b = np.asarray(values_b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"values_a has {a.size} items but values_b has {b.size}")
    diff = a - b
    lo, hi = bootstrap_ci(
        lambda d: d.mean(axis=1),
        (diff,),
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        vectorized=True,
    )
    point = float(diff.mean()) if diff.size else float("nan")
    within = not (np.isfinite(lo) and np.isfinite(hi)) or bool(lo <= 0.0 <= hi)
    return {
        "n": int(a.size),
        "diff": finite_or_none(point),
        "ci": [finite_or_none(lo), finite_or_none(hi)],
        "confidence": confidence,
        "within_noise": within,
    }
