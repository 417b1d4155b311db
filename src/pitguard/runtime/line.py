"""The line's classifier stage: the crops of one frame in, the line's label codes out.

The plant's detector (``ai_detector3.py``) classifies each frame's crops as one
(N, 3, 128, 128) float32 batch in [0, 1] and marks each cherry with a code: clean 1, pit 2,
maybe 5 (side 3 and stem 6 come from other stages), then fills ``confidence_probs`` from the
softmax. :class:`LineStage` is that step with a pitguard bundle: the calibrated decision and the
input guard instead of an argmax.

A frame never raises. A frame that cannot be scored as it is (wrong layout, values outside
[0, 1], NaN or inf, more crops than ``max_crops``, a runtime failure) answers every one of its
crops with maybe, and says why in :attr:`LineResult.error`: a classifier that raised would take
the detector, and the robots that pick, down with it. Given a torch tensor (CPU or CUDA), the
stage answers with torch tensors on the same device, so the detector's next lines
(``torch.where(boxes[:, 0] < 125, 3, labels)``, ``.cpu().numpy()``) run unchanged; torch is
imported only then.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.runtime.classifier import Classification, Classifier
from pitguard.runtime.frames import CHANNELS

LINE_CODES = {"clean": 1, "pit": 2, "maybe": 5}  # the detector's label codes
MAYBE_CODE = LINE_CODES["maybe"]
# the columns of the detector's confidence_probs: its ResNet50's softmax over these classes
PROB_COLUMNS = ("clean", "maybe", "pit")
MAX_CROPS = 256  # a frame holds 7-16 cherries; far more is a broken sender, refused unscored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineResult:
    """One frame's answer, one entry per crop in input order.

    ``codes`` and ``confidence_probs`` are numpy arrays, or torch tensors on the input's device
    when the crops came as a torch tensor."""

    codes: Any  # int64 (N,): clean 1, pit 2, maybe 5
    confidence_probs: Any  # float32 (N, 3): clean, maybe, pit (see LineStage.frame)
    p_pit: np.ndarray  # float32 (N,): the calibrated p(pit); NaN where the frame was refused
    reasons: np.ndarray  # str (N,): why a crop went to review by the guard or a refusal; ""
    error: str = ""  # why the whole frame was refused unscored; "" when it was scored
    ms: float = 0.0  # time to answer, milliseconds
    classification: Classification | None = None  # the classifier's full result when scored

    def __len__(self) -> int:
        return len(self.p_pit)

    @property
    def guarded(self) -> int:
        """Crops the input guard sent to review (not counting a refused frame's)."""
        return 0 if self.error else int(np.count_nonzero(self.reasons != ""))


class LineStage:
    """``LineStage(bundle)(crops)``: the line's codes for one frame's crops, in order.

    ``stage.frame(crops)`` returns the whole :class:`LineResult`; ``stage.last`` holds the
    latest one.
    """

    def __init__(
        self,
        bundle: str | Path,
        device: str = "auto",
        graph: str = "onnx",
        threads: int = 0,
        second_look: bool = True,
        max_crops: int = MAX_CROPS,
        trust=None,
        verify: bool = False,
    ):
        if max_crops < 1:
            raise PitguardError(f"max_crops {max_crops}: give 1 or more")
        self.classifier = Classifier(
            bundle,
            graph=graph,
            device=device,
            threads=threads,
            second_look=second_look,
            trust=trust,
            verify=verify,
        )
        self.max_crops = max_crops
        self.size = self.classifier.size
        self._columns = _prob_columns(self.classifier.classes)
        self._temperature = float(self.classifier.meta["policy"]["temperature"])
        self.last: LineResult | None = None

    def __call__(self, crops) -> Any:
        """Codes (int64, (N,)) for crops as a numpy array or a torch tensor (answered as a
        torch tensor on the crops' device)."""
        return self.frame(crops).codes

    def frame(self, crops, label: str = "frame") -> LineResult:
        """The frame's codes, calibrated p(pit), the guard's reasons and ``confidence_probs``.

        ``confidence_probs`` fills the detector's field of that name: for a model with a maybe
        class, its softmax at the calibrated temperature in the columns clean, maybe, pit; for
        a clean/pit model, (1 - p_pit, 0, p_pit). A refused frame's crops get (0, 1, 0).
        """
        start = time.perf_counter()
        device = _torch_device(crops)
        array = _to_numpy(crops) if device is not None else crops
        result = self._answer(array, label)
        result = _with_time(result, start)
        if device is not None:
            result = _as_torch(result, device)
        self.last = result
        return result

    def refuse(self, count: int, reason: str, label: str = "frame") -> LineResult:
        """Every crop of a frame that cannot be scored goes to review, with the reason (logged
        as one warning naming ``label``)."""
        log.warning("%s: %d crops sent to review unscored: %s", label, count, reason)
        probs = np.zeros((count, len(PROB_COLUMNS)), dtype=np.float32)
        probs[:, PROB_COLUMNS.index("maybe")] = 1
        return LineResult(
            codes=np.full(count, MAYBE_CODE, dtype=np.int64),
            confidence_probs=probs,
            p_pit=np.full(count, np.nan, dtype=np.float32),
            reasons=np.full(count, reason, dtype=object),
            error=reason,
        )

    def warm_up(self, crops: int = 16) -> float:
        """Scores one frame of blank crops so the first real frame costs what the others cost;
        returns its milliseconds."""
        blank = np.zeros((crops, CHANNELS, self.size, self.size), dtype=np.float32)
        start = time.perf_counter()
        result = self._answer(blank, "warm-up frame")
        if result.error:
            raise PitguardError(f"warm-up frame failed: {result.error}")
        return _with_time(result, start).ms

    def _answer(self, crops, label: str) -> LineResult:
        count = _count(crops)
        expected = f"(N, {CHANNELS}, {self.size}, {self.size})"
        if count > self.max_crops:
            return self.refuse(count, f"{count} crops, more than max_crops {self.max_crops}", label)
        if not isinstance(crops, np.ndarray):
            return self.refuse(
                count, f"crops as {type(crops).__name__}, expected {expected}", label
            )
        if crops.ndim == 3:
            crops = crops[None]
        if crops.ndim != 4 or crops.shape[1:] != (CHANNELS, self.size, self.size):
            return self.refuse(count, f"crops of shape {crops.shape}, expected {expected}", label)
        if count == 0:  # a frame without cherries
            return _empty()
        try:
            scored = self.classifier.classify(crops)
        except PitguardError as err:
            return self.refuse(count, str(err), label)
        except Exception as err:  # a runtime failure must not stop the line
            log.exception("%s: scoring failed", label)
            return self.refuse(count, f"scoring failed: {type(err).__name__}: {err}", label)
        return LineResult(
            codes=np.array([LINE_CODES[r] for r in scored.routes], dtype=np.int64),
            confidence_probs=self._probs(scored),
            p_pit=scored.p_pit,
            reasons=scored.reasons,
            classification=scored,
        )

    def _probs(self, scored: Classification) -> np.ndarray:
        if self._columns is None:  # clean / pit
            p = scored.p_pit.astype(np.float32)
            zero = np.zeros_like(p)
            return np.stack([1 - p, zero, p], axis=1)
        z = scored.logits.astype(np.float64) / self._temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        soft = z / z.sum(axis=1, keepdims=True)
        return soft[:, self._columns].astype(np.float32)


def _prob_columns(classes: tuple[str, ...]) -> list[int] | None:
    """The model's class index for each detector column, or None for a clean/pit model."""
    if "maybe" not in classes:
        return None
    return [classes.index(c) for c in PROB_COLUMNS]


def _count(crops) -> int:
    """How many crops a frame holds, for answering it whole: the first axis of a batch (N, ...)
    of two or more axes, one for a single (3, S, S) crop or anything flatter."""
    shape = getattr(crops, "shape", None)
    if shape is None:
        try:
            return len(crops)
        except TypeError:
            return 1
    if len(shape) < 2 or (len(shape) == 3 and shape[0] == CHANNELS):
        return 1
    return int(shape[0])


def _empty() -> LineResult:
    return LineResult(
        codes=np.zeros(0, dtype=np.int64),
        confidence_probs=np.zeros((0, len(PROB_COLUMNS)), dtype=np.float32),
        p_pit=np.zeros(0, dtype=np.float32),
        reasons=np.zeros(0, dtype=object),
    )


def _with_time(result: LineResult, start: float) -> LineResult:
    ms = (time.perf_counter() - start) * 1000
    return LineResult(**{**result.__dict__, "ms": ms})


def _torch_device(crops) -> Any:
    """The device of a torch tensor, None for anything else."""
    if type(crops).__module__.split(".")[0] != "torch" or not hasattr(crops, "device"):
        return None
    return crops.device


def _to_numpy(tensor) -> np.ndarray:
    """A torch tensor's values on the host (a CUDA frame of 16 crops is about 3 MB)."""
    return tensor.detach().cpu().numpy()


def _as_torch(result: LineResult, device) -> LineResult:
    import torch  # only here: the crops came as a torch tensor, so torch is there

    return LineResult(
        **{
            **result.__dict__,
            "codes": torch.as_tensor(result.codes, dtype=torch.int64, device=device),
            "confidence_probs": torch.as_tensor(
                result.confidence_probs, dtype=torch.float32, device=device
            ),
        }
    )
