"""Run molecular dynamics with an mlip model through ASE and write a trajectory.

``mlip md`` is the command-line version with more options (CSVR thermostat, extxyz frames with the
model's dipole/polarizability, restart); this script keeps writing an ASE ``.traj``.

    python scripts/run_md.py runs/example/model.pt data/ethanol/test.xyz --steps 500

Langevin (NVT, default) or velocity Verlet (NVE, ``--ensemble nve``); prints temperature and
energy every ``--log-every`` steps, and the time per step and mean temperature at the end.

Temperatures:

* ``--temperature T`` is the temperature the run should have: the Langevin thermostat's target
  in NVT, the intended average temperature in NVE.
* ``--initial-temperature T0`` is the temperature the initial velocities are drawn at
  (Maxwell–Boltzmann). Default: ``T`` in NVT, and ``2 T`` in NVE — the usual factor-2 start:
  from a structure near a minimum, equipartition moves about half of the kinetic energy into
  potential energy, so velocities drawn at ``T`` settle near ``T/2`` (e.g. 600 K → ~300-380 K);
  drawn at ``2 T`` they settle near ``T``. Give ``--initial-temperature`` to choose yourself.
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
from ase.md.verlet import VelocityVerlet

from mlip import MLIPCalculator
from mlip.cli.md import draw_velocities, initial_temperature
from mlip.errors import MLIPError

__all__ = ["draw_velocities", "initial_temperature", "main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("structure", help="structure file; the first frame (or --index) is used")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument(
        "--temperature",
        type=float,
        default=300.0,
        help="K: thermostat target (nvt) or intended average temperature (nve)",
    )
    p.add_argument(
        "--initial-temperature",
        type=float,
        default=None,
        help="K: initial velocities drawn at this temperature (default: --temperature for nvt, "
        "2 × --temperature for nve, since equipartition halves it)",
    )
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
    start_temperature = initial_temperature(args.ensemble, args.temperature, args.initial_temperature)
    draw_velocities(atoms, start_temperature, rng)
    print(
        f"run_md: {args.ensemble.upper()}, initial velocities drawn at {start_temperature:.1f} K"
        + (f", thermostat at {args.temperature:.1f} K" if args.ensemble == "nvt" else ""),
        flush=True,
    )
    temperatures: list[float] = []
    dt = args.timestep * units.fs
    if args.ensemble == "nvt":
        dyn = Langevin(
            atoms, dt, temperature_K=args.temperature, friction=args.friction / units.fs, rng=rng, fixcm=False
        )
    else:
        dyn = VelocityVerlet(atoms, dt)
    traj = Trajectory(args.trajectory, "w", atoms)
    dyn.attach(traj.write, interval=max(1, args.log_every // 5))

    dyn.attach(lambda: temperatures.append(atoms.get_temperature()), interval=1)

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
    mean_t = float(np.mean(temperatures[len(temperatures) // 2 :])) if temperatures else float("nan")
    print(
        f"run_md: {args.steps} steps of {len(atoms)} atoms in {elapsed:.1f} s "
        f"({1000 * elapsed / max(args.steps, 1):.2f} ms/step); mean temperature over the second half "
        f"{mean_t:.1f} K; trajectory in {args.trajectory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
