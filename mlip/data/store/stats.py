"""Training-set statistics streamed over the shards (the same as the in-memory ones, to rounding)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import ase.data
import h5py
import numpy as np

from mlip.data.dataset import DatasetStatistics, _lambda0_offset
from mlip.data.statistics import BlockMoments, LabelMeans, solve_e0s
from mlip.data.store.layout import _MAX_Z
from mlip.errors import MLIPError
from mlip.targets import TargetSpec


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
