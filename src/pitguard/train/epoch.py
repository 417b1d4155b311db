"""One epoch of training and one validation pass: the two helpers ``train`` calls each epoch."""

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
from torch.nn import functional as F
from tqdm import tqdm

from pitguard.config import Config
from pitguard.core.devices import cpu_has_native_bf16
from pitguard.core.errors import Diverged, PitguardError
from pitguard.core.seeding import rng_state, set_rng_state
from pitguard.data.augment import mixup
from pitguard.models.nets import PitguardNet, SingleView, infer_logits
from pitguard.models.runfolder import kept_val_accuracy, load_run
from pitguard.train.budget import EpochPlan, plan_epochs, time_epoch

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

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = TrainForward(self.net)


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


def train_one_epoch(
    st: Stepper, batches, images: torch.Tensor, labels: torch.Tensor, step: int, desc: str
) -> tuple[int, dict]:
    net, ema, augment, cfg, device = st.net, st.ema, st.augment, st.cfg, st.device
    net.train()
    if cfg.model.freeze_backbone:
        net.backbone.eval()
        cast(Any, net.backbone).get_classifier().train()
    augment.train()
    use_amp = use_bf16(cfg, device)
    seen = correct = 0
    loss_sum = 0.0
    start = time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, mininterval=1.0, disable=None if st.show else True)
    mix_alpha = cfg.augment.mixup_alpha if cfg.augment.enabled else 0.0
    for idx in bar:
        x = images[idx].to(device, non_blocking=True).float().div_(255)
        y = labels[idx].to(device, non_blocking=True)
        lam = 1.0  # the weight of each crop's own label (mixup blends in a partner's)
        with torch.no_grad():
            # Without a teacher, channels and pooling go first: fewer pixels to warp. A teacher
            # reads its own channels and crop of the same augmented (and blended) crops.
            x = augment(net.select(x) if st.teacher is None else x)
            if mix_alpha:
                x, lam = mixup(x, mix_alpha)
            if st.teacher is not None:
                teacher_logits = st.teacher(x).float()
                x = net.select(x)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = cast(nn.Module, st.forward)(x)
            target = y if lam == 1.0 else mixup_target(y, logits.shape[1], lam)
            loss = st.loss_fn(logits.float(), target)
            if st.teacher is not None:
                loss = distillation_loss(
                    logits.float(),
                    teacher_logits,
                    loss,
                    cfg.train.distill_alpha,
                    cfg.train.distill_temperature,
                )
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


def plan_for_budget(
    cfg: Config, probe: Stepper, images, labels, val_part, steps_per_epoch, shuffle, clock, dist
) -> EpochPlan:
    """Time a few steps of ``probe`` (a copy of the model); the random streams are left as they
    were. Under torchrun each rank times its share of the batches and all take the slowest."""
    saved = rng_state(shuffle)
    size = cfg.train.batch_size
    order = torch.randperm(len(labels), generator=shuffle)
    batches = [order[i : i + size] for i in range(0, len(order) - size + 1, size)] or [order]
    done = 0

    def run_steps(n: int) -> None:
        nonlocal done
        chosen = [dist.shard(batches[(done + i) % len(batches)]) for i in range(n)]
        train_one_epoch(probe, chosen, images, labels, done, "timing")
        done += n

    def run_validation() -> None:
        if len(val_part):
            share = slice(dist.rank, None, dist.world)
            validate(
                probe.net,
                val_part.images[share],
                val_part.labels[share],
                probe.device,
                cfg.train.eval_batch_size,
            )

    seconds = dist.slowest(time_epoch(run_steps, run_validation, steps_per_epoch, clock))
    set_rng_state(saved, shuffle)
    return plan_epochs(cfg.train.max_minutes, cfg.train.epochs, seconds)
