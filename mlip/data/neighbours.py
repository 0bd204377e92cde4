"""Neighbour lists with periodic images, via matscipy."""

from __future__ import annotations

import numpy as np
from matscipy.neighbours import neighbour_list

from mlip.errors import MLIPError


def build_neighbour_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``(i, j, S)`` with ``|r_j - r_i + S·cell| < cutoff``, self-pairs excluded.

    Works for molecules (no pbc), slabs (mixed pbc) and crystals, including cells smaller than
    the cutoff (several images of the same atom are neighbours).

    Args:
        positions: ``[N, 3]`` Å.
        cell: ``[3, 3]`` Å, rows are lattice vectors (ignored where ``pbc`` is False).
        pbc: ``[3]`` bools.
        cutoff: Å.

    Returns:
        ``(receivers i [E], senders j [E], unit_shifts S [E, 3] (integers as float),
        distances [E])``.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.array(cell, dtype=np.float64)
    if not pbc.any():
        # matscipy bins atoms in the cell: give molecules a box that contains them.
        lo = positions.min(axis=0)
        span = positions.max(axis=0) - lo
        positions = positions - lo
        cell = np.diag(span + cutoff + 1.0)
    else:
        # Non-periodic directions with a zero cell vector: put a large orthogonal vector there.
        for axis in np.flatnonzero(~pbc):
            if np.linalg.norm(cell[axis]) < 1e-9:
                others = [a for a in range(3) if a != axis]
                normal = np.cross(cell[others[0]], cell[others[1]])
                extent = np.ptp(positions @ normal / np.linalg.norm(normal)) + cutoff + 1.0
                cell[axis] = normal / np.linalg.norm(normal) * extent
    try:
        i, j, d, shifts = neighbour_list("ijdS", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)
    except (np.linalg.LinAlgError, ValueError, RuntimeError) as err:
        raise MLIPError(f"neighbour list failed ({type(err).__name__}: {err})") from None
    keep = ~((i == j) & np.all(shifts == 0, axis=1))
    return i[keep], j[keep], shifts[keep].astype(np.float64), d[keep]
