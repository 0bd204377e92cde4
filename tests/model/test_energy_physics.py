"""Physical consistency of the energy model: symmetries, exact derivatives, extensivity, smoothness.

The model is randomly initialised and its weights are perturbed so that the energy depends strongly
on the structure (an untrained model is nearly flat and would pass most checks trivially). Every
test first asserts that the quantity it compares is non-trivially large.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from torch_geometric.data import Batch

from mlip.data.graph import atoms_to_graph
from mlip.model.potential import MLIPModel
from tests.conftest import perturb_weights

CUTOFF = 5.0
SPECIES = [1, 6, 8]
REL = 1e-10  # relative tolerance of exact symmetries in float64


# ----------------------------------------------------------------------------- helpers
# Backbone variants every test runs on: the plain power spectrum, and every optional feature on
# (bispectrum invariants, bond projections of the previous density, three layers, and the learned
# short-range pair repulsion of mlip.model.pair, the linear update path and the linear update
# without MLP, element-pair radial functions, the per-element update path, the neighbours' densities
# transported into the next layer's density).
ARCHITECTURES = {
    "power-spectrum": dict(num_layers=2),
    "bispectrum+bonds+pair": dict(
        num_layers=3,
        correlation=3,
        bond_channels=4,
        linear_update=True,
        update_mlp=False,
        radial_species=3,
        element_update=True,
        density_messages=4,
    ),
}
WITH_PAIR_REPULSION = {"bispectrum+bonds+pair"}


def _make_model(
    seed: int = 0, cutoff: float = CUTOFF, noise: float = 0.1, architecture: str = "power-spectrum"
) -> MLIPModel:
    torch.manual_seed(seed)
    model = MLIPModel(
        SPECIES,
        cutoff=cutoff,
        e0s={1: -1.5, 6: -2.0, 8: -3.0},
        backbone=dict(
            channels=16, lmax=3, radial_hidden=16, avg_num_neighbours=8.0, **ARCHITECTURES[architecture]
        ),
        readout_hidden=16,
        pair_repulsion={} if architecture in WITH_PAIR_REPULSION else None,
    ).double()
    perturb_weights(model, noise)
    with torch.no_grad():
        model.scale.fill_(1.0)
        model.shift.fill_(0.1)
    return model.eval()


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def model(request) -> MLIPModel:
    return _make_model(architecture=request.param)


def _predict(model: MLIPModel, structures, forces: bool = True, stress: bool = False, dtype=None):
    """Outputs for a list of structures (one batch), as float64 numpy arrays."""
    if isinstance(structures, Atoms):
        structures = [structures]
    dtype = dtype or next(model.parameters()).dtype
    graphs = [atoms_to_graph(a, model.cutoff, dtype=dtype) for a in structures]
    out = model(Batch.from_data_list(graphs), compute_forces=forces, compute_stress=stress)
    return {k: v.detach().to(torch.float64).numpy() for k, v in out.items()}


def _energy(model: MLIPModel, atoms: Atoms) -> float:
    return float(_predict(model, atoms, forces=False)["energy"][0])


def _energies(model: MLIPModel, structures: list[Atoms]) -> np.ndarray:
    """Energies of many structures in one batch (finite differences)."""
    with torch.no_grad():
        return _predict(model, structures, forces=False)["energy"]


def _random_molecule(rng: np.random.Generator, n: int = 10, box: float = 4.0, dmin: float = 0.9) -> Atoms:
    numbers = rng.choice([1, 6, 8], size=n)
    numbers[:2] = [6, 8]  # two elements at least
    pos: list[np.ndarray] = []
    while len(pos) < n:
        trial = rng.uniform(0.0, box, size=3)
        if all(np.linalg.norm(trial - p) > dmin for p in pos):
            pos.append(trial)
    return Atoms(numbers=numbers, positions=np.array(pos))


def _diamond(rng: np.random.Generator, rattle: float = 0.05) -> Atoms:
    atoms = bulk("C", "diamond", a=3.57, cubic=True)  # 8 atoms, 3.57 Å < cutoff
    atoms.numbers[[1, 6]] = [8, 1]  # different species on a few sites
    atoms.positions += rattle * rng.normal(size=atoms.positions.shape)
    return atoms


def _triclinic(rng: np.random.Generator, n: int = 4) -> Atoms:
    cell = np.array([[3.6, 0.0, 0.0], [0.9, 3.3, 0.0], [-0.7, 0.6, 3.9]]) + 0.1 * rng.normal(size=(3, 3))
    while True:
        frac = rng.uniform(size=(n, 3))
        atoms = Atoms(numbers=rng.choice([1, 6, 8], size=n), scaled_positions=frac, cell=cell, pbc=True)
        if atoms.get_all_distances(mic=True)[np.triu_indices(n, 1)].min() > 1.0:
            return atoms


def _o3(seed: int = 0) -> list[np.ndarray]:
    """Two proper rotations, an improper rotation, a mirror and the inversion −I."""
    rng = np.random.default_rng(seed)
    rots = []
    for _ in range(3):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        rots.append(q)
    rots[2] = -rots[2]
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    rots += [np.eye(3) - 2.0 * np.outer(n, n), -np.eye(3)]
    assert [round(np.linalg.det(r)) for r in rots] == [1, 1, -1, -1, -1]
    return rots


def _transform(atoms: Atoms, rot: np.ndarray, shift=(0.0, 0.0, 0.0)) -> Atoms:
    """Row-vector convention: r ↦ r Rᵀ + t, cell ↦ cell Rᵀ."""
    out = atoms.copy()
    if atoms.pbc.any():
        out.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    out.positions = atoms.positions @ rot.T + np.asarray(shift)
    return out


def _structures() -> dict[str, Atoms]:
    rng = np.random.default_rng(42)
    return {
        "molecule": _random_molecule(rng),
        "molecule2": _random_molecule(rng, n=9),
        "diamond": _diamond(rng),
        "triclinic": _triclinic(rng),
    }


STRUCTURES = _structures()
PERIODIC = ["diamond", "triclinic"]


def _assert_close(actual, expected, rel, what, floor=1.0):
    """``max|actual − expected| ≤ rel · max(max|expected|, floor)``; ``floor=0``: purely relative."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(np.abs(expected).max(), floor)
    err = np.abs(actual - expected).max()
    assert err <= rel * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


