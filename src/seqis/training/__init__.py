"""A readable training loop, checkpoints and metrics."""
