"""Reading structures and labels, validation errors, neighbour lists and atomic reference energies."""

from __future__ import annotations

import itertools

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import voigt_6_to_full_3x3_stress

from mlip.data.graph import atoms_to_graph
from mlip.data.neighbours import build_neighbour_list
from mlip.data.reading import (
    check_structure,
    extract_label,
    is_isolated_atom,
    normalise_pbc,
    read_atoms,
    read_labelled,
)
from mlip.data.statistics import energy_scale_shift, fit_e0s
from mlip.errors import MLIPError
from mlip.targets import UNIT_FACTORS, TargetSpec

ENERGY = TargetSpec(name="energy", kind="energy", key="REF_energy")
FORCES = TargetSpec(name="forces", kind="forces", key="REF_forces")
STRESS = TargetSpec(name="stress", kind="stress", key="REF_stress", virial_key="virial")


# ----------------------------------------------------------------------------- helpers
def _molecule(rng: np.random.Generator, n: int = 5) -> Atoms:
    pos = np.cumsum(rng.uniform(0.9, 1.2, size=(n, 3)) * [1.0, 0.3, 0.2], axis=0)
    return Atoms(numbers=rng.choice([1, 6, 8], size=n), positions=pos)


def _crystal(rng: np.random.Generator, n: int = 3) -> Atoms:
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 4.2, 0.0], [0.5, -0.6, 4.5]])
    return Atoms(
        numbers=rng.choice([1, 6, 8], size=n), scaled_positions=rng.uniform(size=(n, 3)), cell=cell, pbc=True
    )


def _check_error(err: pytest.ExceptionInfo, *fragments: str) -> str:
    msg = str(err.value)
    assert isinstance(err.value, MLIPError)
    assert "\n" not in msg and msg.strip() == msg and msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def _write(path, frames) -> str:
    ase.io.write(str(path), frames, format="extxyz")
    return str(path)


@pytest.fixture()
def labelled_file(tmp_path):
    """Molecules and crystals with labels in every place ASE can put them; returns (path, truth)."""
    rng = np.random.default_rng(0)
    frames, truth = [], []
    for k in range(4):
        atoms = _molecule(rng, n=3 + k) if k % 2 == 0 else _crystal(rng, n=2 + k)
        n = len(atoms)
        energy, forces = float(rng.normal() * 10), rng.normal(size=(n, 3))
        atoms.info["REF_energy"] = energy
        atoms.arrays["REF_forces"] = forces
        calc = dict(energy=energy + 1.0, forces=forces + 0.5)
        stress = None
        if atoms.pbc.all():
            voigt = rng.normal(size=6)
            stress = voigt_6_to_full_3x3_stress(voigt)
            if k == 1:
                atoms.info["REF_stress"] = voigt  # Voigt (6)
            else:
                atoms.info["REF_stress"] = stress  # 3×3 (9)
            calc["stress"] = voigt
        atoms.calc = SinglePointCalculator(atoms, **calc)
        frames.append(atoms)
        truth.append(dict(energy=energy, forces=forces, stress=stress, numbers=atoms.numbers.copy()))
    # a crystal that only carries a virial: stress = -virial / V
    atoms = _crystal(rng, n=2)
    virial = rng.normal(size=(3, 3))
    virial = virial + virial.T
    atoms.info.update(REF_energy=-3.0, virial=virial)
    atoms.arrays["REF_forces"] = np.zeros((2, 3))
    frames.append(atoms)
    truth.append(
        dict(
            energy=-3.0,
            forces=np.zeros((2, 3)),
            stress=-virial / atoms.get_volume(),
            numbers=atoms.numbers.copy(),
        )
    )
    return _write(tmp_path / "train.xyz", frames), truth


