"""Opening a store: manifest and shard verification, compatibility with a config, random access."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch_geometric.data import Data

from mlip.data.dataset import DatasetStatistics, split_indices
from mlip.data.graph import make_graph
from mlip.data.store.build import _settings
from mlip.data.store.layout import FORMAT, FORMAT_VERSION, MANIFEST, file_sha256
from mlip.data.store.stats import statistics_from_json
from mlip.errors import MLIPError
from mlip.targets import TargetSpec


def _human_diff(key: str, stored, wanted) -> str:
    return f"{key}: store has {stored!r}, config has {wanted!r}"


class PreprocessedStore:
    """A complete, verified store folder (see module docstring).

    Args:
        folder: the store folder (``data.preprocessed_dir``).
        verify: ``"checksum"`` (sizes and SHA-256 of every shard), ``"size"`` or ``"none"``.

    Raises:
        MLIPError: no manifest / incomplete manifest / unknown format / a shard missing or whose
            size or checksum differs from the manifest.
    """

    def __init__(self, folder: str | os.PathLike, verify: str = "checksum") -> None:
        self.folder = os.fspath(folder)
        path = os.path.join(self.folder, MANIFEST)
        hint = "run `mlip preprocess CONFIG.yaml` to (re)build it"
        if not os.path.isdir(self.folder):
            raise MLIPError(f"{self.folder}: preprocessed store not found ({hint})")
        if not os.path.exists(path):
            raise MLIPError(f"{self.folder}: not a complete preprocessed store (no {MANIFEST}; {hint})")
        try:
            with open(path) as handle:
                manifest = json.load(handle)
        except (OSError, ValueError) as err:
            detail = type(err).__name__
            raise MLIPError(f"{path}: unreadable or corrupted manifest ({detail}; {hint})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MLIPError(f"{path}: not an mlip preprocessed-store manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise MLIPError(
                f"{path}: store format version {manifest.get('format_version')} is not supported "
                f"(expects {FORMAT_VERSION}; {hint})"
            )
        if manifest.get("complete") is not True or "statistics" not in manifest or "parts" not in manifest:
            raise MLIPError(f"{path}: store is incomplete ({hint})")
        self.manifest = manifest
        self.parts: dict = manifest["parts"]
        self.settings: dict = manifest["settings"]
        if verify != "none":
            self.verify(checksums=verify == "checksum")

    def verify(self, checksums: bool = True) -> None:
        """Check that every shard exists with the manifest's size (and SHA-256)."""
        hint = "the store is damaged or was modified; rerun `mlip preprocess`"
        for part in self.parts.values():
            for info in part["shards"]:
                path = os.path.join(self.folder, info["file"])
                if not os.path.isfile(path):
                    raise MLIPError(f"{path}: shard listed in the manifest is missing ({hint})")
                size = os.path.getsize(path)
                if size != info["bytes"]:
                    raise MLIPError(f"{path}: size {size} bytes, manifest says {info['bytes']} ({hint})")
                if checksums and file_sha256(path) != info["sha256"]:
                    raise MLIPError(f"{path}: SHA-256 checksum does not match the manifest ({hint})")

    @property
    def statistics(self) -> DatasetStatistics:
        return statistics_from_json(self.manifest["statistics"])

    def count(self, part: str) -> int:
        return int(self.parts[part]["count"]) if part in self.parts else 0

    def check_compatible(self, cfg) -> None:
        """Raise if ``cfg`` asks for other data settings than the store was built with."""
        wanted = _settings(cfg)
        stored = self.settings
        diffs = []
        for key in ("cutoff", "min_distance", "e0s", "max_structures"):
            if stored.get(key) != wanted[key]:
                diffs.append(_human_diff(f"data.{key}", stored.get(key), wanted[key]))
        if stored.get("targets") != wanted["targets"]:
            diffs.append("targets differ")
        s_split, w_split = stored.get("split"), wanted["split"]
        if (s_split is None) != (w_split is None):
            diffs.append(_human_diff("data.valid_file", stored.get("valid_file"), wanted["valid_file"]))
        elif s_split is not None:
            for key in ("valid_fraction", "seed", "mode"):
                if s_split.get(key, "random") != w_split[key]:
                    where_key = {"seed": "seed", "mode": "data.valid_split"}.get(key, f"data.{key}")
                    diffs.append(_human_diff(where_key, s_split.get(key), w_split[key]))
        if bool(stored.get("test_file")) != bool(wanted["test_file"]):
            diffs.append(_human_diff("data.test_file", stored.get("test_file"), wanted["test_file"]))
        if diffs:
            raise MLIPError(
                f"{self.folder}: preprocessed with other settings ({'; '.join(diffs)}); "
                f"rerun `mlip preprocess` with this config"
            )

    def split(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(train indices, valid indices) into the ``train`` part; None = the whole part."""
        split = self.settings.get("split")
        if split is None:
            return None, None
        return split_indices(
            self.count("train"), split["valid_fraction"], split["seed"], split.get("mode", "random")
        )

    def dataset(
        self, part: str, indices: np.ndarray | None = None, dtype: torch.dtype = torch.float32
    ) -> StoreDataset:
        return StoreDataset(self.folder, self.parts[part], self.settings["targets"], indices, dtype)


@dataclass
class _OpenShard:
    h5: h5py.File
    datasets: dict


class StoreDataset(torch.utils.data.Dataset):
    """Random access to the structures of one part of a store, as ``Data`` graphs.

    Shards are opened lazily, in the process that reads them (each DataLoader worker opens its
    own handles), and at most ``max_open_shards`` stay open (least recently used are closed), so
    memory does not grow with the dataset: nothing is cached but HDF5 handles. Graphs are
    identical to :func:`mlip.data.graph.atoms_to_graph` of the same structure.
    """

    def __init__(
        self,
        folder: str,
        part: dict,
        targets: list[dict],
        indices: np.ndarray | None = None,
        dtype: torch.dtype = torch.float32,
        max_open_shards: int = 16,
    ) -> None:
        self.folder = folder
        self.files = [s["file"] for s in part["shards"]]
        self.starts = np.array([s["first"] for s in part["shards"]], dtype=np.int64)
        self.total = int(part["count"])
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.dtype = dtype
        self.specs = {t["name"]: TargetSpec.from_dict(t) for t in targets}
        self.labels = [(name, spec.per_atom) for name, spec in self.specs.items()]
        self.max_open_shards = max(1, max_open_shards)
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.total if self.indices is None else len(self.indices)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def close(self) -> None:
        for shard in self._open.values():
            shard.h5.close()
        self._open.clear()

    def _shard(self, k: int) -> _OpenShard:
        if self._pid != os.getpid():  # a forked DataLoader worker: never reuse the parent's handles
            self._open = OrderedDict()
            self._pid = os.getpid()
        shard = self._open.get(k)
        if shard is not None:
            self._open.move_to_end(k)
            return shard
        path = os.path.join(self.folder, self.files[k])
        try:
            h5 = h5py.File(path, "r")
        except OSError as err:
            raise MLIPError(f"{path}: cannot open shard ({err})") from None
        names = ["offsets", "positions", "numbers", "cell", "pbc", "edge_index", "unit_shifts"]
        datasets = {name: h5[name] for name in names}
        datasets.update({f"labels/{name}": h5["labels"][name] for name, _ in self.labels})
        shard = _OpenShard(h5, datasets)
        self._open[k] = shard
        while len(self._open) > self.max_open_shards:
            _, old = self._open.popitem(last=False)
            old.h5.close()
        return shard

    def locate(self, item: int) -> tuple[int, int]:
        """Dataset position → (shard number, structure number inside the shard)."""
        if item < 0:
            item += len(self)
        if not 0 <= item < len(self):
            raise IndexError(item)
        index = int(self.indices[item]) if self.indices is not None else item
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return k, index - int(self.starts[k])

    def read_arrays(self, item: int) -> dict[str, np.ndarray]:
        """The stored arrays of one structure (float64 as written)."""
        k, local = self.locate(item)
        ds = self._shard(k).datasets
        (a0, e0), (a1, e1) = ds["offsets"][local : local + 2]
        out = {
            "positions": ds["positions"][a0:a1],
            "numbers": ds["numbers"][a0:a1],
            "cell": ds["cell"][local],
            "pbc": ds["pbc"][local],
            "edge_index": ds["edge_index"][e0:e1],
            "unit_shifts": ds["unit_shifts"][e0:e1],
        }
        for name, per_atom in self.labels:
            out[name] = ds[f"labels/{name}"][a0:a1] if per_atom else ds[f"labels/{name}"][local]
        return out

    def __getitem__(self, item: int) -> Data:
        arr = self.read_arrays(item)
        edges = arr["edge_index"]
        labels = {name: arr[name] for name, _ in self.labels}
        return make_graph(
            arr["positions"],
            arr["numbers"],
            arr["cell"],
            arr["pbc"],
            edges[:, 0],
            edges[:, 1],
            arr["unit_shifts"],
            labels,
            self.specs,
            self.dtype,
        )
