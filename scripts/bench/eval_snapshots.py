"""Test errors of every snapshot of an ``mlip train`` run (``training.snapshot_minutes``): a learning
curve from one run, e.g. one trained on a GPU machine and evaluated here.

    python scripts/bench/eval_snapshots.py RUN_DIR data/ethanol/test.xyz --out curve.json

Reads ``RUN_DIR/snapshots/snapshots.csv`` (mark, wall time, epoch, stage, file) and evaluates each
snapshot with ``mlip eval``'s code (float64, CPU): MAE and RMSE per target, energies per atom. Also
the energy MAE per structure (meV), the figure rMD17 papers quote.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))


def main(argv: list[str] | None = None) -> int:
    import ase.io

    from mlip.cli.evaluate import run_eval

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("test_file")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    n_atoms = [len(a) for a in ase.io.read(args.test_file, ":")]
    mean_n = sum(n_atoms) / len(n_atoms)
    with open(os.path.join(args.run_dir, "snapshots", "snapshots.csv")) as handle:
        rows = list(csv.DictReader(handle))
    curve = []
    for row in rows:
        path = os.path.join(args.run_dir, "snapshots", row["file"])
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = run_eval(path, args.test_file, [], 32, "cpu", "float64")
        entry = {k: row[k] for k in ("mark_min", "wall_time_s", "epoch", "stage")}
        entry.update({k: float(v) for k, v in metrics.items() if k.endswith(("_mae", "_rmse"))})
        # same-size molecules: the per-structure energy MAE is the per-atom one times N
        entry["energy_mae_per_structure_meV"] = 1e3 * entry["energy_mae"] * mean_n
        curve.append(entry)
        print(
            f"{row['mark_min']:>4} min (epoch {row['epoch']}): "
            f"energy MAE {1e3 * entry['energy_mae']:.3f} meV/atom "
            f"({entry['energy_mae_per_structure_meV']:.2f} meV/structure), forces MAE "
            f"{1e3 * entry['forces_mae']:.2f} RMSE {1e3 * entry['forces_rmse']:.2f} meV/Å",
            flush=True,
        )
    with open(args.out, "w") as handle:
        json.dump({"run_dir": args.run_dir, "test_file": args.test_file, "curve": curve}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
