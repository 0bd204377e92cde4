"""The benchmark tasks: fixed splits of the shipped data, written once with uniform keys.

Every code reads the same files. Labels are stored under ``REF_*`` keys in ``atoms.info`` /
``atoms.arrays`` (no ASE calculator results), so no code has to guess where a label lives:

* ``REF_energy`` (eV, info), ``REF_forces`` (eV/Å, arrays);
* carbon: ``REF_virial`` (eV, info, 9 numbers as in the source file) and ``REF_stress``
  (eV/Å³, info, 9 numbers, ``stress = −virial / V``, ASE sign);
* tensors, dipoles, water: ``REF_dipole`` (e·Å for ethanol; water: units of the source, see
  data/PROVENANCE.md; info, 3), ``REF_polarizability`` (Å³ for ethanol; info, 9).

Tasks and splits (the split is the same for every code and every seed; it is drawn with the
split seed, 0 by default, and written once):

=========  ===============================================  ==========================================
task       train / valid                                    test set(s)
=========  ===============================================  ==========================================
ethanol    950 / 50 drawn from data/ethanol/train.xyz        data/ethanol/test.xyz (200 MD frames)
acac       400 / 50 drawn from data/acac/train_300K.xyz      ``test``: the other 50 of the 300 K set;
                                                            ``test_600K``: all 500 of train_600K.xyz (OOD)
carbon     70 / 10 of data/carbon/carbon_reduced_100.xyz     the other 20
tensors    131 / 23 of data/tensors/ethanol_b3lyp_train.xyz  ethanol_b3lyp_test.xyz (154, later MD frames)
dipoles    the same structures as tensors                   the same; targets energy, forces and dipole
                                                            (what an IR spectrum needs)
water      frames 0–579 / 590–639 of water_bulk.xyz          frames 650–799 (150); contiguous blocks
                                                            with 10-frame gaps (MD frames are correlated)
=========  ===============================================  ==========================================

The reference labels of each test set are saved as ``<task>/<test name>_refs.npz`` (same layout
as the prediction files, see :func:`common.save_predictions`). Isolated-atom energies, where the
data provide them (ethanol, acac), are recorded as ``e0s`` ({atomic number: eV}) and the file as
``isolated_atoms``, for every code that takes them.
"""

from __future__ import annotations

import os

import ase.io
import numpy as np
from common import read_json, save_predictions, write_json

TASKS = ("ethanol", "acac", "carbon", "tensors", "dipoles", "water")  # also the report's order

TARGETS = {
    "ethanol": ["energy", "forces"],
    "acac": ["energy", "forces"],
    "carbon": ["energy", "forces", "stress"],
    "tensors": ["dipole", "polarizability"],
    "water": ["dipole", "polarizability"],
    "dipoles": ["energy", "forces", "dipole"],
}

ISOLATED_ATOMS = {"ethanol": "data/ethanol/isolated_atoms.xyz", "acac": "data/acac/isolated_atoms.xyz"}

ACAC_TRAIN = 400  # acetylacetone training structures (of the 300 K set: then 50 valid, 50 test)
SPLIT_VERSION = 2  # bump when a split changes, so that old split files are rewritten


def _clean(atoms: ase.Atoms, labels: dict) -> ase.Atoms:
    out = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for key, value in labels.items():
        value = np.asarray(value, dtype=np.float64)
        if key == "REF_forces":
            out.arrays[key] = value.reshape(len(out), 3)
        else:
            out.info[key] = value.reshape(-1) if value.ndim else float(value)
    return out


def _labels_energy(atoms: ase.Atoms) -> dict:
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


def _labels_water(atoms: ase.Atoms) -> dict:
    return {
        "REF_dipole": np.asarray(atoms.info["REF_dipole"], dtype=np.float64),
        "REF_polarizability": np.asarray(atoms.info["REF_polarizability"], dtype=np.float64).reshape(3, 3),
    }


