"""``mlip ipi``: an i-PI force client.

With a real i-PI server (4-bead path-integral MD, 10 steps, unix socket): the per-bead potentials
i-PI records equal :class:`MLIPCalculator` (float64) at the bead positions i-PI writes, and the
model's dipole reaches i-PI as JSON extras. Without i-PI: the wire payload against ASE's server side
of the protocol (periodic virial ``-V σ``, extras), and one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.socketio import IPIProtocol
from ase.units import Ha

from mlip import MLIPCalculator
from mlip.calculators.ipi import run_client
from mlip.cli.main import main
from mlip.errors import MLIPError
from mlip.model.potential import save_model
from tests.calculators.test_born_charges import molecule, tensor_model

ROOT = Path(__file__).resolve().parents[2]
NBEADS, STEPS = 4, 10
LIMIT_S = 600  # generous: the test takes seconds, but a loaded machine can be slow to start Python

# floatformat: full precision in the properties and extras; format='ase': extxyz positions (Å, 1e-8,
# converted with ASE's Bohr), where i-PI's own xyz keeps only 6 significant digits. Energies are read in
# Hartree and converted with ASE's Hartree, the factor the client used (i-PI's own {electronvolt} differs
# from ASE's by 1e-7 relative).
INPUT = """<simulation verbosity='low' safe_stride='1000' floatformat='%.16e'>
  <output prefix='sim'>
    <properties stride='1' filename='out'>
      [ step, potential, bead_potentials ]
    </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
    <trajectory filename='dipole' stride='1' extra_type='dipole'> extras </trajectory>
    <checkpoint stride='1000'/>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>12345</seed></prng>
  <ffsocket name='mlip' mode='unix'><address>{name}</address></ffsocket>
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='xyz'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities>
    </initialize>
    <forces><force forcefield='mlip'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'>0.25</timestep>
        <thermostat mode='pile_l'><tau units='femtosecond'>50</tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
  </system>
</simulation>
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random float64 model with dipole and polarizability heads, and a 5-atom molecule."""
    folder = tmp_path_factory.mktemp("ipi")
    save_model(tensor_model(), str(folder / "model.pt"))
    atoms = molecule(0)
    ase.io.write(folder / "template.xyz", atoms, format="extxyz")
    # i-PI's xyz: the comment line gives the cell (a non-periodic molecule in a large box).
    lines = [
        str(len(atoms)),
        "# CELL(abcABC): 20.0 20.0 20.0 90.0 90.0 90.0 positions{angstrom} cell{angstrom}",
    ]
    lines += [f"{s} {x:.12f} {y:.12f} {z:.12f}" for s, (x, y, z) in zip(atoms.symbols, atoms.positions)]
    (folder / "init.xyz").write_text("\n".join(lines) + "\n")
    return folder


def _i_pi() -> str:
    pytest.importorskip("ipi", reason="i-PI is not installed (pip install ipi, or mlip[dev])")
    beside = Path(sys.executable).with_name("i-pi")
    found = str(beside) if beside.exists() else shutil.which("i-pi")
    if found is None:
        pytest.skip("the i-pi command of the installed ipi package is not on PATH")
    return found


def _read_beads(folder: Path, bead: int) -> list:
    (path,) = folder.glob(f"sim.pos_{bead}.*")
    return ase.io.read(path, ":", format="extxyz")


def _read_extras(path: Path) -> np.ndarray:
    """Rows of numbers after each ``#EXTRAS(...)# Step: N`` header of an i-PI extras trajectory."""
    return np.array(
        [[float(x) for x in line.split()] for line in path.read_text().splitlines() if "#" not in line]
    )


