"""``mlip vibrations`` and ``mlip spectrum``: CSV contents checked against sum rules and known
oscillations, a round trip on an ``mlip md`` trajectory, one-line errors (tiny random float64 model)."""

from __future__ import annotations

import csv

import ase.io
import numpy as np
import pytest
from ase import Atoms

from mlip import MLIPCalculator
from mlip.cli.main import main
from mlip.model.potential import save_model
from mlip.spectra import IR_INTENSITY_KM_MOL, SPEED_OF_LIGHT_CM_S
from tests.calculators.test_born_charges import TARGETS, molecule, tensor_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spectro")
    save_model(tensor_model(), str(folder / "model.pt"))
    save_model(tensor_model(TARGETS[:2]), str(folder / "energy_only.pt"))
    save_model(tensor_model(TARGETS[2:]), str(folder / "tensors_only.pt"))
    ase.io.write(folder / "start.xyz", molecule(0))
    return folder


def read_csv(path):
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def test_vibrations_csv_obeys_the_intensity_sum_rules(files, tmp_path, capsys):
    out = tmp_path / "modes.csv"
    assert main(["vibrations", str(files / "model.pt"), str(files / "start.xyz"), "-o", str(out)]) == 0
    table = read_csv(out)
    assert len(table["mode"]) == 15 and np.all(np.diff(table["frequency_cm-1"]) >= 0)
    assert table["rigid_body"].sum() == 6
    # The mass-weighted modes are complete, so summed over all 3N modes
    # Σ_k |dμ/dQ_k|² = Σ_i |Z_i|²/m_i and Σ_k dα/dQ_k ⊗ dα/dQ_k = Σ_i P_i ⊗ P_i / m_i.
    atoms = molecule(0)
    atoms.calc = MLIPCalculator(str(files / "model.pt"), device="cpu", dtype="float64")
    z = atoms.calc.get_property("born_charges", atoms)
    p = atoms.calc.get_property("polarizability_derivatives", atoms)
    m = atoms.get_masses()
    ir_total = IR_INTENSITY_KM_MOL * np.sum(z**2 / m[:, None, None])
    assert table["ir_intensity_km_mol"].sum() == pytest.approx(ir_total, rel=1e-4)
    g = np.einsum("iabe,icde,i->abcd", p, p, 1 / m)  # Σ_k dα_ab/dQ_k dα_cd/dQ_k
    g = 0.25 * (g + g.transpose(1, 0, 2, 3) + g.transpose(0, 1, 3, 2) + g.transpose(1, 0, 3, 2))
    trace2 = np.einsum("aabb->", g)  # Σ_k (tr α')²
    full2 = np.einsum("abab->", g)  # Σ_k α':α'
    a2, gamma2 = trace2 / 9, 1.5 * (full2 - trace2 / 3)
    assert table["raman_activity_A4_amu"].sum() == pytest.approx(45 * a2 + 7 * gamma2, rel=1e-4)
    assert np.all(table["ir_intensity_km_mol"] >= 0) and np.all(table["raman_activity_A4_amu"] >= 0)
    assert "9 vibrational modes" in capsys.readouterr().out