def _refs(frames: list[ase.Atoms], task: str) -> list[dict]:
    """Reference labels of a test set in the layout of the prediction files."""
    out = []
    for a in frames:
        r = {"n_atoms": np.array(len(a))}
        targets = TARGETS[task]
        if "energy" in targets:
            r["energy"] = np.array(a.info["REF_energy"])
            r["forces"] = a.arrays["REF_forces"]
        if "stress" in targets:
            r["stress"] = np.asarray(a.info["REF_stress"]).reshape(3, 3)
        if "dipole" in targets:
            r["dipole"] = np.asarray(a.info["REF_dipole"])
        if "polarizability" in targets:
            r["polarizability"] = np.asarray(a.info["REF_polarizability"]).reshape(3, 3)
        out.append(r)
    return out


def read_e0s(path: str) -> dict[int, float]:
    """{atomic number: energy in eV} from a file of single-atom structures."""
    out = {}
    for atoms in ase.io.read(path, ":"):
        if len(atoms) == 1:
            out[int(atoms.numbers[0])] = float(atoms.get_potential_energy())
    return out


def _read(repo: str, rel: str, labels, indices=None) -> list[ase.Atoms]:
    frames = ase.io.read(os.path.join(repo, rel), ":")
    if indices is not None:
        frames = [frames[i] for i in indices]
    return [_clean(a, labels(a)) for a in frames]


