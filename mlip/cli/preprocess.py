"""``mlip preprocess CONFIG.yaml [-o key=value ...]``: build the on-disk store of a config.

Reads ``data.train_file`` / ``valid_file`` / ``test_file`` one structure at a time, computes the
neighbour lists, labels and training statistics once, and writes sharded HDF5 files plus a
manifest to ``data.preprocessed_dir`` (see :mod:`mlip.data.store`). ``mlip train`` with the same
config then streams the structures from there instead of reading the files into memory.
"""

from __future__ import annotations

import os
import time

from mlip.data.store import DEFAULT_SHARD_MEGABYTES, DEFAULT_SHARD_STRUCTURES, preprocess
from mlip.training.config import load_config


def run_preprocess(
    config_path: str,
    overrides: list[str],
    shard_structures: int = DEFAULT_SHARD_STRUCTURES,
    shard_megabytes: float = DEFAULT_SHARD_MEGABYTES,
    compression: str | None = None,
    quiet: bool = False,
) -> dict:
    """Load the config, apply overrides, write the store; returns its manifest."""
    cfg = load_config(config_path, overrides)
    log = None if quiet else (lambda text: print(text, flush=True))
    start = time.perf_counter()
    manifest = preprocess(
        cfg,
        shard_structures=shard_structures,
        shard_megabytes=shard_megabytes,
        compression=None if compression in (None, "none") else compression,
        log=log,
    )
    elapsed = time.perf_counter() - start
    parts = manifest["parts"]
    total = sum(p["count"] for p in parts.values())
    shards = sum(len(p["shards"]) for p in parts.values())
    size = sum(s["bytes"] for p in parts.values() for s in p["shards"])
    counts = ", ".join(f"{p['count']} {name}" for name, p in parts.items())
    split = manifest["settings"].get("split")
    if split is not None:
        counts += f" (of which {split['n_valid']} for validation)"
    if log is not None:
        log(
            f"mlip: wrote {counts} structures to {os.fspath(cfg.data.preprocessed_dir)}: {shards} shards, "
            f"{size / 1e6:.1f} MB, {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} structures/s)"
        )
    return manifest