def test_vibrations_relax_and_plot_with_an_energy_only_model(files, tmp_path, capsys):
    # (a random model has no sensible minimum: two BFGS steps only exercise the relaxation)
    out, png = tmp_path / "modes.csv", tmp_path / "ir.png"
    args = ["vibrations", str(files / "energy_only.pt"), str(files / "start.xyz"), "-o", str(out)]
    args += ["--relax", "--relax-steps", "2", "--fmax", "1e-6", "--plot", str(png), "--width", "20"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "BFGS relaxation NOT converged in 2 steps" in printed
    table = read_csv(out)
    assert set(table) == {"mode", "frequency_cm-1", "rigid_body"}  # no dipole, no polarizability
    assert len(table["mode"]) == 15 and table["rigid_body"].sum() == 6
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    "model, structure, fragment",
    [
        ("model.pt", "missing.xyz", "missing.xyz"),
        ("missing.pt", "start.xyz", "missing.pt: model file not found"),
        ("tensors_only.pt", "start.xyz", "has no energy target"),
    ],
)
def test_vibrations_errors_are_one_line(files, tmp_path, capsys, model, structure, fragment):
    capsys.readouterr()
    args = ["vibrations", str(files / model), str(files / structure), "-o", str(tmp_path / "m.csv")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlip: error:") and fragment in err[0], err


def synthetic_trajectory(path, n=1200, dt_fs=0.5, with_time=True):
    """Dipole at 1500 cm⁻¹; polarizability: isotropic at 700 cm⁻¹, anisotropic at 2100 cm⁻¹."""
    t = np.arange(n) * dt_fs * 1e-15
    w = lambda nu: np.cos(2 * np.pi * nu * SPEED_OF_LIGHT_CM_S * t)  # noqa: E731
    aniso = np.array([[1.0, 0.3, 0.0], [0.3, -0.5, 0.2], [0.0, 0.2, -0.5]])
    frames = []
    for k in range(n):
        atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
        atoms.info["MLIP_dipole"] = np.array([0.1, 0.2, 0.3]) * w(1500)[k] + 1.0
        alpha = 4 * np.eye(3) + 0.2 * w(700)[k] * np.eye(3) + 0.3 * w(2100)[k] * aniso
        atoms.info["MLIP_polarizability"] = alpha.reshape(-1)
        if with_time:
            atoms.info["time_fs"] = k * dt_fs
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def test_spectrum_cli_finds_the_synthetic_bands(tmp_path, capsys):
    traj = tmp_path / "traj.xyz"
    synthetic_trajectory(traj)
    ir, raman, png = tmp_path / "ir.csv", tmp_path / "raman.csv", tmp_path / "raman.png"
    assert main(["spectrum", str(traj), "-o", str(ir)]) == 0
    table = read_csv(ir)
    assert table["wavenumber_cm-1"].max() <= 5000
    assert abs(table["wavenumber_cm-1"][np.argmax(table["intensity"])] - 1500) < 15
    assert (
        main(["spectrum", str(traj), str(traj), "--kind", "raman", "-o", str(raman), "--plot", str(png)]) == 0
    )
    table = read_csv(raman)
    nu = table["wavenumber_cm-1"]
    assert abs(nu[np.argmax(table["isotropic"])] - 700) < 15
    assert abs(nu[np.argmax(table["anisotropic"])] - 2100) < 15
    assert abs(nu[np.argmax(table["depolarized"])] - 2100) < 15
    assert png.stat().st_size > 1000
    # the quantum correction (Stokes line shape, Bose factor over ω) weights the low band up
    qc = tmp_path / "qc.csv"
    args = ["spectrum", str(traj), "-o", str(qc), "--kind", "raman"]
    assert main([*args, "--quantum-correction", "harmonic", "--temperature", "300"]) == 0
    corrected = read_csv(qc)
    hi, lo = np.argmin(np.abs(nu - 2100)), np.argmin(np.abs(nu - 700))
    ratio = corrected["total"] / table["total"]
    assert ratio[lo] > ratio[hi] > 0.0
    # --smooth: a Gaussian of that FWHM over each column; the peaks stay, the bands widen
    smooth = tmp_path / "smooth.csv"
    assert main(["spectrum", str(traj), "-o", str(smooth), "--kind", "raman", "--smooth", "60"]) == 0
    smoothed = read_csv(smooth)
    assert abs(nu[np.argmax(smoothed["anisotropic"])] - 2100) < 15
    width = {
        name: np.sum(t["isotropic"] > t["isotropic"].max() / 2)
        for name, t in (("raw", table), ("s", smoothed))
    }
    assert width["s"] > width["raw"]


def test_spectrum_of_an_mlip_md_trajectory(files, tmp_path):
    traj, out = tmp_path / "md.xyz", tmp_path / "s.csv"
    args = ["md", str(files / "model.pt"), str(files / "start.xyz"), "-o", str(traj), "--device", "cpu"]
    assert main([*args, "--no-progress", "--steps", "20", "--record-every", "1", "--timestep", "0.25"]) == 0
    assert main(["spectrum", str(traj), "-o", str(out), "--kind", "raman", "--max-wavenumber", "1e6"]) == 0
    table = read_csv(out)
    # time step read from time_fs (0.25 fs): grid spacing 1/(zero_pad · 2 · (T // 2) · dt), T = 21
    spacing = 1e15 / (4 * 2 * 10 * 0.25) / SPEED_OF_LIGHT_CM_S
    assert np.diff(table["wavenumber_cm-1"])[0] == pytest.approx(spacing, rel=1e-5)
    assert np.all(np.isfinite(table["total"])) and table["total"].max() > 0


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--key", "MLIP_charges"], "has no 'MLIP_charges'"),
        (["--kind", "raman", "--key", "MLIP_dipole"], "expected 9 for raman"),
        (["--no-time"], "give --timestep"),
        (["--quantum-correction", "harmonic"], "needs a temperature"),
    ],
)
def test_spectrum_errors_are_one_line(tmp_path, capsys, extra, fragment):
    traj = tmp_path / "t.xyz"
    synthetic_trajectory(traj, n=20, with_time="--no-time" not in extra)
    extra = [e for e in extra if e != "--no-time"]
    capsys.readouterr()
    assert main(["spectrum", str(traj), "-o", str(tmp_path / "s.csv"), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlip: error:") and fragment in err[0], err
