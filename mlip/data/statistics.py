"""Dataset statistics: atomic reference energies (E0s) and energy scale/shift."""

from __future__ import annotations

from collections.abc import Sequence

import ase.data
import numpy as np

from mlip.data.reading import LabelledStructure
from mlip.errors import MLIPError, warn_once
from mlip.targets import TargetSpec, tensor_blocks


RANK_TOLERANCE = 1e-10  # eigenvalues of CᵀC below this × the largest are treated as zero


def composition_matrix(numbers: Sequence[np.ndarray], species: Sequence[int]) -> np.ndarray:
    """``[n_structures, n_species]`` element counts."""
    index = {int(z): k for k, z in enumerate(species)}
    counts = np.zeros((len(numbers), len(species)))
    for row, nums in enumerate(numbers):
        for z, n in zip(*np.unique(np.asarray(nums, dtype=np.int64), return_counts=True)):
            counts[row, index[int(z)]] = n
    return counts


def solve_e0s(
    ctc: np.ndarray,
    cte: np.ndarray,
    species: Sequence[int],
    fixed: dict[int, float] | None = None,
) -> dict[int, float]:
    """Least-squares atomic energies from the normal equations of ``E ≈ Σ_Z n_Z E0_Z`` (eV).

    The one E0 solver of mlip (in-memory statistics and the streamed on-disk store alike).

    Args:
        ctc: ``[S, S]`` ``CᵀC`` of the element-count matrix ``C`` (columns in ``species`` order).
        cte: ``[S]`` ``CᵀE`` with the structures' energies ``E``.
        species: the atomic numbers of the columns.
        fixed: E0s already known (isolated-atom energies), kept as they are.

    Returns:
        atomic number → E0. When the compositions do not determine every E0 (one molecule type,
        elements that always appear in the same ratio) the minimum-norm solution is returned and a
        warning (once) says that the split between those elements is arbitrary.
    """
    fixed = {int(z): float(v) for z, v in (fixed or {}).items() if int(z) in set(map(int, species))}
    position = {int(z): k for k, z in enumerate(species)}
    free = [int(z) for z in species if int(z) not in fixed]
    out = dict(fixed)
    if free:
        f = [position[z] for z in free]
        x = [position[z] for z in sorted(fixed)]
        rhs = cte[f] - ctc[np.ix_(f, x)] @ np.array([fixed[z] for z in sorted(fixed)], dtype=float)
        matrix = ctc[np.ix_(f, f)]
        w, v = np.linalg.eigh(matrix)
        keep = w > RANK_TOLERANCE * max(float(w.max(initial=0.0)), 1e-300)
        solution = v[:, keep] @ ((v[:, keep].T @ rhs) / w[keep])
        rank = int(keep.sum())
        if rank < len(free):
            symbols = ", ".join(ase.data.chemical_symbols[z] for z in free)
            warn_once(
                f"E0 fit: the training compositions determine only {rank} combination(s) of the "
                f"{len(free)} atomic reference energies ({symbols}), e.g. all structures have one "
                f"stoichiometry, so their split between elements is arbitrary (minimum-norm); give "
                f"isolated-atom energies (data.e0s: a file of isolated atoms, or {{H: eV, ...}}) "
                f"for a model that transfers to other compositions"
            )
        out.update({z: float(val) for z, val in zip(free, solution)})
    return {int(z): out[int(z)] for z in species}


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
    if len(structures) == 0:
        raise MLIPError("cannot fit E0s: no structures with an energy label")
    counts = composition_matrix([s.atoms.numbers for s in structures], species)
    energies = np.array([float(s.labels["energy"]) for s in structures])
    return solve_e0s(counts.T @ counts, counts.T @ energies, species, fixed)


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


class BlockMoments:
    """Streaming per-component mean and spread of one target's labels, per loss block.

    ``add`` takes label-shaped rows ``[R, *label_shape]`` (per structure, or per atom for per-atom
    targets) in any number of chunks (Chan et al. merging: exact to rounding); :meth:`scales`
    gives, per block of :func:`mlip.targets.tensor_blocks`, the RMS deviation of the labels from
    their training mean, ``sqrt(Σ_components var / (2λ+1))``: the loss normalisation of
    ``training.loss_normalisation: scale`` (a mean predictor then has loss 1 per block).
    """

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.n = 0
        self.mean: list[np.ndarray] = []
        self.m2: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, *self.spec.label_shape)
        if rows.shape[0] == 0:
            return
        blocks = tensor_blocks(self.spec, rows)
        nb = rows.shape[0]
        if not self.mean:
            self.mean = [np.zeros(part.shape[1]) for part, _ in blocks]
            self.m2 = [np.zeros(part.shape[1]) for part, _ in blocks]
        total = self.n + nb
        for k, (part, _) in enumerate(blocks):
            mb = part.mean(axis=0)
            m2b = ((part - mb) ** 2).sum(axis=0)
            delta = mb - self.mean[k]
            self.m2[k] = self.m2[k] + m2b + delta**2 * self.n * nb / total
            self.mean[k] = self.mean[k] + delta * nb / total
        self.n = total

    def scales(self) -> list[float]:
        dofs = [dof for _, dof in tensor_blocks(self.spec, np.zeros((1, *self.spec.label_shape)))]
        if self.n == 0:
            return [1.0] * len(dofs)
        out = []
        for m2, dof in zip(self.m2, dofs):
            rms = float(np.sqrt(m2.sum() / (self.n * dof)))
            out.append(rms if np.isfinite(rms) and rms > 1e-12 else 1.0)
        return out