# ----------------------------------------------------------------------------- sanity of the setup
def test_model_is_not_trivial(model):
    """The perturbed model has large forces and a strongly structure-dependent energy."""
    for name, atoms in STRUCTURES.items():
        out = _predict(model, atoms, stress=atoms.pbc.any())
        assert np.all(np.isfinite(out["energy"])) and np.all(np.isfinite(out["forces"]))
        assert np.abs(out["forces"]).max() > 0.1, name
        if atoms.pbc.any():
            assert np.abs(out["stress"]).max() > 1e-3, name
    rattled = STRUCTURES["molecule"].copy()
    rattled.positions[0] += 0.05
    assert abs(_energy(model, rattled) - _energy(model, STRUCTURES["molecule"])) > 1e-3
    if model.pair_repulsion is not None:  # the pair term takes part in every test of this model
        for name in ("molecule", "diamond"):
            g = atoms_to_graph(STRUCTURES[name], model.cutoff, dtype=torch.float64)
            i, j = g.edge_index
            vectors = g.pos[j] - g.pos[i] + g.unit_shifts @ g.cell.view(3, 3)
            pair = model.pair_repulsion(model.species_index(g.numbers), g.edge_index, vectors)
            assert pair.abs().max() > 1e-2, name


# ----------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_o3_invariance_and_covariance(model, name):
    atoms = STRUCTURES[name]
    periodic = bool(atoms.pbc.any())
    ref = _predict(model, atoms, stress=periodic)
    for k, rot in enumerate(_o3(seed=len(name))):
        out = _predict(model, _transform(atoms, rot), stress=periodic)
        _assert_close(out["energy"], ref["energy"], REL, f"energy, rotation {k}")
        _assert_close(out["forces"], ref["forces"] @ rot.T, REL, f"forces, rotation {k}")
        if periodic:
            _assert_close(out["stress"][0], rot @ ref["stress"][0] @ rot.T, REL, f"stress, rotation {k}")


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_translation_invariance(model, name):
    atoms = STRUCTURES[name]
    periodic = bool(atoms.pbc.any())
    ref = _predict(model, atoms, stress=periodic)
    for shift in ([0.3, -1.7, 2.2], [-13.1, 7.4, 25.9]):
        moved = _transform(atoms, np.eye(3), shift)
        out = _predict(model, moved, stress=periodic)
        _assert_close(out["energy"], ref["energy"], REL, "energy")
        _assert_close(out["forces"], ref["forces"], REL, "forces")
        if periodic:
            _assert_close(out["stress"], ref["stress"], REL, "stress")
            moved.wrap()  # wrapping atoms back into the cell changes nothing either
            out = _predict(model, moved, stress=True)
            _assert_close(out["energy"], ref["energy"], REL, "energy (wrapped)")
            _assert_close(out["forces"], ref["forces"], REL, "forces (wrapped)")


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_permutation_invariance(model, name):
    atoms = STRUCTURES[name]
    periodic = bool(atoms.pbc.any())
    ref = _predict(model, atoms, stress=periodic)
    perm = np.random.default_rng(1).permutation(len(atoms))
    out = _predict(model, atoms[perm], stress=periodic)
    _assert_close(out["energy"], ref["energy"], REL, "energy")
    _assert_close(out["forces"], ref["forces"][perm], REL, "forces")
    _assert_close(out["node_energy"], ref["node_energy"][perm], REL, "node energies")
    if periodic:
        _assert_close(out["stress"], ref["stress"], REL, "stress")


