"""``mlip predict MODEL IN -o OUT``: predictions written into a copy of the structures.

Per structure: ``MLIP_energy`` (info, eV), ``MLIP_stress`` (info, 6 Voigt numbers, eV/Å³, periodic
only), ``MLIP_<tensor>`` (info, e.g. ``MLIP_dipole`` 3 numbers, ``MLIP_polarizability`` 9 numbers).
Per atom: ``MLIP_forces`` (arrays, eV/Å), ``MLIP_energies`` (arrays, eV), per-atom tensors as
``MLIP_<name>`` arrays; with ``--born-charges`` ``MLIP_born_charges`` (arrays, 9 numbers per atom,
``Z[i, a, b] = ∂μ_a/∂r_{i,b}`` row-major) and with ``--polarizability-derivatives``
``MLIP_polarizability_derivatives`` (27 numbers per atom, ``∂α_ab/∂r_{i,c}`` row-major). With
``--committee`` more models are run and the keys above hold their mean; ``MLIP_energy_std``,
``MLIP_forces_std`` and ``MLIP_<tensor>_std`` their spread (see :mod:`mlip.calculators.committee`). The output
is written to a temporary file and renamed at the end, so an interrupted run leaves no partial output.
"""

from __future__ import annotations

import io
import os

import ase.io
import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.calculators.batched import predict_batches
from mlip.calculators.committee import check_members, spreads
from mlip.data.reading import check_structure, normalise_pbc, read_atoms
from mlip.device import select_device
from mlip.errors import MLIPError, where
from mlip.io import atomic_write_bytes_via
from mlip.model.derivatives import derivative_source
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


def store_predictions(atoms, values: dict, per_atom: set[str]) -> None:
    """Write one structure's predictions into ``atoms`` under the ``MLIP_`` keys.

    ``values``: ``energy`` (eV), ``node_energy`` [N], ``forces`` [N, 3], ``stress`` (3×3 or Voigt;
    written only for cells periodic along x, y and z), and tensors by name (per atom if the name is in
    ``per_atom``: ``[N, ...]`` flattened to ``[N, k]`` arrays; else flattened into ``info``). Tensors or
    arrays (numpy or torch) are accepted. Shared by ``mlip predict`` and ``mlip md``.
    """
    n = len(atoms)
    for name, value in values.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = np.asarray(value, dtype=np.float64)
        if name == ENERGY:
            atoms.info[P + ENERGY] = float(value)
        elif name == NODE_ENERGY:
            atoms.arrays[P + "energies"] = value.reshape(n)
        elif name == FORCES:
            atoms.arrays[P + FORCES] = value.reshape(n, 3)
        elif name == STRESS:
            if np.all(atoms.pbc):
                atoms.info[P + STRESS] = value if value.shape == (6,) else full_3x3_to_voigt_6_stress(value)
        elif name in per_atom:
            atoms.arrays[P + name] = value.reshape(n, -1)
        else:
            atoms.info[P + name] = value.reshape(-1)


def run_predict(
    model_path: str,
    data_path: str,
    output: str,
    batch_size: int,
    device: str,
    dtype: str,
    progress: bool = True,
    derivatives: tuple[str, ...] | list[str] = (),
    committee: tuple[str, ...] | list[str] = (),
) -> None:
    """Predict every target for every structure of ``data_path`` and write ``output`` (extxyz).

    ``derivatives``: also ``born_charges`` / ``polarizability_derivatives`` (per-atom arrays of 9 / 27
    numbers, see :mod:`mlip.model.derivatives`). ``committee``: more model paths; then the
    ``MLIP_`` keys hold the mean over all models, and ``MLIP_energy_std`` (info, eV),
    ``MLIP_forces_std`` (arrays, per atom ``sqrt(mean_k |F_k − F̄|²)``, eV/Å) and
    ``MLIP_<tensor>_std`` (element-wise) their spread, as :mod:`mlip.calculators.committee` defines.
    """
    check_writable(output)  # before any compute
    dev = select_device(device)
    models, frames, runs = predict_committee(
        [model_path, *committee], data_path, batch_size, dev, dtype, progress, derivatives
    )
    model = models[0]
    per_atom = per_atom_names(model, derivatives)
    for i, atoms in enumerate(frames):
        members = [run[i] for run in runs]
        store_predictions(
            atoms, {name: np.mean([m[name] for m in members], axis=0) for name in members[0]}, per_atom
        )
        if len(members) > 1:
            store_spreads(atoms, spreads(members, model.tensor_target_names), per_atom)
    buffer = io.StringIO()
    ase.io.write(buffer, frames, format="extxyz")
    atomic_write_bytes_via(output, lambda handle: handle.write(buffer.getvalue().encode()))
    what = f" (mean and spread of a committee of {len(models)} models)" if len(models) > 1 else ""
    print(f"mlip: wrote predictions{what} for {len(frames)} structures to {output}")


