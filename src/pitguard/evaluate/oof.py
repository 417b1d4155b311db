"""Out-of-fold scores of a cross-fitted run (``oof.csv``): each crop scored by the fold model
that never trained on it. This module is the one reader and writer of that file."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_write
from pitguard.models.runfolder import RunPaths


@dataclass
class OofScores:
    """Out-of-fold logits of a cross-fitted run: each crop scored by the model that never saw it."""

    paths: list[str]  # as written, relative to the run folder
    labels: np.ndarray  # class indices of ``classes``
    folds: np.ndarray  # the fold (1..K) each crop was held out in
    logits: np.ndarray  # (N, C) float64
    classes: tuple[str, ...]

    @property
    def pit_index(self) -> int:
        return self.classes.index("pit")


def write_oof(run: Path, scores: OofScores) -> None:
    """``oof.csv``: path,label,fold, one logit column per class, and p(pit) before calibration
    (softmax at temperature 1, named so: the calibrated p_pit is the policy's)."""
    paths = RunPaths(run)
    p_pit = torch.softmax(torch.from_numpy(scores.logits), dim=1)[:, scores.pit_index].numpy()

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                [
                    "path",
                    "label",
                    "fold",
                    *(f"logit_{c}" for c in scores.classes),
                    "p_pit_uncalibrated",
                ]
            )
            for i, path in enumerate(scores.paths):
                writer.writerow(
                    [path, scores.classes[scores.labels[i]], int(scores.folds[i])]
                    + [repr(float(v)) for v in scores.logits[i]]
                    + [f"{p_pit[i]:.6f}"]
                )

    atomic_write(paths.oof, write)


def read_oof(run: str | Path) -> OofScores:
    """The run's ``oof.csv``; a run without folds gets an error that says how to make one."""
    path = RunPaths(Path(run)).oof
    if not path.is_file():
        raise PitguardError(
            f"{run}: no out-of-fold scores ({path.name}); train the run with --folds K "
            "(for example: pitguard train --recipe cpu-fast --data DIR --out RUN --folds 5)"
        )
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        classes = tuple(f[len("logit_") :] for f in fields if f.startswith("logit_"))
        rows = list(reader)
    if "pit" not in classes or not rows:
        raise PitguardError(f"{path}: not an out-of-fold score file (no pit logits or no rows)")
    try:
        labels = np.array([classes.index(r["label"]) for r in rows])
        logits = np.array([[float(r[f"logit_{c}"]) for c in classes] for r in rows])
        folds = np.array([int(r["fold"]) for r in rows])
    except (ValueError, KeyError) as err:
        raise PitguardError(f"{path}: damaged ({err}); train the run's folds again") from err
    return OofScores([r["path"] for r in rows], labels, folds, logits, classes)