def test_species_matter(model):
    """Swapping two *different* elements changes the energy (the permutation test is not vacuous)."""
    atoms = STRUCTURES["molecule"]
    i, j = 0, 1  # C and O
    swapped = atoms.copy()
    swapped.numbers[[i, j]] = atoms.numbers[[j, i]]
    swapped.positions[[i, j]] = atoms.positions[[i, j]]
    e0 = model.hyperparameters["e0s"]
    assert sum(e0[int(z)] for z in swapped.numbers) == sum(e0[int(z)] for z in atoms.numbers)
    assert abs(_energy(model, swapped) - _energy(model, atoms)) > 1e-3


# ----------------------------------------------------------------------------- exact derivatives
def _richardson(central_difference, h: float) -> np.ndarray:
    """Richardson-extrapolated central difference, error O(h⁴): ``(4 D(h/2) − D(h)) / 3``.

    The perturbed random models are rough (forces of hundreds of eV/Å), so a plain central
    difference's O(h²) truncation error would dominate any tight tolerance."""
    return (4.0 * central_difference(h / 2) - central_difference(h)) / 3.0


@pytest.mark.parametrize("name", ["molecule", "triclinic"])
def test_forces_are_finite_differences(model, name):
    atoms = STRUCTURES[name]
    forces = _predict(model, atoms)["forces"]
    assert np.abs(forces).max() > 0.1

    def central_difference(h: float) -> np.ndarray:
        displaced = []
        for i in range(len(atoms)):
            for a in range(3):
                for sign in (1.0, -1.0):
                    moved = atoms.copy()
                    moved.positions[i, a] += sign * h
                    displaced.append(moved)
        energies = _energies(model, displaced).reshape(len(atoms), 3, 2)
        return -(energies[..., 0] - energies[..., 1]) / (2 * h)

    _assert_close(forces, _richardson(central_difference, 2e-5), 1e-8, "forces vs finite differences")


@pytest.mark.parametrize("name", ["triclinic", "diamond"])
def test_stress_is_strain_derivative(model, name):
    """σ_ab = (1/V) ∂E/∂ε_ab for a symmetric strain applied as r ↦ r(I+ε), cell ↦ cell(I+ε)."""
    atoms = STRUCTURES[name]
    out = _predict(model, atoms, stress=True)
    stress, virial = out["stress"][0], out["virial"][0]
    volume = atoms.get_volume()
    assert np.abs(stress).max() > 1e-3
    _assert_close(stress, stress.T, REL, "stress symmetry")
    _assert_close(virial, -volume * stress, REL, "virial = -V σ")
    pairs = [(a, b) for a in range(3) for b in range(a, 3)]

    def central_difference(h: float) -> np.ndarray:
        deformed = []
        for a, b in pairs:
            eps = np.zeros((3, 3))
            eps[a, b] += 0.5 * h
            eps[b, a] += 0.5 * h
            for sign in (1.0, -1.0):
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=False)
                strained.positions = atoms.positions @ (np.eye(3) + sign * eps)
                deformed.append(strained)
        energies = _energies(model, deformed).reshape(len(pairs), 2)
        fd = np.zeros((3, 3))
        for (a, b), (e_plus, e_minus) in zip(pairs, energies):
            fd[a, b] = fd[b, a] = (e_plus - e_minus) / (2 * h * volume)
        return fd

    _assert_close(stress, _richardson(central_difference, 2e-5), 1e-8, "stress vs finite differences")


# ----------------------------------------------------------------------------- extensivity
def _check_supercell(model, atoms, rel=1e-9):
    ref = _predict(model, atoms, stress=True)
    big = atoms.repeat((2, 2, 2))
    out = _predict(model, big, stress=True)
    assert np.abs(ref["forces"]).max() > 0.1
    _assert_close(out["energy"], 8 * ref["energy"], rel, "supercell energy")
    _assert_close(out["forces"], np.tile(ref["forces"], (8, 1)), rel, "supercell forces")
    _assert_close(out["stress"], ref["stress"], rel, "supercell stress")
    _assert_close(out["node_energy"], np.tile(ref["node_energy"], 8), rel, "supercell atomic energies")


