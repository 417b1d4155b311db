"""The line's classifier stage: the crops of one frame in, the line's label codes out.

The plant's detector (``ai_detector3.py``) classifies each frame's crops as one
(N, 3, 128, 128) float32 batch in [0, 1] and marks each cherry with a code: clean 1, pit 2,
maybe 5 (side 3 and stem 6 come from other stages). :class:`LineStage` is that step with a
pitguard bundle: the calibrated decision and the input guard instead of an argmax, a frame
with no cherries answered with no codes. It holds all the logic a ROS2 node needs, so the node
itself stays a few lines (``examples/ros2/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pitguard.runtime.classifier import Classification, Classifier

LINE_CODES = {"clean": 1, "pit": 2, "maybe": 5}  # the detector's label codes


class LineStage:
    """``LineStage(bundle)(crops)``: the line's codes for one frame's crops, in order."""

    def __init__(self, bundle: str | Path, device: str = "auto", graph: str = "onnx"):
        self.classifier = Classifier(bundle, graph=graph, device=device)
        self.last: Classification | None = None  # the frame's full result (p_pit, reasons)

    def __call__(self, crops) -> np.ndarray:
        """Codes (int64, (N,)) for crops as a numpy array or a tensor with ``.cpu()`` (a
        torch tensor on the GPU is copied to the host: 16 crops are about 3 MB)."""
        if hasattr(crops, "cpu") and not isinstance(crops, np.ndarray):
            crops = (crops.detach() if hasattr(crops, "detach") else crops).cpu().numpy()
        crops = np.asarray(crops)
        if crops.ndim == 4 and len(crops) == 0:  # a frame without cherries
            self.last = None
            return np.zeros(0, dtype=np.int64)
        self.last = self.classifier.classify(crops)
        return np.array([LINE_CODES[r] for r in self.last.routes], dtype=np.int64)
