"""Preprocessed on-disk datasets: sharded HDF5 files plus a JSON manifest.

``mlip preprocess CONFIG.yaml`` reads the config's train/valid/test files one structure at a
time (``ase.io.iread``; never a whole file in memory), validates each structure exactly like
:func:`mlip.data.reading.read_labelled`, builds its neighbour graph once
(:func:`mlip.data.graph.atoms_to_graph`), and appends it to a shard buffer that is written out
when it reaches ``shard_structures`` structures or ``shard_megabytes`` MB. Training then reads
structures from the shards on demand (:class:`StoreDataset`), so memory stays bounded whatever
the dataset size.

Why HDF5 (through h5py):

* random access: one structure is a handful of slice reads of contiguous arrays, with no need to
  decode neighbouring structures (unlike a compressed tar/pickle stream or one ``.pt`` per shard);
* well kept: HDF5 is a decades-old, documented, portable format with readers in every language,
  and h5py is a mature, widely packaged binding; a store written here can be inspected with
  ``h5ls``/``h5dump`` or read without mlip;
* one file per shard: shards are written independently (each to a temporary name, then
  ``os.replace``'d), can be copied/checksummed/verified individually, and many DataLoader workers
  or ranks can open them read-only concurrently without locking;
* compression optional: ``--compression gzip|lzf`` stores chunked, compressed arrays (smaller,
  slower random access); the default stores contiguous uncompressed arrays (fastest reads).

Layout of a store folder::

    manifest.json                   written last, atomically; lists everything below
    train-<run>-00000.h5, ...       shards of the training file (all non-isolated structures)
    valid-<run>-00000.h5, ...       shards of data.valid_file (if given)
    test-<run>-00000.h5, ...        shards of data.test_file (if given)

One shard (``n`` structures, ``A`` atoms, ``E`` edges in total) holds concatenated arrays:

=====================  =================  ==================================================
dataset                shape, dtype       meaning
=====================  =================  ==================================================
``offsets``            ``[n+1, 2]`` i8    (first atom, first edge) of each structure; the
                                          last row is ``(A, E)``
``positions``          ``[A, 3]`` f8      Å
``numbers``            ``[A]`` u1         atomic numbers
``cell``               ``[n, 3, 3]`` f8   graph cell (zeros for non-periodic structures)
``pbc``                ``[n, 3]`` bool    periodic flags
``edge_index``         ``[E, 2]`` i4      (receiver i, sender j), indices local to the structure
``unit_shifts``        ``[E, 3]`` i4      integer lattice shifts
``source_index``       ``[n]`` i8         index of the structure in its source file
``labels/<target>``    ``[n, ...]`` or    labels in model units, float64 (bit-exact copies of
                       ``[A, ...]`` f8    what :func:`~mlip.data.reading.read_labelled` gives)
=====================  =================  ==================================================

so that structure ``k`` is ``positions[offsets[k,0]:offsets[k+1,0]]`` etc.

The manifest records the preprocessing settings (cutoff, targets, E0 setting, split), the shards
with their sizes and SHA-256 checksums, and the training-set statistics the model needs (E0s,
scale/shift, average neighbour count, tensor scales/shifts). The statistics are computed in a
streaming pass over the written shards (reading only the arrays they need, one shard at a time):
the E0 least-squares fit accumulates its normal equations ``CᵀC`` and ``CᵀE`` (``C`` = element
counts), the per-atom energy shift/spread and the tensor λ=0 shifts use a mergeable (Chan et al.)
mean/variance, and the force RMS and neighbour counts are plain sums — the same quantities as
:func:`mlip.data.dataset.compute_statistics` on the same structures, to rounding.

A store is only usable once its manifest exists and says ``complete``; re-running ``mlip
preprocess`` writes shards under a new run id, replaces the manifest atomically, and only then
deletes the old shards, so an interrupted re-run leaves the previous store intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import ase.data
import ase.io
import h5py
import numpy as np
import torch
from torch_geometric.data import Data

from mlip.data.dataset import DatasetStatistics, _lambda0_offset, energy_label, parse_e0s, split_indices
from mlip.data.statistics import BlockMoments, LabelMeans, PolarizationJumpCheck, solve_e0s
from mlip.data.graph import atoms_to_graph, make_graph
from mlip.data.reading import LabelledStructure, check_stress_labels, is_isolated_atom, iter_labelled
from mlip.errors import MLIPError, where
from mlip.outputs import STRESS_MASK
from mlip.targets import TargetSpec

FORMAT = "mlip-preprocessed"
FORMAT_VERSION = 1
SHARD_FORMAT = "mlip-shard"
MANIFEST = "manifest.json"
PARTS = ("train", "valid", "test")
DEFAULT_SHARD_STRUCTURES = 10_000
DEFAULT_SHARD_MEGABYTES = 256.0
_SHARD_NAME = re.compile(r"^(train|valid|test)-[0-9a-f]{8}-\d{5}\.h5$")
_MAX_Z = 119


# ============================================================== reading source files in chunks
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


# ============================================================== writing shards
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
                self._dataset(
                    h5, "edge_index", np.concatenate([r["edge_index"] for r in buf]).reshape(-1, 2)
                )
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


# ============================================================== split and statistics
class _MeanVar:
    """Mergeable count/mean/M2 (Chan et al.), exact to rounding for any number of chunks."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray, weight: int = 1) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size == 0:
            return
        nb = values.size
        mb = float(values.mean())
        m2b = float(((values - mb) ** 2).sum()) * weight
        nb_w = nb * weight
        n = self.n + nb_w
        delta = mb - self.mean
        self.m2 += m2b + delta**2 * self.n * nb_w / n
        self.mean += delta * nb_w / n
        self.n = n


