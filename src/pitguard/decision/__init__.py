"""The decision: thresholds certified on calibration scores, their cost in review, label review."""