def test_ipi_pimd_energies_and_dipoles_match_the_calculator(files, tmp_path):
    i_pi = _i_pi()
    name = f"mlip-test-{os.getpid()}-{tmp_path.name}"
    (tmp_path / "input.xml").write_text(INPUT.format(steps=STEPS, nbeads=NBEADS, name=name))
    shutil.copy(files / "init.xyz", tmp_path / "init.xyz")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen(
        ["timeout", str(LIMIT_S), i_pi, "input.xml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = subprocess.run(
            ["timeout", str(LIMIT_S), sys.executable, "-m", "mlip", "ipi", str(files / "model.pt")]
            + ["--template", str(files / "template.xyz"), "--unix", name, "--device", "cpu"]
            + ["--wait", str(LIMIT_S)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=LIMIT_S + 30,
        )
        server_log, _ = server.communicate(timeout=LIMIT_S + 30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert client.returncode == 0, client.stdout + client.stderr
    assert server.returncode == 0, server_log[-3000:]
    assert "extras: dipole, polarizability" in client.stdout and "not periodic" in client.stdout
    # One evaluation per bead for the initial positions, then one per bead per step.
    assert f"{NBEADS * (STEPS + 1)} force evaluations" in client.stdout, client.stdout

    table = np.loadtxt(tmp_path / "sim.out", ndmin=2)
    steps, potential, bead_potentials = table[:, 0], table[:, 1] * Ha, table[:, 2:] * Ha
    assert bead_potentials.shape[1] == NBEADS and len(steps) >= STEPS
    np.testing.assert_allclose(potential, bead_potentials.mean(axis=1), rtol=1e-12, atol=1e-12)

    calc = MLIPCalculator(str(files / "model.pt"), device="cpu", dtype="float64")
    template = ase.io.read(files / "template.xyz")
    worst_energy = worst_dipole = moved = 0.0
    for bead in range(NBEADS):
        frames = _read_beads(tmp_path, bead)
        dipoles = _read_extras(tmp_path / f"sim.dipole_{bead}")
        assert len(frames) == len(steps) and dipoles.shape == (len(steps), 3)
        for k, frame in enumerate(frames):
            assert list(frame.symbols) == list(template.symbols)
            atoms = template.copy()
            atoms.positions[:] = frame.positions
            atoms.calc = calc
            # The positions i-PI writes are rounded to 1e-8 Å (ASE's extxyz), so the energy at them
            # may differ from i-PI's by up to sum |F| * 0.5e-8 Å (first order); energies have 16 digits.
            error = abs(atoms.get_potential_energy() - bead_potentials[k, bead])
            assert error < 0.5e-8 * np.abs(atoms.get_forces()).sum() + 1e-9, (bead, k, error)
            worst_energy = max(worst_energy, error)
            # Likewise the dipole, by up to sum_ib |dμ_a/dr_ib| * 0.5e-8 Å (Born charges).
            delta = np.abs(calc.get_property("dipole", atoms) - dipoles[k])
            born = np.abs(calc.get_property("born_charges", atoms)).sum(axis=(0, 2))
            assert np.all(delta < 0.5e-8 * born + 1e-9), (bead, k, delta)
            worst_dipole = max(worst_dipole, delta.max())
            moved = max(moved, np.abs(frame.positions - template.positions).max())
    print(f"i-PI vs MLIPCalculator: max |ΔE| = {worst_energy:.2e} eV, max |Δμ| = {worst_dipole:.2e}")
    assert moved > 1e-3  # the beads moved: the comparison is not of one geometry


class _Server:
    """ASE's server side of the i-PI protocol over a socket pair, the client in a thread."""

    def __init__(self, atoms, **kwargs) -> None:
        ours, theirs = socket.socketpair()
        self.protocol = IPIProtocol(ours)
        self.result: dict = {}

        def client() -> None:
            try:
                self.result["value"] = run_client(theirs, atoms, **kwargs)
            except Exception as err:  # reported by the test
                self.result["error"] = err

        self.thread = threading.Thread(target=client, daemon=True)
        self.thread.start()

    def finish(self) -> dict:
        self.protocol.end()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.result


def test_payload_periodic_virial_and_extras(files):
    """A periodic cell: energy, forces, virial -V σ and the JSON extras arrive in ASE's units."""
    calc = MLIPCalculator(str(files / "model.pt"), device="cpu", dtype="float64")
    atoms = molecule(2)
    atoms.cell, atoms.pbc = np.diag([7.0, 7.5, 8.0]), True
    atoms.calc = calc
    server = _Server(atoms)
    rng = np.random.default_rng(3)
    for _ in range(2):
        positions = molecule(1).positions + rng.normal(scale=0.02, size=(len(atoms), 3))
        cell = np.array([[7.2, 0.0, 0.0], [0.3, 7.4, 0.0], [0.0, 0.2, 7.9]])
        got = server.protocol.calculate(positions, cell)
        ref = molecule(1)
        ref.positions[:], ref.cell, ref.pbc = positions, cell, True
        ref.calc = MLIPCalculator(str(files / "model.pt"), device="cpu", dtype="float64")
        assert got["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(got["forces"], ref.get_forces(), atol=1e-9)
        virial = -ref.get_volume() * ref.get_stress(voigt=False)
        assert np.abs(virial).max() > 1e-3
        np.testing.assert_allclose(got["virial"], virial, atol=1e-9)
        extras = json.loads(bytes(got["morebytes"]).decode())
        assert sorted(extras) == ["dipole", "polarizability"]
        np.testing.assert_allclose(extras["dipole"], ref.calc.get_property("dipole", ref), atol=1e-12)
        assert np.asarray(extras["polarizability"]).shape == (3, 3)
    assert server.finish() == {"value": (2, "i-PI sent EXIT")}


def test_molecule_gets_zero_virial_and_max_steps_stops(files):
    calc = MLIPCalculator(str(files / "model.pt"), device="cpu", dtype="float64")
    atoms = molecule(0)
    atoms.calc = calc
    server = _Server(atoms, max_steps=1)
    got = server.protocol.calculate(molecule(1).positions, np.eye(3) * 20.0)
    np.testing.assert_array_equal(got["virial"], np.zeros((3, 3)))
    server.thread.join(timeout=60)
    assert server.result == {"value": (1, "--max-steps 1 reached")}


def test_wrong_atom_count_is_one_line(files):
    atoms = molecule(0)
    atoms.calc = MLIPCalculator(str(files / "model.pt"), device="cpu", dtype="float64")
    server = _Server(atoms)
    server.protocol.sendmsg("POSDATA")
    server.protocol.send(np.eye(3), np.float64)
    server.protocol.send(np.eye(3), np.float64)
    server.protocol.send(4, np.int32)
    server.protocol.send(np.zeros((4, 3)), np.float64)
    server.thread.join(timeout=60)
    err = server.result["error"]
    assert isinstance(err, MLIPError) and "i-PI sent 4 atoms but the template has 5" in str(err)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--unix", "NAME", "--address", "localhost"], "give either --unix NAME"),
        ([], "give either --unix NAME"),
        (
            ["--unix", "mlip-test-no-such-server", "--wait", "0"],
            "no i-PI server at /tmp/ipi_mlip-test-no-such",
        ),
        (["--unix", "x", "--max-steps", "0"], "--max-steps must be >= 1"),
        (["--unix", "x", "--model", "missing.pt"], "missing.pt: file not found"),
        (["--unix", "x", "--template", "missing.xyz"], "missing.xyz"),
    ],
)
def test_user_errors_are_one_line(files, tmp_path, capsys, args, fragment):
    model, template = str(files / "model.pt"), str(files / "template.xyz")
    if "--model" in args:
        model, args = str(tmp_path / args[-1]), args[:-2]
    if "--template" in args:
        template, args = str(tmp_path / args[-1]), args[:-2]
    capsys.readouterr()
    assert main(["ipi", model, "--template", template, "--device", "cpu", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlip: error:") and fragment in err[0], err
