"""What the line stage did lately: a rolling window of frames summarised for a person or a
diagnostics topic (frames, crops, the share sent to review and why, latency p50 and p99)."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from pitguard.runtime.line import LINE_CODES, LineResult


@dataclass(frozen=True)
class FrameRecord:
    crops: int
    clean: int
    maybe: int
    pit: int
    guarded: int  # sent to review by the input guard
    refused: bool  # the whole frame refused unscored
    ms: float


@dataclass(frozen=True)
class LineSummary:
    """Over the last ``frames`` frames (at most the window)."""

    frames: int
    crops: int
    refused_frames: int
    clean_rate: float  # shares of crops; NaN with no crops
    maybe_rate: float
    pit_rate: float
    guard_rate: float  # crops the input guard sent to review
    p50_ms: float  # per frame, NaN with no frames
    p99_ms: float

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One sentence for a log or a diagnostics message."""
        return (
            f"{self.frames} frames, {self.crops} crops: clean {self.clean_rate:.1%}, maybe "
            f"{self.maybe_rate:.1%} (guard {self.guard_rate:.1%}), pit {self.pit_rate:.1%}; "
            f"{self.refused_frames} frames refused; p50 {self.p50_ms:.2f} ms, "
            f"p99 {self.p99_ms:.2f} ms"
        )


class LineMonitor:
    """Keeps the last ``window`` frames' counts and times."""

    def __init__(self, window: int = 1000):
        self.records: deque[FrameRecord] = deque(maxlen=window)

    def add(self, result: LineResult) -> None:
        codes = np.asarray(result.codes.cpu() if hasattr(result.codes, "cpu") else result.codes)
        self.records.append(
            FrameRecord(
                crops=len(codes),
                clean=int(np.count_nonzero(codes == LINE_CODES["clean"])),
                maybe=int(np.count_nonzero(codes == LINE_CODES["maybe"])),
                pit=int(np.count_nonzero(codes == LINE_CODES["pit"])),
                guarded=result.guarded,
                refused=bool(result.error),
                ms=result.ms,
            )
        )

    def summary(self) -> LineSummary:
        recs = list(self.records)
        crops = sum(r.crops for r in recs)
        times = np.array([r.ms for r in recs], dtype=np.float64)

        def share(field: str) -> float:
            return sum(getattr(r, field) for r in recs) / crops if crops else float("nan")

        return LineSummary(
            frames=len(recs),
            crops=crops,
            refused_frames=sum(r.refused for r in recs),
            clean_rate=share("clean"),
            maybe_rate=share("maybe"),
            pit_rate=share("pit"),
            guard_rate=share("guarded"),
            p50_ms=float(np.percentile(times, 50)) if len(times) else float("nan"),
            p99_ms=float(np.percentile(times, 99)) if len(times) else float("nan"),
        )
