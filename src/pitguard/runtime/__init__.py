"""Scoring a bundle where the line runs: numpy, onnxruntime and Pillow, no torch.

from pitguard.runtime import Classifier
result = Classifier("bundles/cpu-fast").classify(crops)  # (N, 3, 128, 128) float32 in [0, 1]
result.routes, result.p_pit, result.reasons
"""

from __future__ import annotations

from pitguard.runtime.classifier import Classification, Classifier
from pitguard.runtime.line import LINE_CODES, LineStage

__all__ = ["LINE_CODES", "Classification", "Classifier", "LineStage"]
