"""README's config reference lists every config key with the dataclass default (and nothing else)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from mlip.training.config import Config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"data.train_file"}  # required: the README shows an example value
SECTIONS = ("data", "model", "training", "logging")


def _readme_reference() -> dict:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Config reference", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)


def _flatten(raw: dict) -> dict:
    out = {}
    for key, value in raw.items():
        if key in SECTIONS:
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif key != "targets":
            out[key] = value
    return out


def _defaults() -> dict:
    cfg = dataclasses.asdict(Config())
    cfg.pop("targets")
    return _flatten(cfg)


def test_readme_lists_every_key_with_its_default():
    readme, defaults = _flatten(_readme_reference()), _defaults()
    assert sorted(readme) == sorted(defaults), set(readme) ^ set(defaults)
    wrong = {k: (readme[k], defaults[k]) for k in defaults if k not in EXAMPLES and readme[k] != defaults[k]}
    assert not wrong, f"README value vs dataclass default: {wrong}"


def test_readme_targets_example_parses():
    from mlip.training.config import load_config

    raw = _readme_reference()
    cfg = load_config(None, raw={"data": {"train_file": "x.xyz"}, "targets": raw["targets"]})
    assert {s.kind for s in cfg.target_specs()} == {
        "energy",
        "forces",
        "stress",
        "vector",
        "rank2",
        "spherical",
    }
