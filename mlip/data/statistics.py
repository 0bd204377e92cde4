"""Dataset statistics: atomic reference energies (E0s) and energy scale/shift."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlip.data.reading import LabelledStructure
from mlip.errors import MLIPError


def fit_e0s(
    structures: Sequence[LabelledStructure],
    species: Sequence[int],
    fixed: dict[int, float] | None = None,
) -> dict[int, float]:
    """Least-squares atomic energies ``E ≈ Σ_Z n_Z(A) E0_Z`` (eV), keeping ``fixed`` values.

    Args:
        structures: structures with an ``energy`` label.
        species: atomic numbers to fit.
        fixed: E0s already known (e.g. from isolated-atom structures), not refitted.
    """
    fixed = dict(fixed or {})
    free = [z for z in species if z not in fixed]
    if not free:
        return {int(z): float(fixed[z]) for z in species}
    counts = np.array([[np.sum(s.atoms.numbers == z) for z in free] for s in structures], float)
    energies = np.array([float(s.labels["energy"]) for s in structures])
    energies -= np.array(
        [sum(fixed.get(int(z), 0.0) for z in s.atoms.numbers if int(z) in fixed) for s in structures]
    )
    if len(structures) == 0:
        raise MLIPError("cannot fit E0s: no structures with an energy label")
    # Minimum-norm least squares: exact when the compositions determine the E0s; species whose
    # counts never vary independently (one molecule type, absent species) stay well defined. (A
    # ridge term here biased every E0 by ~1e-7·cond·|E0|, i.e. 1e-4 eV for O on tiny data sets.)
    e0 = np.linalg.lstsq(counts.reshape(len(structures), len(free)), energies, rcond=None)[0]
    out = {int(z): float(v) for z, v in zip(free, e0)}
    out.update({int(z): float(v) for z, v in fixed.items()})
    return {int(z): out[int(z)] for z in species}


def energy_scale_shift(
    structures: Sequence[LabelledStructure], e0s: dict[int, float], has_forces: bool
) -> tuple[float, float]:
    """Per-atom shift (mean interaction energy per atom, eV) and scale (RMS force, eV/Å).

    The model predicts ``E_i = scale · ε_i + shift + E0[Z_i]`` so that the network output ε is O(1).
    Falls back to the standard deviation of the per-atom energy when there are no forces.
    """
    per_atom = []
    for s in structures:
        e = float(s.labels["energy"]) - sum(e0s[int(z)] for z in s.atoms.numbers)
        per_atom.append(e / len(s.atoms))
    per_atom = np.array(per_atom)
    shift = float(per_atom.mean()) if len(per_atom) else 0.0
    if has_forces:
        forces = np.concatenate([s.labels["forces"].reshape(-1) for s in structures])
        scale = float(np.sqrt(np.mean(forces**2)))
    else:
        scale = float(per_atom.std())
    if not np.isfinite(scale) or scale < 1e-6:
        scale = 1.0
    return scale, shift