@pytest.mark.parametrize("name", PERIODIC)
def test_supercell_is_extensive(model, name):
    _check_supercell(model, STRUCTURES[name])


def test_cell_smaller_than_cutoff(model):
    """A 2-atom cell of side 2.5 Å with a 5 Å cutoff: many images of each atom are neighbours."""
    rng = np.random.default_rng(3)
    atoms = Atoms(
        "CO",
        cell=np.eye(3) * 2.5,
        pbc=True,
        positions=[[0.0, 0.0, 0.0], [1.25, 1.25, 1.25]] + 0.05 * rng.normal(size=(2, 3)),
    )
    graph = atoms_to_graph(atoms, CUTOFF, dtype=torch.float64)
    assert graph.edge_index.shape[1] > 100  # far more edges than atom pairs
    assert (graph.edge_index[0] == graph.edge_index[1]).any()  # an atom sees its own images
    out = _predict(model, atoms, stress=True)
    assert np.abs(out["stress"]).max() > 1e-3
    _check_supercell(model, atoms)
    # a rigid rotation of such a tiny cell is still a symmetry
    rot = _o3(7)[0]
    rotated = _predict(model, _transform(atoms, rot), stress=True)
    _assert_close(rotated["energy"], out["energy"], REL, "energy")
    _assert_close(rotated["forces"], out["forces"] @ rot.T, REL, "forces")
    _assert_close(rotated["stress"][0], rot @ out["stress"][0] @ rot.T, REL, "stress")


def test_separated_molecules_add(model):
    """Two molecules further apart than the cutoff: energy is the sum, forces are unchanged."""
    a, b = STRUCTURES["molecule"], STRUCTURES["molecule2"]
    far = b.copy()
    far.positions += [a.positions[:, 0].max() - b.positions[:, 0].min() + CUTOFF + 0.01, 0.0, 0.0]
    both = a + far
    out = _predict(model, both)
    ra, rb = _predict(model, a), _predict(model, b)
    _assert_close(out["energy"], ra["energy"] + rb["energy"], 1e-12, "energy")
    _assert_close(out["forces"], np.concatenate([ra["forces"], rb["forces"]]), 1e-12, "forces")


# ----------------------------------------------------------------------------- smoothness at the cutoff
def _isolated(model, numbers) -> float:
    return sum(_energy(model, Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])) for z in numbers)


@pytest.mark.parametrize("pair", [(6, 8), (1, 1), (6, 6)])
def test_dimer_continuous_at_cutoff(model, pair):
    def dimer(r: float) -> Atoms:
        return Atoms(numbers=list(pair), positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]])

    isolated = _isolated(model, pair)
    # the interaction is real inside the cutoff (at some distance: a random model's pair energy
    # crosses zero here and there) ...
    inside = [0.5 * CUTOFF, 0.6 * CUTOFF, 0.7 * CUTOFF, 0.8 * CUTOFF]
    assert max(abs(_energy(model, dimer(r)) - isolated) for r in inside) > 1e-4
    assert max(abs(_predict(model, dimer(r))["forces"][0, 0]) for r in inside) > 1e-4
    # ... and vanishes beyond it: exactly the two isolated atoms
    for r in (CUTOFF + 1e-6, CUTOFF + 0.5, 2 * CUTOFF):
        out = _predict(model, dimer(r))
        assert abs(out["energy"][0] - isolated) < 1e-12
        assert np.abs(out["forces"]).max() == 0.0
    # energy and force go to their outer values smoothly as r → r_c from inside
    gaps, forces = [], []
    for delta in (1e-2, 1e-3, 1e-4, 1e-6):
        inner = _predict(model, dimer(CUTOFF - delta))
        gaps.append(abs(inner["energy"][0] - _energy(model, dimer(CUTOFF + delta))))
        forces.append(np.abs(inner["forces"]).max())
    assert gaps[0] > 0 and forces[0] > 0
    # each step closer to r_c shrinks the gap, until it reaches float64 rounding of the energies
    floor = 1e-14
    assert all(a > b or b < floor for a, b in zip(gaps, gaps[1:])), gaps
    assert all(a > b or b < floor for a, b in zip(forces, forces[1:])), forces
    # the envelope vanishes with two derivatives: ΔE ∝ δ³ and F ∝ δ² (a factor 10 in δ → ≥ 50)
    assert gaps[1] < gaps[0] / 50 and forces[1] < forces[0] / 50, (gaps, forces)
    assert gaps[-1] < 1e-8 and forces[-1] < 1e-8


