"""Models: the networks, their weights, imported weight files and the run folders that hold them."""
