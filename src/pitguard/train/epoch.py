"""One epoch of training and one validation pass, with the checks ``train`` makes around them."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from timm.data.mixup import mixup_target
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from pitguard.config import Config
from pitguard.core.devices import cpu_has_native_bf16
from pitguard.core.errors import Diverged
from pitguard.data.augment import mixup
from pitguard.models.nets import PitguardNet, SingleView, infer_logits
from pitguard.models.runfolder import kept_val_accuracy
from pitguard.train.distill import distillation_loss

_log = logging.getLogger(__name__)


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast for the training step: on CUDA, and on CPUs with native bf16."""
    if not cfg.train.amp:
        return False
    return device.type == "cuda" or cpu_has_native_bf16()


class TrainForward(nn.Module):
    """The training forward (normalise, then the backbone) as one module DDP can wrap."""

    def __init__(self, net: PitguardNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.backbone(self.net.backbone_input(x))


@dataclass
class Stepper:
    """What one optimisation step needs, built once by ``train`` and handed to each epoch."""

    net: PitguardNet
    ema: ModelEmaV3 | None
    augment: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: Config
    device: torch.device
    teacher: nn.Module | None = None  # a trained run's network whose soft labels are learned too
    on_step: Any = None  # called as on_step(step, loss, lr) after each step (live tracking)
    forward: nn.Module | None = None  # the step's forward; train wraps it in DDP under torchrun
    show: bool = True  # the progress bar (rank 0 only under torchrun)
    bf16: bool | None = None  # bf16 autocast for the step; None: decided here (use_bf16)

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = TrainForward(self.net)
        if self.bf16 is None:
            self.bf16 = use_bf16(self.cfg, self.device)

    @property
    def kept(self) -> PitguardNet:
        """The network validated and saved: the EMA's average when there is one."""
        return cast(PitguardNet, self.ema.module) if self.ema is not None else self.net


def _batch(st: Stepper, x: torch.Tensor, mix_alpha: float):
    """One batch augmented (and blended): the crops the step reads, the weight of each crop's own
    label (mixup blends in a partner's) and the teacher's logits on the same crops (or None)."""
    lam, teacher_logits = 1.0, None
    with torch.no_grad():
        # Without a teacher, channels and pooling go first: fewer pixels to warp. A teacher
        # reads its own channels and crop of the same augmented (and blended) crops.
        x = st.augment(st.net.select(x) if st.teacher is None else x)
        if mix_alpha:
            x, lam = mixup(x, mix_alpha)
        if st.teacher is not None:
            teacher_logits = st.teacher(x).float()
            x = st.net.select(x)
    if st.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, lam, teacher_logits


def _forward_loss(st: Stepper, x: torch.Tensor, y: torch.Tensor, lam: float, teacher_logits):
    """The step's logits, its target (blended under mixup) and its loss."""
    cfg = st.cfg
    with torch.autocast(st.device.type, dtype=torch.bfloat16, enabled=bool(st.bf16)):
        logits = cast(nn.Module, st.forward)(x)
        target = y if lam == 1.0 else mixup_target(y, logits.shape[1], lam)
        loss = st.loss_fn(logits.float(), target)
        if teacher_logits is not None:
            loss = distillation_loss(
                logits.float(),
                teacher_logits,
                loss,
                cfg.train.distill_alpha,
                cfg.train.distill_temperature,
            )
    return logits, target, loss


def train_one_epoch(
    st: Stepper, batches, images: torch.Tensor, labels: torch.Tensor, step: int, desc: str
) -> tuple[int, dict]:
    """Step once per batch of indices; the step count after, and the epoch's train stats."""
    net, ema, cfg, device = st.net, st.ema, st.cfg, st.device
    net.train()
    if cfg.model.freeze_backbone:
        net.backbone.eval()
        cast(Any, net.backbone).get_classifier().train()
    st.augment.train()
    seen = correct = 0
    loss_sum = 0.0
    start = time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, mininterval=1.0, disable=None if st.show else True)
    mix_alpha = cfg.augment.mixup_alpha if cfg.augment.enabled else 0.0
    for idx in bar:
        x = images[idx].to(device, non_blocking=True).float().div_(255)
        y = labels[idx].to(device, non_blocking=True)
        x, lam, teacher_logits = _batch(st, x, mix_alpha)
        logits, target, loss = _forward_loss(st, x, y, lam, teacher_logits)
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        st.optimizer.step()
        step += 1
        st.scheduler.step_update(step)
        if st.on_step is not None:
            st.on_step(step, float(loss.detach()), st.optimizer.param_groups[-1]["lr"])
        if ema is not None:
            ema.update(net, step=step)
        seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
        hard = y if lam == 1.0 else target.argmax(1)  # a blend counts as its larger share
        correct += int((logits.argmax(1) == hard).sum())
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix(
            loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}"
        )
    elapsed = time.perf_counter() - start
    return step, {
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "images_per_s": seen / elapsed,
    }


# A kept epoch this far below the run's best val accuracy is reported: far beyond the epoch-to-epoch
# noise of a few hundred val crops (1-2 points), well within what a diverged run loses.
KEPT_DROP_WARN = 0.05


def check_finite_loss(stats: dict, epoch: int, cfg: Config) -> None:
    """Stop a run whose train or val loss went NaN or infinite, before that epoch is saved."""
    bad = [k for k in ("train_loss", "val_loss") if k in stats and not math.isfinite(stats[k])]
    if not bad:
        return
    kept = f"checkpoints/last.pt still holds epoch {epoch - 1}" if epoch > 1 else "nothing saved"
    raise Diverged(
        f"the {bad[0].replace('_', ' ')} became {stats[bad[0]]} in epoch {epoch}: training diverged "
        f"({kept}); train again into a new --out with a lower peak rate than "
        f"train.lr={cfg.train.lr:g}, e.g. --set train.lr={cfg.train.lr / 2:g}"
    )


def kept_epoch_warning(history: list[dict], kept_epoch: int, say=None) -> str | None:
    """Says so (and returns the words) when the kept epoch scored far below the run's best on val:
    a run that diverged late and keeps its last epoch would otherwise ship without a word."""
    kept = kept_val_accuracy(history, kept_epoch)
    if kept is None:
        return None
    best = max(
        (row for row in history if row.get("val_accuracy") is not None),
        key=lambda row: row["val_accuracy"],
    )
    drop = best["val_accuracy"] - kept
    if drop <= KEPT_DROP_WARN:
        return None
    text = (
        f"the kept epoch {kept_epoch} scored {100 * kept:.1f}% on val, "
        f"{100 * drop:.1f} points below epoch {best['epoch']}'s {100 * best['val_accuracy']:.1f}%: "
        "the run may have diverged; train again with a lower train.lr, or keep the best epoch "
        "on val with --set train.select_metric=val_accuracy"
    )
    (say or _log.warning)(f"warning: {text}")
    return text


def validate(net: PitguardNet, images, labels, device, batch_size: int, dist=None) -> dict:
    """Val loss, accuracy and balanced accuracy on one view of each crop (test-time views are
    the finished model's); under torchrun the ranks share the scoring."""
    one = SingleView(net)

    def score(part: torch.Tensor) -> torch.Tensor:
        return infer_logits(one, part, device, batch_size)

    logits = dist.gather_logits(score, images) if dist is not None else score(images)
    y = labels.numpy()
    loss = float(nn.functional.cross_entropy(logits, labels))
    pred = logits.argmax(1).numpy()
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return {
        "val_loss": loss,
        "val_accuracy": float((pred == y).mean()),
        "val_balanced_accuracy": float(np.mean(recalls)),
    }
