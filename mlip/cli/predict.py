"""``mlip predict MODEL IN -o OUT``: predictions written into a copy of the structures.

Per structure: ``MLIP_energy`` (info, eV), ``MLIP_stress`` (info, 6 Voigt numbers, eV/Å³, periodic
only), ``MLIP_<tensor>`` (info, e.g. ``MLIP_dipole`` 3 numbers, ``MLIP_polarizability`` 9 numbers).
Per atom: ``MLIP_forces`` (arrays, eV/Å), ``MLIP_energies`` (arrays, eV), per-atom tensors as
``MLIP_<name>`` arrays. The output is written to a temporary file and renamed at the end, so an
interrupted run leaves no partial output.
"""

from __future__ import annotations

import io
import os

import ase.io
import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.calculators.batched import predict_batches
from mlip.data.reading import check_structure, normalise_pbc, read_atoms
from mlip.device import select_device
from mlip.errors import MLIPError, where
from mlip.io import atomic_write_bytes_via
from mlip.model.potential import load_model


def check_writable(path: str) -> None:
    """Raise a one-line error if ``path`` cannot be created (parent missing or not a folder, no rights)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise MLIPError(f"{path}: cannot write (folder {folder} does not exist or is not a folder)")
    if not os.access(folder, os.W_OK):
        raise MLIPError(f"{path}: cannot write (no permission in {folder})")
    if os.path.isdir(path):
        raise MLIPError(f"{path}: cannot write (is a directory)")


def run_predict(
    model_path: str,
    data_path: str,
    output: str,
    batch_size: int,
    device: str,
    dtype: str,
    progress: bool = True,
) -> None:
    """Predict every target for every structure of ``data_path`` and write ``output`` (extxyz)."""
    import torch

    dev = select_device(device)
    model = load_model(model_path, dev, torch.float64 if dtype == "float64" else torch.float32)
    frames = read_atoms(data_path)
    # Fail fast, before any compute: every structure valid, output location writable.
    known = set(model.species)
    for i, atoms in enumerate(frames):
        check_structure(normalise_pbc(atoms), where(data_path, i), allowed_numbers=known)
    check_writable(output)
    per_atom = {s.name for s in model.target_specs if s.per_atom}
    for batch, pred, idx in predict_batches(model, frames, batch_size, dev, data_path, progress=progress):
        ptr = batch.ptr.cpu().numpy()
        for k, i in enumerate(idx):
            atoms = frames[i]
            lo, hi = ptr[k], ptr[k + 1]
            if "energy" in pred:
                atoms.info["MLIP_energy"] = float(pred["energy"][k])
                atoms.arrays["MLIP_energies"] = pred["node_energy"][lo:hi].cpu().numpy().astype(np.float64)
            if "forces" in pred:
                atoms.arrays["MLIP_forces"] = pred["forces"][lo:hi].cpu().numpy().astype(np.float64)
            if "stress" in pred and np.all(atoms.pbc):
                atoms.info["MLIP_stress"] = full_3x3_to_voigt_6_stress(pred["stress"][k].cpu().numpy())
            for name in model.tensor_target_names:
                if name in per_atom:
                    value = pred[name][lo:hi].cpu().numpy().astype(np.float64)
                    atoms.arrays[f"MLIP_{name}"] = value.reshape(hi - lo, -1)
                else:
                    atoms.info[f"MLIP_{name}"] = pred[name][k].cpu().numpy().astype(np.float64).reshape(-1)
    buffer = io.StringIO()
    ase.io.write(buffer, frames, format="extxyz")
    atomic_write_bytes_via(output, lambda handle: handle.write(buffer.getvalue().encode()))
    print(f"mlip: wrote predictions for {len(frames)} structures to {output}")
