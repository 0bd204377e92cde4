"""Committee calculator: means and spreads equal those of its members run one by one (float64), forces
stay the exact negative gradient of the mean energy, spreads are O(3)-invariant and clear errors
name the member that does not fit."""

from __future__ import annotations

import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from mlip import MLIPCalculator, MLIPCommitteeCalculator
from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel, save_model
from tests.calculators.test_born_charges import TARGETS, tensor_model
from tests.conftest import perturb_weights


def member(seed: int, species=(1, 6, 8), targets=TARGETS) -> MLIPModel:
    """A small random float64 model; different seeds give different (committee-like) models."""
    return tensor_model(targets, seed, species)


def molecule() -> Atoms:
    rng = np.random.default_rng(3)
    atoms = Atoms("CCOHHHH", positions=rng.uniform(0.0, 2.6, size=(7, 3)))
    while np.min(atoms.get_all_distances() + 10 * np.eye(7)) < 0.9:  # keep atoms apart
        atoms.positions = rng.uniform(0.0, 2.6, size=(7, 3))
    return atoms


@pytest.fixture(scope="module")
def models() -> list[MLIPModel]:
    return [member(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def model_files(models, tmp_path_factory) -> list[str]:
    """The three members saved as model.pt files, as users load trained models."""
    folder = tmp_path_factory.mktemp("committee")
    paths = [str(folder / f"m{k}.pt") for k in range(len(models))]
    for model, path in zip(models, paths):
        save_model(model, path)
    return paths


def test_means_and_spreads_equal_the_members_run_one_by_one(models, model_files):
    paths = model_files
    atoms = molecule()
    atoms.calc = MLIPCommitteeCalculator(paths, device="cpu", dtype="float64")
    singles = []
    for model in models:
        single = atoms.copy()
        single.calc = MLIPCalculator(model, device="cpu", dtype="float64")
        singles.append(
            {
                "energy": single.get_potential_energy(),
                "forces": single.get_forces(),
                "energies": single.get_potential_energies(),
                "dipole": single.calc.get_property("dipole", single),
                "polarizability": single.calc.get_property("polarizability", single),
            }
        )
    energies = np.array([s["energy"] for s in singles])
    forces = np.stack([s["forces"] for s in singles])
    calc = atoms.calc
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(
        atoms.get_potential_energies(), np.mean([s["energies"] for s in singles], axis=0), atol=1e-10
    )
    assert calc.get_property("energy_std", atoms) == pytest.approx(energies.std(), abs=1e-10)
    assert calc.get_property("energy_std", atoms) > 1e-4  # the members differ
    spread = np.sqrt(((forces - forces.mean(0)) ** 2).sum(-1).mean(0))
    np.testing.assert_allclose(calc.get_property("forces_std", atoms), spread, atol=1e-10)
    assert calc.get_property("forces_std", atoms).shape == (len(atoms),)
    np.testing.assert_allclose(calc.get_property("committee_energy", atoms), energies, atol=1e-10)
    np.testing.assert_allclose(calc.get_property("committee_forces", atoms), forces, atol=1e-10)
    for name in ("dipole", "polarizability"):
        stack = np.stack([s[name] for s in singles])
        np.testing.assert_allclose(calc.get_property(name, atoms), stack.mean(0), atol=1e-10)
        np.testing.assert_allclose(calc.get_property(f"{name}_std", atoms), stack.std(0), atol=1e-10)
    np.testing.assert_allclose(atoms.get_dipole_moment(), np.stack([s["dipole"] for s in singles]).mean(0))


def test_forces_are_the_gradient_of_the_mean_energy(models):
    atoms = molecule()
    atoms.calc = MLIPCommitteeCalculator(models, device="cpu", dtype="float64")
    forces = atoms.get_forces()
    h = 1e-5
    numerical = np.zeros_like(forces)
    for i in range(len(atoms)):
        for a in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.calc = atoms.calc
                moved.positions[i, a] += sign * h
                shifted.append(moved.get_potential_energy())
            numerical[i, a] = -(shifted[0] - shifted[1]) / (2 * h)
    np.testing.assert_allclose(forces, numerical, atol=1e-7)


def test_spreads_are_invariant_and_means_equivariant_under_o3(models):
    atoms = molecule()
    atoms.calc = MLIPCommitteeCalculator(models, device="cpu", dtype="float64")
    rotation = Rotation.random(random_state=7).as_matrix() @ np.diag([1.0, 1.0, -1.0])  # with inversion
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([0.3, -1.2, 2.0])
    moved.calc = atoms.calc
    names = ["energy", "energies", "forces", "dipole", "polarizability", "dipole_std"]
    names += ["energy_std", "forces_std", "committee_energy"]
    before = {p: np.copy(atoms.calc.get_property(p, atoms)) for p in names}
    after = {p: np.copy(moved.calc.get_property(p, moved)) for p in names}
    for name in ("energy", "energy_std", "forces_std", "committee_energy", "energies"):
        np.testing.assert_allclose(after[name], before[name], atol=1e-10)
    np.testing.assert_allclose(after["forces"], before["forces"] @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(after["dipole"], rotation @ before["dipole"], atol=1e-10)
    alpha = rotation @ before["polarizability"] @ rotation.T
    np.testing.assert_allclose(after["polarizability"], alpha, atol=1e-10)
    # The element-wise spread of a vector is not invariant, but its norm over the members is.
    norms = [np.linalg.norm(x["dipole_std"]) for x in (before, after)]
    assert norms[1] == pytest.approx(norms[0], abs=1e-10) and norms[0] > 1e-4


def test_periodic_stress_is_the_members_mean():
    members = []
    for seed in (4, 5):
        model = MLIPModel([6], cutoff=3.0, backbone=dict(channels=8, lmax=2, num_layers=1)).double()
        torch.manual_seed(seed)
        members.append(perturb_weights(model, 0.3).eval())
    atoms = bulk("C", "diamond", a=3.57)
    atoms.rattle(0.05, seed=1)
    atoms.calc = MLIPCommitteeCalculator(members, device="cpu", dtype="float64")
    stresses = []
    for model in members:
        single = atoms.copy()
        single.calc = MLIPCalculator(model, device="cpu", dtype="float64")
        stresses.append(single.get_stress())
    np.testing.assert_allclose(atoms.get_stress(), np.mean(stresses, axis=0), atol=1e-10)
    assert np.abs(stresses[0] - stresses[1]).max() > 1e-6


def test_identical_members_have_no_spread(models):
    atoms = molecule()
    atoms.calc = MLIPCommitteeCalculator([models[0], models[0]], device="cpu", dtype="float64")
    single = atoms.copy()
    single.calc = MLIPCalculator(models[0], device="cpu", dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(single.get_potential_energy(), abs=1e-12)
    assert atoms.calc.get_property("energy_std", atoms) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(atoms.calc.get_property("forces_std", atoms), 0.0, atol=1e-12)


def test_bad_committees_give_one_line_errors(models):
    with pytest.raises(MLIPError, match="two or more models"):
        MLIPCommitteeCalculator([models[0]])
    with pytest.raises(MLIPError, match="two or more models"):
        MLIPCommitteeCalculator("model.pt")
    with pytest.raises(MLIPError, match="two or more models"):
        MLIPCommitteeCalculator(Path("model.pt"))
    with pytest.raises(MLIPError, match="committee member 1 .* predicts"):
        MLIPCommitteeCalculator([models[0], member(1, targets=TARGETS[:2])])
    with pytest.raises(MLIPError, match="committee member 2 .* knows elements"):
        MLIPCommitteeCalculator([models[0], models[1], member(2, species=(1, 6, 7, 8))])
    with pytest.raises(MLIPError, match="dtype"):
        MLIPCommitteeCalculator(models, dtype="float16")


def assert_holds_the_committee(written: Atoms, atoms: Atoms, calc, atol: float) -> None:
    """``written`` (from mlip predict / md) holds the committee's mean and spread at ``atoms``."""
    atoms.calc = calc
    assert written.info["MLIP_energy"] == pytest.approx(atoms.get_potential_energy(), abs=atol)
    np.testing.assert_allclose(written.arrays["MLIP_forces"], atoms.get_forces(), atol=atol)
    assert written.info["MLIP_energy_std"] == pytest.approx(calc.get_property("energy_std", atoms), abs=atol)
    np.testing.assert_allclose(
        written.arrays["MLIP_forces_std"], calc.get_property("forces_std", atoms), atol=atol
    )


def test_predict_writes_the_committee_mean_and_spread(models, model_files, tmp_path, capsys):
    from mlip.cli.main import main

    paths = model_files
    frames = []
    for shift in (0.0, 0.1, 0.2):
        atoms = molecule()
        atoms.positions[0] += shift
        frames.append(atoms)
    data, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(data, frames)
    frames = ase.io.read(data, ":")  # as written (positions rounded to the file's precision)
    code = main(["predict", paths[0], str(data), "-o", str(out), "--no-progress", "--committee", *paths[1:]])
    assert code == 0 and "committee of 3 models" in capsys.readouterr().out
    calc = MLIPCommitteeCalculator(models, device="cpu", dtype="float64")
    for atoms, written in zip(frames, ase.io.read(out, ":")):
        assert_holds_the_committee(written, atoms, calc, 1e-8)
        for name in ("dipole", "polarizability"):
            np.testing.assert_allclose(
                written.info[f"MLIP_{name}"], calc.get_property(name, atoms).ravel(), atol=1e-8
            )
            np.testing.assert_allclose(
                written.info[f"MLIP_{name}_std"], calc.get_property(f"{name}_std", atoms).ravel(), atol=1e-8
            )
    # A member with other targets: one line naming it, non-zero exit, nothing written.
    save_model(member(1, targets=TARGETS[:2]), str(tmp_path / "other.pt"))
    assert (
        main(
            [
                "predict",
                paths[0],
                str(data),
                "-o",
                str(tmp_path / "x.xyz"),
                "--committee",
                str(tmp_path / "other.pt"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"committee member 1 \(\S*other\.pt\) predicts", err[0])
    assert not (tmp_path / "x.xyz").exists()


def test_md_follows_the_committee_and_records_its_spread(models, model_files, tmp_path, capsys):
    from mlip.cli.main import main

    paths = model_files
    start, out = tmp_path / "start.xyz", tmp_path / "md.xyz"
    ase.io.write(start, molecule())
    args = ["md", paths[0], str(start), "-o", str(out), "--device", "cpu", "--no-progress"]
    args += ["--ensemble", "nve", "--steps", "20", "--record-every", "10", "--timestep", "0.25"]
    assert main([*args, "--committee", *paths[1:]]) == 0
    frames = ase.io.read(out, ":")
    assert [f.info["md_step"] for f in frames] == [0, 10, 20]
    calc = MLIPCommitteeCalculator(models, device="cpu", dtype="float64")
    for frame in frames:  # every frame holds the committee's mean and spread at its positions
        atoms = frame.copy()
        assert_holds_the_committee(frame, atoms, calc, 1e-6)
        np.testing.assert_allclose(
            frame.info["MLIP_dipole_std"], calc.get_property("dipole_std", atoms), atol=1e-6
        )
    # NVE on the mean energy conserves the total energy (the mean forces are its exact gradient).
    potential = np.array([f.info["MLIP_energy"] for f in frames])
    total = potential + np.array([f.get_kinetic_energy() for f in frames])
    assert np.ptp(potential) > 1e-2 and np.ptp(total) < 0.01 * np.ptp(potential)


def test_md_stops_at_the_first_step_the_spread_exceeds_the_limit(models, model_files, tmp_path, capsys):
    from mlip.cli.main import main

    paths = model_files
    start = tmp_path / "start.xyz"
    ase.io.write(start, molecule())

    def md(out, *extra):
        args = ["md", paths[0], str(start), "-o", str(out), "--device", "cpu", "--no-progress", "--ensemble"]
        args += ["nve", "--steps", "30", "--timestep", "0.5", "--committee", *paths[1:], *extra]
        return main(args)

    assert md(tmp_path / "all.xyz", "--record-every", "1") == 0
    largest = np.array([f.arrays["MLIP_forces_std"].max() for f in ase.io.read(tmp_path / "all.xyz", ":")])
    limit = largest[:11].max()  # not exceeded in the first 10 steps
    first = int(np.argmax(largest > limit))
    assert first > 10  # the spread does grow past it later in this run (else the test would be empty)
    capsys.readouterr()
    assert md(tmp_path / "stop.xyz", "--record-every", "5", "--stop-forces-std", str(limit)) == 0
    frames = ase.io.read(tmp_path / "stop.xyz", ":")
    steps = [f.info["md_step"] for f in frames]
    assert steps == list(range(0, first, 5)) + [first]
    assert frames[-1].arrays["MLIP_forces_std"].max() > limit
    assert f"stopped at step {first}:" in capsys.readouterr().out
    # Already above the limit at the start: one frame, stopped at step 0.
    assert md(tmp_path / "now.xyz", "--stop-forces-std", "1e-9") == 0
    assert [f.info["md_step"] for f in ase.io.read(tmp_path / "now.xyz", ":")] == [0]
    assert "stopped at step 0:" in capsys.readouterr().out
    # Without a committee: one line, non-zero exit.
    args = ["md", paths[0], str(start), "-o", str(tmp_path / "x.xyz"), "--stop-forces-std", "0.1"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stop-forces-std needs --committee" in err[0]
