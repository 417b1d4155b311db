"""A training time budget turned into an epoch plan, measured on the machine that trains.

A recipe with ``train.max_minutes`` does not lay its schedule over ``train.epochs`` and stop
when the time is up: on a slower CPU that run would end with the learning rate still high.
Before the first epoch, a few training steps and one validation pass are timed on copies of
the model; the plan is as many epochs as fit in the budget (at most ``train.epochs``), and the
warmup, cosine decay and EMA all run over the plan, so every machine ends fully decayed. The
plan is kept in the checkpoint: a resumed run follows the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from pitguard.config import Config
from pitguard.core.seeding import rng_state, set_rng_state
from pitguard.train.epoch import Stepper, train_one_epoch, validate

PROBE_STEPS = 3  # timed training steps, after one untimed warm-up step
SAFETY = 0.95  # share of the budget planned; the rest absorbs the timing's noise


@dataclass(frozen=True)
class EpochPlan:
    epochs: int  # epochs the schedule is laid over
    seconds_per_epoch: float  # measured estimate: training steps plus one validation pass
    budget_minutes: float

    def to_dict(self) -> dict:
        return asdict(self)


def time_epoch(
    run_steps: Callable[[int], None],
    run_validation: Callable[[], None],
    steps_per_epoch: int,
    clock: Callable[[], float],
) -> float:
    """Seconds one epoch takes: ``PROBE_STEPS`` timed steps scaled up, plus a validation pass."""
    run_steps(1)  # first-call costs (allocations, kernel choice) are not the steady state
    start = clock()
    run_steps(PROBE_STEPS)
    trained = clock()
    run_validation()
    validated = clock()
    return (trained - start) / PROBE_STEPS * steps_per_epoch + (validated - trained)


def plan_epochs(budget_minutes: float, max_epochs: int, seconds_per_epoch: float) -> EpochPlan:
    """As many epochs as fit in the budget, at least one and at most ``max_epochs``."""
    fit = math.floor(SAFETY * budget_minutes * 60 / max(seconds_per_epoch, 1e-9))
    return EpochPlan(max(1, min(max_epochs, fit)), seconds_per_epoch, budget_minutes)


def over_budget(max_minutes: float, history: list[dict]) -> float | None:
    """Seconds past ``train.max_minutes`` (a machine slower than its timing), or None."""
    if not (max_minutes and history):
        return None
    over = history[-1]["elapsed_s"] - max_minutes * 60
    return round(over, 1) if over > 0 else None


def plan_for_budget(
    cfg: Config, probe: Stepper, images, labels, val_part, steps_per_epoch, shuffle, clock, dist
) -> EpochPlan:
    """Time a few steps of ``probe`` (a copy of the model); the random streams are left as they
    were. Under torchrun each rank times its share of the batches and all take the slowest."""
    saved = rng_state(shuffle)
    size = cfg.train.batch_size
    order = torch.randperm(len(labels), generator=shuffle)
    batches = [order[i : i + size] for i in range(0, len(order) - size + 1, size)] or [order]
    done = 0

    def run_steps(n: int) -> None:
        nonlocal done
        chosen = [dist.shard(batches[(done + i) % len(batches)]) for i in range(n)]
        train_one_epoch(probe, chosen, images, labels, done, "timing")
        done += n

    def run_validation() -> None:
        if len(val_part):
            share = slice(dist.rank, None, dist.world)
            validate(
                probe.net,
                val_part.images[share],
                val_part.labels[share],
                probe.device,
                cfg.train.eval_batch_size,
            )

    seconds = dist.slowest(time_epoch(run_steps, run_validation, steps_per_epoch, clock))
    set_rng_state(saved, shuffle)
    return plan_epochs(cfg.train.max_minutes, cfg.train.epochs, seconds)
