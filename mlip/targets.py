"""What a model can learn: the target specifications shared by data, model and training.

A target has a *name* (how the model and the metrics call it), a *key* (where the label sits in
the structure file), a *kind* and a per-structure or per-atom *shape*:

=============  ==========================  =======================  ================
kind           example names               shape (per structure)    units
=============  ==========================  =======================  ================
energy         energy                      ()                       eV
forces         forces                      (N, 3) per atom          eV/Å
stress         stress                      (3, 3)                   eV/Å³ (ASE sign)
vector         dipole, per-atom dipoles    (3,) or (N, 3)           as labelled
rank2          polarizability, Born charges (3, 3) or (N, 3, 3)     as labelled
spherical      EFG (λ=2), any (λ, σ) list  (Σ(2λ+1),) or (N, ·)     as labelled
=============  ==========================  =======================  ================

Energy, forces and stress come from one scalar energy model (forces and stress are autograd
derivatives). Vector, rank-2 and spherical targets are tensor heads (scalar coefficients × λ-basis).
``unit_factor`` multiplies the values read from the file (e.g. 0.148185 for bohr³ → Å³).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BOHR_TO_ANGSTROM = 0.529177210903
UNIT_FACTORS = {
    "": 1.0,
    "eV": 1.0,
    "Hartree": 27.211386245988,
    "kcal/mol": 0.0433641043,
    "meV": 1e-3,
    "angstrom": 1.0,
    "bohr": BOHR_TO_ANGSTROM,
    "angstrom3": 1.0,
    "bohr3": BOHR_TO_ANGSTROM**3,
    "e*angstrom": 1.0,
    "e*bohr": BOHR_TO_ANGSTROM,
    "debye": 0.20819434,
}

ENERGY_KINDS = ("energy", "forces", "stress")
TENSOR_KINDS = ("vector", "rank2", "spherical")


@dataclass(frozen=True)
class TargetSpec:
    """One learnable quantity.

    Attributes:
        name: output name (``energy``, ``forces``, ``stress``, ``dipole``, ...).
        kind: one of ``energy``, ``forces``, ``stress``, ``vector``, ``rank2``, ``spherical``.
        key: label key in ``atoms.info`` / ``atoms.arrays`` / calculator results.
        per_atom: label given per atom (shape ``[N, ...]``) instead of per structure.
        irreps: for tensor kinds, the ``(λ, σ)`` blocks the head predicts.
        weight: loss weight.
        unit_factor: multiplies file values to get model units.
        virial_key: for ``stress`` only, alternative key holding the virial (eV); converted
            with ``stress = -virial / volume``.
        charges: for a per-structure ``vector`` (a molecular dipole) only: add learned partial
            charges times positions to the atomic dipoles (:mod:`mlip.model.charges`).
    """

    name: str
    kind: str
    key: str
    per_atom: bool = False
    irreps: tuple[tuple[int, int], ...] = ()
    weight: float = 1.0
    unit_factor: float = 1.0
    virial_key: str | None = None
    symmetric: bool = True
    charges: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind == "forces" and not self.per_atom:  # the one per-atom rule: forces always are
            object.__setattr__(self, "per_atom", True)
        if self.kind in ("vector", "rank2") and not self.irreps:  # Cartesian targets: all their blocks
            object.__setattr__(self, "irreps", default_irreps(self.kind, self.symmetric))

    def to_dict(self) -> dict:
        """Plain-data form (stored in model files, checkpoints and store manifests)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "key": self.key,
            "per_atom": self.per_atom,
            "irreps": [list(x) for x in self.irreps],
            "weight": self.weight,
            "unit_factor": self.unit_factor,
            "virial_key": self.virial_key,
            "symmetric": self.symmetric,
            "charges": self.charges,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> TargetSpec:
        """Inverse of :meth:`to_dict`."""
        fields = {k: v for k, v in raw.items() if k != "irreps"}
        return cls(**fields, irreps=tuple(tuple(int(v) for v in x) for x in raw.get("irreps", ())))

    @property
    def is_tensor(self) -> bool:
        return self.kind in TENSOR_KINDS

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of one structure's label (per atom: of one atom's label)."""
        if self.kind == "energy":
            return ()
        if self.kind in ("forces", "vector"):
            return (3,)
        if self.kind in ("stress", "rank2"):
            return (3, 3)
        return (sum(2 * lam + 1 for lam, _ in self.irreps),)


def default_irreps(kind: str, symmetric: bool = True) -> tuple[tuple[int, int], ...]:
    """(λ, σ) blocks a Cartesian target decomposes into."""
    if kind == "vector":
        return ((1, 1),)
    if kind == "rank2":
        return ((0, 1), (2, 1)) if symmetric else ((0, 1), (1, -1), (2, 1))
    raise ValueError(kind)


def block_keys(spec: TargetSpec) -> list[str]:
    """Names of the (λ, σ) blocks a tensor target's loss is normalised by (``l0``, ``l1o``, ...);
    a single ``all`` for energy, forces and stress."""
    if not spec.is_tensor:
        return ["all"]
    return [f"l{lam}{'' if sig > 0 else 'o'}" for lam, sig in spec.irreps]


def tensor_blocks(spec: TargetSpec, rows):
    """Split label-shaped rows ``[R, *label_shape]`` (numpy or torch) into the target's blocks.

    Returns ``[(parts [R, k], dof)]`` in :func:`block_keys` order, such that ``Σ parts²`` over a
    block equals the squared norm of its spherical components and ``dof = 2λ+1``. Rank-2 blocks
    are computed in Cartesian form (the Cartesian ↔ spherical map is orthonormal, see
    :mod:`mlip.model.cartesian`): λ=0 ``tr/√3``, (1, −1) ``(A − Aᵀ)/2``, λ=2 the symmetric
    traceless part. Energy, forces and stress: one block with every component.
    """
    n = rows.shape[0]
    if not spec.is_tensor:
        flat = rows.reshape(n, -1)
        return [(flat, flat.shape[1])]
    if spec.kind == "vector":
        return [(rows.reshape(n, 3), 3)]
    if spec.kind == "spherical":
        out, start = [], 0
        for lam, _ in spec.irreps:
            out.append((rows[:, start : start + 2 * lam + 1], 2 * lam + 1))
            start += 2 * lam + 1
        return out
    trace = rows[:, 0, 0] + rows[:, 1, 1] + rows[:, 2, 2]
    swapped = rows.swapaxes(-1, -2)
    diagonal = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    eye = rows.new_tensor(diagonal) if hasattr(rows, "new_tensor") else np.asarray(diagonal)
    parts = {
        (0, 1): (trace.reshape(n, 1) / 3**0.5, 1),
        (1, -1): (((rows - swapped) / 2).reshape(n, 9), 3),
        (2, 1): (((rows + swapped) / 2).reshape(n, 9) - trace.reshape(n, 1) / 3 * eye, 5),
    }
    return [parts[irrep] for irrep in spec.irreps]
