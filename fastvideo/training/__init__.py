"""Training: configuration, trainer, EMA, metrics, checkpoints, validation and export."""
