"""``mlip train CONFIG.yaml [-o key=value ...]``."""

from __future__ import annotations

from mlip.training.config import load_config
from mlip.training.trainer import train


def run_train(config_path: str, overrides: list[str]) -> dict:
    """Load the config, apply overrides and train."""
    cfg = load_config(config_path, overrides)
    return train(cfg)