# ----------------------------------------------------------------------------- reading labels
def test_read_labelled_info_and_arrays(labelled_file):
    path, truth = labelled_file
    structures = read_labelled(path, [ENERGY, FORCES])
    assert len(structures) == len(truth)
    for k, (s, t) in enumerate(zip(structures, truth)):
        assert s.index == k and s.source == f"{path}, structure {k}"
        np.testing.assert_array_equal(s.atoms.numbers, t["numbers"])
        assert s.labels["energy"].shape == ()
        assert float(s.labels["energy"]) == pytest.approx(t["energy"], abs=1e-12)
        assert s.labels["forces"].shape == (len(s.atoms), 3)
        np.testing.assert_allclose(s.labels["forces"], t["forces"], atol=1e-8)


def test_read_labelled_calculator_results(labelled_file):
    path, truth = labelled_file
    specs = [
        TargetSpec(name="energy", kind="energy", key="energy"),
        TargetSpec(name="forces", kind="forces", key="forces"),
        TargetSpec(name="stress", kind="stress", key="stress"),
    ]
    frames = read_atoms(path)
    for k, (atoms, t) in enumerate(zip(frames[:4], truth)):
        loc = f"{path}, structure {k}"
        assert float(extract_label(atoms, specs[0], loc)) == pytest.approx(t["energy"] + 1.0, abs=1e-12)
        np.testing.assert_allclose(extract_label(atoms, specs[1], loc), t["forces"] + 0.5, atol=1e-8)
    # frame 4 has no calculator: the message names the key and lists the keys that are there
    with pytest.raises(MLIPError) as err:
        read_labelled(path, specs[:2])
    _check_error(err, "train.xyz", "structure 4", "'energy'", "REF_energy")
    crystals = [s for s in frames[:4] if s.pbc.all()]
    assert len(crystals) == 2
    for k, atoms in zip((1, 3), crystals):
        stress = extract_label(atoms, specs[2], f"{path}, structure {k}")
        assert stress.shape == (3, 3)
        np.testing.assert_allclose(stress, truth[k]["stress"], atol=1e-8)


def test_read_stress_voigt_matrix_and_virial(labelled_file):
    path, truth = labelled_file
    structures = read_labelled(path, [ENERGY])
    periodic = [k for k, t in enumerate(truth) if t["stress"] is not None]
    assert periodic == [1, 3, 4]
    frames = read_atoms(path)
    for k in periodic:
        stress = extract_label(frames[k], STRESS, f"f, structure {k}")
        np.testing.assert_allclose(stress, truth[k]["stress"], atol=1e-8)
        np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    # Voigt order is xx yy zz yz xz xy
    atoms = frames[1]
    voigt = np.asarray(atoms.info["REF_stress"]).reshape(-1)
    assert voigt.size == 6
    stress = extract_label(atoms, STRESS, "f")
    assert stress[1, 2] == pytest.approx(voigt[3]) and stress[0, 2] == pytest.approx(voigt[4])
    assert stress[0, 1] == pytest.approx(voigt[5]) and stress[2, 2] == pytest.approx(voigt[2])
    # virial: stress = -virial / V, and only used when the stress key is absent
    virial = np.asarray(frames[4].info["virial"])
    np.testing.assert_allclose(extract_label(frames[4], STRESS, "f"), -virial / frames[4].get_volume())
    assert len(structures) == 5


def test_unit_factor(labelled_file):
    path, truth = labelled_file
    hartree = UNIT_FACTORS["Hartree"]
    specs = [
        TargetSpec(name="energy", kind="energy", key="REF_energy", unit_factor=hartree),
        TargetSpec(name="forces", kind="forces", key="REF_forces", unit_factor=0.5),
        TargetSpec(name="stress", kind="stress", key="REF_stress", virial_key="virial", unit_factor=2.0),
    ]
    frames = read_atoms(path)
    for k, atoms in enumerate(frames):
        loc = f"{path}, structure {k}"
        assert float(extract_label(atoms, specs[0], loc)) == pytest.approx(truth[k]["energy"] * hartree)
        np.testing.assert_allclose(extract_label(atoms, specs[1], loc), 0.5 * truth[k]["forces"], atol=1e-8)
        if truth[k]["stress"] is not None:
            stress = extract_label(atoms, specs[2], loc)
            np.testing.assert_allclose(stress, 2.0 * truth[k]["stress"], atol=1e-8)
    structures = read_labelled(path, specs[:2])
    assert float(structures[0].labels["energy"]) == pytest.approx(truth[0]["energy"] * 27.211386245988)
    np.testing.assert_allclose(structures[3].labels["forces"], 0.5 * truth[3]["forces"], atol=1e-8)


