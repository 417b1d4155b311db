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
