"""What a finished training run says of itself: train_summary.json, typed.

``TrainSummary.to_dict()`` writes train_summary.json's keys; ``TrainSummary.from_dict()`` reads
any version of it: a key an older version did not write reads as None. Older summaries did not
record the kept epoch: the weights they kept were always the best epoch's (the last epoch's
when ``selected_on`` is ``"last"``, whose ``best_value`` was the epoch number, not a score).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class TrainSummary:
    """A training run's end: its data, epochs, the kept epoch and how it was chosen, the machine."""

    run: str | None = None
    recipe: str | None = None
    model: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    epochs_run: int | None = None
    epochs_planned: int | None = None
    teacher: str | None = None
    plan: dict | None = None  # the epoch plan of a timed budget (train.budget.EpochPlan)
    over_budget_s: float | None = None
    best_epoch: int | None = None
    kept_epoch: int | None = None  # the epoch whose weights the run kept
    selected_on: str | None = None  # a val metric, or "last"
    best_value: float | None = None  # the kept epoch's score on selected_on; None for "last"
    val_accuracy: float | None = None  # the kept epoch's
    warning: str | None = None
    stop_reason: str | None = None
    train_seconds: float | None = None
    device: str | None = None
    precision: str | None = None
    threads: int | None = None
    world_size: int | None = None
    rank_seeds: list[int] | None = None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainSummary:
        names = {f.name for f in fields(cls)}
        summary = cls(**{k: v for k, v in d.items() if k in names})
        if "kept_epoch" not in d:  # written before the kept epoch was recorded
            summary.kept_epoch = summary.best_epoch
            if summary.selected_on == "last":
                summary.best_value = None  # the epoch number, not a score
        return summary
