"""Turn a structure into a ``torch_geometric.data.Data`` graph (the one graph builder of mlip).

Fields of one graph (``N`` atoms, ``E`` directed edges):

=================  ==============  ===============================================
field              shape           meaning
=================  ==============  ===============================================
``pos``            ``[N, 3]``      positions, Å
``numbers``        ``[N]``         atomic numbers (long)
``edge_index``     ``[2, E]``      row 0 = central atom ``i``, row 1 = neighbour ``j``
``unit_shifts``    ``[E, 3]``      integer lattice shifts ``S``: r_ij = r_j − r_i + S·cell
``cell``           ``[1, 3, 3]``   lattice vectors as rows, Å (zeros for molecules)
``pbc``            ``[1, 3]``      periodic flags
``<target>``       see targets     labels in model units (per structure: leading dim 1)
``stress_mask``    ``[1]`` bool    with a stress target: the structure has a stress label and
                                   is periodic along all three axes (else its stress label is
                                   zeros and it is left out of the stress loss and metrics)
=================  ==============  ===============================================

:func:`make_graph` assembles these fields from arrays; :func:`atoms_to_graph` (files, batched
inference), the ASE calculator's neighbour-list reuse and the preprocessed store all call it.
"""

from __future__ import annotations

from collections.abc import Mapping

import ase
import numpy as np
import torch
from torch_geometric.data import Data

from mlip.data.neighbours import build_neighbour_list
from mlip.errors import MLIPError
from mlip.outputs import STRESS_MASK
from mlip.targets import TargetSpec


def graph_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell a graph stores: the structure's cell if any axis is periodic, else zeros."""
    return np.asarray(cell, dtype=np.float64) if np.any(pbc) else np.zeros((3, 3))


def make_graph(
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    receivers: np.ndarray,
    senders: np.ndarray,
    unit_shifts: np.ndarray,
    labels: Mapping[str, np.ndarray | None] | None = None,
    targets: Mapping[str, TargetSpec] | None = None,
    dtype: torch.dtype = torch.get_default_dtype(),
) -> Data:
    """A graph from arrays (cell already as :func:`graph_cell` gives it).

    Args:
        positions: ``[N, 3]`` Å; numbers ``[N]``; cell ``[3, 3]`` Å; pbc ``[3]``.
        receivers, senders: ``[E]`` edge ends; unit_shifts ``[E, 3]`` integer lattice shifts.
        labels: target name → label (model units); ``None`` or absent for a missing stress label.
        targets: specs of the labelled targets (per-atom vs per-structure, stress masking).
        dtype: floating dtype of positions, cell and labels.
    """
    pbc = np.asarray(pbc, dtype=bool)
    data = Data(
        pos=torch.as_tensor(np.asarray(positions), dtype=dtype),
        numbers=torch.as_tensor(np.asarray(numbers).astype(np.int64)),
        edge_index=torch.as_tensor(np.stack([np.asarray(receivers), np.asarray(senders)]).astype(np.int64)),
        unit_shifts=torch.as_tensor(np.asarray(unit_shifts), dtype=dtype).reshape(-1, 3),
        cell=torch.as_tensor(np.asarray(cell), dtype=dtype).reshape(1, 3, 3),
        pbc=torch.as_tensor(pbc).reshape(1, 3),
        num_nodes=len(numbers),
    )
    if labels is None:
        return data
    targets = targets or {}
    for name, spec in targets.items():
        if spec.kind == "stress":
            value = labels.get(name)
            present = value is not None and bool(np.all(pbc)) and bool(np.all(np.isfinite(value)))
            value = np.asarray(value, dtype=np.float64) if present else np.zeros((3, 3))
            data[name] = torch.as_tensor(value, dtype=dtype).reshape(1, 3, 3)
            data[STRESS_MASK] = torch.tensor([present])
    for name, value in labels.items():
        spec = targets.get(name)
        if value is None or (spec is not None and spec.kind == "stress"):
            continue
        tensor = torch.as_tensor(np.asarray(value), dtype=dtype)
        per_atom = spec.per_atom if spec is not None else name == "forces"
        data[name] = tensor if per_atom else tensor.unsqueeze(0)
    return data


def atoms_to_graph(
    atoms: ase.Atoms,
    cutoff: float,
    labels: Mapping[str, np.ndarray | None] | None = None,
    targets: Mapping[str, TargetSpec] | None = None,
    min_distance: float = 0.0,
    source: str = "structure",
    dtype: torch.dtype = torch.get_default_dtype(),
) -> Data:
    """Build the graph of one structure.

    Args:
        atoms: the structure.
        cutoff: neighbour cutoff, Å.
        labels: target name → label array (model units), optional.
        targets: specs of the labelled targets (to know per-atom vs per-structure).
        min_distance: raise if two atoms are closer than this (Å); 0 disables the check.
        source: where the structure came from, for error messages.
        dtype: floating dtype of positions, cell and labels.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    i, j, shifts, dist = build_neighbour_list(atoms.positions, atoms.cell.array, pbc, cutoff)
    check_min_distance(i, j, dist, min_distance, source)
    cell = graph_cell(atoms.cell.array, pbc)
    return make_graph(atoms.positions, atoms.numbers, cell, pbc, i, j, shifts, labels, targets, dtype)


def check_min_distance(
    i: np.ndarray, j: np.ndarray, dist: np.ndarray, min_distance: float, source: str
) -> None:
    """Raise if a pair is closer than ``min_distance`` Å (0 disables the check)."""
    if min_distance > 0 and len(dist) and dist.min() < min_distance:
        k = int(np.argmin(dist))
        raise MLIPError(
            f"{source}: atoms {i[k]} and {j[k]} are {dist[k]:.3g} Å apart, closer than "
            f"min_distance={min_distance} Å"
        )
