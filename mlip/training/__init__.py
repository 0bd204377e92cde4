"""Training layer: YAML config, losses, metrics, trainer, atomic checkpoints."""
