"""The training loss: cross-entropy or focal loss, with the pit class weighted up if asked.

The line's decision is set by the lowest-scored pits: at a 1% pit-miss bound, the one or two
percent of pits the model scores lowest decide how many crops go to review. Two levers aim the
loss at them: ``train.pit_weight`` multiplies the pit class's weight, and ``train.loss: focal``
(Lin et al., 2017) scales each crop's loss by ``(1 - p_true) ** gamma``, so crops already scored
right count less and the hard ones more. Both take soft targets (mixup, label smoothing).

A third, ``train.pauc_weight``, adds a partial-AUC term aimed at the high pit-recall end of the
ROC curve: in each batch the hardest ``train.pauc_pits`` share of the pits (those scored
lowest) is pulled above every clean crop, with the squared-hinge surrogate of LibAUC's one-way
partial-AUC losses (margin 1 on sigmoid scores; Zhu et al., 2022, "When AUC meets DRO"), the
roles of the classes swapped so the restricted region is low false-negative rate. The hardest
pits are taken batch by batch, the empirical CVaR of the pits' scores: LibAUC's own losses
keep a state per training crop, indexed by its position in the dataset, which this loop's
batches (augmented, mixed crops drawn by index) do not carry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pitguard.config import TrainConfig


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequencies, scaled so a balanced set gets weight 1 for every class."""
    counts = torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


class WeightedLoss(nn.Module):
    """Cross-entropy (``gamma`` 0) or focal loss over hard or soft targets, with class weights.

    The weighted mean divides by the summed weights of the targets, as ``nn.CrossEntropyLoss``
    does, so a weight changes which crops matter, not the loss's scale.
    """

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None, gamma: float, label_smoothing: float):
        super().__init__()
        self.register_buffer("weight", weight)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_classes = logits.shape[1]
        if target.ndim == 1:
            target = F.one_hot(target, n_classes).to(logits.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / n_classes
        log_p = F.log_softmax(logits, dim=1)
        per_class = -target * log_p
        if self.gamma:
            per_class = per_class * (1 - log_p.exp()).pow(self.gamma)
        if self.weight is None:
            return per_class.sum(1).mean()
        weight = self.weight.to(logits.dtype)
        return (per_class * weight).sum() / (target * weight).sum()


def pauc_tail_loss(
    logits: torch.Tensor, target: torch.Tensor, pit_index: int, share: float
) -> torch.Tensor:
    """Mean squared hinge ``(1 - (s_pit - s_clean)) ** 2`` over pairs of the batch's hardest
    ``share`` of pits and all its clean crops, ``s`` the sigmoid of the pit logit's margin over
    the other classes; zero for a batch without both. Soft targets count by their larger share."""
    hard = target if target.ndim == 1 else target.argmax(1)
    others = torch.cat([logits[:, :pit_index], logits[:, pit_index + 1 :]], dim=1)
    score = torch.sigmoid(logits[:, pit_index] - torch.logsumexp(others, dim=1))
    pits, clean = score[hard == pit_index], score[hard != pit_index]
    if not len(pits) or not len(clean):
        return logits.sum() * 0.0  # keeps the graph: every rank steps the same parameters
    k = max(1, math.ceil(share * len(pits)))
    hardest = torch.topk(pits, k, largest=False).values
    return (1 - (hardest[:, None] - clean[None, :])).clamp_min(0).pow(2).mean()


class WithPartialAuc(nn.Module):
    """A base loss plus ``weight`` times :func:`pauc_tail_loss`."""

    def __init__(self, base: nn.Module, weight: float, share: float, pit_index: int):
        super().__init__()
        self.base, self.weight, self.share, self.pit_index = base, weight, share, pit_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tail = pauc_tail_loss(logits, target, self.pit_index, self.share)
        return self.base(logits, target) + self.weight * tail


def make_loss(t: TrainConfig, labels: torch.Tensor, n_classes: int, pit_index: int) -> nn.Module:
    """The loss ``train.loss``, ``train.balance``, ``train.pit_weight`` and friends describe."""
    base = _base_loss(t, labels, n_classes, pit_index)
    if t.pauc_weight:
        return WithPartialAuc(base, t.pauc_weight, t.pauc_pits, pit_index)
    return base


def _base_loss(t: TrainConfig, labels: torch.Tensor, n_classes: int, pit_index: int) -> nn.Module:
    weight = class_weights(labels, n_classes) if t.balance == "loss" else None
    if t.pit_weight != 1.0:
        weight = torch.ones(n_classes) if weight is None else weight.clone()
        weight[pit_index] *= t.pit_weight
    if t.loss == "ce":  # torch's own: class weights, label smoothing and soft targets
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    return WeightedLoss(weight, t.focal_gamma, t.label_smoothing)