def _shard_selection(info: dict, indices: np.ndarray | None) -> np.ndarray | None:
    """Boolean mask of the shard's structures that are in ``indices`` (None = all)."""
    if indices is None:
        return None
    first, count = info["first"], info["count"]
    lo, hi = np.searchsorted(indices, [first, first + count])
    mask = np.zeros(count, dtype=bool)
    mask[indices[lo:hi] - first] = True
    return mask


def _iter_shard_arrays(folder: str, part: dict, indices: np.ndarray | None, names: Sequence[str]):
    """Per shard: (n_atoms per selected structure, n_edges, {name: selected array}).

    ``names`` are ``numbers`` or ``labels/<target>``; per-atom arrays (``numbers`` and per-atom
    labels, recognised by their length) are cut to the selected structures' atoms.
    """
    for info in part["shards"]:
        mask = _shard_selection(info, indices)
        if mask is not None and not mask.any():
            continue
        with h5py.File(os.path.join(folder, info["file"]), "r") as h5:
            offsets = h5["offsets"][()]
            n_atoms = np.diff(offsets[:, 0])
            n_edges = np.diff(offsets[:, 1])
            atom_mask = None if mask is None else np.repeat(mask, n_atoms)
            out = {}
            for name in names:
                array = h5[name][()]
                if mask is not None:
                    array = array[atom_mask] if _per_atom_name(h5, name) else array[mask]
                out[name] = array
        if mask is not None:
            n_atoms, n_edges = n_atoms[mask], n_edges[mask]
        yield n_atoms, n_edges, out


def _per_atom_name(h5: h5py.File, name: str) -> bool:
    return name == "numbers" or bool(h5[name].attrs.get("per_atom", False))


