"""The training loss: cross-entropy or focal loss, with the pit class weighted up if asked.

The line's decision is set by the lowest-scored pits: at a 1% pit-miss bound, the one or two
percent of pits the model scores lowest decide how many crops go to review. Two levers aim the
loss at them: ``train.pit_weight`` multiplies the pit class's weight, and ``train.loss: focal``
(Lin et al., 2017) scales each crop's loss by ``(1 - p_true) ** gamma``, so crops already scored
right count less and the hard ones more. Both take soft targets (mixup, label smoothing).
"""

from __future__ import annotations

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


def make_loss(t: TrainConfig, labels: torch.Tensor, n_classes: int, pit_index: int) -> nn.Module:
    """The loss ``train.loss``, ``train.balance``, ``train.pit_weight`` and friends describe."""
    weight = class_weights(labels, n_classes) if t.balance == "loss" else None
    if t.pit_weight != 1.0:
        weight = torch.ones(n_classes) if weight is None else weight.clone()
        weight[pit_index] *= t.pit_weight
    if t.loss == "ce":  # torch's own: class weights, label smoothing and soft targets
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    return WeightedLoss(weight, t.focal_gamma, t.label_smoothing)