def test_isolated_atoms_need_only_energy(tmp_path):
    atoms = Atoms("H", positions=[[0.0, 0.0, 0.0]])
    atoms.info["REF_energy"] = -13.6
    molecule = Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]])
    molecule.info["REF_energy"] = -1.0
    molecule.arrays["REF_forces"] = np.ones((2, 3))
    path = _write(tmp_path / "iso.xyz", [atoms, molecule])
    structures = read_labelled(path, [ENERGY, FORCES])
    assert set(structures[0].labels) == {"energy"} and set(structures[1].labels) == {"energy", "forces"}
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY, FORCES], allow_isolated_without_labels=False)
    _check_error(err, "iso.xyz", "structure 0", "REF_forces")


# ----------------------------------------------------------------------------- errors
def test_missing_and_empty_file(tmp_path):
    with pytest.raises(MLIPError) as err:
        read_labelled(tmp_path / "nope.xyz", [ENERGY])
    _check_error(err, "nope.xyz", "not found")
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(MLIPError) as err:
        read_labelled(tmp_path / "empty.xyz", [ENERGY])
    _check_error(err, "empty.xyz", "empty")
    with pytest.raises(MLIPError) as err:
        read_atoms(tmp_path)
    _check_error(err, str(tmp_path), "directory")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.xyz"
    path.write_text("3\nnot an extxyz comment line\nC 0 0 0\nX y z w\n")
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY])
    _check_error(err, "garbage.xyz")


def _frames(rng, n=3):
    frames = []
    for _ in range(n):
        atoms = _molecule(rng, n=4)
        atoms.info["REF_energy"] = float(rng.normal())
        atoms.arrays["REF_forces"] = rng.normal(size=(4, 3))
        frames.append(atoms)
    return frames


def test_missing_label_in_frame_2(tmp_path):
    frames = _frames(np.random.default_rng(1))
    del frames[2].info["REF_energy"]
    path = _write(tmp_path / "missing.xyz", frames)
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY, FORCES])
    msg = _check_error(err, "missing.xyz", "structure 2", "REF_energy")
    assert "REF_forces" in msg  # lists the keys that are present


def test_forces_of_wrong_shape(tmp_path):
    frames = _frames(np.random.default_rng(2))
    frames[1].arrays["REF_forces"] = frames[1].arrays["REF_forces"][:, :2].copy()
    path = _write(tmp_path / "shape.xyz", frames)
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY, FORCES])
    _check_error(err, "shape.xyz", "structure 1", "REF_forces")
    # forces given per structure (too few numbers) are rejected as well
    atoms = frames[0].copy()
    atoms.info["bad_forces"] = np.arange(5.0)
    with pytest.raises(MLIPError) as err:
        extract_label(atoms, TargetSpec(name="forces", kind="forces", key="bad_forces"), "x.xyz, structure 0")
    _check_error(err, "x.xyz", "structure 0", "bad_forces")


def test_stress_of_five_numbers(tmp_path):
    rng = np.random.default_rng(3)
    atoms = _crystal(rng)
    atoms.info.update(REF_energy=1.0, REF_stress=np.arange(5.0))
    atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
    good = _crystal(rng)
    good.info.update(REF_energy=1.0, REF_stress=np.arange(6.0))
    good.arrays["REF_forces"] = np.zeros((len(good), 3))
    path = _write(tmp_path / "stress.xyz", [good, atoms])
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY, FORCES, STRESS])
    _check_error(err, "stress.xyz", "structure 1", "REF_stress", "5")


@pytest.mark.parametrize("where", ["energy", "forces"])
def test_nan_in_label(tmp_path, where):
    frames = _frames(np.random.default_rng(4))
    if where == "energy":
        frames[1].info["REF_energy"] = float("nan")
        key = "REF_energy"
    else:
        frames[1].arrays["REF_forces"][2, 1] = float("inf")
        key = "REF_forces"
    path = _write(tmp_path / "nan.xyz", frames)
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY, FORCES])
    _check_error(err, "nan.xyz", "structure 1", key, "NaN")


