"""Training: the loop, its epochs, loss, optimiser, time budget, ranks, tracking, cross-fits and sweeps."""
