"""Optimisation for a recipe: parameter groups, learning-rate schedule, class balance."""

from __future__ import annotations

import logging
from typing import Any

import timm.optim
import torch
from timm.scheduler import CosineLRScheduler, StepLRScheduler

from pitguard.config import Config
from pitguard.models.nets import PitguardNet, classifier_params
from pitguard.train.losses import class_weights


def make_optimizer(cfg: Config, net: PitguardNet):
    """Parameter groups: backbone and head (differential learning rates), no decay on norms/biases."""
    head = {id(p) for p in classifier_params(net.backbone)}
    groups = []
    for is_head in (False, True):
        if cfg.model.freeze_backbone and not is_head:
            continue
        lr = cfg.train.lr * (1.0 if is_head else cfg.train.backbone_lr_scale)
        params = [
            p for p in net.backbone.parameters() if p.requires_grad and (id(p) in head) == is_head
        ]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": cfg.train.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    kwargs: dict[str, Any] = (
        {"momentum": cfg.train.momentum} if cfg.train.optimizer == "sgd" else {}
    )
    return timm.optim.create_optimizer_v2(
        groups, opt=cfg.train.optimizer, lr=cfg.train.lr, **kwargs
    )


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int, epochs: int | None = None):
    """The recipe's schedule over ``epochs`` (default ``train.epochs``), stepped per batch.

    The cosine follows the warmup and reaches its minimum on the last step.
    """
    t = cfg.train
    total = (epochs or t.epochs) * steps_per_epoch
    if t.schedule == "cosine":
        warmup = min(int(t.warmup_epochs * steps_per_epoch), total - 1)
        if total - warmup < 2:  # one step of cosine: timm warns it has no effect, and it is right
            logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)
        return CosineLRScheduler(
            optimizer,
            t_initial=total - warmup,
            lr_min=t.lr * 1e-3,
            warmup_t=warmup,
            warmup_lr_init=t.lr * 1e-2,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    if t.schedule == "step":
        return StepLRScheduler(
            optimizer,
            decay_t=t.step_epochs * steps_per_epoch,
            decay_rate=t.step_gamma,
            t_in_epochs=False,
        )
    return StepLRScheduler(optimizer, decay_t=total + 1, decay_rate=1.0, t_in_epochs=False)


def epoch_order(labels: torch.Tensor, balance: str, generator: torch.Generator) -> torch.Tensor:
    n = len(labels)
    if balance == "sampler":
        weights = class_weights(labels, int(labels.max()) + 1)[labels]
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator)