def test_nan_in_positions(tmp_path):
    path = tmp_path / "nanpos.xyz"
    path.write_text(
        '2\nProperties=species:S:1:pos:R:3 REF_energy=1.0 pbc="F F F"\nC 0 0 0\nO 1.1 0 0\n'
        '2\nProperties=species:S:1:pos:R:3 REF_energy=1.0 pbc="F F F"\nC 0 nan 0\nO 1.1 0 0\n'
    )
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY])
    _check_error(err, "nanpos.xyz", "structure 1", "NaN", "atom 0")


def test_unknown_element():
    atoms = Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0]])
    check_structure(atoms, "mol.xyz, structure 4", allowed_numbers=[1, 6, 8])
    with pytest.raises(MLIPError) as err:
        check_structure(atoms, "mol.xyz, structure 4", allowed_numbers=[1, 6])
    msg = _check_error(err, "mol.xyz", "structure 4", "O")
    assert "C, H" in msg or ("C" in msg and "H" in msg)


def test_zero_volume_cell(tmp_path):
    flat = Atoms(
        "CO",
        positions=[[0, 0, 0], [1.1, 0.3, 0]],
        pbc=True,
        cell=[[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.5, 1.5, 0.0]],
    )
    with pytest.raises(MLIPError) as err:
        check_structure(flat, "cell.xyz, structure 0")
    _check_error(err, "cell.xyz", "structure 0", "degenerate")
    flat.info["REF_energy"] = 1.0
    good = Atoms("CO", positions=[[0, 0, 0], [1.1, 0.3, 0]], pbc=True, cell=np.eye(3) * 4)
    good.info["REF_energy"] = 2.0
    path = _write(tmp_path / "cell.xyz", [good, flat])
    with pytest.raises(MLIPError) as err:
        read_labelled(path, [ENERGY])
    _check_error(err, "cell.xyz", "structure 1")
    # periodic along an axis whose cell vector is zero
    slab = Atoms(
        "CO",
        positions=[[0, 0, 0], [1.1, 0.3, 0]],
        pbc=[True, True, True],
        cell=[[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]],
    )
    with pytest.raises(MLIPError) as err:
        check_structure(slab, "cell.xyz, structure 7")
    _check_error(err, "cell.xyz", "structure 7", "axis 2")


def test_atoms_too_close():
    atoms = Atoms("CHO", positions=[[0, 0, 0], [0.3, 0, 0], [0, 1.2, 0]])
    atoms_to_graph(atoms, 5.0, min_distance=0.25, source="close.xyz, structure 3")
    with pytest.raises(MLIPError) as err:
        atoms_to_graph(atoms, 5.0, min_distance=0.5, source="close.xyz, structure 3")
    msg = _check_error(err, "close.xyz", "structure 3", "0.3")
    assert "atoms 0 and 1" in msg or "atoms 1 and 0" in msg
    # also across a periodic boundary
    crystal = Atoms("CC", positions=[[0.1, 0, 0], [3.7, 0, 0]], cell=np.eye(3) * 4, pbc=True)
    with pytest.raises(MLIPError) as err:
        atoms_to_graph(crystal, 3.0, min_distance=0.5, source="pbc.xyz, structure 0")
    _check_error(err, "pbc.xyz", "structure 0")


