"""Inference: bundles, their backends and graphs, export, predict, serve and bench."""
