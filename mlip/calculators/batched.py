"""Batched inference over many structures (used by ``mlip eval`` and ``mlip predict``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import ase
import numpy as np
import torch
from torch_geometric.data import Batch
from tqdm import tqdm

from mlip.data.graph import atoms_to_graph
from mlip.data.reading import check_structure, normalise_pbc
from mlip.errors import where
from mlip.model.derivatives import forward_with_position_derivatives
from mlip.model.potential import MLIPModel


def predict_batches(
    model: MLIPModel,
    structures: Sequence[ase.Atoms],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    source: str = "input",
    progress: bool = False,
    labels: Sequence[dict] | None = None,
    min_distance: float = 0.1,
    derivatives: Sequence[str] = (),
) -> Iterator[tuple[Batch, dict[str, torch.Tensor], list[int]]]:
    """Yield ``(batch, predictions, structure indices)`` for consecutive batches.

    Every structure is validated first (known elements, finite positions, sane cell, no atoms closer
    than ``min_distance`` Å), with errors naming ``source`` and the structure index. Stress is
    computed for batches with a structure periodic along x, y and z (others get zeros: no stress).
    ``derivatives`` adds position derivatives by autograd (``born_charges``,
    ``polarizability_derivatives``; see :mod:`mlip.model.derivatives`), per atom.
    """
    dtype = next(model.parameters()).dtype
    known = set(model.species)
    bar = tqdm(total=len(structures), disable=not progress, desc="predict", unit="struct")
    for start in range(0, len(structures), batch_size):
        idx = list(range(start, min(start + batch_size, len(structures))))
        graphs = []
        for i in idx:
            atoms = normalise_pbc(structures[i])
            check_structure(atoms, where(source, i), allowed_numbers=known)
            graphs.append(
                atoms_to_graph(
                    atoms,
                    model.cutoff,
                    labels[i] if labels else None,
                    {s.name: s for s in model.target_specs},
                    min_distance=min_distance,
                    source=where(source, i),
                    dtype=dtype,
                )
            )
        batch = Batch.from_data_list(graphs).to(device)
        periodic = any(bool(np.all(structures[i].pbc)) for i in idx)
        want_stress = periodic and model.has_energy
        if derivatives:
            pred = forward_with_position_derivatives(
                model, batch, list(derivatives), compute_forces=model.has_energy, compute_stress=want_stress
            )
        else:
            with torch.enable_grad():
                pred = model(batch, compute_forces=model.has_energy, compute_stress=want_stress)
        yield batch, {k: v.detach() for k, v in pred.items()}, idx
        bar.update(len(idx))
    bar.close()
