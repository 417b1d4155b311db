"""How pitguard writes a share for people: one percentage formatter, one spelling of a gap."""

from __future__ import annotations

from collections.abc import Sequence

MISSING = "n/a"  # a value that was not measured


def pct(x: float | None, digits: int = 2, sign: str = "%", width: int = 0) -> str:
    """``0.9123`` as ``91.23%``; ``digits=-1`` keeps every significant digit (``0.5%``)."""
    if x is None:
        return MISSING.rjust(width)
    text = f"{100 * x:g}" if digits < 0 else f"{100 * x:.{digits}f}"
    return (text + sign).rjust(width)


def pct_ci(pair: Sequence[float | None] | None, digits: int = 2) -> str:
    """An interval of shares as `` [89.50, 93.84]``, or nothing where it was not measured."""
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f" [{pct(pair[0], digits, '')}, {pct(pair[1], digits, '')}]"
