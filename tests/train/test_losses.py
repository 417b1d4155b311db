"""The training loss: cross-entropy with pit weight and focal loss, on hard and soft targets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pitguard.config import TrainConfig
from pitguard.train.losses import WeightedLoss, class_weights, make_loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 2, generator=g) * 3, torch.randint(0, 2, (32,), generator=g)


def test_plain_config_is_torch_cross_entropy(batch):
    loss = make_loss(TrainConfig(), batch[1], 2, pit_index=1)
    assert isinstance(loss, nn.CrossEntropyLoss)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_loss_without_focus_is_weighted_cross_entropy(batch, smoothing):
    logits, labels = batch
    weight = torch.tensor([1.0, 3.0])
    ours = WeightedLoss(weight, gamma=0.0, label_smoothing=smoothing)(logits, labels)
    if smoothing:  # torch spreads smoothing over the weighted mean differently; hard labels agree
        want = nn.CrossEntropyLoss(weight=weight)(logits, labels)
        assert not torch.isclose(ours, want)
        return
    want = nn.CrossEntropyLoss(weight=weight)(logits, labels)
    assert torch.isclose(ours, want, atol=1e-6)


def test_pit_weight_multiplies_the_pit_class_only(batch):
    logits, labels = batch
    t = dataclasses.replace(TrainConfig(), pit_weight=4.0, balance="loss")
    loss = make_loss(t, labels, 2, pit_index=1)
    want = class_weights(labels, 2) * torch.tensor([1.0, 4.0])
    assert torch.allclose(loss.weight, want)
    assert torch.isclose(loss(logits, labels), nn.CrossEntropyLoss(weight=want)(logits, labels))


def test_focal_loss_discounts_crops_already_right():
    logits = torch.tensor([[4.0, -4.0], [0.2, -0.2]])  # one sure and right, one in doubt
    labels = torch.tensor([0, 0])
    focal = WeightedLoss(None, gamma=2.0, label_smoothing=0.0)
    ce = nn.CrossEntropyLoss(reduction="none")(logits, labels)
    p = torch.softmax(logits, 1)[:, 0]
    assert torch.isclose(focal(logits, labels), ((1 - p) ** 2 * ce).mean())
    assert (1 - p[0]) ** 2 * ce[0] < 1e-3 * ce[0]  # the sure crop nearly drops out


def test_focal_loss_reads_soft_targets(batch):
    logits, labels = batch
    hard = torch.nn.functional.one_hot(labels, 2).float()
    loss = WeightedLoss(torch.tensor([1.0, 2.0]), gamma=2.0, label_smoothing=0.0)
    assert torch.isclose(loss(logits, labels), loss(logits, hard))
    mixed = 0.7 * hard + 0.3 * hard.flip(0)
    value = loss(logits, mixed)
    assert torch.isfinite(value) and value > 0


def test_unknown_loss_is_refused_naming_the_key():
    from pitguard.config import config_from_dict
    from pitguard.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.loss"):
        config_from_dict({"train": {"loss": "hinge"}})


def test_partial_auc_term_pulls_only_the_hardest_pits_above_the_clean_crops():
    from pitguard.train.losses import pauc_tail_loss

    # pits scored 2, -1, 3, 0.5; clean crops -2 and 1 (two classes: score = sigmoid(z1 - z0))
    margin = torch.tensor([2.0, -1.0, 3.0, 0.5, -2.0, 1.0], requires_grad=True)
    logits = torch.stack([torch.zeros(6), margin], dim=1)
    y = torch.tensor([1, 1, 1, 1, 0, 0])
    loss = pauc_tail_loss(logits, y, pit_index=1, share=0.5)  # the 2 lowest pits: -1 and 0.5
    s = torch.sigmoid(margin.detach())
    pairs = [(1 - (s[p] - s[c])) ** 2 for p in (1, 3) for c in (4, 5)]
    assert float(loss) == pytest.approx(float(sum(pairs) / 4), rel=1e-6)
    loss.backward()
    assert margin.grad[[0, 2]].abs().sum() == 0  # the pits already scored high are left alone
    assert (margin.grad[[1, 3]] < 0).all()  # descending the loss raises the hard pits' scores
    assert (margin.grad[[4, 5]] > 0).all()  # and lowers the clean crops'


def test_partial_auc_term_is_added_by_its_weight_and_needs_both_classes(batch):
    from pitguard.train.losses import WithPartialAuc, pauc_tail_loss

    logits, y = batch
    t = dataclasses.replace(TrainConfig(), loss="focal", pauc_weight=0.5, pauc_pits=0.2)
    loss = make_loss(t, y, 2, pit_index=1)
    assert isinstance(loss, WithPartialAuc) and isinstance(loss.base, WeightedLoss)
    tail = pauc_tail_loss(logits, y, 1, 0.2)
    assert float(loss(logits, y)) == pytest.approx(float(loss.base(logits, y) + 0.5 * tail))
    only_clean = torch.zeros(8, dtype=torch.long)
    assert float(pauc_tail_loss(logits[:8], only_clean, 1, 0.2)) == 0.0
    soft = torch.nn.functional.one_hot(y, 2).float() * 0.8 + 0.1  # soft targets: larger share
    assert float(pauc_tail_loss(logits, soft, 1, 0.2)) == pytest.approx(float(tail))
