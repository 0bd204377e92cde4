"""Shared fixtures: paths to the shipped data and a tiny model trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def perturb_weights(model: torch.nn.Module, noise: float) -> torch.nn.Module:
    """Add N(0, noise²) to every parameter in place (torch's global RNG), so that a randomly
    initialised model depends strongly on the structure (an untrained one is nearly flat)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def tiny_raw_config(output_dir: Path, **overrides) -> dict:
    """A small, fast config on the shipped ethanol data."""
    raw = {
        "output_dir": str(output_dir),
        "seed": 0,
        "device": "cpu",
        "dtype": "float32",
        "data": {
            "train_file": str(DATA / "ethanol" / "train.xyz"),
            "max_structures": 60,
            "valid_fraction": 0.2,
            "cutoff": 4.0,
            "e0s": str(DATA / "ethanol" / "isolated_atoms.xyz"),
        },
        "targets": {"energy": {"key": "energy", "weight": 1.0}, "forces": {"key": "forces", "weight": 10.0}},
        "model": {
            "channels": 16,
            "num_layers": 2,
            "lmax": 2,
            "num_radial": 6,
            "radial_hidden": 16,
            "readout_hidden": 16,
        },
        "training": {
            "batch_size": 6,
            "max_epochs": 3,
            "lr": 0.005,
            "ema_decay": 0.9,
            "early_stopping_patience": None,
        },
        "logging": {"progress_bar": False},
    }
    for dotted, value in overrides.items():
        node = raw
        *path, last = dotted.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """Output folder of a 3-epoch run on 60 ethanol structures (model.pt, checkpoint.pt, metrics.csv)."""
    from mlip.training.config import load_config
    from mlip.training.trainer import train

    out = tmp_path_factory.mktemp("trained")
    train(load_config(None, raw=tiny_raw_config(out)))
    return out
