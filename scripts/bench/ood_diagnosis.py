"""Where does a learning-curve run's out-of-distribution force error come from?

    python scripts/bench/ood_diagnosis.py --task acac --test test_600K \
        --runs acac__mlip-small__60min__s0,acac__mlip-medium__60min__s0,acac__mace-large__60min__s0

For the final snapshot of each run (benchmarks/results/curves/<run>.json → its prediction file) on
one test set: force RMSE and MAE over components; per-structure force RMSE (median, 90th/99th
percentile, max); the share of the total squared error from the worst 5 % of structures and the RMSE
without them; and the same split by whether a structure has an atom pair (per element pair) closer
than any pair of those elements in the training set — the structures where the model extrapolates
in distance. For the worst structures: the pair, its distance and the force along that bond (reference
vs prediction; + = pushing the atoms apart). Then the force RMSE in four bins of the reference energy
above the lowest training energy (eV; the bins are the test set's quartiles, and the training set's
own energy range is printed beside them): how fast each model's error grows as the structures leave
the energies it was trained on.

Reads only stored files (the runs' prediction .npz, the task's split in --work-dir); trains nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import ase.io
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import final_snapshot  # noqa: E402


def closest_pairs(atoms) -> dict[tuple[str, str], tuple[float, int, int]]:
    """(element, element) → (shortest distance Å, i, j) in one structure."""
    symbols = atoms.get_chemical_symbols()
    distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    out: dict[tuple[str, str], tuple[float, int, int]] = {}
    for i, j in itertools.combinations(range(len(atoms)), 2):
        key = tuple(sorted((symbols[i], symbols[j])))
        if key not in out or distances[i, j] < out[key][0]:
            out[key] = (float(distances[i, j]), i, j)
    return out


def final_predictions(run: str, test: str, results: str) -> tuple[float, dict]:
    """(mark in minutes, predictions on ``test``) of a run's last snapshot."""
    snapshot = final_snapshot(run, results)
    return snapshot["mark_min"], np.load(snapshot["files"][test])


def diagnose(run: str, minutes: float, pred, refs, closer: np.ndarray) -> dict:
    """Force-error figures of one run (module docstring); ``closer`` ``[S]`` marks the structures with
    a pair closer than any in training."""
    errors = [pred[f"{i}/forces"] - refs[f"{i}/forces"] for i in range(len(closer))]
    per_structure = np.array([np.sqrt(np.mean(e**2)) for e in errors]) * 1e3  # meV/Å
    components = np.concatenate([np.abs(e).ravel() for e in errors]) * 1e3
    squared = np.sort(per_structure**2)[::-1]
    worst = max(1, round(0.05 * len(closer)))
    out = {
        "run": run,
        "minutes": minutes,
        "force_rmse": float(np.sqrt(np.mean(components**2))),
        "force_mae": float(components.mean()),
        "per_structure_rmse": {
            "median": float(np.median(per_structure)),
            "p90": float(np.percentile(per_structure, 90)),
            "p99": float(np.percentile(per_structure, 99)),
            "max": float(per_structure.max()),
        },
        "worst_5pc_share_of_squared_error": float(squared[:worst].sum() / squared.sum()),
        "rmse_without_worst_5pc": float(np.sqrt(np.mean(np.sort(per_structure**2)[:-worst]))),
        "structures_closer_than_training": int(closer.sum()),
        "their_share_of_squared_error": float((per_structure[closer] ** 2).sum() / (per_structure**2).sum()),
        "rmse_of_the_others": float(np.sqrt(np.mean(per_structure[~closer] ** 2))),
        "per_structure": per_structure.tolist(),
    }
    return out


