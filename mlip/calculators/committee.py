"""A committee of models as one ASE calculator: the mean prediction and the members' spread.

>>> from mlip import MLIPCommitteeCalculator
>>> atoms.calc = MLIPCommitteeCalculator(["seed0/model.pt", "seed1/model.pt", "seed2/model.pt"])
>>> atoms.get_potential_energy(), atoms.get_forces()     # means over the members
>>> atoms.calc.get_property("forces_std", atoms)          # [N] eV/Å, disagreement per atom

Models trained with different seeds (or data subsets) err partly independently, so their mean is
more accurate than a typical member, most of all far from the training data, and their spread says
where the committee extrapolates: the usual signal for picking new structures to label (active
learning) or stopping an MD run that left the training distribution. Energy and forces stay
conservative: the mean energy's negative gradient is the mean of the members' forces.

Results besides the means (``energy``, ``free_energy``, ``energies``, ``forces``, ``stress`` and every
tensor target, as :class:`~mlip.calculators.ase_calculator.MLIPCalculator` gives them):

- ``energy_std``: standard deviation of the members' energies (eV; population, ``ddof=0``);
- ``forces_std`` ``[N]``: per atom ``sqrt(mean_k |F_k − F̄|²)`` (eV/Å), the members' force
  disagreement (its maximum over atoms is the usual active-learning criterion);
- ``<target>_std``: the element-wise standard deviation of each tensor target (e.g. ``dipole_std``);
- ``committee_energy`` ``[K]`` (eV) and ``committee_forces`` ``[K, N, 3]`` (eV/Å): each member's.

The cost is one model call per member: a committee of three costs three times one model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from mlip.calculators.ase_calculator import MLIPCalculator
from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel

# The extra results of a committee of energy models (module docstring), besides <tensor>_std.
_ENERGY_SPREADS = ["energy_std", "forces_std"]
_MEMBER_RESULTS = ["committee_energy", "committee_forces"]


class MLIPCommitteeCalculator(Calculator):
    """Mean and spread of several :class:`MLIPCalculator` members (module docstring).

    Args:
        models: two or more ``model.pt`` paths or :class:`MLIPModel` instances with the same
            targets and elements (e.g. the same config trained with different seeds).
        **member_kwargs: passed to every member :class:`MLIPCalculator` (``device``, ``dtype``,
            ``min_distance``, ``skin``, ``electric_field``).
    """

    def __init__(self, models: Sequence[str | os.PathLike | MLIPModel], **member_kwargs: Any) -> None:
        super().__init__()
        if isinstance(models, (str, os.PathLike, MLIPModel)) or len(models) < 2:
            raise MLIPError("a committee needs two or more models (a list of model.pt paths or models)")
        self.members = [MLIPCalculator(model, **member_kwargs) for model in models]
        check_members([member.model for member in self.members], [_name(model) for model in models])
        first = self.members[0]
        self.tensor_names = list(first.tensor_names)
        self.has_energy = first.has_energy
        self.model = first.model  # the first member's model: its targets and elements are every member's
        # The spread results, in the order of :func:`spreads` (``mlip md`` writes these).
        self.spread_names = (_ENERGY_SPREADS if first.has_energy else []) + [
            f"{n}_std" for n in self.tensor_names
        ]
        members = _MEMBER_RESULTS if first.has_energy else []
        self.implemented_properties = list(first.implemented_properties) + self.spread_names + members

    @property
    def electric_field(self) -> np.ndarray | None:
        """The members' uniform field ``[3]`` (V/Å), or None; setting it sets every member's."""
        return self.members[0].electric_field

    @electric_field.setter
    def electric_field(self, value: Any) -> None:
        for member in self.members:
            member.electric_field = value
        self.reset()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        wanted = [p for p in properties if p in self.members[0].implemented_properties]
        if self.members[0].has_energy and "energy" not in wanted:
            wanted.append("energy")
        runs = []
        for member in self.members:
            member.calculate(self.atoms, wanted, all_changes)
            runs.append(member.results)
        results: dict[str, Any] = {}
        for name, value in runs[0].items():
            mean = np.mean([np.asarray(run[name], dtype=np.float64) for run in runs], axis=0)
            results[name] = float(mean) if np.ndim(value) == 0 else mean
        results.update(spreads(runs, self.tensor_names))
        if "energy" in results:
            results["committee_energy"] = np.array([run["energy"] for run in runs], dtype=np.float64)
            results["committee_forces"] = np.stack([run["forces"] for run in runs])
        self.results = results


def spreads(members: Sequence[dict], tensor_names: Sequence[str]) -> dict[str, Any]:
    """The committee's spread from each member's predictions (dicts with ``energy`` eV, ``forces``
    ``[N, 3]`` eV/Å and tensor targets by name): ``energy_std`` (population std), per-atom
    ``forces_std`` ``[N]`` = ``sqrt(mean_k |F_k − F̄|²)``, and ``<tensor>_std`` (element-wise) for each
    of ``tensor_names``. Shared by the calculator and ``mlip predict --committee``."""
    out: dict[str, Any] = {}
    if "energy" in members[0]:
        out["energy_std"] = float(np.std([float(m["energy"]) for m in members]))
        forces = np.stack([np.asarray(m["forces"], dtype=np.float64) for m in members])
        out["forces_std"] = np.sqrt(((forces - forces.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))
    for name in tensor_names:
        out[f"{name}_std"] = np.std([np.asarray(m[name], dtype=np.float64) for m in members], axis=0)
    return out


def check_members(models: Sequence[MLIPModel], names: Sequence[str]) -> None:
    """Raise a one-line error unless every committee model has the first's targets and elements;
    ``names[k]`` is how the error names model k (its path). Shared by the calculator and
    ``mlip predict --committee``."""
    first = models[0]
    targets = [spec.name for spec in first.target_specs]
    for k, (model, name) in enumerate(zip(models[1:], names[1:]), start=1):
        have = [spec.name for spec in model.target_specs]
        if have != targets:
            raise MLIPError(
                f"committee member {k} ({name}) predicts {have}, but member 0 ({names[0]}) predicts {targets}"
            )
        if set(model.species) != set(first.species):
            raise MLIPError(
                f"committee member {k} ({name}) knows elements {sorted(model.species)}, but member 0 "
                f"({names[0]}) knows {sorted(first.species)}"
            )


def _name(model: str | os.PathLike | MLIPModel) -> str:
    """How an error message names a member: its path, or "an MLIPModel"."""
    return "an MLIPModel" if isinstance(model, MLIPModel) else str(model)
