"""ASE calculator for MD, relaxations and property prediction.

>>> from mlip import MLIPCalculator
>>> atoms.calc = MLIPCalculator(model="model.pt", device="cpu", dtype="float64")
>>> atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

Units: energy eV, forces eV/Å, stress eV/Å³ (ASE sign and Voigt order), dipole as trained
(e·Å for the shipped configs), polarizability 3×3 as trained (Å³). Every tensor target of the model
is a calculator property under its name: ``calc.get_property("polarizability", atoms)``; per-atom
targets have shape ``[N, ...]``.

Models with a per-structure ``dipole`` target also give Born effective charges,
``calc.get_property("born_charges", atoms)`` ``[N, 3, 3]`` with ``Z[i, a, b] = ∂μ_a/∂r_{i,b}`` (e for a
dipole in e·Å), and models with a ``polarizability`` target ``"polarizability_derivatives"``
``[N, 3, 3, 3]`` = ``∂α_ab/∂r_{i,c}``: exact autograd derivatives, computed only when asked for
(see :mod:`mlip.model.derivatives`). Asking a model without the target raises a one-line
:class:`~mlip.errors.MLIPError`.

MD in a uniform electric field: ``MLIPCalculator(model, electric_field=(0, 0, 0.1))`` (V/Å for a
dipole in e·Å) adds ``−μ·E`` to the energy and ``Z_iᵀ E`` to the forces, with ``μ`` the model's
dipole (one extra backward pass); ``energies`` stay the model's atomic energies without the field
term, and stress is not available under a field.

The model is loaded once; each call rebuilds only the neighbour list and a few small tensors.
With ``skin > 0`` (e.g. ``skin=1.0`` for MD) even the neighbour list is reused: it is built once
with ``cutoff + skin`` and, while no atom has moved more than ``skin / 2`` since (and numbers,
cell and periodicity are unchanged), each call only recomputes the distances of those candidate
pairs and keeps the ones within the cutoff, which are exactly the pairs a fresh list would give.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch_geometric.data import Data

from mlip.data.graph import atoms_to_graph, check_min_distance, graph_cell, make_graph
from mlip.data.neighbours import build_neighbour_list
from mlip.data.reading import check_structure, normalise_pbc
from mlip.device import select_device
from mlip.errors import MLIPError
from mlip.model.derivatives import (
    BORN_CHARGES,
    SOURCES,
    derivative_source,
    forward_in_electric_field,
    forward_with_position_derivatives,
)
from mlip.model.potential import MLIPModel, load_model
from mlip.outputs import ENERGY, FORCES, NODE_ENERGY, STRESS

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class MLIPCalculator(Calculator):
    """ASE calculator around an :class:`~mlip.model.potential.MLIPModel`.

    Args:
        model: path to a ``model.pt`` written by ``mlip train`` (loaded with
            ``weights_only=True``), or an ``MLIPModel`` instance. An instance is copied (the
            caller's module is left as it was: dtype, device, training mode, trainable weights),
            so later changes to it, e.g. further training, need a new calculator.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"float64"`` (default, for MD) or ``"float32"`` (faster).
        min_distance: raise if two atoms come closer than this (Å; default 0.1, far below any
            bond, catches coincident atoms that would otherwise give NaN); 0 disables.
        skin: neighbour-list skin (Å). 0 (default) builds a fresh neighbour list on every call;
            > 0 reuses a list built with ``cutoff + skin`` until an atom has moved more than
            ``skin / 2`` (or the cell, periodicity or atoms change). Same results either way
            (up to the summation order, ~1e-15 relative); faster in MD, where the list changes
            slowly. Typical: 0.5–2 Å.
        electric_field: uniform field ``[3]`` (V/Å for a dipole in e·Å) coupled through the
            model's dipole (energy ``U − μ·E``, forces ``F + Zᵀ E``); None or zeros: no field.
            Needs a model with energy and a per-structure ``dipole`` target.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "dipole",
        "polarizability",
        "born_charges",
        "polarizability_derivatives",
    ]

    def __init__(
        self,
        model: str | MLIPModel,
        device: str = "auto",
        dtype: str = "float64",
        min_distance: float = 0.1,
        skin: float = 0.0,
        electric_field: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not skin >= 0.0:
            raise MLIPError(f"skin must be >= 0 Å, got {skin!r}")
        if dtype not in _DTYPES:
            raise MLIPError(f"dtype must be float32 or float64, got {dtype!r}")
        self.device = select_device(device)
        self.dtype = _DTYPES[dtype]
        if isinstance(model, MLIPModel):
            # A copy: the caller's module keeps its dtype, device, mode and trainable weights.
            self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        else:
            self.model = load_model(str(model), self.device, self.dtype)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.min_distance = float(min_distance)
        self.skin = float(skin)
        self._verlet: dict | None = None  # candidate pairs within cutoff + skin (skin > 0)
        self.neighbour_list_builds = 0  # how many times a list was built (diagnostics)
        self.cutoff = self.model.cutoff
        self._known_numbers = set(self.model.species)
        self._checked_numbers: bytes | None = None
        self.tensor_names = list(self.model.tensor_target_names)
        # Per instance: energy properties only if the model has an energy head, plus its tensor targets
        # (a target named "dipole" makes atoms.get_dipole_moment() work).
        energy_props = (
            ["energy", "free_energy", "energies", "forces", "stress"] if self.model.has_energy else []
        )
        # Position derivatives by autograd (Born charges from a dipole, ∂α/∂r from a polarizability),
        # computed only when asked for; a learned target of the same name takes precedence.
        self.derivative_names = [
            name for name in SOURCES if name not in self.tensor_names and self._has_source(name)
        ]
        self.implemented_properties = energy_props + self.tensor_names + self.derivative_names
        self.has_energy = self.model.has_energy
        self._field: np.ndarray | None = None
        self._field_tensor: torch.Tensor | None = None  # the same, on the model's device and dtype
        self.electric_field = electric_field

    @property
    def electric_field(self) -> np.ndarray | None:
        """The uniform field ``[3]`` (V/Å for a dipole in e·Å), or None; setting it resets results."""
        return None if self._field is None else self._field.copy()

    @electric_field.setter
    def electric_field(self, value: Any) -> None:
        if value is None:
            field = None
        else:
            field = np.asarray(value, dtype=np.float64)
            if field.shape != (3,) or not np.all(np.isfinite(field)):
                raise MLIPError(f"electric_field must be three finite numbers (V/Å), got {value!r}")
            if not np.any(field):
                field = None
            else:
                if not self._has_source(BORN_CHARGES):
                    have = ", ".join(s.name for s in self.model.target_specs)
                    raise MLIPError(
                        "electric_field couples through the model's dipole, but the model has no "
                        f"per-structure vector target 'dipole' (its targets: {have})"
                    )
                if not self.has_energy:
                    raise MLIPError("electric_field needs a model with an energy target")
        self._field = field
        self._field_tensor = (
            None if field is None else torch.as_tensor(field, dtype=self.dtype, device=self.device)
        )
        self.reset()

    def _has_source(self, name: str) -> bool:
        try:
            derivative_source(self.model, name)
        except MLIPError:
            return False
        return True

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name in SOURCES and name not in self.implemented_properties:
            derivative_source(self.model, name)  # raises a one-line MLIPError naming the missing target
        return super().get_property(name, atoms, allow_calculation)

    def _check(self, atoms) -> None:
        key = atoms.numbers.tobytes()
        if key != self._checked_numbers:
            check_structure(atoms, "atoms", allowed_numbers=self._known_numbers)
            self._checked_numbers = key
        if not np.all(np.isfinite(atoms.positions)):
            raise MLIPError("atoms: positions contain NaN or Inf")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = normalise_pbc(self.atoms)
        self._check(atoms)
        if self.skin > 0:
            graph = self._graph_with_skin(atoms).to(self.device)
        else:
            self.neighbour_list_builds += 1
            graph = atoms_to_graph(
                atoms, self.cutoff, min_distance=self.min_distance, source="atoms", dtype=self.dtype
            ).to(self.device)
        periodic = bool(np.all(atoms.pbc))
        want_stress = periodic and self.has_energy and "stress" in properties
        derivatives = [name for name in self.derivative_names if name in properties]
        field = self._field_tensor
        if field is not None and want_stress:
            raise MLIPError("stress is not available under an electric field (electric_field is set)")
        if field is not None and not derivatives:
            out = forward_in_electric_field(self.model, graph, field)
        elif derivatives:
            wanted = derivatives + ([BORN_CHARGES] if field is not None else [])
            out = forward_with_position_derivatives(
                self.model,
                graph,
                sorted(set(wanted)),
                compute_forces=self.has_energy,
                compute_stress=want_stress,
            )
            if field is not None:  # the same coupling from the Born charges just computed
                dipole = derivative_source(self.model, BORN_CHARGES)
                out[FORCES] = out[FORCES] + torch.einsum("iab,a->ib", out[BORN_CHARGES], field)
                out[ENERGY] = out[ENERGY] - (out[dipole] * field).sum(-1).to(out[ENERGY].dtype)
        else:
            out = self.model(graph, compute_forces=self.has_energy, compute_stress=want_stress)
        results: dict[str, Any] = {}
        if self.has_energy:
            energy = float(out[ENERGY].detach().cpu()[0])
            results["energy"] = energy
            results["free_energy"] = energy
            results["energies"] = out[NODE_ENERGY].detach().cpu().numpy().astype(np.float64)
            results["forces"] = out[FORCES].detach().cpu().numpy().astype(np.float64)
            if want_stress:
                stress = out[STRESS].detach().cpu().numpy()[0].astype(np.float64)
                results["stress"] = full_3x3_to_voigt_6_stress(stress)
        for name in self.tensor_names:
            value = out[name].detach().cpu().numpy().astype(np.float64)
            value = value[0] if value.shape[0] == 1 and not self._per_atom(name) else value
            results[name] = value
        for name in derivatives:
            results[name] = out[name].cpu().numpy().astype(np.float64)
        self.results = results

    # ------------------------------------------------------------------ neighbour-list reuse
    def _graph_with_skin(self, atoms) -> Data:
        """The graph of ``atoms`` from the cached candidate pairs (rebuilt when needed)."""
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = graph_cell(atoms.cell.array, pbc)
        positions = np.asarray(atoms.positions, dtype=np.float64)
        cache = self._verlet
        if (
            cache is None
            or cache["numbers"].shape != atoms.numbers.shape
            or not np.array_equal(cache["numbers"], atoms.numbers)
            or not np.array_equal(cache["pbc"], pbc)
            or not np.array_equal(cache["cell"], cell)
            or np.max(np.linalg.norm(positions - cache["positions"], axis=1), initial=0.0) > 0.5 * self.skin
        ):
            i, j, shifts, _ = build_neighbour_list(positions, atoms.cell.array, pbc, self.cutoff + self.skin)
            cache = {
                "numbers": atoms.numbers.copy(),
                "pbc": pbc.copy(),
                "cell": cell.copy(),
                "positions": positions.copy(),
                "i": i,
                "j": j,
                "shifts": shifts,
                "offsets": shifts @ cell,
            }
            self._verlet = cache
            self.neighbour_list_builds += 1
        i, j = cache["i"], cache["j"]
        vectors = positions[j] - positions[i] + cache["offsets"]
        dist = np.linalg.norm(vectors, axis=1)
        keep = dist < self.cutoff
        i, j, shifts, dist = i[keep], j[keep], cache["shifts"][keep], dist[keep]
        check_min_distance(i, j, dist, self.min_distance, "atoms")
        return make_graph(positions, atoms.numbers, cell, pbc, i, j, shifts, dtype=self.dtype)

    def _per_atom(self, name: str) -> bool:
        return any(s.name == name and s.per_atom for s in self.model.target_specs)
