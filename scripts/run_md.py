"""Run molecular dynamics with an mlip model through ASE and write a trajectory.

    python scripts/run_md.py runs/example/model.pt data/ethanol/test.xyz --steps 500

Langevin (NVT, default) or velocity Verlet (NVE, ``--ensemble nve``); prints temperature and
energy every ``--log-every`` steps and the time per step at the end.
"""

from __future__ import annotations

import argparse
import sys
import time

import ase.io
import numpy as np
from ase import units
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from mlip import MLIPCalculator
from mlip.errors import MLIPError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("structure", help="structure file; the first frame (or --index) is used")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt")
    p.add_argument("--supercell", type=int, nargs=3, default=None, help="repeat a periodic cell")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--trajectory", default="md.traj")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        atoms = ase.io.read(args.structure, index=args.index)
    except Exception as err:  # one line for the user
        print(f"run_md: error: {args.structure}: {err}", file=sys.stderr)
        return 1
    atoms.calc = None
    if args.supercell:
        atoms = atoms.repeat(args.supercell)
    try:
        atoms.calc = MLIPCalculator(args.model, device=args.device, dtype=args.dtype)
    except MLIPError as err:
        print(f"run_md: error: {err}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    if not any(atoms.pbc):
        ZeroRotation(atoms)
    dt = args.timestep * units.fs
    if args.ensemble == "nvt":
        dyn = Langevin(
            atoms, dt, temperature_K=args.temperature, friction=args.friction / units.fs, rng=rng, fixcm=False
        )
    else:
        dyn = VelocityVerlet(atoms, dt)
    traj = Trajectory(args.trajectory, "w", atoms)
    dyn.attach(traj.write, interval=max(1, args.log_every // 5))

    def log() -> None:
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        print(
            f"step {dyn.nsteps:6d}  T {atoms.get_temperature():7.1f} K  Epot {epot:.4f} eV  "
            f"Etot {epot + ekin:.4f} eV",
            flush=True,
        )

    dyn.attach(log, interval=args.log_every)
    start = time.perf_counter()
    dyn.run(args.steps)
    elapsed = time.perf_counter() - start
    traj.close()
    print(
        f"run_md: {args.steps} steps of {len(atoms)} atoms in {elapsed:.1f} s "
        f"({1000 * elapsed / max(args.steps, 1):.2f} ms/step); trajectory in {args.trajectory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
