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
from mlip.outputs import ENERGY, FORCES, NODE_ENERGY, STRESS
from mlip.outputs import PREDICTION_PREFIX as P


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
            if ENERGY in pred:
                atoms.info[P + ENERGY] = float(pred[ENERGY][k])
                atoms.arrays[P + "energies"] = pred[NODE_ENERGY][lo:hi].cpu().numpy().astype(np.float64)
            if FORCES in pred:
                atoms.arrays[P + FORCES] = pred[FORCES][lo:hi].cpu().numpy().astype(np.float64)
            if STRESS in pred and np.all(atoms.pbc):
                atoms.info[P + STRESS] = full_3x3_to_voigt_6_stress(pred[STRESS][k].cpu().numpy())
            for name in model.tensor_target_names:
                if name in per_atom:
                    value = pred[name][lo:hi].cpu().numpy().astype(np.float64)
                    atoms.arrays[P + name] = value.reshape(hi - lo, -1)
                else:
                    atoms.info[P + name] = pred[name][k].cpu().numpy().astype(np.float64).reshape(-1)
    buffer = io.StringIO()
    ase.io.write(buffer, frames, format="extxyz")
    atomic_write_bytes_via(output, lambda handle: handle.write(buffer.getvalue().encode()))
    print(f"mlip: wrote predictions for {len(frames)} structures to {output}")
