"""ASE calculator: agrees with the model, handles molecules and cells, repeated calls are consistent."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_stress
from torch_geometric.data import Batch

from mlip import MLIPCalculator
from mlip.data.graph import atoms_to_graph
from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel, load_model
from tests.conftest import DATA, perturb_weights


@pytest.fixture(scope="module")
def ethanol():
    atoms = ase.io.read(DATA / "ethanol" / "test.xyz", 0)
    atoms.calc = None
    return atoms


def test_calculator_matches_model(trained_run, ethanol):
    model = load_model(str(trained_run / "model.pt"), dtype=torch.float64)
    graph = atoms_to_graph(ethanol, model.cutoff, dtype=torch.float64)
    direct = model(Batch.from_data_list([graph]), compute_forces=True)
    atoms = ethanol.copy()
    atoms.calc = MLIPCalculator(str(trained_run / "model.pt"), device="cpu", dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(float(direct["energy"][0]), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), direct["forces"].detach().numpy(), atol=1e-9)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    assert atoms.calc.get_property("free_energy") == pytest.approx(atoms.get_potential_energy())
    assert np.abs(atoms.get_forces()).max() > 1e-3


def test_repeated_calls_are_consistent(trained_run, ethanol):
    atoms = ethanol.copy()
    atoms.calc = MLIPCalculator(str(trained_run / "model.pt"), device="cpu")
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces().copy()
    atoms.positions[0] += 0.05
    e1 = atoms.get_potential_energy()
    assert e1 != pytest.approx(e0, abs=1e-8)
    atoms.positions[0] -= 0.05
    assert atoms.get_potential_energy() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), f0, atol=1e-10)
    bigger = atoms + ethanol.copy()[:3]
    bigger.positions[-3:] += 6.0
    bigger.calc = atoms.calc
    assert len(bigger.get_forces()) == 12


def test_periodic_stress_and_cell_changes():
    model = MLIPModel([6], cutoff=3.0, backbone=dict(channels=8, lmax=2, num_layers=1)).double()
    perturb_weights(model, 0.3)
    atoms = bulk("C", "diamond", a=3.57).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=1)
    atoms.calc = MLIPCalculator(model, device="cpu")
    s0 = atoms.get_stress()
    assert s0.shape == (6,)
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
    s1 = atoms.get_stress()
    assert not np.allclose(s0, s1)
    atoms.set_cell(atoms.cell / 1.02, scale_atoms=True)
    np.testing.assert_allclose(atoms.get_stress(), s0, atol=1e-10)
    # Molecules have no stress.
    mol = atoms.copy()
    mol.pbc = False
    mol.calc = MLIPCalculator(model, device="cpu")
    from ase.calculators.calculator import PropertyNotImplementedError

    with pytest.raises(PropertyNotImplementedError):
        mol.get_stress()


def test_unknown_element_is_a_clear_error(trained_run, ethanol):
    atoms = ethanol.copy()
    atoms.numbers[0] = 7
    atoms.calc = MLIPCalculator(str(trained_run / "model.pt"), device="cpu")
    with pytest.raises(MLIPError, match="element\\(s\\) N not known to the model"):
        atoms.get_potential_energy()


def test_float32_close_to_float64(trained_run, ethanol):
    a64, a32 = ethanol.copy(), ethanol.copy()
    a64.calc = MLIPCalculator(str(trained_run / "model.pt"), device="cpu", dtype="float64")
    a32.calc = MLIPCalculator(str(trained_run / "model.pt"), device="cpu", dtype="float32")
    assert a32.get_potential_energy() == pytest.approx(a64.get_potential_energy(), abs=1e-3)
    np.testing.assert_allclose(a32.get_forces(), a64.get_forces(), atol=1e-3)


def test_md_runs_and_writes_trajectory(trained_run, tmp_path):
    from scripts.run_md import main as run_md

    traj = tmp_path / "md.traj"
    assert (
        run_md(
            [
                str(trained_run / "model.pt"),
                str(DATA / "ethanol" / "test.xyz"),
                "--steps",
                "10",
                "--trajectory",
                str(traj),
                "--log-every",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    frames = ase.io.read(traj, ":")
    assert len(frames) >= 2
    assert np.all(np.isfinite(frames[-1].positions))


def test_md_nve_start_and_no_deprecation_warning(trained_run, tmp_path, capsys):
    """--temperature is the intended temperature; NVE draws velocities at 2 T by default."""
    import warnings

    from scripts.run_md import initial_temperature
    from scripts.run_md import main as run_md

    assert initial_temperature("nve", 300.0, None) == 600.0
    assert initial_temperature("nvt", 300.0, None) == 300.0
    assert initial_temperature("nve", 300.0, 450.0) == 450.0
    args = [str(trained_run / "model.pt"), str(DATA / "ethanol" / "test.xyz"), "--steps", "4"]
    args += ["--trajectory", str(tmp_path / "md.traj"), "--device", "cpu", "--ensemble", "nve"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # ASE 3.29 deprecates MaxwellBoltzmann...
        assert run_md([*args, "--temperature", "300"]) == 0
    out = capsys.readouterr().out
    assert "NVE, initial velocities drawn at 600.0 K" in out and "mean temperature" in out


def _random_model(seed: int = 0) -> MLIPModel:
    torch.manual_seed(seed)
    model = MLIPModel(
        [1, 6, 8],
        cutoff=3.5,
        backbone=dict(channels=8, num_layers=2, lmax=2, num_radial=4, radial_hidden=8),
        readout_hidden=8,
    )
    perturb_weights(model, 0.1)
    return model


def test_calculator_leaves_the_callers_model_untouched(ethanol):
    model = _random_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    atoms = ethanol.copy()
    atoms.calc = MLIPCalculator(model, device="cpu", dtype="float64")
    energy = atoms.get_potential_energy()
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # the caller's model still trains ...
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    graph = atoms_to_graph(ethanol, model.cutoff, dtype=torch.float32)
    model(Batch.from_data_list([graph]), compute_forces=False)["energy"].sum().backward()
    optimizer.step()
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # ... and the calculator works on its own copy of the weights it was given
    atoms.calc.reset()
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-12)


def test_calculator_stress_matches_ase_numerical_stress():
    """End to end through ASE: analytic stress vs ASE's finite-difference strain derivative."""
    atoms = bulk("C", "diamond", a=3.57, cubic=True)
    atoms.numbers[[1, 6]] = [8, 1]
    atoms.rattle(0.05, seed=3)
    atoms.set_cell(
        atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, -0.02], [0.01, 0.0, 1.0]]), scale_atoms=True
    )
    atoms.calc = MLIPCalculator(_random_model(1), device="cpu", dtype="float64")
    analytic = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(analytic).max() > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7 * np.abs(analytic).max())
