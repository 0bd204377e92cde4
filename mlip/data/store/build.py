"""``preprocess``: source files → shards, statistics and manifest (written last, atomically)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Sequence

from mlip.data.dataset import energy_label, parse_e0s, split_indices
from mlip.data.reading import check_stress_labels, is_isolated_atom, iter_labelled
from mlip.data.statistics import PolarizationJumpCheck
from mlip.data.store.layout import (
    _SHARD_NAME,
    DEFAULT_SHARD_MEGABYTES,
    DEFAULT_SHARD_STRUCTURES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
)
from mlip.data.store.stats import compute_store_statistics, statistics_to_json
from mlip.data.store.writer import ShardWriter, _graph_record
from mlip.errors import MLIPError
from mlip.targets import TargetSpec


def _settings(cfg) -> dict:
    """The config entries a store depends on (checked again when training from it)."""
    d = cfg.data
    e0 = parse_e0s(d.e0s, "config", *energy_label(cfg))
    split = None
    if not d.valid_file:
        mode = d.valid_split if isinstance(d.valid_split, str) else [int(i) for i in d.valid_split]
        split = {"valid_fraction": float(d.valid_fraction), "seed": int(cfg.seed), "mode": mode}
    return {
        "cutoff": float(d.cutoff),
        "min_distance": float(d.min_distance),
        "targets": [s.to_dict() for s in cfg.target_specs()],
        "e0s": e0 if isinstance(e0, str) else {str(z): float(v) for z, v in sorted(e0.items())},
        "max_structures": d.max_structures,
        "split": split,
        "valid_file": d.valid_file,
        "test_file": d.test_file,
    }


def _write_part(
    path: str,
    fmt: str | None,
    writer: ShardWriter,
    specs: Sequence[TargetSpec],
    cutoff: float,
    min_distance: float,
    max_structures: int | None = None,
    isolated_e0s: dict[int, float] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Stream ``path`` into ``writer``; isolated atoms are left out (their energies → E0s)."""
    stress_names = [spec.name for spec in specs if spec.kind == "stress"]
    stress_labelled = 0
    dipoles = [s for s in specs if s.kind == "vector" and not s.per_atom]
    jump_checks = [PolarizationJumpCheck(s, str(path)) for s in dipoles]
    for s in iter_labelled(path, specs, fmt):
        if is_isolated_atom(s.atoms) and len(s.atoms) == 1:
            if isolated_e0s is not None and "energy" in s.labels:
                isolated_e0s[int(s.atoms.numbers[0])] = float(s.labels["energy"])
            continue
        if max_structures is not None and writer.count + len(writer._buf) >= max_structures:
            continue  # keep reading: every structure is validated and isolated atoms are collected
        writer.add(_graph_record(s, specs, cutoff, min_distance))
        stress_labelled += any(name in s.labels for name in stress_names)
        for check in jump_checks:
            check.add(s.index, s.atoms, s.labels.get(check.spec.name))
        if progress is not None:
            progress(1)
    info = writer.close()
    if info["count"] == 0:
        raise MLIPError(f"{path}: no structures left after removing isolated atoms")
    if stress_names and not stress_labelled:
        check_stress_labels(path, specs, [])
    for check in jump_checks:
        check.report()
    return info


def _remove_stale(folder: str, keep: set[str]) -> None:
    for name in os.listdir(folder):
        stale_tmp = name.startswith(".tmp-") and _SHARD_NAME.match(name[5:])
        if (stale_tmp or _SHARD_NAME.match(name)) and name not in keep:
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def preprocess(
    cfg,
    shard_structures: int = DEFAULT_SHARD_STRUCTURES,
    shard_megabytes: float = DEFAULT_SHARD_MEGABYTES,
    compression: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Write the store of ``cfg`` (a :class:`~mlip.training.config.Config`) to
    ``cfg.data.preprocessed_dir``; returns the manifest."""
    from mlip import __version__
    from mlip.io import atomic_write_bytes_via

    d = cfg.data
    if not d.preprocessed_dir:
        raise MLIPError("config: set 'data.preprocessed_dir' to the folder the preprocessed store goes to")
    if compression not in (None, "gzip", "lzf"):
        raise MLIPError(f"compression must be gzip, lzf or none, got {compression!r}")
    folder = os.fspath(d.preprocessed_dir)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise MLIPError(f"{folder}: cannot create ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise MLIPError(f"{folder}: not writable")
    specs = cfg.target_specs()
    settings = _settings(cfg)  # validates data.e0s before the long part
    e0_setting = parse_e0s(d.e0s, "config", *energy_label(cfg))
    run_id = secrets.token_hex(4)
    start = time.perf_counter()
    done = [0]

    def progress(k: int) -> None:
        done[0] += k
        if log is not None and done[0] % 10000 == 0:
            rate = done[0] / (time.perf_counter() - start)
            log(f"mlip: preprocessed {done[0]} structures ({rate:.0f}/s)")

    def writer(part: str) -> ShardWriter:
        return ShardWriter(folder, part, run_id, specs, shard_structures, shard_megabytes, compression)

    isolated: dict[int, float] = {}
    parts = {
        "train": _write_part(
            d.train_file,
            d.format,
            writer("train"),
            specs,
            d.cutoff,
            d.min_distance,
            d.max_structures,
            isolated,
            progress,
        )
    }
    if d.valid_file:
        parts["valid"] = _write_part(
            d.valid_file, d.format, writer("valid"), specs, d.cutoff, d.min_distance, progress=progress
        )
    if d.test_file:
        parts["test"] = _write_part(
            d.test_file, d.format, writer("test"), specs, d.cutoff, d.min_distance, progress=progress
        )
    write_time = time.perf_counter() - start
    train_idx = None
    if settings["split"] is not None:
        train_idx, valid_idx = split_indices(
            parts["train"]["count"], d.valid_fraction, cfg.seed, settings["split"]["mode"]
        )
        settings["split"]["n_valid"] = int(len(valid_idx))
    stats = compute_store_statistics(folder, parts, train_idx, specs, e0_setting, isolated)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": True,
        "mlip_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": run_id,
        "sources": {
            "train_file": d.train_file,
            "valid_file": d.valid_file,
            "test_file": d.test_file,
            "format": d.format,
        },
        "settings": settings,
        "isolated_e0s": {str(z): v for z, v in sorted(isolated.items())},
        "parts": parts,
        "statistics": statistics_to_json(stats),
        "timing": {"write_s": write_time, "total_s": time.perf_counter() - start},
    }
    text = json.dumps(manifest, indent=1)
    atomic_write_bytes_via(os.path.join(folder, MANIFEST), lambda h: h.write(text.encode()))
    _remove_stale(folder, {s["file"] for p in parts.values() for s in p["shards"]})
    return manifest
