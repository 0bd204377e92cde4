"""Crash-safe saving and safe loading of model files, checkpoints and other outputs.

Writes go to a temporary file in the same folder, are flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX): a kill at any moment leaves either the old or the new
file, never a partial one. Loading uses ``torch.load(weights_only=True)``, which refuses pickled
code, so a crafted file cannot execute anything.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import torch

from mlip.errors import MLIPError


def atomic_write_path_via(path: str, produce, suffix: str = "") -> None:
    """Call ``produce(tmp_path)`` to write a temporary file next to ``path`` (its name ending in
    ``suffix``, for writers that insist on an extension), fsync it, and rename it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path), suffix=suffix, dir=folder)
        os.close(fd)
    except OSError as err:
        raise MLIPError(f"{path}: cannot write ({err.strerror})") from None
    try:
        produce(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes_via(path: str, write) -> None:
    """Call ``write(file_object)`` on a temporary file, fsync it, and rename it to ``path``."""

    def produce(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    atomic_write_path_via(path, produce)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` made atomic (see module docstring)."""
    atomic_write_bytes_via(path, lambda handle: torch.save(obj, handle))


def safe_torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors for missing/corrupt files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MLIPError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise MLIPError(f"{path}: file is empty (corrupted or interrupted write)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported global" in line or "load key" in line), "")
        detail = f" ({detail[:120]})" if detail else ""
        raise MLIPError(
            f"{path}: refused to load: corrupted, not an mlip file, or it contains code that "
            f"weights-only loading will not run{detail}"
        ) from None
    except Exception as err:  # torch and pickle raise many types on damaged files; all mean "corrupt"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        detail = f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__
        raise MLIPError(f"{path}: corrupted or truncated file ({detail})") from None