def prepare(
    repo: str,
    work: str,
    n_train: int = 950,
    n_valid: int = 50,
    seed: int = 0,
    smoke: int | None = None,
    acac_train: int = ACAC_TRAIN,
    acac_add: tuple[int, ...] | list[int] = (),
) -> dict:
    """Write train/valid/test files of every task under ``work/data``; returns their description.

    ``n_train``/``n_valid`` apply to ethanol (drawn from the 1000 structures of
    data/ethanol/train.xyz); ``acac_train`` keeps only the first that many of acetylacetone's 400
    training structures (the same validation and test sets: a smaller-data version of the task,
    small enough for every code to approach convergence on a CPU), and ``acac_add`` adds those
    of the other training structures (positions ``acac_train..399`` of the 400; e.g. chosen by
    ``mlip select`` from the rest, for an active-learning arm); the other splits are fixed
    (see the module docstring). ``seed`` is the
    *split* seed, not the training seed. ``smoke``: keep only the first ``smoke`` structures of
    every file (train, valid and test; for testing the tooling, never for results).
    """
    out_dir = os.path.join(work, "data")
    meta_path = os.path.join(out_dir, "splits.json")
    settings = {
        "n_train": n_train,
        "n_valid": n_valid,
        "seed": seed,
        "version": SPLIT_VERSION,
        "smoke": smoke,
        "acac_train": acac_train,
        "acac_add": sorted(int(i) for i in acac_add),
    }
    if os.path.exists(meta_path):
        meta = read_json(meta_path)
        tasks_ok = set(meta.get("tasks", {})) == set(TASKS) and all(
            os.path.exists(t[k]) for t in meta["tasks"].values() for k in ("train", "valid")
        )
        if meta.get("settings") == settings and tasks_ok:
            return meta
    rng = np.random.default_rng(seed)
    tasks: dict = {}

    def write(task: str, train: list, valid: list, tests: dict[str, list], source: str) -> None:
        if smoke:
            train, valid = train[:smoke], valid[: max(2, smoke // 4)]
            tests = {k: v[:smoke] for k, v in tests.items()}
            source += f" [SMOKE: first {smoke} structures only]"
        d = os.path.join(out_dir, task)
        os.makedirs(d, exist_ok=True)
        entry: dict = {"source": source, "n_train": len(train), "n_valid": len(valid)}
        for name, frames in (("train", train), ("valid", valid)):
            entry[name] = os.path.join(d, f"{name}.xyz")
            ase.io.write(entry[name], frames, format="extxyz")
        entry["tests"] = {}
        for name, frames in tests.items():
            path = os.path.join(d, f"{name}.xyz")
            ase.io.write(path, frames, format="extxyz")
            refs = os.path.join(d, f"{name}_refs.npz")
            save_predictions(refs, _refs(frames, task))
            entry["tests"][name] = {"file": path, "refs": refs, "n": len(frames)}
        # the first test set also under the old keys (benchmarks 2–5 and older result files)
        entry["test"], entry["refs"] = entry["tests"]["test"]["file"], entry["tests"]["test"]["refs"]
        entry["n_test"] = entry["tests"]["test"]["n"]
        entry["targets"] = TARGETS[task]
        iso = ISOLATED_ATOMS.get(task)
        entry["isolated_atoms"] = os.path.join(repo, iso) if iso else None
        entry["e0s"] = read_e0s(os.path.join(repo, iso)) if iso else None
        tasks[task] = entry

    # ethanol
    perm = rng.permutation(1000)
    pick = _read(repo, "data/ethanol/train.xyz", _labels_energy, perm[: n_train + n_valid])
    test = _read(repo, "data/ethanol/test.xyz", _labels_energy)
    write(
        "ethanol",
        pick[:n_train],
        pick[n_train:],
        {"test": test},
        f"data/ethanol/train.xyz ({n_train} train + {n_valid} valid, seeded) / data/ethanol/test.xyz",
    )

    # acetylacetone: 300 K set split 400/50/50, the 600 K set as out-of-distribution test
    if not 1 <= acac_train <= ACAC_TRAIN:
        raise ValueError(f"acac_train must be 1..{ACAC_TRAIN}, got {acac_train}")
    added = sorted(int(i) for i in acac_add)
    if len(set(added)) != len(added) or any(not acac_train <= i < ACAC_TRAIN for i in added):
        raise ValueError(f"acac_add: distinct positions in {acac_train}..{ACAC_TRAIN - 1}, got {added}")
    perm = rng.permutation(500)
    frames = _read(repo, "data/acac/train_300K.xyz", _labels_energy, perm)
    ood = _read(repo, "data/acac/train_600K.xyz", _labels_energy)
    first = f"{ACAC_TRAIN}" if acac_train == ACAC_TRAIN else f"first {acac_train} of {ACAC_TRAIN}"
    if added:
        first += f" + {len(added)} of the others: {','.join(map(str, added))}"
    write(
        "acac",
        frames[:acac_train] + [frames[i] for i in added],
        frames[ACAC_TRAIN : ACAC_TRAIN + 50],
        {"test": frames[ACAC_TRAIN + 50 :], "test_600K": ood},
        f"data/acac/train_300K.xyz ({first}/50/50, seeded); OOD test: data/acac/train_600K.xyz (500)",
    )

    # carbon
    perm = rng.permutation(100)
    frames = _read(repo, "data/carbon/carbon_reduced_100.xyz", _labels_carbon, perm)
    write(
        "carbon",
        frames[:70],
        frames[70:80],
        {"test": frames[80:]},
        "data/carbon/carbon_reduced_100.xyz (70/10/20, seeded)",
    )

    # ethanol B3LYP tensors
    src = ase.io.read(os.path.join(repo, "data/tensors/ethanol_b3lyp_train.xyz"), ":")
    perm = rng.permutation(len(src))
    n_val = round(0.15 * len(src))
    frames = [_clean(src[i], _labels_tensors(src[i])) for i in perm]
    test = _read(repo, "data/tensors/ethanol_b3lyp_test.xyz", _labels_tensors)
    write(
        "tensors",
        frames[n_val:],
        frames[:n_val],
        {"test": test},
        "data/tensors/ethanol_b3lyp_train.xyz (131/23, seeded) / ethanol_b3lyp_test.xyz",
    )
    frames_b3lyp, test_b3lyp = frames, test

    # bulk water: contiguous blocks of the trajectory, 10-frame gaps between them
    frames = _read(repo, "data/water_bulk/water_bulk.xyz", _labels_water)
    write(
        "water",
        frames[0:580],
        frames[590:640],
        {"test": frames[650:800]},
        "data/water_bulk/water_bulk.xyz, contiguous: frames 0–579 train, 590–639 valid, 650–799 test",
    )
    # the same ethanol B3LYP structures with energy, forces and dipole (drawn after every other
    # split, so that adding this task left the others unchanged)
    write(
        "dipoles",
        frames_b3lyp[n_val:],
        frames_b3lyp[:n_val],
        {"test": test_b3lyp},
        "data/tensors/ethanol_b3lyp_train.xyz (131/23, the tensors split) / ethanol_b3lyp_test.xyz; "
        "energy, forces, dipole",
    )
    meta = {"settings": settings, "tasks": tasks}
    write_json(meta_path, meta)
    return meta
