"""What ``pitguard bench`` measured, typed: the result ``bench`` returns and ``--json`` writes.

``BenchResult.to_dict()`` writes the keys bench.json has always held; ``BenchResult.from_dict()``
reads any version of it: a key an older version did not write reads as None (a record without
``device`` was timed on the CPU, the only device older versions timed) and is not written back.
Measurement keys this module does not name are kept as they are, after the named ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class BenchRecord:
    """One target on one backend at one batch size: latency percentiles and throughput."""

    target: str | None = None
    backend: str | None = None
    batch_size: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    ms_per_crop: float | None = None
    crops_per_s: float | None = None
    runs: int | None = None
    device: str | None = None  # where it ran: "cpu" or "cuda"
    extra: dict = field(default_factory=dict)  # measurement keys not named above

    @property
    def on_cpu(self) -> bool:
        return (self.device or "cpu") == "cpu"

    def to_dict(self) -> dict:
        """The record's keys as bench.json holds them (device last); a missing value is left out."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("extra", "device") and getattr(self, f.name) is not None
        }
        device = {} if self.device is None else {"device": self.device}
        return {**out, **self.extra, **device}

    @classmethod
    def from_dict(cls, d: dict) -> BenchRecord:
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in d.items() if k in names},
            extra={k: v for k, v in d.items() if k not in names},
        )


@dataclass
class BenchResult:
    """Every record of a bench run, what was skipped and why, the machine and the settings."""

    hardware: dict = field(default_factory=dict)
    threads: int | None = None
    settings: dict = field(default_factory=dict)
    results: list[BenchRecord] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # target, backend, reason
    baseline: str | None = None
    ratios: list[dict] = field(default_factory=list)  # speedups over the baseline's eager

    def to_dict(self) -> dict:
        return {
            "hardware": self.hardware,
            "threads": self.threads,
            "settings": self.settings,
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
            "baseline": self.baseline,
            "ratios": self.ratios,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        return cls(
            hardware=d.get("hardware") or {},
            threads=d.get("threads"),
            settings=d.get("settings") or {},
            results=[BenchRecord.from_dict(r) for r in d.get("results") or []],
            skipped=list(d.get("skipped") or []),
            baseline=d.get("baseline"),
            ratios=list(d.get("ratios") or []),
        )