class LabelMeans:
    """Per-component means of the training labels, as the metrics see them (the *mean predictor*
    that ``mlip eval`` compares a model with).

    Quantities: ``energy`` per atom (eV/atom), ``forces`` and ``stress`` per component (stress
    only of structures that have one), tensor targets per component, and for rank-2 targets also
    ``<name>_iso`` (trace/3) and ``<name>_aniso`` (symmetric traceless part, 9 components), as in
    :class:`mlip.training.metrics.MetricsAccumulator`.
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}

    def _add(self, name: str, rows: np.ndarray) -> None:
        rows = rows.reshape(rows.shape[0], -1)
        if rows.shape[0] == 0:
            return
        self.sums[name] = self.sums.get(name, 0.0) + rows.sum(axis=0)
        self.rows[name] = self.rows.get(name, 0) + rows.shape[0]

    def add(self, spec: TargetSpec, labels: np.ndarray, n_atoms: np.ndarray | None = None) -> None:
        """Label rows ``[R, *label_shape]`` of one target (energies: with ``n_atoms`` ``[R]``)."""
        rows = np.asarray(labels, dtype=np.float64).reshape(-1, *spec.label_shape)
        if spec.kind == "energy":
            rows = rows / np.asarray(n_atoms, dtype=np.float64).reshape(-1)
        if spec.kind == "stress":
            rows = rows[np.all(np.isfinite(rows.reshape(len(rows), -1)), axis=1)]
        self._add(spec.name, rows)
        if spec.kind == "rank2":
            iso = np.trace(rows, axis1=-2, axis2=-1) / 3.0
            sym = 0.5 * (rows + np.swapaxes(rows, -1, -2)) - iso[:, None, None] * np.eye(3)
            self._add(spec.name + "_iso", iso.reshape(-1, 1))
            self._add(spec.name + "_aniso", sym)

    def means(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in np.atleast_1d(v / self.rows[k])] for k, v in self.sums.items()}


class PolarizationJumpCheck:
    """Warn when a periodic dataset's per-structure dipoles jump by a polarization quantum.

    The dipole of a periodic cell is only defined modulo ``e · (n₁a₁ + n₂a₂ + n₃a₃)`` (Berry-phase
    branch choice; ×2 with spin degeneracy). mlip learns the *sum of atomic contributions*, a
    smooth function of the positions, so a label that jumps by such a quantum between neighbouring
    frames (file order, same cell) cannot be learned. The check applies where neighbouring frames
    are close (median change below a quarter of the shortest lattice vector, as in MD); it flags
    changes that are a nonzero lattice vector up to a remainder as small as a typical change.
    Labels are taken to be in e·Å (set ``unit`` on the target so that they are).
    """

    def __init__(self, spec: TargetSpec, source: str) -> None:
        self.spec, self.source = spec, source
        self.previous: tuple[np.ndarray, np.ndarray] | None = None
        self.changes: list[tuple[int, np.ndarray, np.ndarray]] = []  # (index, Δμ, cell)

    def add(self, index: int, atoms, label: np.ndarray | None) -> None:
        if label is None or not np.all(atoms.pbc) or self.spec.kind != "vector" or self.spec.per_atom:
            self.previous = None
            return
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        dipole = np.asarray(label, dtype=np.float64).reshape(3)
        if self.previous is not None and np.allclose(self.previous[1], cell, rtol=0.05, atol=0.5):
            self.changes.append((index, dipole - self.previous[0], cell))
        self.previous = (dipole, cell)

    def jumps(self) -> list[int]:
        """Structure indices where the dipole jumped by a quantum from the frame before."""
        if len(self.changes) < 4:
            return []
        typical = float(np.median([np.linalg.norm(d) for _, d, _ in self.changes]))
        shortest = min(float(np.linalg.norm(c, axis=1).min()) for _, _, c in self.changes)
        if typical > 0.25 * shortest:
            return []  # not a smooth sequence of frames: a quantum jump would not stand out
        out = []
        for index, change, cell in self.changes:
            k = np.rint(np.linalg.solve(cell.T, change))
            remainder = np.linalg.norm(change - k @ cell)
            if np.any(k != 0) and remainder <= max(2.0 * typical, 1e-6):
                out.append(index)
        return out

    def report(self) -> None:
        jumps = self.jumps()
        if jumps:
            warn_once(
                f"{self.source}: target '{self.spec.name}' jumps by a polarization quantum e·(lattice "
                f"vector) between neighbouring periodic frames {len(jumps)} time(s) (first at "
                f"structure {jumps[0]}); mlip learns the dipole as a sum of atomic contributions "
                f"(smooth in the positions, no Berry-phase branch), so unwrap these labels onto one "
                f"branch first"
            )


def check_polarization_jumps(
    structures: Sequence[LabelledStructure], specs: Sequence[TargetSpec], source
) -> None:
    """Run :class:`PolarizationJumpCheck` over ``structures`` (file order) for every dipole-like target."""
    for spec in specs:
        if spec.kind == "vector" and not spec.per_atom:
            check = PolarizationJumpCheck(spec, str(source))
            for s in structures:
                check.add(s.index, s.atoms, s.labels.get(spec.name))
            check.report()
