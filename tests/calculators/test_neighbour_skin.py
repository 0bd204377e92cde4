"""Neighbour-list reuse with a skin (MLIPCalculator(skin=...)) gives the results of a fresh list."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from mlip import MLIPCalculator
from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel
from tests.conftest import DATA, perturb_weights

TOL = 1e-10


def _model(cutoff: float = 4.0, seed: int = 0, noise: float = 0.2) -> MLIPModel:
    torch.manual_seed(seed)
    model = MLIPModel(
        [1, 6, 8],
        cutoff=cutoff,
        backbone=dict(channels=8, lmax=2, num_layers=2, radial_hidden=8, avg_num_neighbours=8.0),
        readout_hidden=8,
    ).double()
    perturb_weights(model, noise)
    return model.eval()


def _pair(model: MLIPModel, skin: float) -> tuple[MLIPCalculator, MLIPCalculator]:
    fresh = MLIPCalculator(model, device="cpu", dtype="float64")
    reuse = MLIPCalculator(model, device="cpu", dtype="float64", skin=skin)
    return fresh, reuse


def _results(calc: MLIPCalculator, atoms, stress: bool = False) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().copy()}
    if stress:
        out["stress"] = atoms.get_stress().copy()
    return out


def _assert_same(a: dict, b: dict) -> None:
    for key in a:
        scale = max(1.0, float(np.max(np.abs(a[key]))))
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=TOL * scale, err_msg=key)


@pytest.fixture(scope="module")
def ethanol():
    atoms = ase.io.read(DATA / "ethanol" / "test.xyz", 0)
    atoms.calc = None
    return atoms


def test_molecule_reuse_and_rebuild_match_fresh_list(ethanol):
    model = _model()
    fresh, reuse = _pair(model, skin=1.0)
    rng = np.random.default_rng(0)
    atoms = ethanol.copy()
    drift = rng.normal(size=(len(atoms), 3)) * 0.02
    results_checked = 0
    for _ in range(40):
        atoms.positions += drift + rng.normal(scale=0.01, size=atoms.positions.shape)
        a, b = _results(fresh, atoms), _results(reuse, atoms)
        assert abs(a["energy"]) > 1e-3 and np.abs(a["forces"]).max() > 1e-3
        _assert_same(a, b)
        results_checked += 1
    # the list was reused most of the time, and rebuilt after atoms moved more than skin / 2
    assert 2 <= reuse.neighbour_list_builds < results_checked // 2
    assert fresh.neighbour_list_builds == results_checked


def test_small_periodic_cell_with_stress(ethanol):
    """Cell smaller than the cutoff: several images of the same atom are neighbours."""
    model = _model(cutoff=4.0, seed=1)
    fresh, reuse = _pair(model, skin=0.8)
    atoms = bulk("C", "diamond", a=3.57)  # 2 atoms, 2.5 Å primitive vectors
    atoms.numbers[1] = 8
    rng = np.random.default_rng(1)
    for _ in range(25):
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        a, b = _results(fresh, atoms, stress=True), _results(reuse, atoms, stress=True)
        assert np.abs(a["stress"]).max() > 1e-4
        _assert_same(a, b)
    assert reuse.neighbour_list_builds < 25


def test_cell_numbers_and_size_changes_trigger_a_rebuild(ethanol):
    model = _model(cutoff=4.0, seed=2)
    fresh, reuse = _pair(model, skin=1.0)
    atoms = bulk("C", "diamond", a=3.57, cubic=True)
    atoms.rattle(0.05, seed=3)
    _assert_same(_results(fresh, atoms, True), _results(reuse, atoms, True))
    builds = reuse.neighbour_list_builds
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array * 1.01, scale_atoms=True)  # tiny displacements, new cell
    _assert_same(_results(fresh, strained, True), _results(reuse, strained, True))
    assert reuse.neighbour_list_builds == builds + 1
    swapped = strained.copy()
    swapped.numbers[0] = 1
    _assert_same(_results(fresh, swapped, True), _results(reuse, swapped, True))
    assert reuse.neighbour_list_builds == builds + 2
    molecule = ethanol.copy()  # different size and no periodicity
    _assert_same(_results(fresh, molecule), _results(reuse, molecule))
    assert reuse.neighbour_list_builds == builds + 3
    wrapped = atoms.copy()  # an atom wrapped across the cell: jump > skin / 2, so rebuild
    wrapped.positions[0] += wrapped.cell.array[0]
    _assert_same(_results(fresh, wrapped, True), _results(reuse, wrapped, True))
    np.testing.assert_allclose(
        _results(fresh, wrapped, True)["energy"], _results(fresh, atoms, True)["energy"]
    )


def test_velocity_verlet_steps_match_fresh_list(ethanol):
    """Along an MD trajectory driven by the reusing calculator, every step equals a fresh list."""
    model = _model(cutoff=4.0, seed=3, noise=0.05)  # gentle forces: a stable short trajectory
    fresh, reuse = _pair(model, skin=1.5)
    atoms = ethanol.copy()
    atoms.calc = reuse
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(4))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    checked = []

    def compare() -> None:
        ref = _results(fresh, atoms)
        _assert_same(ref, {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()})
        checked.append(1)

    dyn.attach(compare, interval=1)
    dyn.run(60)
    assert len(checked) >= 60
    assert 1 <= reuse.neighbour_list_builds < 20  # reused for most steps


def test_min_distance_and_invalid_skin(ethanol):
    model = _model()
    with pytest.raises(MLIPError, match="skin"):
        MLIPCalculator(model, device="cpu", skin=-1.0)
    atoms = ethanol.copy()
    atoms.calc = MLIPCalculator(model, device="cpu", dtype="float64", skin=1.0, min_distance=0.5)
    atoms.get_potential_energy()
    atoms.positions[1] = atoms.positions[0] + [0.2, 0.0, 0.0]
    with pytest.raises(MLIPError, match="min_distance"):
        atoms.get_potential_energy()
