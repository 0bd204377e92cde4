"""In-memory datasets: read, split, compute statistics, build graphs, batch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import ase.data
import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from mlip.data.graph import atoms_to_graph
from mlip.data.reading import LabelledStructure, is_isolated_atom, read_labelled
from mlip.data.statistics import BlockMoments, LabelMeans, energy_scale_shift, fit_e0s
from mlip.errors import MLIPError
from mlip.targets import TargetSpec


@dataclass
class DatasetStatistics:
    """What the model needs from the training data.

    Attributes:
        species: sorted atomic numbers.
        e0s: atomic number → reference energy (eV).
        scale: eV (RMS force or per-atom energy spread).
        shift: eV per atom.
        avg_num_neighbours: mean neighbours per atom within the cutoff.
        tensor_scales: tensor target name → RMS of its per-atom-normalised label (after shift).
        tensor_shifts: tensor target name → per-atom mean of its λ=0 (σ=+1) component, if any.
        loss_scales: target name → per loss block (:func:`mlip.targets.block_keys`) the scale its
            squared error is divided by with ``training.loss_normalisation: scale``: ``scale``
            for energy, forces and stress alike; for tensors the RMS deviation of each (λ, σ)
            block from its training mean (in label units, per structure or per atom).
    """

    species: list[int]
    e0s: dict[int, float] = field(default_factory=dict)
    scale: float = 1.0
    shift: float = 0.0
    avg_num_neighbours: float = 10.0
    tensor_scales: dict[str, float] = field(default_factory=dict)
    tensor_shifts: dict[str, float] = field(default_factory=dict)
    loss_scales: dict[str, list[float]] = field(default_factory=dict)
    label_means: dict[str, list[float]] = field(default_factory=dict)


def parse_e0s(
    setting: object, source: str, energy_key: str = "energy", unit_factor: float = 1.0
) -> dict[int, float] | str:
    """Config ``e0s`` → ``"auto" | "fit" | "zero"`` or ``{atomic number: eV}``.

    A file of isolated atoms: each single-atom structure's energy is read under the energy
    target's key (``energy_key``, e.g. ``REF_energy``), else under ASE's standard ``energy``,
    times the energy target's ``unit_factor`` (as its labels are).
    """
    if isinstance(setting, str):
        if setting in ("auto", "fit", "zero"):
            return setting
        if os.path.isfile(setting):  # a file of isolated atoms with energies
            return _e0s_from_file(setting, energy_key, unit_factor)
        raise MLIPError(f"{source}: 'data.e0s' must be auto, fit, zero, a file of isolated atoms, "
                        f"or a mapping element → eV (got {setting!r})")
    if isinstance(setting, dict):
        out = {}
        for key, value in setting.items():
            if isinstance(key, str) and key in ase.data.atomic_numbers:
                z = ase.data.atomic_numbers[key]
            elif isinstance(key, int) and 0 < key < 119:
                z = key
            else:
                raise MLIPError(f"{source}: 'data.e0s' has an unknown element {key!r}")
            out[z] = float(value)
        return out
    raise MLIPError(f"{source}: 'data.e0s' must be auto, fit, zero or a mapping element → eV")


def energy_label(cfg) -> tuple[str, float]:
    """(label key, unit factor) of a config's energy target (``("energy", 1.0)`` without one)."""
    spec = next((s for s in cfg.target_specs() if s.kind == "energy"), None)
    return (spec.key, spec.unit_factor) if spec is not None else ("energy", 1.0)


def _e0s_from_file(path: str, energy_key: str, unit_factor: float = 1.0) -> dict[int, float]:
    from mlip.data.reading import _raw_label, read_atoms

    keys = list(dict.fromkeys([energy_key, "energy"]))
    out = {}
    for index, atoms in enumerate(read_atoms(path)):
        if len(atoms) != 1:
            continue
        values = [_raw_label(atoms, key) for key in keys]
        value = next((v for v in values if v is not None), None)
        if value is None:
            raise MLIPError(f"{path}, structure {index}: no energy under {' or '.join(map(repr, keys))}")
        try:
            out[int(atoms.numbers[0])] = float(np.asarray(value, dtype=np.float64).reshape(())) * unit_factor
        except (TypeError, ValueError):
            raise MLIPError(f"{path}, structure {index}: energy is not one number") from None
    if not out:
        raise MLIPError(f"{path}: no single-atom structures to take E0s from")
    return out


