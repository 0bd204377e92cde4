"""Read structures and their labels from files (extxyz or anything ``ase.io`` reads).

Labels are looked up by key in ``atoms.info``, ``atoms.arrays`` and the results of a stored
calculator (ASE puts ``energy``/``forces``/``stress``/``dipole`` there), converted to model units
and validated. Every problem is raised as a one-line :class:`~mlip.errors.MLIPError` naming the
file, the structure index and the key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import ase
import ase.io
import numpy as np

from mlip.errors import MLIPError, where
from mlip.targets import TargetSpec


@dataclass
class LabelledStructure:
    """A structure with its labels in model units.

    Attributes:
        atoms: the ASE structure (positions Å, cell Å).
        labels: target name → numpy array (energy ``()``, forces ``[N, 3]``, stress ``[3, 3]``,
            tensors as in :class:`~mlip.targets.TargetSpec`).
        source: ``"file, structure i"`` for error messages.
        index: index of the structure in its file.
    """

    atoms: ase.Atoms
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    index: int = 0


def iter_atoms(path: str | os.PathLike, fmt: str | None = None) -> Iterator[ase.Atoms]:
    """Yield the structures of ``path`` one at a time (constant memory), with one-line errors.

    A frame that cannot be parsed (truncated last frame, non-numeric column, ...) raises an
    :class:`MLIPError` naming the file and the index of that structure.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MLIPError(f"{path}: file not found")
    if os.path.isdir(path):
        raise MLIPError(f"{path}: is a directory, expected a structure file")
    if os.path.getsize(path) == 0:
        raise MLIPError(f"{path}: file is empty (no structures)")
    index = 0
    try:
        for atoms in ase.io.iread(path, index=":", format=fmt):
            yield atoms
            index += 1
    except MLIPError:
        raise
    except Exception as err:  # ASE raises many types; keep the message, drop the traceback
        msg = str(err).strip().splitlines()
        detail = msg[-1] if msg else type(err).__name__
        raise MLIPError(
            f"{path}, structure {index}: could not be read ({type(err).__name__}: {detail[:200]})"
        ) from None
    if index == 0:
        raise MLIPError(f"{path}: no structures found")


def read_atoms(path: str | os.PathLike, fmt: str | None = None) -> list[ase.Atoms]:
    """Read all structures of ``path`` with ASE, turning every failure into one line."""
    return list(iter_atoms(path, fmt))


def _raw_label(atoms: ase.Atoms, key: str) -> np.ndarray | None:
    if key in atoms.info:
        return np.asarray(atoms.info[key])
    if key in atoms.arrays:
        return np.asarray(atoms.arrays[key])
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return np.asarray(calc.results[key])
    return None


def available_keys(atoms: ase.Atoms) -> list[str]:
    """All label keys a structure carries (info, arrays minus positions/numbers, calculator)."""
    keys = set(atoms.info) | (set(atoms.arrays) - {"numbers", "positions"})
    if atoms.calc is not None:
        keys |= set(getattr(atoms.calc, "results", {}))
    return sorted(keys)