def per_atom_names(model, derivatives=()) -> set[str]:
    """Targets (and requested derivatives) stored per atom rather than per structure."""
    return {s.name for s in model.target_specs if s.per_atom} | set(derivatives)


def predict_committee(
    paths: list[str],
    data_path: str,
    batch_size: int,
    device,
    dtype: str,
    progress: bool,
    derivatives: tuple[str, ...] | list[str] = (),
    require_energy: str | None = None,
) -> tuple[list, list, list[list[dict]]]:
    """Load the models of ``paths`` (one, or a committee), read and check every structure of
    ``data_path``, and predict them all: ``(models, structures, runs)`` with ``runs[k][i]`` model
    k's predictions for structure i (numpy float64). Checks run before any compute: the members
    agree (targets, elements), the derivatives exist, the models predict energies where
    ``require_energy`` (the reason, for the message) is given, every structure is valid. Shared by
    ``mlip predict`` and ``mlip select``."""
    import torch

    models = [load_model(p, device, torch.float64 if dtype == "float64" else torch.float32) for p in paths]
    model = models[0]
    check_members(models, paths)
    if require_energy and not model.has_energy:
        raise MLIPError(f"{paths[0]}: the model predicts no energy, so there is no {require_energy}")
    for name in derivatives:
        derivative_source(model, name)  # the model has the dipole / polarizability, else one line
    frames = read_atoms(data_path)
    known = set(model.species)
    for i, atoms in enumerate(frames):
        check_structure(normalise_pbc(atoms), where(data_path, i), allowed_numbers=known)
    per_atom = per_atom_names(model, derivatives)
    runs = [
        predict_all(m, frames, batch_size, device, data_path, progress, derivatives, per_atom) for m in models
    ]
    return models, frames, runs


def predict_all(model, frames, batch_size, device, source, progress, derivatives, per_atom) -> list[dict]:
    """One model's predictions for every structure: a dict per structure, numpy float64 arrays."""
    out: list[dict] = []
    batches = predict_batches(
        model, frames, batch_size, device, source, progress=progress, derivatives=derivatives
    )
    for batch, pred, idx in batches:
        ptr = batch.ptr.cpu().numpy()
        for k, _ in enumerate(idx):
            lo, hi = ptr[k], ptr[k + 1]
            values = {}
            for name, value in pred.items():
                if name in (NODE_ENERGY, FORCES) or name in per_atom:
                    values[name] = value[lo:hi].cpu().numpy().astype(np.float64)
                elif name in (ENERGY, STRESS) or name in model.tensor_target_names:
                    values[name] = value[k].cpu().numpy().astype(np.float64)
            out.append(values)
    return out


def store_spreads(atoms, spread: dict, per_atom: set[str]) -> None:
    """Write a committee's spread (from :func:`mlip.calculators.committee.spreads`, or the committee
    calculator's properties of the same names) into ``atoms``: ``MLIP_energy_std`` (info, eV),
    ``MLIP_forces_std`` (arrays, [N] eV/Å) and ``MLIP_<tensor>_std`` (arrays for per-atom targets in
    ``per_atom``, else info). Shared by ``mlip predict`` and ``mlip md``."""
    n = len(atoms)
    for key, value in spread.items():
        value = np.asarray(value, dtype=np.float64)
        if key == "energy_std":
            atoms.info[P + key] = float(value)
        elif key == "forces_std":
            atoms.arrays[P + key] = value.reshape(n)
        elif key[: -len("_std")] in per_atom:
            atoms.arrays[P + key] = value.reshape(n, -1)
        else:
            atoms.info[P + key] = value.reshape(-1)
