"""Oversampling the hardest pits (``train.hard_pits``).

After warmup, each epoch draws its batches with replacement (one draw per train crop in all),
and the share ``train.hard_pits`` of the train pits that the kept model (the EMA, where there is
one) scores lowest at the epoch's start is drawn ``train.hard_pit_weight`` times as often as any
other crop. The line's review rate is set by those pits: the lowest-scored one or two percent of
them fix the lower threshold. The scores are computed again each epoch from the model itself, so
nothing but the checkpoint is needed to resume, and under torchrun the ranks share the scoring
and draw one order.
"""

from __future__ import annotations

import torch

from pitguard.models.nets import SingleView, infer_logits
from pitguard.train.losses import class_weights
from pitguard.train.optim import epoch_order
from pitguard.train.setup import Setup


def epoch_draw(s: Setup, epoch: int) -> torch.Tensor:
    """The crops (train-part indices) of one epoch's batches, in order."""
    t = s.cfg.train
    labels = s.train_part.labels
    if not t.hard_pits or epoch <= t.warmup_epochs:
        return epoch_order(labels, t.balance, s.shuffle)
    pit = s.crops.classes.index("pit")
    weights = hard_pit_weights(s, pit)
    if t.balance == "sampler":  # as epoch_order balances the classes
        weights *= class_weights(labels, int(labels.max()) + 1)[labels].double()
    return torch.multinomial(weights, len(labels), replacement=True, generator=s.shuffle)


def hard_pit_weights(s: Setup, pit: int) -> torch.Tensor:
    """Drawing weight per train crop: ``train.hard_pit_weight`` for the hardest pits, 1 else."""
    t = s.cfg.train
    labels = s.train_part.labels
    pits = torch.nonzero(labels == pit).flatten()
    weights = torch.ones(len(labels), dtype=torch.float64)
    if not len(pits):
        return weights
    one = SingleView(s.stepper.kept)

    def score(part: torch.Tensor) -> torch.Tensor:
        return infer_logits(one, part, s.device, t.eval_batch_size)

    logits = s.dist.gather_logits(score, s.images[pits.to(s.images.device)])
    p_pit = logits.double().softmax(1)[:, pit]
    k = max(1, round(t.hard_pits * len(pits)))
    hardest = pits[torch.argsort(p_pit, stable=True)[:k]]
    weights[hardest] = t.hard_pit_weight
    return weights
