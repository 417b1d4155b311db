"""What a long step tells its user: progress with rate and time left, the split's sizes, how
long the rest of a training run will take."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from pitguard.core.log import shows_progress

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch


def eta_text(seconds: float) -> str:
    """``42 s`` or ``7 min``: a remaining time as a log line shows it."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def say_estimate(seconds: float, left: int, device: torch.device) -> None:
    """After the first epoch of a run without a time budget: how long the rest will take."""
    minutes = seconds * left / 60
    line = (
        f"about {minutes:.0f} min more for the {left} epoch{'' if left == 1 else 's'} left "
        f"({seconds:.0f} s an epoch here)"
    )
    if device.type == "cpu" and minutes > 60:
        line += (
            "; over an hour on a CPU: a GPU, a smaller recipe (cpu-fast) or "
            "--set train.max_minutes=N keeps it shorter"
        )
    _log.info(line)


def describe_counts(counts: dict[str, dict[str, int]]) -> str:
    """``train 2,021 (clean 1,087, pit 934); val 368 (...)``: a split's sizes for people."""
    return "; ".join(
        f"{part} {sum(per.values()):,} (" + ", ".join(f"{c} {n:,}" for c, n in per.items()) + ")"
        for part, per in counts.items()
    )


class Progress:
    """Progress of a long step, on stderr: a bar redrawn in place on a terminal, a plain line
    every ``every_s`` seconds otherwise (logs, CI). Steps shorter than ``quiet_s`` print nothing.
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "crops",
        every_s: float = 10.0,
        quiet_s: float = 3.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.every_s, self.quiet_s = every_s, quiet_s
        self.stream = stream if stream is not None else sys.stderr
        # a stream given is written to; stderr only when the log shows progress (not under -q,
        # nor for a library user who has not asked for pitguard's INFO lines)
        self.shown = stream is not None or shows_progress()
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = clock()
        self.last: float | None = None
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.shown:
            return
        now = self.clock()
        if now - self.started < self.quiet_s:
            return
        gap = 0.2 if self.tty else self.every_s
        if self.last is None or now - self.last >= gap or self.done >= self.total:
            self.last = now
            self._show(now)

    def close(self) -> None:
        if self.last is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        share = self.done / self.total if self.total else 1.0
        line = (
            f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({100 * share:.0f}%), "
            f"{rate:,.0f} {self.unit}/s, eta {eta_text(left)}"
        )
        if self.tty:
            bar = "#" * int(20 * share)
            self.stream.write(f"\r[{bar:<20}] {line}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
