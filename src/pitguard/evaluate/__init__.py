"""Evaluation: metrics with intervals, figures, out-of-fold scores and run comparisons."""
