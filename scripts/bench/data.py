"""The three accuracy tasks: seeded splits of the shipped data, written once with uniform keys.

Every code reads the same files. Labels are stored under ``REF_*`` keys in ``atoms.info`` /
``atoms.arrays`` (no ASE calculator results), so no code has to guess where a label lives:

* ``REF_energy`` (eV, info), ``REF_forces`` (eV/Å, arrays);
* carbon: ``REF_virial`` (eV, info, 9 numbers as in the source file) and ``REF_stress``
  (eV/Å³, info, 9 numbers, ``stress = −virial / V``, ASE sign);
* tensors: ``REF_dipole`` (e·Å, info, 3), ``REF_polarizability`` (Å³, info, 9).

The reference labels of each test set are also saved as ``<task>/test_refs.npz`` (same layout as
the prediction files, see :func:`common.save_predictions`).
"""

from __future__ import annotations

import os

import ase.io
import numpy as np
from common import read_json, save_predictions, write_json

TASKS = ("ethanol", "carbon", "tensors")

TARGETS = {
    "ethanol": ["energy", "forces"],
    "carbon": ["energy", "forces", "stress"],
    "tensors": ["dipole", "polarizability"],
}


def _clean(atoms: ase.Atoms, labels: dict) -> ase.Atoms:
    out = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for key, value in labels.items():
        value = np.asarray(value, dtype=np.float64)
        if key == "REF_forces":
            out.arrays[key] = value.reshape(len(out), 3)
        else:
            out.info[key] = value.reshape(-1) if value.ndim else float(value)
    return out


def _labels_ethanol(atoms: ase.Atoms) -> dict:
    return {"REF_energy": atoms.get_potential_energy(), "REF_forces": atoms.get_forces()}


def _labels_carbon(atoms: ase.Atoms) -> dict:
    virial = np.asarray(atoms.info["virial"], dtype=np.float64).reshape(3, 3)
    volume = abs(np.linalg.det(atoms.cell.array))
    return {
        "REF_energy": atoms.get_potential_energy(),
        "REF_forces": np.asarray(atoms.arrays["force"]),
        "REF_virial": virial,
        "REF_stress": -virial / volume,
    }


def _labels_tensors(atoms: ase.Atoms) -> dict:
    res = atoms.calc.results
    return {
        "REF_energy": res["energy"],
        "REF_forces": res["forces"],
        "REF_dipole": np.asarray(res["dipole"]),
        "REF_polarizability": np.asarray(atoms.info["polarizability"]).reshape(3, 3),
    }


def _refs(frames: list[ase.Atoms], task: str) -> list[dict]:
    out = []
    for a in frames:
        r = {"n_atoms": np.array(len(a))}
        if "REF_energy" in a.info and task != "tensors":
            r["energy"] = np.array(a.info["REF_energy"])
            r["forces"] = a.arrays["REF_forces"]
        if task == "carbon":
            r["stress"] = np.asarray(a.info["REF_stress"]).reshape(3, 3)
        if task == "tensors":
            r["dipole"] = np.asarray(a.info["REF_dipole"])
            r["polarizability"] = np.asarray(a.info["REF_polarizability"]).reshape(3, 3)
        out.append(r)
    return out


def prepare(repo: str, work: str, n_train: int = 500, n_valid: int = 50, seed: int = 0) -> dict:
    """Write train/valid/test files of every task under ``work/data``; returns their description.

    * ethanol: ``n_train`` + ``n_valid`` structures drawn (seeded) from data/ethanol/train.xyz;
      test = data/ethanol/test.xyz (200, held out).
    * carbon: the 100 cells of data/carbon/carbon_reduced_100.xyz split 70 / 10 / 20 (seeded).
    * tensors: data/tensors/ethanol_b3lyp_train.xyz split 131 / 23 (seeded);
      test = ethanol_b3lyp_test.xyz (154, frames 500–653 of the MD, held out).
    """
    out_dir = os.path.join(work, "data")
    meta_path = os.path.join(out_dir, "splits.json")
    settings = {"n_train": n_train, "n_valid": n_valid, "seed": seed}
    if os.path.exists(meta_path):
        meta = read_json(meta_path)
        if meta.get("settings") == settings and all(
            os.path.exists(meta["tasks"][t][k]) for t in TASKS for k in ("train", "valid", "test", "refs")
        ):
            return meta
    rng = np.random.default_rng(seed)
    tasks = {}

    def write(task: str, train: list, valid: list, test: list, source: str) -> None:
        d = os.path.join(out_dir, task)
        os.makedirs(d, exist_ok=True)
        paths = {}
        for name, frames in (("train", train), ("valid", valid), ("test", test)):
            paths[name] = os.path.join(d, f"{name}.xyz")
            ase.io.write(paths[name], frames, format="extxyz")
        paths["refs"] = os.path.join(d, "test_refs.npz")
        save_predictions(paths["refs"], _refs(test, task))
        tasks[task] = {
            **paths,
            "source": source,
            "n_train": len(train),
            "n_valid": len(valid),
            "n_test": len(test),
            "targets": TARGETS[task],
        }

    # ethanol
    src = ase.io.read(os.path.join(repo, "data/ethanol/train.xyz"), ":")
    perm = rng.permutation(len(src))
    pick = [_clean(src[i], _labels_ethanol(src[i])) for i in perm[: n_train + n_valid]]
    test = [
        _clean(a, _labels_ethanol(a)) for a in ase.io.read(os.path.join(repo, "data/ethanol/test.xyz"), ":")
    ]
    write(
        "ethanol",
        pick[:n_train],
        pick[n_train:],
        test,
        f"data/ethanol/train.xyz ({n_train} train + {n_valid} valid, seeded) / data/ethanol/test.xyz",
    )

    # carbon
    src = ase.io.read(os.path.join(repo, "data/carbon/carbon_reduced_100.xyz"), ":")
    perm = rng.permutation(len(src))
    frames = [_clean(src[i], _labels_carbon(src[i])) for i in perm]
    write(
        "carbon",
        frames[:70],
        frames[70:80],
        frames[80:],
        "data/carbon/carbon_reduced_100.xyz (70/10/20, seeded)",
    )

    # tensors
    src = ase.io.read(os.path.join(repo, "data/tensors/ethanol_b3lyp_train.xyz"), ":")
    perm = rng.permutation(len(src))
    n_val = round(0.15 * len(src))
    frames = [_clean(src[i], _labels_tensors(src[i])) for i in perm]
    test = [
        _clean(a, _labels_tensors(a))
        for a in ase.io.read(os.path.join(repo, "data/tensors/ethanol_b3lyp_test.xyz"), ":")
    ]
    write(
        "tensors",
        frames[n_val:],
        frames[:n_val],
        test,
        "data/tensors/ethanol_b3lyp_train.xyz (131/23, seeded) / ethanol_b3lyp_test.xyz",
    )
    meta = {"settings": settings, "tasks": tasks}
    write_json(meta_path, meta)
    return meta