# ----------------------------------------------------------------------------- neighbour lists
def _brute_force(positions, cell, pbc, cutoff):
    """Reference: all (i, j, S, d) by looping over enough lattice translations."""
    positions, cell, pbc = np.asarray(positions, float), np.asarray(cell, float), np.asarray(pbc, bool)
    full = cell.copy()  # non-periodic axes: any vector completing the basis (only for heights)
    for axis in np.flatnonzero(~pbc):
        if np.linalg.norm(full[axis]) < 1e-9:
            full[axis] = np.cross(*[full[a] if pbc[a] else np.eye(3)[a] for a in range(3) if a != axis])
    ranges = []
    for axis in range(3):
        if not pbc[axis]:
            ranges.append([0])
            continue
        others = [a for a in range(3) if a != axis]
        normal = np.cross(full[others[0]], full[others[1]])
        height = abs(full[axis] @ normal) / np.linalg.norm(normal)
        span = np.ptp(positions @ normal / np.linalg.norm(normal))
        n = int(np.ceil((cutoff + span) / height)) + 1
        ranges.append(range(-n, n + 1))
    out = set()
    for shift in itertools.product(*ranges):
        vec = positions[None, :, :] - positions[:, None, :] + np.asarray(shift, float) @ cell
        dist = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero(dist < cutoff)):
            if i == j and not any(shift):
                continue
            out.add((int(i), int(j), tuple(int(s) for s in shift), round(float(dist[i, j]), 9)))
    return out


def _as_set(positions, cell, i, j, shifts, d):
    vec = positions[j] - positions[i] + shifts @ cell
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), d, atol=1e-10)
    return {
        (int(a), int(b), tuple(int(round(x)) for x in s), round(float(r), 9))
        for a, b, s, r in zip(i, j, shifts, d)
    }


def test_neighbours_cell_smaller_than_cutoff():
    positions, cell, pbc = np.zeros((1, 3)), np.eye(3) * 2.0, np.array([True] * 3)
    i, j, shifts, d = build_neighbour_list(positions, cell, pbc, 3.0)
    assert len(i) == 18
    assert np.all(i == 0) and np.all(j == 0)
    d = np.sort(d)
    np.testing.assert_allclose(d[:6], 2.0, atol=1e-12)
    np.testing.assert_allclose(d[6:], np.sqrt(8.0), atol=1e-12)
    assert _as_set(positions, cell, i, j, shifts, np.linalg.norm(shifts @ cell, axis=1)) == _brute_force(
        positions, cell, pbc, 3.0
    )
    # the same through atoms_to_graph
    graph = atoms_to_graph(Atoms("C", cell=cell, pbc=True), 3.0, dtype=torch.float64)
    assert graph.edge_index.shape == (2, 18) and graph.unit_shifts.shape == (18, 3)
    assert graph.cell.shape == (1, 3, 3) and graph.pbc.tolist() == [[True, True, True]]


@pytest.mark.parametrize("case", ["molecule", "triclinic", "tiny", "slab_zero_z", "slab_small_z", "wire"])
def test_neighbours_match_brute_force(case):
    rng = np.random.default_rng(len(case))
    cutoff = 3.5
    cell = np.array([[3.1, 0.0, 0.0], [0.8, 2.9, 0.0], [-0.4, 0.5, 3.3]])
    pbc = np.array([True, True, True])
    n = 5
    if case == "molecule":
        pbc[:] = False
        cell = np.zeros((3, 3))
        positions = rng.uniform(-3, 3, size=(n, 3))
    elif case == "tiny":
        cell = cell * 0.6
        positions = rng.uniform(size=(2, 3)) @ cell
    elif case.startswith("slab"):
        pbc[2] = False
        cell[2] = [0.0, 0.0, 0.0] if case == "slab_zero_z" else [0.0, 0.0, 1.5]
        positions = rng.uniform(size=(n, 3)) @ np.array([cell[0], cell[1], [0, 0, 6.0]])
    elif case == "wire":
        pbc[1:] = False
        positions = rng.uniform(-2, 2, size=(n, 3))
    else:
        positions = rng.uniform(-0.5, 1.5, size=(n, 3)) @ cell  # some atoms outside the cell
    i, j, shifts, d = build_neighbour_list(positions, cell, pbc, cutoff)
    assert shifts.dtype == np.float64 and np.all(shifts[:, ~pbc] == 0)
    got = _as_set(positions, cell, i, j, shifts, d)
    assert len(got) == len(i)  # no duplicate edges
    expected = _brute_force(positions, cell, pbc, cutoff)
    assert len(expected) > 0
    assert got == expected
    # every edge comes with its reverse
    assert {(b, a, tuple(-s for s in sh), r) for a, b, sh, r in got} == got


