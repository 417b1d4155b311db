"""Batched augmentation on the training device, per-sample random parameters (kornia)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from pitguard.config import AugmentConfig


class ChannelJitter(nn.Module):
    """Per-sample, per-channel gain and contrast on cherry pixels only.

    The HDR exposures drift independently, so each channel gets its own factor; the masked
    background and the constant green channel stay exactly zero.
    """

    def __init__(self, brightness: float, contrast: float):
        super().__init__()
        self.brightness = brightness
        self.contrast = contrast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.brightness == 0 and self.contrast == 0):
            return x
        n, c = x.shape[:2]
        mask = (x.amax(dim=1, keepdim=True) > 0).to(x.dtype)
        area = mask.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        mean = (x * mask).sum(dim=(2, 3), keepdim=True) / area
        gain = 1 + (torch.rand(n, c, 1, 1, device=x.device) * 2 - 1) * self.brightness
        contrast = 1 + (torch.rand(n, c, 1, 1, device=x.device) * 2 - 1) * self.contrast
        out = (mean + (x - mean) * contrast) * gain
        return (out * mask).clamp(0, 1)


def build_augment(cfg: AugmentConfig) -> nn.Module:
    """The training-time augmentation as one module; identity when disabled."""
    if not cfg.enabled:
        return nn.Identity()
    ops: list[Any] = []  # kornia augmentations
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        ops.append(K.RandomVerticalFlip(p=cfg.vflip))
    if cfg.rotate or cfg.translate or cfg.scale_min != 1 or cfg.scale_max != 1:
        ops.append(
            K.RandomAffine(
                degrees=cfg.rotate,
                translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                scale=(cfg.scale_min, cfg.scale_max),
                padding_mode="zeros",  # what leaves the crop becomes masked background
                p=1.0,
            )
        )
    if cfg.motion_blur_p:
        # The conveyor moves the cherries: a directional blur at any angle.
        ops.append(
            K.RandomMotionBlur(
                kernel_size=cfg.motion_kernel, angle=180.0, direction=0.5, p=cfg.motion_blur_p
            )
        )
    if cfg.blur_p:
        ops.append(
            K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, cfg.blur_sigma), p=cfg.blur_p)
        )
    if cfg.erase_p:
        ops.append(K.RandomErasing(scale=(0.02, 0.1), ratio=(0.3, 3.3), value=0.0, p=cfg.erase_p))
    jitter = ChannelJitter(cfg.brightness, cfg.contrast)
    return nn.Sequential(K.AugmentationSequential(*ops), jitter) if ops else jitter


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Mixup (Zhang et al., 2018) in timm's batch form: crop i of the shuffled batch blended with
    crop n-1-i, one weight lam ~ Beta(alpha, alpha) for the batch. The labels are blended alike
    by ``timm.data.mixup.mixup_target(y, num_classes, lam)``.

    timm's own ``Mixup`` refuses odd batches; an epoch's last batch may be odd, and its middle
    crop is then blended with itself. numpy's generator draws lam: seeded and checkpointed.
    """
    lam = float(np.random.beta(alpha, alpha))
    return x * lam + x.flip(0) * (1 - lam), lam


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """A PNG grid of (augmented) crops in [0, 1], so a person can see what training saw."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images[: nrow * nrow].float().cpu(), path, nrow=nrow, padding=2, pad_value=0.5)


def preview(cfg, net, images: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
    """What training sees: uint8 crops through the net's channel choice, the augmentation and
    mixup, the chosen channels put back in their RGB places so a person can read the picture."""
    with torch.no_grad():
        seen = build_augment(cfg).train()(net.select(images.float().div(255)))
        if cfg.enabled and cfg.mixup_alpha:
            seen = mixup(seen, cfg.mixup_alpha)[0]
    out = torch.zeros(seen.shape[0], 3, *seen.shape[2:], dtype=seen.dtype)
    out[:, list(channels)] = seen
    return out
