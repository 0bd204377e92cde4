"""Periodic dipoles: a polarization-quantum jump between neighbouring frames is reported."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlip.data.reading import LabelledStructure
from mlip.data.statistics import PolarizationJumpCheck, check_polarization_jumps
from mlip.errors import _warned
from mlip.targets import TargetSpec
from tests.conftest import DATA

DIPOLE = TargetSpec("dipole", "vector", "dipole", irreps=((1, 1),))


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _warned.clear()


def _trajectory(jump_at: int | None, n: int = 30) -> list[LabelledStructure]:
    """An MD-like sequence: the dipole drifts by ~0.05 e·Å per frame (cell 3.6 Å)."""
    rng = np.random.default_rng(1)
    atoms = bulk("NaCl", "rocksalt", a=5.1, cubic=False)
    mu = np.array([0.3, -0.2, 0.1])
    out = []
    for k in range(n):
        mu = mu + 0.05 * rng.normal(size=3)
        label = mu + (atoms.cell.array[1] if jump_at is not None and k >= jump_at else 0.0)
        out.append(LabelledStructure(atoms=atoms.copy(), labels={"dipole": label}, index=k))
    return out


def test_a_quantum_jump_is_found_and_reported_once(capsys):
    structures = _trajectory(jump_at=17)
    check = PolarizationJumpCheck(DIPOLE, "md.xyz")
    for s in structures:
        check.add(s.index, s.atoms, s.labels["dipole"])
    assert check.jumps() == [17]
    check_polarization_jumps(structures, [DIPOLE], "md.xyz")
    check_polarization_jumps(structures, [DIPOLE], "md.xyz")
    err = capsys.readouterr().err
    assert err.count("polarization quantum") == 1 and "structure 17" in err and "md.xyz" in err


def test_smooth_periodic_dipoles_and_molecules_are_quiet(capsys):
    check_polarization_jumps(_trajectory(jump_at=None), [DIPOLE], "md.xyz")
    molecules = _trajectory(jump_at=5)
    for s in molecules:
        s.atoms.pbc = False  # a molecule's dipole is well defined: nothing to check
    check_polarization_jumps(molecules, [DIPOLE], "mol.xyz")
    assert "polarization quantum" not in capsys.readouterr().err


def test_independent_frames_do_not_give_false_alarms():
    """Shipped bulk water: frames are not a smooth sequence, so chance near-quanta are not flagged."""
    check = PolarizationJumpCheck(TargetSpec("dipole", "vector", "REF_dipole", irreps=((1, 1),)), "water")
    for k, atoms in enumerate(ase.io.read(DATA / "water_bulk" / "water_bulk.xyz", ":200")):
        check.add(k, atoms, np.asarray(atoms.info["REF_dipole"]))
    assert len(check.changes) == 199 and check.jumps() == []
