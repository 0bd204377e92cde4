"""Compatibility alias: crash-safe saving and safe loading now live in :mod:`mlip.io`."""

from __future__ import annotations

from mlip.io import atomic_torch_save, atomic_write_bytes_via, safe_torch_load

__all__ = ["atomic_torch_save", "atomic_write_bytes_via", "safe_torch_load"]
