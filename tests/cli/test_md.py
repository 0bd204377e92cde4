"""``mlip md``: frames every N steps with the model's tensors, agreement with ``mlip predict``, NVE
energy conservation, restart after an interruption, one-line errors (tiny random float64 model)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

from mlip.cli.main import main
from mlip.model.potential import save_model
from tests.calculators.test_born_charges import TARGETS, molecule, tensor_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("md")
    save_model(tensor_model(), str(folder / "model.pt"))
    save_model(tensor_model(TARGETS[2:]), str(folder / "tensors_only.pt"))
    save_model(tensor_model(TARGETS[:2]), str(folder / "energy_only.pt"))
    ase.io.write(folder / "start.xyz", molecule(0))
    return folder


def md(files, out, *extra):
    args = ["md", str(files / "model.pt"), str(files / "start.xyz"), "-o", str(out), "--device", "cpu"]
    return main([*args, "--no-progress", "--timestep", "0.25", *extra])


def test_md_records_every_n_steps_and_matches_predict(files, tmp_path, capsys):
    out = tmp_path / "nve.xyz"
    assert (
        md(files, out, "--ensemble", "nve", "--steps", "40", "--record-every", "10", "--temperature", "200")
        == 0
    )
    frames = ase.io.read(out, ":")
    assert [f.info["md_step"] for f in frames] == [0, 10, 20, 30, 40]
    assert [f.info["time_fs"] for f in frames] == pytest.approx([0.0, 2.5, 5.0, 7.5, 10.0])
    for f in frames:
        assert f.arrays["MLIP_forces"].shape == (5, 3) and f.get_momenta().shape == (5, 3)
        assert np.asarray(f.info["MLIP_dipole"]).shape == (3,)
        assert np.asarray(f.info["MLIP_polarizability"]).shape == (9,)
    assert np.abs(frames[-1].positions - frames[0].positions).max() > 1e-3  # atoms moved
    printed = capsys.readouterr().out
    assert "step       40" in printed and "Etot" in printed
    # NVE: total energy (model energy + kinetic from the recorded momenta) is conserved.
    epot = np.array([f.info["MLIP_energy"] for f in frames])
    etot = epot + np.array([f.get_kinetic_energy() for f in frames])
    assert np.ptp(epot) > 1e-3
    assert np.ptp(etot) < 0.05 * np.ptp(epot)
    # The recorded tensors are the model's at the recorded positions: `mlip predict` agrees.
    pred = tmp_path / "pred.xyz"
    assert main(["predict", str(files / "model.pt"), str(out), "-o", str(pred), "--no-progress"]) == 0
    for f, p in zip(frames, ase.io.read(pred, ":")):
        np.testing.assert_allclose(p.info["MLIP_dipole"], f.info["MLIP_dipole"], atol=1e-6)
        np.testing.assert_allclose(p.info["MLIP_polarizability"], f.info["MLIP_polarizability"], atol=1e-6)
        np.testing.assert_allclose(p.arrays["MLIP_forces"], f.arrays["MLIP_forces"], atol=1e-5)
        assert p.info["MLIP_energy"] == pytest.approx(f.info["MLIP_energy"], abs=1e-6)


def test_restart_continues_an_interrupted_run(files, tmp_path):
    full = tmp_path / "full.xyz"
    assert md(files, full, "--ensemble", "nve", "--steps", "12", "--record-every", "3") == 0
    reference = ase.io.read(full, ":")
    assert [f.info["md_step"] for f in reference] == [0, 3, 6, 9, 12]
    # An interrupted run: two complete frames and part of the third.
    cut = tmp_path / "cut.xyz"
    lines = full.read_text().splitlines(keepends=True)
    per_frame = 2 + 5
    cut.write_text("".join(lines[: 2 * per_frame + 4]))
    args = ["md", str(files / "model.pt"), "--restart", str(cut), "--steps", "12", "--ensemble", "nve"]
    args += ["--timestep", "0.25", "--record-every", "3", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    frames = ase.io.read(cut, ":")
    assert [f.info["md_step"] for f in frames] == [0, 3, 6, 9, 12]
    # NVE is deterministic: the continued frames are those of the uninterrupted run (up to the
    # 1e-8 Å rounding of the positions the restart read).
    for f, r in zip(frames, reference):
        np.testing.assert_allclose(f.positions, r.positions, atol=1e-5)
        np.testing.assert_allclose(f.info["MLIP_dipole"], r.info["MLIP_dipole"], atol=1e-5)
    # A finished run has nothing left to do.
    assert main(["md", str(files / "model.pt"), "--restart", str(cut), "--steps", "12", "--no-progress"]) == 0
    assert len(ase.io.read(cut, ":")) == 5


def test_md_in_an_electric_field_conserves_the_field_energy_and_restarts_with_it(files, tmp_path):
    """NVE with ``--electric-field``: frames record the field, ``MLIP_energy`` (= U − μ·E) plus the
    kinetic energy is conserved, the field changes the trajectory, and a restart keeps the field."""
    out, plain = tmp_path / "field.xyz", tmp_path / "plain.xyz"
    common = ["--ensemble", "nve", "--steps", "40", "--record-every", "10", "--temperature", "200"]
    assert md(files, out, *common, "--electric-field", "0.05,-0.03,0.08") == 0
    assert md(files, plain, *common) == 0
    frames, reference = ase.io.read(out, ":"), ase.io.read(plain, ":")
    for f in frames:
        np.testing.assert_allclose(f.info["electric_field"], [0.05, -0.03, 0.08])
    epot = np.array([f.info["MLIP_energy"] for f in frames])
    etot = epot + np.array([f.get_kinetic_energy() for f in frames])
    assert np.ptp(epot) > 1e-3 and np.ptp(etot) < 0.05 * np.ptp(epot)
    # the field's energy −μ·E is in MLIP_energy, and it moves the atoms differently
    mu = np.asarray(frames[0].info["MLIP_dipole"])
    assert frames[0].info["MLIP_energy"] - reference[0].info["MLIP_energy"] == pytest.approx(
        -mu @ [0.05, -0.03, 0.08], abs=1e-8
    )
    assert np.abs(frames[-1].positions - reference[-1].positions).max() > 1e-4
    # continuing past the end keeps the field of the file's last frame
    args = ["md", str(files / "model.pt"), "--restart", str(out), "--steps", "50", "--ensemble", "nve"]
    assert (
        main([*args, "--timestep", "0.25", "--record-every", "10", "--device", "cpu", "--no-progress"]) == 0
    )
    last = ase.io.read(out, -1)
    assert last.info["md_step"] == 50
    np.testing.assert_allclose(last.info["electric_field"], [0.05, -0.03, 0.08])


@pytest.mark.parametrize("ensemble", ["nvt", "csvr"])
def test_thermostats_run(files, tmp_path, ensemble):
    out = tmp_path / "t.xyz"
    assert md(files, out, "--ensemble", ensemble, "--steps", "4", "--record-every", "2", "--seed", "3") == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 3 and all(np.isfinite(f.info["MLIP_energy"]) for f in frames)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--supercell", "2,x,1"], "--supercell: expected three positive integers"),
        (["--restart", "missing.xyz"], "missing.xyz: restart file not found"),
        (["--record-every", "0"], "--record-every >= 1"),
        (["--model", "tensors_only.pt"], "has no energy target"),
        (["--electric-field", "0,0"], "--electric-field: expected three numbers"),
        (
            ["--model", "energy_only.pt", "--electric-field", "0,0,0.1"],
            "no per-structure vector target 'dipole'",
        ),
    ],
)
def test_md_errors_are_one_line(files, tmp_path, capsys, extra, fragment):
    model = str(files / "model.pt")
    if extra[0] == "--model":
        model, extra = str(files / extra[1]), extra[2:]
    extra = [str(tmp_path / e) if e.endswith(".xyz") else e for e in extra]
    args = ["md", model, str(files / "start.xyz"), "-o", str(tmp_path / "o.xyz"), "--device", "cpu"]
    capsys.readouterr()
    assert main([*args, *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlip: error:") and fragment in err[0], err