def test_molecule_graph_has_zero_cell():
    atoms = _molecule(np.random.default_rng(5), n=6)
    atoms.cell = np.eye(3) * 100.0  # a cell without periodicity is ignored
    graph = atoms_to_graph(atoms, 2.0, dtype=torch.float64)
    assert torch.all(graph.cell == 0) and not graph.pbc.any() and torch.all(graph.unit_shifts == 0)
    d = np.linalg.norm(atoms.positions[graph.edge_index[1]] - atoms.positions[graph.edge_index[0]], axis=1)
    assert np.all(d < 2.0) and len(d) == int((atoms.get_all_distances() < 2.0).sum() - len(atoms))


def test_zero_cell_with_pbc_is_a_molecule(tmp_path):
    atoms = Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [0, 1.0, 0.3]], pbc=True)
    assert atoms.pbc.all() and np.allclose(atoms.cell.array, 0)
    fixed = normalise_pbc(atoms)
    assert not fixed.pbc.any() and atoms.pbc.all()  # the input is not modified
    graph = atoms_to_graph(fixed, 3.0, dtype=torch.float64)
    reference = atoms_to_graph(Atoms("COH", positions=atoms.positions), 3.0, dtype=torch.float64)
    assert torch.equal(graph.edge_index, reference.edge_index) and graph.edge_index.shape[1] == 6
    # a periodic structure with a real cell is left alone
    crystal = _crystal(np.random.default_rng(6))
    assert normalise_pbc(crystal) is crystal
    # read from a file: flagged periodic with a zero lattice, read as a molecule
    path = tmp_path / "zero.xyz"
    path.write_text(
        '3\nLattice="0 0 0 0 0 0 0 0 0" Properties=species:S:1:pos:R:3 REF_energy=-2.5 '
        'pbc="T T T"\nC 0 0 0\nO 1.2 0 0\nH 0 1.0 0.3\n'
    )
    (s,) = read_labelled(path, [ENERGY])
    assert not s.atoms.pbc.any() and float(s.labels["energy"]) == -2.5


def test_slab_graph():
    rng = np.random.default_rng(7)
    atoms = Atoms(
        numbers=[6] * 4,
        cell=[[2.5, 0, 0], [0, 2.5, 0], [0, 0, 0]],
        pbc=[True, True, False],
        positions=rng.uniform(size=(4, 3)) * [2.5, 2.5, 3.0],
    )
    graph = atoms_to_graph(atoms, 3.0, dtype=torch.float64)
    shifts = graph.unit_shifts.numpy()
    assert np.all(shifts[:, 2] == 0) and np.abs(shifts[:, :2]).max() >= 1
    expected = _brute_force(atoms.positions, atoms.cell.array, atoms.pbc, 3.0)
    assert graph.edge_index.shape[1] == len(expected)


# ----------------------------------------------------------------------------- E0s and statistics
def _synthetic(e0: dict[int, float], n: int = 20, seed: int = 0, noise: float = 0.0):
    from mlip.data.reading import LabelledStructure

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        numbers = rng.choice(sorted(e0), size=int(rng.integers(1, 9)))
        atoms = Atoms(numbers=numbers, positions=rng.uniform(0, 5, size=(len(numbers), 3)))
        energy = sum(e0[int(z)] for z in numbers) + noise * rng.normal()
        forces = rng.normal(size=(len(numbers), 3))
        out.append(LabelledStructure(atoms=atoms, labels={"energy": np.array(energy), "forces": forces}))
    return out


