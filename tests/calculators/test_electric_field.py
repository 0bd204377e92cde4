"""MD in a uniform electric field through the model's dipole (float64, tiny random model).

Under a field E the calculator's energy is ``U − μ·E`` and its forces are ``F + Zᵀ E``: the forces
are minus the finite-difference gradient of that energy, the field's share equals the Born charges
contracted with E, both code paths (with and without Born charges asked) agree, rotating the
structure and the field together rotates the forces (O(3)), and misuse gives one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from mlip import MLIPCalculator
from mlip.errors import MLIPError
from tests.calculators.test_born_charges import TARGETS, _random_o3, molecule, tensor_model

FIELD = np.array([0.3, -0.2, 0.5])  # V/Å: large, so that the field's share is far above rounding


@pytest.fixture(scope="module")
def model():
    return tensor_model()


def _energy_forces(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_forces_are_minus_the_gradient_of_the_field_energy(model):
    calc = MLIPCalculator(model, device="cpu", dtype="float64", electric_field=FIELD)
    atoms = molecule(1)
    _, forces = _energy_forces(calc, atoms)
    h = 1e-5
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for b in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, b] += h
            minus.positions[i, b] -= h
            numeric[i, b] = -(_energy_forces(calc, plus)[0] - _energy_forces(calc, minus)[0]) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-8, rtol=1e-7)


def test_field_terms_are_born_charges_and_dipole(model):
    plain = MLIPCalculator(model, device="cpu", dtype="float64")
    field = MLIPCalculator(model, device="cpu", dtype="float64", electric_field=FIELD)
    atoms = molecule(2)
    e0, f0 = _energy_forces(plain, atoms)
    e1, f1 = _energy_forces(field, atoms)
    atoms.calc = plain
    z = np.asarray(plain.get_property("born_charges", atoms))
    mu = atoms.get_dipole_moment()
    shift = np.einsum("iab,a->ib", z, FIELD)
    assert np.abs(shift).max() > 1e-3  # the field does act
    np.testing.assert_allclose(f1 - f0, shift, atol=1e-10)
    assert e1 - e0 == pytest.approx(-mu @ FIELD, abs=1e-10)
    # asking for the Born charges takes the other code path: same energy and forces
    atoms.calc = field
    z_field = np.asarray(field.get_property("born_charges", atoms))
    np.testing.assert_allclose(z_field, z, atol=1e-12)
    np.testing.assert_allclose(field.results["forces"], f1, atol=1e-10)
    assert field.results["energy"] == pytest.approx(e1, abs=1e-10)


def test_no_field_and_zero_field_are_the_plain_model(model):
    atoms = molecule(3)
    e0, f0 = _energy_forces(MLIPCalculator(model, device="cpu", dtype="float64"), atoms)
    calc = MLIPCalculator(model, device="cpu", dtype="float64", electric_field=FIELD)
    calc.electric_field = [0.0, 0.0, 0.0]  # switching the field off resets the results
    assert calc.electric_field is None
    e1, f1 = _energy_forces(calc, atoms)
    assert e1 == pytest.approx(e0, abs=1e-12)
    np.testing.assert_allclose(f1, f0, atol=1e-12)


@pytest.mark.parametrize("improper", [False, True])
def test_rotating_structure_and_field_together_rotates_the_forces(model, improper):
    rot = _random_o3(11 + improper, improper)
    atoms = molecule(4)
    e, f = _energy_forces(MLIPCalculator(model, device="cpu", dtype="float64", electric_field=FIELD), atoms)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    calc = MLIPCalculator(model, device="cpu", dtype="float64", electric_field=rot @ FIELD)
    e_rot, f_rot = _energy_forces(calc, rotated)
    assert e_rot == pytest.approx(e, abs=1e-10)
    np.testing.assert_allclose(f_rot, f @ rot.T, atol=1e-10)


def test_field_errors_are_one_line(model):
    with pytest.raises(MLIPError, match="no per-structure vector target 'dipole'.*energy, forces"):
        MLIPCalculator(tensor_model(TARGETS[:2]), device="cpu", electric_field=FIELD)
    with pytest.raises(MLIPError, match="needs a model with an energy target"):
        MLIPCalculator(tensor_model(TARGETS[2:]), device="cpu", electric_field=FIELD)
    with pytest.raises(MLIPError, match="three finite numbers"):
        MLIPCalculator(model, device="cpu", electric_field=[0.1, 0.2])
    with pytest.raises(MLIPError, match="three finite numbers"):
        MLIPCalculator(model, device="cpu", electric_field=[0.1, np.nan, 0.0])
    crystal = Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=np.eye(3) * 4.0, pbc=True)
    crystal.calc = MLIPCalculator(model, device="cpu", dtype="float64", electric_field=FIELD)
    assert np.isfinite(crystal.get_forces()).all()  # forces (what MD needs) work in a cell
    with pytest.raises(MLIPError, match="stress is not available under an electric field"):
        crystal.get_stress()
