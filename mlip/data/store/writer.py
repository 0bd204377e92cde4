"""Writing shards: one structure → arrays in store layout, buffered into HDF5 shard files."""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np
import torch

from mlip.data.graph import atoms_to_graph
from mlip.data.reading import LabelledStructure
from mlip.data.store.layout import (
    DEFAULT_SHARD_MEGABYTES,
    DEFAULT_SHARD_STRUCTURES,
    FORMAT_VERSION,
    SHARD_FORMAT,
    _fsync_and_hash,
)
from mlip.errors import MLIPError
from mlip.outputs import STRESS_MASK
from mlip.targets import TargetSpec


def _graph_record(
    s: LabelledStructure, specs: Sequence[TargetSpec], cutoff: float, min_distance: float
) -> dict:
    """One structure as numpy arrays in store layout (graph built by atoms_to_graph)."""
    by_name = {spec.name: spec for spec in specs}
    g = atoms_to_graph(s.atoms, cutoff, s.labels, by_name, min_distance, s.source, torch.float64)
    for spec in specs:
        if spec.name not in s.labels and spec.kind != "stress":
            raise MLIPError(f"{s.source}: label for target '{spec.name}' missing (isolated-atom structure?)")
    rec = {
        "positions": g.pos.numpy(),
        "numbers": g.numbers.numpy().astype(np.uint8),
        "cell": g.cell[0].numpy(),
        "pbc": g.pbc[0].numpy(),
        "edge_index": g.edge_index.numpy().T.astype(np.int32),
        "unit_shifts": np.rint(g.unit_shifts.numpy()).astype(np.int32),
        "source_index": s.index,
        "labels": {},
    }
    for spec in specs:
        value = g[spec.name].numpy()
        if spec.kind == "stress" and not bool(g[STRESS_MASK][0]):
            value = np.full_like(value, np.nan)  # no stress (label absent or not 3D-periodic)
        rec["labels"][spec.name] = value if spec.per_atom else value[0]
    return rec


class ShardWriter:
    """Buffers structures of one part and writes them as shards (temp name → ``os.replace``)."""

    def __init__(
        self,
        folder: str,
        part: str,
        run_id: str,
        specs: Sequence[TargetSpec],
        shard_structures: int = DEFAULT_SHARD_STRUCTURES,
        shard_megabytes: float = DEFAULT_SHARD_MEGABYTES,
        compression: str | None = None,
    ) -> None:
        self.folder, self.part, self.run_id = folder, part, run_id
        self.specs = list(specs)
        self.shard_structures = max(1, int(shard_structures))
        self.shard_bytes = max(1, int(shard_megabytes * 1e6))
        self.compression = compression
        self.shards: list[dict] = []
        self.count = self.atoms = self.edges = 0
        self._reset()

    def _reset(self) -> None:
        self._buf: list[dict] = []
        self._bytes = 0

    def add(self, rec: dict) -> None:
        self._buf.append(rec)
        self._bytes += sum(v.nbytes for k, v in rec.items() if isinstance(v, np.ndarray))
        self._bytes += sum(v.nbytes for v in rec["labels"].values())
        if len(self._buf) >= self.shard_structures or self._bytes >= self.shard_bytes:
            self.flush()

    def _dataset(self, h5: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
        if self.compression and array.size:
            return h5.create_dataset(
                name, data=array, compression=self.compression, shuffle=True, chunks=True
            )
        return h5.create_dataset(name, data=array)

    def flush(self) -> None:
        if not self._buf:
            return
        buf = self._buf
        n = len(buf)
        n_atoms = np.array([len(r["numbers"]) for r in buf], dtype=np.int64)
        n_edges = np.array([len(r["edge_index"]) for r in buf], dtype=np.int64)
        offsets = np.zeros((n + 1, 2), dtype=np.int64)
        offsets[1:, 0] = np.cumsum(n_atoms)
        offsets[1:, 1] = np.cumsum(n_edges)
        name = f"{self.part}-{self.run_id}-{len(self.shards):05d}.h5"
        final = os.path.join(self.folder, name)
        tmp = os.path.join(self.folder, f".tmp-{name}")
        try:
            with h5py.File(tmp, "w") as h5:
                h5.attrs["format"] = SHARD_FORMAT
                h5.attrs["format_version"] = FORMAT_VERSION
                h5.attrs["part"] = self.part
                h5.attrs["first"] = self.count
                h5.attrs["count"] = n
                self._dataset(h5, "offsets", offsets)
                self._dataset(h5, "positions", np.concatenate([r["positions"] for r in buf]).reshape(-1, 3))
                self._dataset(h5, "numbers", np.concatenate([r["numbers"] for r in buf]).astype(np.uint8))
                self._dataset(h5, "cell", np.stack([r["cell"] for r in buf]))
                self._dataset(h5, "pbc", np.stack([r["pbc"] for r in buf]).astype(bool))
                self._dataset(h5, "edge_index", np.concatenate([r["edge_index"] for r in buf]).reshape(-1, 2))
                self._dataset(
                    h5, "unit_shifts", np.concatenate([r["unit_shifts"] for r in buf]).reshape(-1, 3)
                )
                self._dataset(h5, "source_index", np.array([r["source_index"] for r in buf], dtype=np.int64))
                group = h5.create_group("labels")
                for spec in self.specs:
                    values = [r["labels"][spec.name] for r in buf]
                    if spec.per_atom:
                        array = np.concatenate(values).reshape(-1, *spec.label_shape)
                    else:
                        array = np.stack(values).reshape(n, *spec.label_shape)
                    ds = self._dataset(group, spec.name, np.ascontiguousarray(array, dtype=np.float64))
                    ds.attrs["per_atom"] = spec.per_atom
            size, sha = _fsync_and_hash(tmp)
            os.replace(tmp, final)
        except OSError as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise MLIPError(f"{final}: cannot write shard ({err.strerror or err})") from None
        self.shards.append(
            {
                "file": name,
                "first": self.count,
                "count": n,
                "atoms": int(offsets[-1, 0]),
                "edges": int(offsets[-1, 1]),
                "bytes": size,
                "sha256": sha,
            }
        )
        self.count += n
        self.atoms += int(offsets[-1, 0])
        self.edges += int(offsets[-1, 1])
        self._reset()

    def close(self) -> dict:
        self.flush()
        return {"count": self.count, "atoms": self.atoms, "edges": self.edges, "shards": self.shards}
