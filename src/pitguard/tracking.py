"""Live experiment tracking: TensorBoard event files in RUN/tensorboard, written as a run trains.

Watch a run while it trains with ``tensorboard --logdir runs/``: per-step loss and learning
rate, per-epoch train and val metrics, the augmentation grid (what training saw) and the val
confusion matrix of the model training ended with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EPOCH_SCALARS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "lr",
    "images_per_s",
)


class Tracker:
    """One TensorBoard writer per run folder; a resumed run appends to the same event files."""

    def __init__(self, run: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(run) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, epoch: int, stats: dict) -> None:
        for key in EPOCH_SCALARS:
            if key in stats:
                self.writer.add_scalar(f"epoch/{key}", float(stats[key]), epoch)
        self.writer.flush()  # readable while the run goes on

    def images(self, tag: str, batch: torch.Tensor) -> None:
        """Float images (N, 3, H, W) in [0, 1]."""
        self.writer.add_images(tag, batch.clamp(0, 1), 0)
        self.writer.flush()

    def confusion(self, net, images, labels, classes, device) -> None:
        """The val confusion matrix of the model training ended with, as a figure."""
        from sklearn.metrics import confusion_matrix

        from pitguard.models import infer_logits
        from pitguard.plots import confusion_figure

        pred = infer_logits(net, images, device).argmax(1)
        cm = confusion_matrix(labels.cpu().numpy(), pred.numpy(), labels=range(len(classes)))
        fig = confusion_figure(cm, list(classes))
        fig.canvas.draw()  # the Agg canvas plots.py gave it: no pyplot involved
        rgba = np.asarray(fig.canvas.buffer_rgba())
        self.writer.add_image("val/confusion_matrix", rgba[..., :3], 0, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
