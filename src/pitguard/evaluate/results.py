"""Typed results of an evaluation: what an evaluation's metrics.json holds, read and written.

``EvalReport.to_dict()`` writes the keys and values metrics.json has always held, in its order;
``EvalReport.from_dict()`` reads any version of that file: a key an older version did not write
reads as None (and is not written back). Keys that an evaluation writes only sometimes (what
was evaluated, its input guard, its policy) are left out of ``to_dict()`` while None.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from pitguard.core.fmt import pct

Interval = list  # [low, high] of a metric; either end None where it was not measured
SOMETIMES = {"sometimes": True}  # field metadata: written only when it holds a value


@dataclass
class _Record:
    """Fields written as JSON keys in their order. ``absent`` names the keys the file it was read
    from did not hold: still None, they are not written back, so a file reads and writes back
    with the keys it had (keys no field names are not kept)."""

    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "absent" or (
                value is None and (f.metadata.get("sometimes") or f.name in self.absent)
            ):
                continue
            out[f.name] = value.to_dict() if isinstance(value, _Record) else value
        return out

    @classmethod
    def _known(cls, d: dict) -> dict:
        """Keyword arguments from the entries of D that are fields, and which fields D lacks."""
        names = [f.name for f in fields(cls) if f.name != "absent"]
        return {
            **{k: v for k, v in d.items() if k in names},
            "absent": frozenset(n for n in names if n not in d),
        }


@dataclass
class ClassMetrics(_Record):
    """Precision, recall and F1 of one class, with their intervals and counts."""

    precision: float | None = None
    precision_ci: Interval | None = None
    recall: float | None = None
    recall_ci: Interval | None = None
    f1: float | None = None
    f1_ci: Interval | None = None
    support: int | None = None
    predicted: int | None = None
    tp: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ClassMetrics:
        return cls(**cls._known(d))


@dataclass
class InputGuardCheck(_Record):
    """How many evaluated crops the bundle's input guard flagged as unlike the train part."""

    flagged: int | None = None
    n: int | None = None
    rate: float | None = None
    rate_ci: Interval | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> InputGuardCheck:
        return cls(**cls._known(d))


# What only an evaluation with the policy's record (policy.json) writes.
POLICY_RECORD = frozenset({"calibration_mode", "guarantee", "policy_used"})


@dataclass
class RoutedMetrics(_Record):
    """The routes of a calibrated policy measured: pit-miss, false-reject and maybe rates.

    ``calibration_mode``, ``guarantee`` and ``policy_used`` come from the policy's record;
    metrics measured without one have them ``absent`` (``metrics.routed``).
    """

    n: int | None = None
    n_pits: int | None = None
    pits_routed_clean: int | None = None
    pit_miss_rate: float | None = None
    pit_miss_ci: Interval | None = None
    pit_miss_upper: float | None = None
    false_reject_rate: float | None = None
    false_reject_ci: Interval | None = None
    maybe_rate: float | None = None
    maybe_ci: Interval | None = None
    accuracy_decided: float | None = None
    accuracy_decided_ci: Interval | None = None
    routes: dict[str, int] | None = None
    interval: str | None = None
    calibration_mode: str | None = None
    guarantee: dict | None = None
    policy_used: dict | None = None
    # the cascade's second stage: its views and the share of crops that took it
    second_look: dict | None = field(default=None, metadata=SOMETIMES)

    @classmethod
    def from_dict(cls, d: dict) -> RoutedMetrics:
        return cls(**cls._known(d))


