"""Distillation: a teacher run loaded to learn from, and the loss blending in its soft labels."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from pitguard.config import Config
from pitguard.core.errors import PitguardError
from pitguard.models.nets import SingleView
from pitguard.models.runfolder import load_run

_log = logging.getLogger(__name__)


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """(1 - alpha) * the hard-label loss + alpha * T^2 * KL(teacher || student) at temperature T.

    T^2 keeps the soft term's gradients on the hard term's scale whatever the temperature.
    """
    student = F.log_softmax(logits / temperature, dim=1)
    target = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(student, target, log_target=True, reduction="batchmean") * temperature**2
    return (1 - alpha) * hard_loss + alpha * soft


def load_teacher(cfg: Config, classes: tuple[str, ...], device: torch.device) -> nn.Module:
    """The teacher run's network, frozen, checked to speak the same classes and crop size. It
    reads one view of each augmented batch, so test-time views do not multiply its cost."""
    run = load_run(cfg.train.teacher)  # type: ignore[arg-type]
    if run.classes != tuple(classes):
        raise PitguardError(
            f"train.teacher={cfg.train.teacher}: its classes {', '.join(run.classes)} differ from "
            f"the data's {', '.join(classes)}; distil from a run trained on the same classes"
        )
    if run.net.contract.size != cfg.data.size:
        raise PitguardError(
            f"train.teacher={cfg.train.teacher}: it reads {run.net.contract.size} px crops, the "
            f"data has {cfg.data.size} px; distil from a run on crops of the same size"
        )
    for param in run.net.parameters():
        param.requires_grad_(False)
    _log.info("teacher: %s (%s), alpha %s", run.run, run.model_name, cfg.train.distill_alpha)
    return SingleView(run.net).eval().to(device)