def split_isolated(structures: Sequence[LabelledStructure]) -> tuple[list, dict[int, float]]:
    """Separate isolated-atom structures (their energies become E0s) from the rest."""
    rest, e0s = [], {}
    for s in structures:
        if is_isolated_atom(s.atoms) and len(s.atoms) == 1:
            if "energy" in s.labels:
                e0s[int(s.atoms.numbers[0])] = float(s.labels["energy"])
        else:
            rest.append(s)
    return rest, e0s


def compute_statistics(
    structures: Sequence[LabelledStructure],
    specs: Sequence[TargetSpec],
    e0_setting: dict[int, float] | str,
    isolated_e0s: dict[int, float],
    avg_num_neighbours: float,
    extra_species: Sequence[int] = (),
) -> DatasetStatistics:
    """E0s, scale/shift and tensor scales from the training structures."""
    species = sorted({int(z) for s in structures for z in s.atoms.numbers} | set(extra_species))
    names = {s.name for s in specs}
    has_energy = "energy" in names
    if not has_energy:
        e0s = {z: 0.0 for z in species}
    elif isinstance(e0_setting, dict):
        missing = [ase.data.chemical_symbols[z] for z in species if z not in e0_setting]
        if missing:
            raise MLIPError(f"data.e0s: no reference energy for {', '.join(missing)}")
        e0s = {z: e0_setting[z] for z in species}
    elif e0_setting == "zero":
        e0s = {z: 0.0 for z in species}
    elif e0_setting == "auto":
        e0s = fit_e0s(structures, species, fixed={z: v for z, v in isolated_e0s.items() if z in species})
    else:
        e0s = fit_e0s(structures, species)
    stats = DatasetStatistics(species=species, e0s=e0s, avg_num_neighbours=avg_num_neighbours)
    if has_energy:
        stats.scale, stats.shift = energy_scale_shift(structures, e0s, "forces" in names)
    means = LabelMeans()
    for spec in specs:
        labelled = [s for s in structures if spec.name in s.labels]
        if labelled:
            n_atoms = np.array([len(s.atoms) for s in labelled])
            if spec.per_atom:
                means.add(spec, np.concatenate([np.asarray(s.labels[spec.name]) for s in labelled]))
            else:
                means.add(spec, np.stack([np.asarray(s.labels[spec.name]) for s in labelled]), n_atoms)
    stats.label_means = means.means()
    for spec in specs:
        if spec.kind in ("energy", "forces", "stress"):
            stats.loss_scales[spec.name] = [stats.scale]
        if spec.is_tensor:
            moments = BlockMoments(spec)
            for s in structures:
                moments.add(np.asarray(s.labels[spec.name], dtype=np.float64))
            stats.loss_scales[spec.name] = moments.scales()
            per_atom_labels = []
            for s in structures:
                label = np.asarray(s.labels[spec.name], dtype=np.float64)
                per_atom_labels.append((label / (1.0 if spec.per_atom else len(s.atoms))).reshape(-1, *spec.label_shape))
            labels = np.concatenate(per_atom_labels) if per_atom_labels else np.zeros((1, *spec.label_shape))
            shift = _lambda0_mean(spec, labels)
            if shift is not None:
                stats.tensor_shifts[spec.name] = shift
                labels = _remove_lambda0(spec, labels, shift)
            rms = float(np.sqrt(np.mean(labels**2)))
            stats.tensor_scales[spec.name] = rms if rms > 1e-12 else 1.0
    return stats


def _lambda0_offset(spec: TargetSpec) -> int | None:
    """Index of the λ=0, σ=+1 component in a spherical/rank-2 label layout (None if absent)."""
    if (0, 1) not in spec.irreps or spec.kind == "vector":
        return None
    offset = 0
    for lam, sig in spec.irreps:
        if (lam, sig) == (0, 1):
            return offset
        offset += 2 * lam + 1
    return None


