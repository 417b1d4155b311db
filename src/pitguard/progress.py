"""What a training run tells its user: the split's sizes, how long the rest will take, overruns."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pitguard.config import Config


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
    print(line, flush=True)


def over_budget(cfg: Config, history: list[dict]) -> float | None:
    """Seconds past ``train.max_minutes`` (a machine slower than its timing), or None."""
    if not (cfg.train.max_minutes and history):
        return None
    over = history[-1]["elapsed_s"] - cfg.train.max_minutes * 60
    return round(over, 1) if over > 0 else None


def describe_counts(counts: dict[str, dict[str, int]]) -> str:
    """``train 2,021 (clean 1,087, pit 934); val 368 (...)``: a split's sizes for people."""
    return "; ".join(
        f"{part} {sum(per.values()):,} (" + ", ".join(f"{c} {n:,}" for c, n in per.items()) + ")"
        for part, per in counts.items()
    )