def test_fit_e0s_recovers_known_energies():
    e0 = {1: -13.6, 6: -1029.5, 8: -2041.3}
    structures = _synthetic(e0)
    fitted = fit_e0s(structures, [1, 6, 8])
    assert list(fitted) == [1, 6, 8]
    for z in e0:
        assert fitted[z] == pytest.approx(e0[z], abs=1e-8)
    # with one value fixed (e.g. from an isolated atom), the others are still recovered
    fitted = fit_e0s(structures, [1, 6, 8], fixed={1: -13.6})
    assert fitted[1] == -13.6
    assert fitted[6] == pytest.approx(e0[6], abs=1e-8) and fitted[8] == pytest.approx(e0[8], abs=1e-8)
    # a wrong fixed value is kept, not silently refitted
    assert fit_e0s(structures, [1, 6, 8], fixed={1: 0.0})[1] == 0.0
    # a species that never appears does not break the fit
    fitted = fit_e0s(structures, [1, 6, 7, 8])
    assert abs(fitted[7]) < 1e-9 and fitted[8] == pytest.approx(e0[8], abs=1e-8)
    # the energies of structures built from the fitted E0s are reproduced
    for s in structures:
        pred = sum(fitted[int(z)] for z in s.atoms.numbers)
        assert pred == pytest.approx(float(s.labels["energy"]), abs=1e-8)


def test_fit_e0s_single_composition():
    """Only one molecule type: the split between elements is not determined, but the fit is finite
    and reproduces the energies; a fixed E0 then determines the other one exactly."""
    from mlip.data.reading import LabelledStructure

    water = [LabelledStructure(atoms=Atoms("H2O"), labels={"energy": np.array(-2068.5)}) for _ in range(3)]
    fitted = fit_e0s(water, [1, 8])
    assert all(np.isfinite(v) for v in fitted.values())
    assert 2 * fitted[1] + fitted[8] == pytest.approx(-2068.5, abs=1e-8)
    fitted = fit_e0s(water, [1, 8], fixed={1: -13.6})
    assert fitted == {1: -13.6, 8: pytest.approx(-2068.5 + 27.2, abs=1e-8)}
    with pytest.raises(MLIPError):
        fit_e0s([], [1, 8])


def test_energy_scale_shift():
    e0 = {1: -13.6, 6: -1029.5}
    structures = _synthetic(e0, n=10, seed=2)
    for s in structures:
        s.labels["energy"] = np.array(float(s.labels["energy"]) + 0.25 * len(s.atoms))
    scale, shift = energy_scale_shift(structures, e0, has_forces=True)
    assert shift == pytest.approx(0.25, abs=1e-9)
    forces = np.concatenate([s.labels["forces"].reshape(-1) for s in structures])
    assert scale == pytest.approx(np.sqrt(np.mean(forces**2)))


def test_is_isolated_atom():
    assert is_isolated_atom(Atoms("H", positions=[[0, 0, 0]]))
    assert not is_isolated_atom(Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 3, pbc=True))
    assert not is_isolated_atom(Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]]))
    tagged = Atoms("O", positions=[[0, 0, 0]], cell=np.eye(3) * 20, pbc=True)
    tagged.info["config_type"] = "IsolatedAtom"
    assert is_isolated_atom(tagged)
    tagged.info["config_type"] = "bulk"
    assert not is_isolated_atom(tagged)


def test_isolated_atoms_from_file_give_e0s(tmp_path):
    """Isolated atoms read from a file fix their E0s; the rest is fitted from the molecules."""
    e0 = {1: -13.6, 8: -2041.3}
    frames = []
    for z in (1, 8):
        atom = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])
        atom.info["REF_energy"] = e0[z]
        frames.append(atom)
    for formula in ["H2O", "OH", "H2O2", "O2"]:
        mol = Atoms(formula, positions=np.arange(3 * len(Atoms(formula))).reshape(-1, 3) * 0.5)
        mol.info["REF_energy"] = sum(e0[int(z)] for z in mol.numbers)
        mol.arrays["REF_forces"] = np.zeros((len(mol), 3))
        frames.append(mol)
    path = _write(tmp_path / "e0.xyz", frames)
    structures = read_labelled(path, [ENERGY, FORCES])
    isolated = {
        int(s.atoms.numbers[0]): float(s.labels["energy"]) for s in structures if is_isolated_atom(s.atoms)
    }
    assert isolated == e0
    fitted = fit_e0s([s for s in structures if not is_isolated_atom(s.atoms)], [1, 8], fixed=isolated)
    assert fitted == e0