def test_molecule_plus_atom_continuous_at_cutoff(model):
    """A molecule and a far atom whose nearest neighbour crosses r_c: many-body terms vanish too."""
    mol = STRUCTURES["molecule"]
    isolated = _energy(model, mol) + _isolated(model, [8])
    j = int(np.argmax(mol.positions[:, 0]))  # the added atom's nearest neighbour

    def system(delta: float) -> Atoms:
        extra = mol.positions[j] + [CUTOFF + delta, 0.0, 0.0]
        return mol + Atoms("O", positions=[extra])

    distances = np.linalg.norm(mol.positions - system(0.0).positions[-1], axis=1)
    assert distances.min() == pytest.approx(CUTOFF) and np.sort(distances)[1] > CUTOFF + 1e-3
    assert abs(_energy(model, system(-1.0)) - isolated) > 1e-4
    assert abs(_energy(model, system(1e-6)) - isolated) < 1e-10
    inner = _predict(model, system(-1e-6))
    assert abs(inner["energy"][0] - isolated) < 1e-8
    assert np.abs(inner["forces"][-1]).max() < 1e-8
    outer = _predict(model, system(1e-6))
    _assert_close(inner["forces"], outer["forces"], 1e-8, "forces across the cutoff")


# ----------------------------------------------------------------------------- batching and dtypes
def test_batch_equals_one_by_one(model):
    rng = np.random.default_rng(11)
    small = Atoms("CO", cell=np.eye(3) * 2.5, pbc=True, positions=[[0.0, 0.0, 0.0], [1.2, 1.3, 1.25]])
    slab = _triclinic(rng, n=3)
    slab.pbc = [True, True, False]
    structures = [
        STRUCTURES["molecule"],
        STRUCTURES["diamond"],
        small,
        STRUCTURES["molecule2"],
        STRUCTURES["triclinic"],
        slab,
    ]
    batched = _predict(model, structures, stress=True)
    assert batched["energy"].shape == (len(structures),)
    start = 0
    for k, atoms in enumerate(structures):
        single = _predict(model, atoms, stress=True)
        n = len(atoms)
        _assert_close(batched["energy"][k], single["energy"][0], 1e-12, f"energy {k}")
        _assert_close(batched["forces"][start : start + n], single["forces"], 1e-12, f"forces {k}")
        _assert_close(batched["node_energy"][start : start + n], single["node_energy"], 1e-12, f"ε {k}")
        if atoms.pbc.all():
            _assert_close(batched["stress"][k], single["stress"][0], 1e-12, f"stress {k}")
        start += n
    assert start == batched["forces"].shape[0]
    # structures really differ: the batch does not just repeat one answer
    assert len(set(np.round(batched["energy"], 6))) == len(structures)


def test_float32_and_float64_agree():
    model32 = _make_model(seed=5).float()
    model64 = copy.deepcopy(model32).to(torch.float64)
    assert next(model64.parameters()).dtype == torch.float64 and model64.scale.dtype == torch.float64
    for name in ("molecule", "triclinic"):
        atoms = STRUCTURES[name]
        out32 = _predict(model32, atoms, stress=True, dtype=torch.float32)
        out64 = _predict(model64, atoms, stress=True, dtype=torch.float64)
        graph32 = atoms_to_graph(atoms, CUTOFF, dtype=torch.float32)
        raw = model32(graph32, compute_forces=True)
        # totals are always accumulated in float64 (E0s are large); per-atom quantities keep the dtype
        assert raw["energy"].dtype == torch.float64 and raw["forces"].dtype == torch.float32
        assert raw["node_energy"].dtype == torch.float32
        assert np.abs(out64["forces"]).max() > 0.1
        _assert_close(out32["energy"], out64["energy"], 1e-5, f"{name} energy")
        _assert_close(out32["forces"], out64["forces"], 1e-3, f"{name} forces")
        if name == "triclinic":
            # relative to the stress itself (~1e-2 eV/Å³): a floor of 1 would let any value pass
            assert np.abs(out64["stress"]).max() > 1e-3
            _assert_close(out32["stress"], out64["stress"], 1e-4, f"{name} stress", floor=0.0)
        # the float64 copy is exactly the original float64 computation up to the weights' rounding
        assert not np.array_equal(out32["forces"], out64["forces"])
