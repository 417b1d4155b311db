"""Live experiment tracking: TensorBoard event files in RUN/tensorboard, and MLflow when asked.

Watch a run while it trains with ``tensorboard --logdir runs/``: per-step loss and learning
rate, per-epoch train and val metrics, the augmentation grid (what training saw) and the val
confusion matrix of the model training ended with. With ``train.tracking: mlflow`` the same
goes to an MLflow run (``MLFLOW_TRACKING_URI``, else ``sqlite:///`` RUN's parent/mlflow.db),
with the config as parameters; a resumed run continues its MLflow run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json, write_json

EPOCH_SCALARS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "lr",
    "images_per_s",
)


MLFLOW_RECORD = "mlflow.json"  # in the run folder: the tracking URI and MLflow run id


def require_mlflow() -> None:
    """Stop before any work when MLflow is asked for and not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise PitguardError(
            "train.tracking=mlflow: MLflow is not installed; install it with "
            "pip install 'pitguard[mlflow]' (or mlflow-skinny), or drop --tracking mlflow"
        ) from None


class MlflowSink:
    """One MLflow run per run folder: config as parameters, metrics sent once an epoch."""

    def __init__(self, run: Path, params: dict) -> None:
        from mlflow.tracking import MlflowClient

        record_path = run / MLFLOW_RECORD
        record = read_json(record_path) if record_path.is_file() else None
        uri = (record or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        uri = uri or f"sqlite:///{run.absolute().parent / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        if record:
            self.run_id = record["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = str(params.get("recipe") or "pitguard")
            found = self.client.get_experiment_by_name(name)
            experiment = (
                found.experiment_id
                if found
                else self.client.create_experiment(
                    name, artifact_location=(run.absolute().parent / "mlartifacts").as_uri()
                )
            )
            self.run_id = self.client.create_run(experiment, run_name=run.name).info.run_id
            flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
            self.client.log_batch(self.run_id, params=_params(flat))
            write_json(record_path, {"tracking_uri": uri, "run_id": self.run_id})
        self.pending: list = []

    def metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self.pending.append(Metric(key, float(value), _now_ms(), step))

    def flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []

    def image(self, array: np.ndarray, name: str) -> None:
        self.client.log_image(self.run_id, array, artifact_file=name)

    def close(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status="FINISHED")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _params(flat: dict) -> list:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in flat.items()]


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


class Tracker:
    """One TensorBoard writer per run folder (a resumed run appends to the same event files),
    and an MLflow run when the config asks for one."""

    def __init__(self, run: Path, config: dict | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(run) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.folder))
        wants = (config or {}).get("train", {}).get("tracking") == "mlflow"
        self.mlflow = MlflowSink(Path(run), config or {}) if wants else None

    def step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)
        if self.mlflow:
            self.mlflow.metric("step/loss", loss, step)
            self.mlflow.metric("step/lr", lr, step)

    def epoch(self, epoch: int, stats: dict) -> None:
        for key in EPOCH_SCALARS:
            if key in stats:
                self.writer.add_scalar(f"epoch/{key}", float(stats[key]), epoch)
                if self.mlflow:
                    self.mlflow.metric(f"epoch/{key}", float(stats[key]), epoch)
        self.writer.flush()  # readable while the run goes on
        if self.mlflow:
            self.mlflow.flush()

    def images(self, tag: str, batch: torch.Tensor) -> None:
        """Float images (N, 3, H, W) in [0, 1]."""
        self.writer.add_images(tag, batch.clamp(0, 1), 0)
        self.writer.flush()
        if self.mlflow:
            grid = batch.clamp(0, 1).permute(0, 2, 3, 1).numpy()
            self.mlflow.image(np.concatenate(list(grid), axis=1), tag.replace("/", "_") + ".png")

    def confusion(self, net, images, labels, classes, device) -> None:
        """The val confusion matrix of the model training ended with, as a figure."""
        from sklearn.metrics import confusion_matrix

        from pitguard.evaluate.plots import confusion_figure
        from pitguard.models.nets import infer_logits

        pred = infer_logits(net, images, device).argmax(1)
        cm = confusion_matrix(labels.cpu().numpy(), pred.numpy(), labels=range(len(classes)))
        fig = confusion_figure(cm, list(classes))
        fig.canvas.draw()  # the Agg canvas plots.py gave it: no pyplot involved
        rgba = np.asarray(fig.canvas.buffer_rgba())
        self.writer.add_image("val/confusion_matrix", rgba[..., :3], 0, dataformats="HWC")
        self.writer.flush()
        if self.mlflow:
            self.mlflow.image(np.ascontiguousarray(rgba[..., :3]), "val_confusion_matrix.png")

    def close(self) -> None:
        self.writer.close()
        if self.mlflow:
            self.mlflow.close()


class NullTracker(Tracker):
    """The tracker of ranks other than 0 under torchrun: records nothing."""

    def __init__(self) -> None:
        self.mlflow = None

    def step(self, step: int, loss: float, lr: float) -> None:
        pass

    def epoch(self, epoch: int, stats: dict) -> None:
        pass

    def images(self, tag: str, batch: torch.Tensor) -> None:
        pass

    def confusion(self, net, images, labels, classes, device) -> None:
        pass

    def close(self) -> None:
        pass