def rmse_by_energy(per_structure: np.ndarray, energy_above: np.ndarray, edges: np.ndarray) -> list[float]:
    """Force RMSE (RMS of the per-structure RMSEs, equal atom counts) in each bin ``edges[k]..edges[k+1]``
    of ``energy_above`` (inclusive both ends)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (energy_above >= lo) & (energy_above <= hi)
        out.append(float(np.sqrt(np.mean(per_structure[inside] ** 2))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="acac")
    p.add_argument("--test", default="test_600K", help="test set name of the task")
    p.add_argument(
        "--runs", required=True, help="comma-separated run names (benchmarks/results/curves/*.json)"
    )
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results"))
    p.add_argument("--work-dir", default="/tmp/mlip-bench")
    p.add_argument("--worst", type=int, default=6, help="worst structures listed (of the first run)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    split = json.load(open(os.path.join(args.work_dir, "data", "splits.json")))["tasks"][args.task]
    test = split["tests"][args.test]
    frames = ase.io.read(test["file"], ":")
    refs = np.load(test["refs"])
    train_minimum: dict = {}
    train_frames = ase.io.read(split["train"], ":")
    train_energies = np.array([a.info["REF_energy"] for a in train_frames])
    for atoms in train_frames:
        for key, (d, _, _) in closest_pairs(atoms).items():
            train_minimum[key] = min(train_minimum.get(key, np.inf), d)
    print(
        "shortest pair distances in the training set (Å):",
        {"-".join(k): round(v, 3) for k, v in train_minimum.items()},
    )
    runs = [r for r in args.runs.split(",") if r]
    closer = np.array(
        [
            any(
                d < train_minimum[k] - 1e-6 for k, (d, _, _) in closest_pairs(a).items() if k in train_minimum
            )
            for a in frames
        ]
    )
    finals = [final_predictions(r, args.test, args.results) for r in runs]
    preds = [pred for _, pred in finals]
    report = [diagnose(r, minutes, pred, refs, closer) for r, (minutes, pred) in zip(runs, finals)]
    print(f"\n{args.task} / {args.test}: {len(frames)} structures; forces in meV/Å")
    header = (
        "| run | RMSE | MAE | per-structure median / p90 / p99 / max | worst 5 %: share of error², "
        "RMSE without | closer than training: n, share of error², RMSE of the rest |"
    )
    print(header + "\n|" + "---|" * 6)
    for r in report:
        s = r["per_structure_rmse"]
        print(
            f"| {r['run']} | {r['force_rmse']:.1f} | {r['force_mae']:.1f} | "
            f"{s['median']:.1f} / {s['p90']:.1f} / {s['p99']:.1f} / {s['max']:.0f} | "
            f"{r['worst_5pc_share_of_squared_error']:.2f}, "
            f"{r['rmse_without_worst_5pc']:.1f} | {r['structures_closer_than_training']}, "
            f"{r['their_share_of_squared_error']:.2f}, {r['rmse_of_the_others']:.1f} |"
        )
    first = np.array(report[0]["per_structure"])
    print(f"\nworst structures of {runs[0]}: the atom with the largest force error and its closest neighbour")
    for i in np.argsort(-first)[: args.worst]:
        atoms = frames[i]
        ref_f = refs[f"{i}/forces"]
        j = int(np.argmax(np.linalg.norm(preds[0][f"{i}/forces"] - ref_f, axis=1)))
        d = atoms.get_all_distances()[j]
        n = int(np.argsort(d)[1])
        u = (atoms.positions[j] - atoms.positions[n]) / d[n]
        s = atoms.get_chemical_symbols()
        key = tuple(sorted((s[j], s[n])))
        along = ", ".join(f"{r.split('__')[1]} {pr[f'{i}/forces'][j] @ u:+.2f}" for r, pr in zip(runs, preds))
        print(
            f"  structure {i}: {s[j]}{j}–{s[n]}{n} {d[n]:.2f} Å (training minimum {train_minimum[key]:.2f}); "
            f"force on {s[j]}{j} along the bond, eV/Å: reference {ref_f[j] @ u:+.2f}, {along}"
        )
    energy_above = np.array([float(refs[f"{i}/energy"]) for i in range(len(frames))]) - train_energies.min()
    edges = np.quantile(energy_above, [0.0, 0.25, 0.5, 0.75, 1.0])
    spans = ", ".join(f"{lo:.2f}–{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:]))
    print(
        f"\nforce RMSE by reference energy above the lowest training energy (quartiles of the test set: "
        f"{spans} eV; the training set spans 0–{np.ptp(train_energies):.2f} eV)"
    )
    for r in report:
        r["rmse_by_energy_quartile"] = rmse_by_energy(np.array(r["per_structure"]), energy_above, edges)
        print(f"  {r['run']}: " + " / ".join(f"{x:.1f}" for x in r["rmse_by_energy_quartile"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "task": args.task,
                    "test": args.test,
                    "train_minimum": {"-".join(k): v for k, v in train_minimum.items()},
                    "energy_quartile_edges_eV": edges.tolist(),
                    "train_energy_span_eV": float(np.ptp(train_energies)),
                    "runs": report,
                },
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
