"""Turn a structure into a ``torch_geometric.data.Data`` graph.

Fields of one graph (``N`` atoms, ``E`` directed edges):

================  ==============  ===============================================
field             shape           meaning
================  ==============  ===============================================
``pos``           ``[N, 3]``      positions, Å
``numbers``       ``[N]``         atomic numbers (long)
``edge_index``    ``[2, E]``      row 0 = central atom ``i``, row 1 = neighbour ``j``
``unit_shifts``   ``[E, 3]``      integer lattice shifts ``S``: r_ij = r_j − r_i + S·cell
``cell``          ``[1, 3, 3]``   lattice vectors as rows, Å (zeros for molecules)
``pbc``           ``[1, 3]``      periodic flags
``<target>``      see targets     labels in model units (per structure: leading dim 1)
================  ==============  ===============================================
"""

from __future__ import annotations

import ase
import numpy as np
import torch
from torch_geometric.data import Data

from mlip.data.neighbours import build_neighbour_list
from mlip.errors import MLIPError
from mlip.targets import TargetSpec


def atoms_to_graph(
    atoms: ase.Atoms,
    cutoff: float,
    labels: dict[str, np.ndarray] | None = None,
    targets: dict[str, TargetSpec] | None = None,
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
    cell = atoms.cell.array if pbc.any() else np.zeros((3, 3))
    i, j, shifts, dist = build_neighbour_list(atoms.positions, atoms.cell.array, pbc, cutoff)
    if min_distance > 0 and len(dist) and dist.min() < min_distance:
        k = int(np.argmin(dist))
        raise MLIPError(
            f"{source}: atoms {i[k]} and {j[k]} are {dist[k]:.3g} Å apart, closer than "
            f"min_distance={min_distance} Å"
        )
    data = Data(
        pos=torch.tensor(atoms.positions, dtype=dtype),
        numbers=torch.tensor(atoms.numbers, dtype=torch.long),
        edge_index=torch.tensor(np.stack([i, j]), dtype=torch.long),
        unit_shifts=torch.tensor(shifts, dtype=dtype),
        cell=torch.tensor(cell, dtype=dtype).unsqueeze(0),
        pbc=torch.tensor(pbc).unsqueeze(0),
        num_nodes=len(atoms),
    )
    for name, value in (labels or {}).items():
        tensor = torch.tensor(np.asarray(value), dtype=dtype)
        spec = (targets or {}).get(name)
        per_atom = name == "forces" or (spec is not None and spec.per_atom)
        data[name] = tensor if per_atom else tensor.unsqueeze(0)
    return data