def _as_float(value: np.ndarray, loc: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MLIPError(f"{loc}: value is not numeric ({str(value)[:40]!r})") from None
    return arr


def _stress_3x3(arr: np.ndarray, loc: str) -> np.ndarray:
    flat = arr.reshape(-1)
    if flat.size == 9:
        return flat.reshape(3, 3)
    if flat.size == 6:  # ASE Voigt order: xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = flat
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise MLIPError(f"{loc}: has {flat.size} numbers, expected 6 (Voigt) or 9 (3×3)")


def extract_label(atoms: ase.Atoms, spec: TargetSpec, loc_prefix: str) -> np.ndarray:
    """Read one target's label from a structure, converted and shape-checked.

    Raises:
        MLIPError: missing key, non-numeric value, wrong shape, NaN/Inf.
    """
    n_atoms = len(atoms)
    key = spec.key
    raw = _raw_label(atoms, key)
    virial = False
    if raw is None and spec.kind == "stress" and spec.virial_key:
        raw = _raw_label(atoms, spec.virial_key)
        key, virial = spec.virial_key, raw is not None
    loc = f"{loc_prefix}, key '{key}'"
    if raw is None:
        keys = ", ".join(available_keys(atoms)) or "none"
        raise MLIPError(f"{loc}: label not found for target '{spec.name}' (keys present: {keys})")
    arr = _as_float(raw, loc)
    if spec.kind == "stress":
        arr = _stress_3x3(arr, loc)
        if virial:
            volume = abs(np.linalg.det(atoms.cell.array))
            if volume < 1e-9:
                raise MLIPError(f"{loc}: virial given but the cell has zero volume")
            arr = -arr / volume
    elif spec.per_atom:
        expected = (n_atoms, *spec.label_shape)
        if arr.size == int(np.prod(expected)):
            arr = arr.reshape(expected)
        else:
            raise MLIPError(f"{loc}: has shape {arr.shape}, expected {expected} for {n_atoms} atoms")
    else:
        expected = spec.label_shape
        if arr.size != int(np.prod(expected, dtype=int)):
            raise MLIPError(f"{loc}: has shape {arr.shape}, expected {expected}")
        arr = arr.reshape(expected)
    if not np.all(np.isfinite(arr)):
        raise MLIPError(f"{loc}: contains NaN or Inf")
    return arr * spec.unit_factor


def is_isolated_atom(atoms: ase.Atoms) -> bool:
    """A single atom without periodicity, or tagged ``config_type=IsolatedAtom`` (as in MACE)."""
    if str(atoms.info.get("config_type", "")).lower() in ("isolatedatom", "isolated_atom"):
        return True
    return len(atoms) == 1 and not any(atoms.pbc)


def check_structure(atoms: ase.Atoms, loc: str, allowed_numbers: Iterable[int] | None = None) -> None:
    """Validate geometry: finite positions, sane cell, known elements.

    Raises:
        MLIPError: NaN/Inf positions, zero-volume or degenerate periodic cell, unknown element.
    """
    if len(atoms) == 0:
        raise MLIPError(f"{loc}: structure has no atoms")
    pos = atoms.positions
    if not np.all(np.isfinite(pos)):
        bad = int(np.argwhere(~np.isfinite(pos))[0, 0])
        raise MLIPError(f"{loc}: position of atom {bad} is NaN or Inf")
    if np.abs(pos).max() > 1e6:
        raise MLIPError(f"{loc}: coordinates larger than 1e6 Å")
    if any(atoms.pbc):
        cell = atoms.cell.array
        if not np.all(np.isfinite(cell)):
            raise MLIPError(f"{loc}: cell contains NaN or Inf")
        lengths = np.linalg.norm(cell, axis=1)
        for axis in np.flatnonzero(atoms.pbc):
            if lengths[axis] < 1e-6:
                raise MLIPError(f"{loc}: periodic along axis {axis} but cell vector {axis} is zero")
        if all(atoms.pbc):
            volume = abs(np.linalg.det(cell))
            if volume < 1e-6 * max(1.0, float(np.prod(lengths))):
                raise MLIPError(f"{loc}: periodic cell is degenerate (volume {volume:.3g} Å³)")
    if allowed_numbers is not None:
        allowed = set(int(z) for z in allowed_numbers)
        unknown = sorted(set(int(z) for z in atoms.numbers) - allowed)
        if unknown:
            names = ", ".join(ase.data.chemical_symbols[z] for z in unknown)
            known = ", ".join(ase.data.chemical_symbols[z] for z in sorted(allowed))
            raise MLIPError(f"{loc}: element(s) {names} not known to the model (trained on {known})")


def normalise_pbc(atoms: ase.Atoms) -> ase.Atoms:
    """Treat a periodic flag with an all-zero cell (written by some tools) as non-periodic."""
    if any(atoms.pbc) and np.allclose(atoms.cell.array, 0.0):
        atoms = atoms.copy()
        atoms.pbc = False
    return atoms


def has_stress(atoms: ase.Atoms) -> bool:
    """Stress is defined (σ = (1/V) ∂E/∂ε) only for cells periodic along all three axes."""
    return bool(np.all(atoms.pbc))


def structure_labels(
    atoms: ase.Atoms, targets: Sequence[TargetSpec], loc: str, allow_isolated_without_labels: bool = True
) -> dict[str, np.ndarray]:
    """Every target's label of one structure (model units).

    Isolated atoms need only an energy label. A stress label is optional: structures without one,
    or not periodic along all three axes (molecules, slabs), get no stress label and are left out
    of the stress loss and metrics.
    """
    labels = {}
    isolated = is_isolated_atom(atoms)
    for spec in targets:
        if isolated and allow_isolated_without_labels and spec.kind != "energy":
            continue
        if spec.kind == "stress":
            keys = [spec.key] + ([spec.virial_key] if spec.virial_key else [])
            if not has_stress(atoms) or all(_raw_label(atoms, k) is None for k in keys):
                continue
        labels[spec.name] = extract_label(atoms, spec, loc)
    return labels


def read_labelled(
    path: str | os.PathLike,
    targets: Sequence[TargetSpec],
    fmt: str | None = None,
    allow_isolated_without_labels: bool = True,
) -> list[LabelledStructure]:
    """Read a file and the labels of every target for every structure.

    Isolated atoms (see :func:`is_isolated_atom`) need only an energy label; they are kept so that
    the caller can use them as atomic reference energies (E0s).
    """
    return list(iter_labelled(path, targets, fmt, allow_isolated_without_labels))


def iter_labelled(
    path: str | os.PathLike,
    targets: Sequence[TargetSpec],
    fmt: str | None = None,
    allow_isolated_without_labels: bool = True,
) -> Iterator[LabelledStructure]:
    """:func:`read_labelled` one structure at a time (``ase.io.iread``: constant memory)."""
    for index, atoms in enumerate(iter_atoms(path, fmt)):
        atoms = normalise_pbc(atoms)
        loc = where(path, index)
        check_structure(atoms, loc)
        labels = structure_labels(atoms, targets, loc, allow_isolated_without_labels)
        yield LabelledStructure(atoms=atoms, labels=labels, source=loc, index=index)


def check_stress_labels(path: object, targets: Sequence[TargetSpec], structures: Sequence) -> None:
    """Raise if a stress target has no label in any structure (a misspelt key, say).

    Args:
        structures: the :class:`LabelledStructure` list, or their label dicts.
    """
    for spec in targets:
        if spec.kind != "stress":
            continue
        labelled = sum(spec.name in getattr(s, "labels", s) for s in structures)
        if labelled == 0:
            keys = f"'{spec.key}'" + (f" or '{spec.virial_key}'" if spec.virial_key else "")
            raise MLIPError(
                f"{path}: no structure has a stress label (key {keys}) on a cell periodic along "
                f"x, y and z; fix the key or drop the stress target"
            )
