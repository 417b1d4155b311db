"""Shared ground: errors, logging, files, seeds, devices, statistics and progress."""
