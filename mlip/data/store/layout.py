"""Store format constants and shard checksums (see :mod:`mlip.data.store`)."""

from __future__ import annotations

import hashlib
import os
import re

FORMAT = "mlip-preprocessed"
FORMAT_VERSION = 1
SHARD_FORMAT = "mlip-shard"
MANIFEST = "manifest.json"
PARTS = ("train", "valid", "test")
DEFAULT_SHARD_STRUCTURES = 10_000
DEFAULT_SHARD_MEGABYTES = 256.0
_SHARD_NAME = re.compile(r"^(train|valid|test)-[0-9a-f]{8}-\d{5}\.h5$")
_MAX_Z = 119


def _fsync_and_hash(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return os.path.getsize(path), digest.hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
