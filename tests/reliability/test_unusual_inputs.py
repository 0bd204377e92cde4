"""Valid but unusual inputs must give the right answer (not an error, not a NaN)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlip import MLIPCalculator
from tests.conftest import DATA


@pytest.fixture(scope="module")
def calc(trained_run):
    return MLIPCalculator(str(trained_run / "model.pt"), device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def ethanol():
    atoms = ase.io.read(DATA / "ethanol" / "test.xyz", 0)
    atoms.calc = None
    atoms.positions -= atoms.positions.mean(axis=0)
    return atoms


def energy_forces(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_isolated_atom_and_atoms_without_neighbours(calc):
    energies = {}
    for symbol in "HCO":
        e, f = energy_forces(calc, Atoms(symbol, positions=[[0, 0, 0]]))
        assert np.isfinite(e) and np.allclose(f, 0.0)
        energies[symbol] = e
    far = Atoms("HCO", positions=[[0, 0, 0], [10, 0, 0], [0, 10, 0]])  # > cutoff apart
    e, f = energy_forces(calc, far)
    assert e == pytest.approx(sum(energies.values()), abs=1e-9)
    assert np.allclose(f, 0.0)


def test_cell_smaller_than_cutoff_and_supercell(calc):
    small = bulk("C", "fcc", a=2.6)  # 1 atom, nearest images well inside the 4 Å cutoff
    e1, f1 = energy_forces(calc, small)
    e8, f8 = energy_forces(calc, small.repeat((2, 2, 2)))
    assert e8 == pytest.approx(8 * e1, rel=1e-12, abs=1e-9)
    assert np.allclose(f1, 0.0, atol=1e-10) and np.allclose(f8, 0.0, atol=1e-10)
    atoms = small.copy()
    atoms.calc = calc
    assert np.all(np.isfinite(atoms.get_stress()))


def test_mixed_pbc_slab(calc):
    slab = bulk("C", "diamond", a=3.57, cubic=True)
    slab.rattle(0.05, seed=0)
    slab.pbc = [True, True, False]
    e, f = energy_forces(calc, slab)
    shifted = slab.copy()
    shifted.positions[:, 2] += 7.0
    e_shift, _ = energy_forces(calc, shifted)
    assert e_shift == pytest.approx(e, abs=1e-9)
    e4, _ = energy_forces(calc, slab.repeat((2, 2, 1)))
    assert e4 == pytest.approx(4 * e, rel=1e-12, abs=1e-9)
    assert np.all(np.isfinite(f))


def test_zero_cell_flagged_periodic_is_a_molecule(calc, ethanol):
    mol = ethanol.copy()
    flagged = ethanol.copy()
    flagged.pbc = True  # cell stays all zeros, as some files write it
    e_mol, f_mol = energy_forces(calc, mol)
    e_flag, f_flag = energy_forces(calc, flagged)
    assert e_flag == pytest.approx(e_mol, abs=1e-10) and np.allclose(f_flag, f_mol, atol=1e-10)


def test_far_from_origin(calc, ethanol):
    e0, f0 = energy_forces(calc, ethanol)
    moved = ethanol.copy()
    moved.positions += np.array([1.0e4, -2.5e4, 3.0e3])
    e1, f1 = energy_forces(calc, moved)
    assert e1 == pytest.approx(e0, abs=1e-6)
    np.testing.assert_allclose(f1, f0, atol=1e-5)


def test_only_some_elements_present(calc):
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    e, f = energy_forces(calc, h2)
    assert np.isfinite(e) and np.allclose(f[0], -f[1])


def test_hundred_thousand_atoms(trained_run, ethanol):
    """10⁵ atoms: ethanol copies on a grid farther apart than the cutoff = N × one molecule."""
    calc32 = MLIPCalculator(str(trained_run / "model.pt"), device="cpu", dtype="float32")
    e_one, f_one = energy_forces(calc32, ethanol)
    n_side = 23  # 23³ = 12167 sites ≥ 11112 molecules
    n_mol = 11112
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_mol] * 9.0
    big = Atoms(
        numbers=np.tile(ethanol.numbers, n_mol),
        positions=(grid[:, None, :] + ethanol.positions[None]).reshape(-1, 3),
    )
    assert len(big) >= 100_000
    e_big, f_big = energy_forces(calc32, big)
    assert e_big == pytest.approx(n_mol * e_one, abs=1e-3 * n_mol)  # float32 model, float64 total
    np.testing.assert_allclose(f_big.reshape(n_mol, -1, 3), np.broadcast_to(f_one, (n_mol, 9, 3)), atol=1e-3)