def _lambda0_mean(spec: TargetSpec, labels: np.ndarray) -> float | None:
    """Per-atom mean of the λ=0 component (rank-2: tr/√3; spherical: that component)."""
    offset = _lambda0_offset(spec)
    if offset is None:
        return None
    if spec.kind == "rank2":
        return float(np.mean(np.trace(labels, axis1=-2, axis2=-1)) / np.sqrt(3.0))
    return float(np.mean(labels[:, offset]))


def _remove_lambda0(spec: TargetSpec, labels: np.ndarray, shift: float) -> np.ndarray:
    labels = labels.copy()
    if spec.kind == "rank2":
        labels -= shift / np.sqrt(3.0) * np.eye(3)
    else:
        labels[:, _lambda0_offset(spec)] -= shift
    return labels


def to_graphs(
    structures: Sequence[LabelledStructure],
    cutoff: float,
    specs: Sequence[TargetSpec],
    min_distance: float,
    dtype: torch.dtype,
) -> list[Data]:
    """Graphs with labels for every structure."""
    by_name = {s.name: s for s in specs}
    return [
        atoms_to_graph(s.atoms, cutoff, s.labels, by_name, min_distance, s.source, dtype)
        for s in structures
    ]


def average_neighbours(graphs: Sequence[Data]) -> float:
    """Mean number of neighbours per atom."""
    atoms = sum(g.num_nodes for g in graphs)
    edges = sum(g.edge_index.shape[1] for g in graphs)
    return edges / max(atoms, 1)


def split_indices(
    n: int, fraction: float, seed: int, mode: str | Sequence[int] = "random", source: str = "config"
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays (train, valid) of ``n`` training structures.

    Args:
        fraction: share of the structures for validation (at least one when > 0).
        seed: seeds the ``random`` split.
        mode: ``random`` (seeded permutation), ``last`` / ``first`` (a contiguous block at the end
            or the start: for MD trajectories, where random splits put near-duplicates of training
            frames in validation), or an explicit list of validation indices (``fraction`` unused).
    """
    all_idx = np.arange(n, dtype=np.int64)
    if not isinstance(mode, str):
        valid = np.asarray(sorted(set(int(i) for i in mode)), dtype=np.int64)
        if len(valid) and (valid.min() < 0 or valid.max() >= n):
            raise MLIPError(
                f"{source}: 'data.valid_split' index {int(valid.max() if valid.max() >= n else valid.min())} "
                f"is outside the {n} training structures (0 to {n - 1})"
            )
        if len(valid) == n:
            raise MLIPError(f"{source}: 'data.valid_split' leaves no training structures")
        return np.setdiff1d(all_idx, valid), valid
    if fraction <= 0 or n < 2:
        return all_idx, np.zeros(0, dtype=np.int64)
    n_valid = max(1, int(round(fraction * n)))
    if mode == "last":
        return all_idx[: n - n_valid], all_idx[n - n_valid :]
    if mode == "first":
        return all_idx[n_valid:], all_idx[:n_valid]
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_valid:]).astype(np.int64), np.sort(order[:n_valid]).astype(np.int64)


def split_train_valid(
    items: list, fraction: float, seed: int, mode: str | Sequence[int] = "random"
) -> tuple[list, list]:
    """Split ``items`` as :func:`split_indices` does; returns (train, valid)."""
    train_idx, valid_idx = split_indices(len(items), fraction, seed, mode)
    return [items[i] for i in train_idx], [items[i] for i in valid_idx]


def make_loader(graphs: Sequence[Data], batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    """torch-geometric loader; ``seed`` fixes the shuffling order (set per epoch by the trainer)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(list(graphs), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers)


def read_for_training(path: str, specs: Sequence[TargetSpec], fmt: str | None = None,
                      max_structures: int | None = None) -> tuple[list[LabelledStructure], dict[int, float]]:
    """Read a training/validation file: (non-isolated structures, isolated-atom E0s)."""
    structures = read_labelled(path, specs, fmt=fmt)
    rest, e0s = split_isolated(structures)
    if max_structures is not None:
        rest = rest[:max_structures]
    if not rest:
        raise MLIPError(f"{path}: no structures left after removing isolated atoms")
    return rest, e0s
