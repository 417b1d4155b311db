"""Tests for pitguard.evaluate.plots: every figure is written as a PNG."""

from __future__ import annotations

import numpy as np

from pitguard.decision.certify import Thresholds, choose_thresholds, operating_curve
from pitguard.evaluate import metrics as M
from pitguard.evaluate import plots
from pitguard.evaluate.plots import plot_operating_curve
from tests.scores import CLASSES, dirichlet_probs, draw_scores, sample_labels


def test_plot_operating_curve_writes_png(tmp_path):
    rng = np.random.default_rng(4)
    p, y = draw_scores(rng, 300, 300)
    th = choose_thresholds(p, y, 0.05, 0.9)
    assert isinstance(th, Thresholds)
    out = tmp_path / "curve" / "operating_curve.png"
    plot_operating_curve(operating_curve(p, y, 0.9), th, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(2)
    probs = dirichlet_probs(rng, 200, 3)
    labels = sample_labels(rng, probs)
    rep = M.classification_report(labels, probs, CLASSES, n_boot=20)
    paths = [
        plots.plot_confusion_matrix(rep["confusion_matrix"], CLASSES, tmp_path / "cm.png"),
        plots.plot_roc_pr(labels == 2, probs[:, 2], tmp_path / "roc_pr.png"),
        plots.plot_roc_pr(np.zeros(5, dtype=int), np.linspace(0, 1, 5), tmp_path / "one_class.png"),
        plots.plot_reliability(M.reliability_bins(probs, labels), None, tmp_path / "rel1.png"),
        plots.plot_reliability(
            M.reliability_bins(probs, labels),
            M.reliability_bins(probs, labels, 5),
            tmp_path / "sub" / "rel2.png",
        ),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