def _counts_matrix(numbers: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """``[n, 119]`` element counts per structure."""
    structure = np.repeat(np.arange(len(n_atoms)), n_atoms)
    flat = np.bincount(structure * _MAX_Z + numbers.astype(np.int64), minlength=len(n_atoms) * _MAX_Z)
    return flat.reshape(len(n_atoms), _MAX_Z).astype(np.float64)


def compute_store_statistics(
    folder: str,
    parts: dict,
    train_indices: np.ndarray | None,
    specs: Sequence[TargetSpec],
    e0_setting: dict[int, float] | str,
    isolated_e0s: dict[int, float],
) -> DatasetStatistics:
    """:func:`mlip.data.dataset.compute_statistics` (+ average neighbours), streamed over shards."""
    names = {s.name for s in specs}
    has_energy, has_forces = "energy" in names, "forces" in names
    train = parts["train"]
    species: set[int] = set()
    # ---- pass 1: species, neighbours, E0 normal equations, force RMS, tensor moments
    ctc = np.zeros((_MAX_Z, _MAX_Z))
    cte = np.zeros(_MAX_Z)
    n_structures = atoms_total = edges_total = 0
    force_sq, force_n = 0.0, 0
    tensors = [s for s in specs if s.is_tensor]
    t_rest = {s.name: 0.0 for s in tensors}
    t_rows = {s.name: 0 for s in tensors}
    t_lam0 = {s.name: _MeanVar() for s in tensors}
    t_moments = {s.name: BlockMoments(s) for s in tensors}
    means = LabelMeans()
    wanted = ["numbers"] + [f"labels/{s.name}" for s in specs]
    for n_atoms, n_edges, arr in _iter_shard_arrays(folder, train, train_indices, wanted):
        for spec in specs:
            means.add(spec, arr[f"labels/{spec.name}"], n_atoms)
        numbers = arr["numbers"]
        species.update(int(z) for z in np.unique(numbers))
        n_structures += len(n_atoms)
        atoms_total += int(n_atoms.sum())
        edges_total += int(n_edges.sum())
        if has_energy:
            counts = _counts_matrix(numbers, n_atoms)
            ctc += counts.T @ counts
            cte += counts.T @ arr["labels/energy"]
        if has_forces:
            forces = arr["labels/forces"]
            force_sq += float(np.sum(forces**2))
            force_n += forces.size
        for spec in tensors:
            label = arr[f"labels/{spec.name}"]
            t_moments[spec.name].add(label)
            if not spec.per_atom:
                label = label / n_atoms.reshape(-1, *([1] * (label.ndim - 1)))
            rows = label.reshape(-1, *spec.label_shape)
            t_rows[spec.name] += len(rows)
            offset = _lambda0_offset(spec)
            if offset is None:
                t_rest[spec.name] += float(np.sum(rows**2))
            elif spec.kind == "rank2":
                d = np.trace(rows, axis1=-2, axis2=-1) / 3.0
                centred = rows - d[:, None, None] * np.eye(3)
                t_rest[spec.name] += float(np.sum(centred**2))
                t_lam0[spec.name].add(d, weight=3)
            else:
                t_rest[spec.name] += float(np.sum(rows**2) - np.sum(rows[:, offset] ** 2))
                t_lam0[spec.name].add(rows[:, offset])
    if n_structures == 0:
        raise MLIPError(f"{folder}: no training structures in the store")
    for name in ("valid", "test"):
        if name in parts:
            for _, _, arr in _iter_shard_arrays(folder, parts[name], None, ["numbers"]):
                species.update(int(z) for z in np.unique(arr["numbers"]))
    species_list = sorted(species)
    # ---- E0s (as compute_statistics / fit_e0s)
    if not has_energy:
        e0s = {z: 0.0 for z in species_list}
    elif isinstance(e0_setting, dict):
        missing = [ase.data.chemical_symbols[z] for z in species_list if z not in e0_setting]
        if missing:
            raise MLIPError(f"data.e0s: no reference energy for {', '.join(missing)}")
        e0s = {z: float(e0_setting[z]) for z in species_list}
    elif e0_setting == "zero":
        e0s = {z: 0.0 for z in species_list}
    else:
        fixed = {z: v for z, v in isolated_e0s.items() if z in species_list} if e0_setting == "auto" else {}
        e0s = solve_e0s(ctc[np.ix_(species_list, species_list)], cte[species_list], species_list, fixed)
    stats = DatasetStatistics(
        species=species_list, e0s=e0s, avg_num_neighbours=edges_total / max(atoms_total, 1)
    )
    # ---- pass 2 (energies only): per-atom interaction energy mean and spread
    if has_energy:
        e0_vector = np.zeros(_MAX_Z)
        for z, v in e0s.items():
            e0_vector[z] = v
        per_atom = _MeanVar()
        for n_atoms, _, arr in _iter_shard_arrays(folder, train, train_indices, ["numbers", "labels/energy"]):
            reference = np.add.reduceat(e0_vector[arr["numbers"].astype(np.int64)], _starts(n_atoms))
            per_atom.add((arr["labels/energy"] - reference) / n_atoms)
        stats.shift = float(per_atom.mean)
        scale = float(np.sqrt(force_sq / force_n)) if has_forces else float(np.sqrt(per_atom.m2 / per_atom.n))
        stats.scale = scale if np.isfinite(scale) and scale >= 1e-6 else 1.0
    stats.label_means = means.means()
    for spec in specs:
        if spec.kind in ("energy", "forces", "stress"):
            stats.loss_scales[spec.name] = [stats.scale]
        elif spec.is_tensor:
            stats.loss_scales[spec.name] = t_moments[spec.name].scales()
    for spec in tensors:
        size = t_rows[spec.name] * int(np.prod(spec.label_shape))
        lam0 = t_lam0[spec.name]
        total = t_rest[spec.name]
        if _lambda0_offset(spec) is not None:
            factor = np.sqrt(3.0) if spec.kind == "rank2" else 1.0  # rank 2: mean(trace)/√3
            stats.tensor_shifts[spec.name] = float(lam0.mean * factor)
            total += lam0.m2
        rms = float(np.sqrt(total / max(size, 1)))
        stats.tensor_scales[spec.name] = rms if rms > 1e-12 else 1.0
    return stats


def _starts(n_atoms: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(n_atoms), dtype=np.int64)
    starts[1:] = np.cumsum(n_atoms)[:-1]
    return starts


def statistics_to_json(stats: DatasetStatistics) -> dict:
    return {
        "species": [int(z) for z in stats.species],
        "e0s": {str(z): float(v) for z, v in stats.e0s.items()},
        "scale": float(stats.scale),
        "shift": float(stats.shift),
        "avg_num_neighbours": float(stats.avg_num_neighbours),
        "tensor_scales": {k: float(v) for k, v in stats.tensor_scales.items()},
        "tensor_shifts": {k: float(v) for k, v in stats.tensor_shifts.items()},
        "loss_scales": {k: [float(x) for x in v] for k, v in stats.loss_scales.items()},
        "label_means": {k: [float(x) for x in v] for k, v in stats.label_means.items()},
    }


def statistics_from_json(raw: dict) -> DatasetStatistics:
    return DatasetStatistics(
        species=[int(z) for z in raw["species"]],
        e0s={int(z): float(v) for z, v in raw["e0s"].items()},
        scale=float(raw["scale"]),
        shift=float(raw["shift"]),
        avg_num_neighbours=float(raw["avg_num_neighbours"]),
        tensor_scales={k: float(v) for k, v in raw.get("tensor_scales", {}).items()},
        tensor_shifts={k: float(v) for k, v in raw.get("tensor_shifts", {}).items()},
        loss_scales={k: [float(x) for x in v] for k, v in raw.get("loss_scales", {}).items()},
        label_means={k: [float(x) for x in v] for k, v in raw.get("label_means", {}).items()},
    )


# ============================================================== preprocessing a config
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
    jump_checks = [PolarizationJumpCheck(s, str(path)) for s in specs if s.kind == "vector" and not s.per_atom]
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
        "train": _write_part(d.train_file, d.format, writer("train"), specs, d.cutoff, d.min_distance,
                             d.max_structures, isolated, progress)
    }
    if d.valid_file:
        parts["valid"] = _write_part(d.valid_file, d.format, writer("valid"), specs, d.cutoff, d.min_distance,
                                     progress=progress)
    if d.test_file:
        parts["test"] = _write_part(d.test_file, d.format, writer("test"), specs, d.cutoff, d.min_distance,
                                    progress=progress)
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
        "sources": {"train_file": d.train_file, "valid_file": d.valid_file, "test_file": d.test_file,
                    "format": d.format},
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


# ============================================================== reading a store
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

    def dataset(self, part: str, indices: np.ndarray | None = None,
                dtype: torch.dtype = torch.float32) -> StoreDataset:
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
            arr["positions"], arr["numbers"], arr["cell"], arr["pbc"], edges[:, 0], edges[:, 1],
            arr["unit_shifts"], labels, self.specs, self.dtype,
        )
