"""``mlip select POOL -o OUT``: the structures a committee disagrees on most, to label next.

Query by committee, as DP-GEN does it (Zhang et al., Comput. Phys. Commun. 253, 107206 (2020)):
each structure of a pool (an MD trajectory, a set of candidate geometries) is scored by the
committee's spread, and the highest-scoring structures within a trust window are written out for
labelling and adding to the training set. Scores:

- ``forces`` (default): ``max_i sqrt(mean_k |F_ik − F̄_i|²)``, eV/Å: the largest per-atom force
  spread (DP-GEN's ``max_devi_f``; the ``MLIP_forces_std`` arrays of ``mlip predict --committee``);
- ``energy``: the spread of the total energy per atom, ``std_k E_k / N``, eV/atom.

Structures scoring below ``lower`` are already described well; above ``upper`` they are often
unphysical (an MD run that went astray) and are left out too. ``min_separation`` keeps chosen
structures at least that many positions apart in the pool, so that neighbouring frames of one MD
run (near duplicates) are not all chosen.

The spreads come from ``--models`` (two or more models, e.g. seeds of one config: run here), or,
without it, from the pool itself: the ``MLIP_forces_std`` / ``MLIP_energy_std`` that ``mlip predict
--committee`` and ``mlip md --committee`` write.
"""

from __future__ import annotations

import io
import math

import ase.io
import numpy as np

from mlip.calculators.committee import spreads
from mlip.cli.predict import check_writable, predict_committee
from mlip.data.reading import read_atoms
from mlip.device import select_device
from mlip.errors import MLIPError, where
from mlip.io import atomic_write_bytes_via
from mlip.outputs import PREDICTION_PREFIX as P

SCORES = {"forces": "eV/Å", "energy": "eV/atom"}
SCORE_KEY = P + "select_score"
INDEX_KEY = P + "select_index"


def score_from_spreads(spread: dict, n_atoms: int, by: str) -> float:
    """One structure's score from its committee spread (``forces_std`` ``[N]`` eV/Å or
    ``energy_std`` eV, as :func:`mlip.calculators.committee.spreads` gives them)."""
    if by == "forces":
        return float(np.max(spread["forces_std"]))
    return float(spread["energy_std"]) / n_atoms


def scores_from_file(frames: list, by: str, source: str) -> np.ndarray:
    """Scores from the spreads stored in the structures (``mlip predict/md --committee``)."""
    key = P + ("forces_std" if by == "forces" else "energy_std")
    out = np.empty(len(frames))
    for i, atoms in enumerate(frames):
        stored = atoms.arrays.get(key) if by == "forces" else atoms.info.get(key)
        if stored is None:
            raise MLIPError(
                f"{where(source, i, key)}: no committee spread in the file; pass --models M1 M2 ... "
                f"or write it first with mlip predict M1 POOL -o POOL_SPREAD --committee M2 ..."
            )
        spread = {"forces_std": stored} if by == "forces" else {"energy_std": stored}
        out[i] = score_from_spreads(spread, len(atoms), by)
    return out


def check_choice(count: int | None, lower: float, upper: float, min_separation: int) -> None:
    """One-line errors for choice settings that cannot work (run before any compute)."""
    if count is not None and count < 1:
        raise MLIPError(f"-n must be at least 1, got {count}")
    if not lower < upper:
        raise MLIPError(f"--lower ({lower}) must be below --upper ({upper})")
    if min_separation < 0:
        raise MLIPError(f"--min-separation must be 0 or more, got {min_separation}")


def choose(
    scores: np.ndarray,
    count: int | None,
    lower: float = 0.0,
    upper: float = math.inf,
    min_separation: int = 0,
) -> list[int]:
    """Indices of the structures to label: highest score first, among those with
    ``lower <= score < upper`` (non-finite scores never), each at least ``min_separation`` positions
    from every index already chosen, at most ``count`` of them (None: all that qualify). Ties go
    to the earlier structure."""
    check_choice(count, lower, upper, min_separation)
    scores = np.asarray(scores, dtype=np.float64)
    eligible = np.isfinite(scores) & (scores >= lower) & (scores < upper)
    order = sorted(np.flatnonzero(eligible), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    for i in order:
        if count is not None and len(chosen) == count:
            break
        if min_separation and any(abs(int(i) - j) < min_separation for j in chosen):
            continue
        chosen.append(int(i))
    return chosen


def run_select(
    pool: str,
    output: str,
    count: int | None,
    models: tuple[str, ...] | list[str] = (),
    by: str = "forces",
    lower: float = 0.0,
    upper: float = math.inf,
    min_separation: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "float64",
    progress: bool = True,
) -> list[int]:
    """Write the chosen structures of ``pool`` to ``output`` (extxyz, highest score first; each as
    in the pool plus ``MLIP_select_score`` and ``MLIP_select_index``, its position in the pool) and
    return their indices. Nothing is written when no structure qualifies."""
    if by not in SCORES:
        raise MLIPError(f"--by must be one of {', '.join(SCORES)}, got {by!r}")
    check_choice(count, lower, upper, min_separation)
    if models and len(models) < 2:
        raise MLIPError("--models needs two or more models (a committee) to measure a spread")
    check_writable(output)
    if models:
        dev = select_device(device)
        _, frames, runs = predict_committee(
            list(models), pool, batch_size, dev, dtype, progress, require_energy=f"{by} spread"
        )
        scores = np.array(
            [  # energy and force spreads only: no tensor spreads are needed for the score
                score_from_spreads(spreads([run[i] for run in runs], ()), len(atoms), by)
                for i, atoms in enumerate(frames)
            ]
        )
    else:
        frames = read_atoms(pool)
        scores = scores_from_file(frames, by, pool)
    chosen = choose(scores, count, lower, upper, min_separation)
    unit = SCORES[by]
    finite = scores[np.isfinite(scores)]
    summary = (
        f"{by} spread over {len(frames)} structures of {pool}: median {np.median(finite):.3g}, "
        f"max {np.max(finite):.3g} {unit}"
        if finite.size
        else f"no finite {by} spread in {pool}"
    )
    if not chosen:
        print(f"mlip: {summary}; none in [{lower:g}, {upper:g}) {unit}: nothing written")
        return chosen
    picked = []
    for i in chosen:
        atoms = frames[i]  # not .copy(): that would drop labels ASE keeps on a calculator
        atoms.info[SCORE_KEY] = float(scores[i])
        atoms.info[INDEX_KEY] = i
        picked.append(atoms)
    buffer = io.StringIO()
    ase.io.write(buffer, picked, format="extxyz")
    atomic_write_bytes_via(output, lambda handle: handle.write(buffer.getvalue().encode()))
    print(
        f"mlip: {summary}; wrote the {len(chosen)} chosen (scores {scores[chosen[-1]]:.3g}–"
        f"{scores[chosen[0]]:.3g} {unit}) to {output}"
    )
    return chosen
