"""Energy conservation in NVE (velocity-Verlet) MD with an mlip model, float64.

    python scripts/nve_drift.py MODEL STRUCTURE [--supercell 2 2 2] [--steps 2000] [--timestep 0.5]

Reports the drift of the total energy (slope of a least-squares line through E_tot(t), in
eV/atom/ps) and the RMS fluctuation around that line (eV/atom).
"""

from __future__ import annotations

import argparse
import json
import sys

import ase.io
import numpy as np
from ase import units
from ase.md.verlet import VelocityVerlet

from mlip import MLIPCalculator

try:
    from scripts.run_md import draw_velocities
except ImportError:  # run as `python scripts/nve_drift.py`: scripts/ is on sys.path
    from run_md import draw_velocities


def nve_drift(
    atoms, calc, steps: int = 2000, timestep_fs: float = 0.5, temperature: float = 300.0, seed: int = 0
) -> dict:
    """Run NVE MD and return drift (eV/atom/ps), fluctuation (eV/atom), simulated time (ps)."""
    atoms = atoms.copy()
    atoms.calc = calc
    draw_velocities(atoms, temperature, np.random.default_rng(seed))
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    times, energies = [], []

    def record() -> None:
        times.append(dyn.nsteps * timestep_fs / 1000.0)  # ps
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())

    dyn.attach(record, interval=1)
    dyn.run(steps)
    t, e = np.array(times), np.array(energies) / len(atoms)
    slope, intercept = np.polyfit(t, e, 1)
    return {
        "atoms": len(atoms),
        "steps": steps,
        "timestep_fs": timestep_fs,
        "time_ps": float(t[-1]),
        "drift_eV_per_atom_per_ps": float(slope),
        "fluctuation_eV_per_atom": float(np.std(e - (slope * t + intercept))),
        "final_temperature_K": float(atoms.get_temperature()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("structure")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--supercell", type=int, nargs=3)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    atoms = ase.io.read(args.structure, index=args.index)
    atoms.calc = None
    if args.supercell:
        atoms = atoms.repeat(args.supercell)
    calc = MLIPCalculator(args.model, device=args.device, dtype="float64")
    result = nve_drift(atoms, calc, args.steps, args.timestep, args.temperature)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