@dataclass
class EvalReport(_Record):
    """Every metric of an evaluation with its 95% interval and N, and what was evaluated.

    The first and last fields (run, data, ..., outputs) are the evaluation's; the rest are
    ``metrics.classification_report``'s, which leaves the evaluation's fields None.
    """

    run: str | None = field(default=None, metadata=SOMETIMES)
    data: str | None = field(default=None, metadata=SOMETIMES)
    source: str | None = field(default=None, metadata=SOMETIMES)
    part: str | None = field(default=None, metadata=SOMETIMES)
    n: int | None = None
    classes: list[str] | None = None
    confidence: float | None = None
    n_boot: int | None = None
    seed: int | None = None
    accuracy: float | None = None
    accuracy_ci: Interval | None = None
    accuracy_ci_exact: Interval | None = None
    balanced_accuracy: float | None = None
    balanced_accuracy_ci: Interval | None = None
    macro_f1: float | None = None
    macro_f1_ci: Interval | None = None
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None
    n_pit: int | None = None
    roc_auc: float | None = None
    roc_auc_ci: Interval | None = None
    pr_auc: float | None = None
    pr_auc_ci: Interval | None = None
    log_loss: float | None = None
    log_loss_ci: Interval | None = None
    brier: float | None = None
    brier_ci: Interval | None = None
    ece: float | None = None
    ece_ci: Interval | None = None
    ece_n_bins: int | None = None
    pit_recall: float | None = None
    pit_recall_ci: Interval | None = None
    pit_missed: int | None = None
    pit_miss_rate: float | None = None
    pit_miss_rate_upper: float | None = None
    ci_method: dict[str, str] | None = None
    model_sha256: str | None = field(default=None, metadata=SOMETIMES)
    input_guard: InputGuardCheck | None = field(default=None, metadata=SOMETIMES)
    policy: RoutedMetrics | None = field(default=None, metadata=SOMETIMES)
    plain_summary: str | None = field(default=None, metadata=SOMETIMES)
    outputs: str | None = field(default=None, metadata=SOMETIMES)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["per_class"] = {name: m.to_dict() for name, m in self.per_class.items()}
        if "per_class" in self.absent and not self.per_class:
            del out["per_class"]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> EvalReport:
        known = cls._known(d)
        known["per_class"] = {
            name: ClassMetrics.from_dict(m) for name, m in (d.get("per_class") or {}).items()
        }
        if d.get("input_guard"):
            known["input_guard"] = InputGuardCheck.from_dict(d["input_guard"])
        if d.get("policy"):
            known["policy"] = RoutedMetrics.from_dict(d["policy"])
        return cls(**known)

    def evaluated_part(self) -> tuple[str, str]:
        """(source, part) of the evaluated data, from older files' ``data`` where need be."""
        from pitguard.models.runfolder import evaluated_part

        return evaluated_part(self.to_dict())


# --------------------------------------------------------------------------- in plain words


def plain_summary(
    pol: RoutedMetrics | dict,
    per: int = 10_000,
    pit_share: float | None = None,
    part: str | None = "test",
) -> str:
    """The routed rates in words a line operator reads: per ``per`` crops like the evaluated ones.

    ``pit_share`` is the share of pits on the line; by default the evaluated part's (``part``
    names it), and the text says which share it used. The review count is the measured maybe
    rate either way: the routes are not stored by class.
    """
    if isinstance(pol, dict):
        pol = RoutedMetrics.from_dict(pol)
    n, n_pits = pol.n or 0, pol.n_pits or 0
    given = pit_share is not None
    share = pit_share if pit_share is not None else (n_pits / n if n else 0.0)
    review = round(per * (pol.maybe_rate or 0.0))
    missed = per * share * (pol.pit_miss_rate or 0.0)
    missed_most = per * share * (pol.pit_miss_upper or 0.0)
    rejected = per * (1 - share) * (pol.false_reject_rate or 0.0)
    if given:
        whose = "given"
    else:
        whose = f"the {part} part's" if part and part != "all" else "the evaluated crops'"
    return (
        f"Of {per:,} crops like these (pit share {pct(share, 1)}, {whose}): {review:,} go to "
        f"review{' (at the measured maybe rate)' if given else ''}; "
        f"about {missed:.0f} pits pass as clean (at most {missed_most:.0f} with 95% confidence); "
        f"about {rejected:.0f} clean cherries are rejected as pits. Fewer to review: allow a "
        f"higher pit-miss bound at calibration, or train a model that separates pits better "
        f"(higher ROC-AUC); fewer pits passed: a lower bound, at the cost of more review."
    )
