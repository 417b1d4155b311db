"""Studies on runs: paired comparison, the legacy two-stage method, imports, denormals."""
