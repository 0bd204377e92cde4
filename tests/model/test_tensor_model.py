"""Tensor outputs of the full model: exact O(3) equivariance for every (λ, σ), invariances, and
finite, symmetry-respecting outputs on degenerate structures (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip.data.graph import atoms_to_graph
from mlip.model.potential import MLIPModel
from mlip.model.spherical import wigner_d
from tests.conftest import perturb_weights

LAMS = [0, 1, 2, 3, 4]
ALL_IRREPS = [[lam, sig] for lam in LAMS for sig in (1, -1)]
CUTOFF = 4.0


def make_model(lmax: int = 3, density_couplings: int = 0, **backbone) -> MLIPModel:
    targets = [
        {"name": "energy", "kind": "energy", "key": "energy"},
        {"name": "dipole", "kind": "vector", "key": "mu", "irreps": [[1, 1]]},
        {"name": "charged_dipole", "kind": "vector", "key": "mu", "irreps": [[1, 1]], "charges": True},
        {"name": "polarizability", "kind": "rank2", "key": "alpha", "irreps": [[0, 1], [2, 1]]},
        {
            "name": "born",
            "kind": "rank2",
            "key": "z",
            "irreps": [[0, 1], [1, -1], [2, 1]],
            "per_atom": True,
            "symmetric": False,
        },
        {"name": "atomic_sph", "kind": "spherical", "key": "s", "irreps": ALL_IRREPS, "per_atom": True},
        {"name": "global_sph", "kind": "spherical", "key": "g", "irreps": ALL_IRREPS},
    ]
    torch.manual_seed(0)
    model = MLIPModel(
        [1, 6, 7, 8],
        CUTOFF,
        targets=targets,
        backbone=dict(channels=12, lmax=lmax, num_layers=2, num_radial=6, radial_hidden=12, **backbone),
        tensor=dict(num_vectors=4, hidden=12, density_couplings=density_couplings),
    ).double()
    perturb_weights(model, 0.1)
    return model.eval()


@pytest.fixture(scope="module", params=["power-spectrum", "bispectrum+bonds", "density couplings"])
def model(request) -> MLIPModel:
    if request.param == "bispectrum+bonds":
        return make_model(correlation=3, bond_channels=4, element_update=True, density_messages=4)
    if request.param == "density couplings":
        return make_model(density_couplings=2)
    return make_model()


def random_molecule(seed: int = 0, n: int = 10) -> Atoms:
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        p = rng.uniform(-2.2, 2.2, size=3)
        if all(np.linalg.norm(p - q) > 0.9 for q in pos):
            pos.append(p)
    return Atoms(numbers=rng.choice([1, 6, 7, 8], size=n), positions=pos)


def predict(model: MLIPModel, atoms: Atoms) -> dict[str, torch.Tensor]:
    graph = atoms_to_graph(atoms, CUTOFF, dtype=torch.float64)
    return {k: v.detach() for k, v in model(Batch.from_data_list([graph]), compute_forces=False).items()}


def random_o3(seed: int, improper: bool) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def spherical_blocks(value: torch.Tensor, irreps) -> list[torch.Tensor]:
    out, start = [], 0
    for lam, _ in irreps:
        out.append(value[..., start : start + 2 * lam + 1])
        start += 2 * lam + 1
    return out


ROTATIONS = [
    ("proper", random_o3(1, False)),
    ("improper", random_o3(2, True)),
    ("inversion", -np.eye(3)),
    ("mirror", np.diag([1.0, 1.0, -1.0])),
]


@pytest.mark.parametrize("name, rot", ROTATIONS)
def test_cartesian_outputs_rotate(model, name, rot):
    atoms = random_molecule(3)
    ref = predict(model, atoms)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    out = predict(model, rotated)
    r = torch.tensor(rot)
    assert ref["dipole"].abs().max() > 1e-3 and ref["polarizability"].abs().max() > 1e-3
    torch.testing.assert_close(out["dipole"], ref["dipole"] @ r.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["charged_dipole"], ref["charged_dipole"] @ r.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["polarizability"], r @ ref["polarizability"] @ r.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["born"], r @ ref["born"] @ r.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["energy"], ref["energy"], atol=1e-10, rtol=0)
    # symmetric target is symmetric; the general one is not
    torch.testing.assert_close(ref["polarizability"], ref["polarizability"].transpose(-1, -2))
    assert (ref["born"] - ref["born"].transpose(-1, -2)).abs().max() > 1e-6


@pytest.mark.parametrize("name, rot", ROTATIONS)
@pytest.mark.parametrize("target", ["atomic_sph", "global_sph"])
def test_spherical_outputs_transform_with_wigner_d(model, name, rot, target):
    atoms = random_molecule(4)
    ref = predict(model, atoms)[target]
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    out = predict(model, rotated)[target]
    det = float(np.linalg.det(rot))
    for (lam, sig), a, b in zip(
        ALL_IRREPS, spherical_blocks(ref, ALL_IRREPS), spherical_blocks(out, ALL_IRREPS)
    ):
        d = torch.tensor(wigner_d(rot, lam))
        sign = det if sig == -1 else 1.0
        expected = sign * a @ d
        scale = max(1.0, a.abs().max().item())
        assert torch.allclose(b, expected, atol=1e-10 * scale, rtol=0), (lam, sig)
        if not (lam == 0 and sig == -1) or target == "global_sph":
            assert a.abs().max() > 1e-8, f"block {(lam, sig)} is identically zero"


def test_translation_and_permutation(model):
    atoms = random_molecule(5)
    ref = predict(model, atoms)
    moved = atoms.copy()
    moved.positions += np.array([3.0, -7.0, 11.0])
    out = predict(model, moved)
    for key in ("dipole", "charged_dipole", "polarizability", "global_sph", "atomic_sph", "born"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-10, rtol=0)
    perm = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[perm]
    out = predict(model, permuted)
    for key in ("dipole", "charged_dipole", "polarizability", "global_sph"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["atomic_sph"], ref["atomic_sph"][perm], atol=1e-10, rtol=0)


DEGENERATE = {
    "isolated atom": Atoms("O", positions=[[0, 0, 0]]),
    "diatomic": Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]]),
    "linear CO2": Atoms("OCO", positions=[[0, 0, -1.16], [0, 0, 0], [0, 0, 1.16]]),
    "one neighbour": Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]]) + Atoms("C", positions=[[9, 9, 9]]),
    "planar": Atoms("NH3", positions=[[0, 0, 0], [1.0, 0, 0], [-0.5, 0.866, 0], [-0.5, -0.866, 0]]),
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_structures_are_finite_with_finite_gradients(model, name):
    atoms = DEGENERATE[name]
    graph = atoms_to_graph(atoms, CUTOFF, dtype=torch.float64)
    batch = Batch.from_data_list([graph])
    batch.pos.requires_grad_(True)
    out = model(batch, compute_forces=True, training=True)
    total = sum((v**2).sum() for k, v in out.items() if k not in ("node_energy",))
    for key, value in out.items():
        assert torch.isfinite(value).all(), (name, key)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, [batch.pos, *params], allow_unused=True)
    for g in grads:
        assert g is None or torch.isfinite(g).all(), name


def test_linear_molecules_respect_axial_symmetry(model):
    co2 = predict(model, DEGENERATE["linear CO2"])
    alpha = co2["polarizability"][0]
    assert alpha[0, 0] == pytest.approx(float(alpha[1, 1]), abs=1e-10)
    off = alpha - torch.diag(torch.diagonal(alpha))
    assert off.abs().max() < 1e-10
    assert abs(float(alpha[2, 2] - alpha[0, 0])) > 1e-6  # anisotropic along the axis
    assert co2["dipole"].abs().max() < 1e-10  # centrosymmetric: no dipole
    co = predict(model, DEGENERATE["diatomic"])
    assert co["dipole"][0, :2].abs().max() < 1e-10 and abs(float(co["dipole"][0, 2])) > 1e-6


def test_symmetry_allowed_components_survive_where_vectors_cancel(model):
    """The carbon of CO2 has no vector (inversion centre) but a λ=2 tensor; methane's carbon a λ=3."""
    co2 = predict(model, DEGENERATE["linear CO2"])["atomic_sph"][1]
    blocks = dict(zip(map(tuple, ALL_IRREPS), spherical_blocks(co2, ALL_IRREPS)))
    assert blocks[(1, 1)].abs().max() < 1e-10
    assert blocks[(2, 1)].abs().max() > 1e-6
    d = 1.09 / np.sqrt(3)
    ch4 = Atoms("CH4", positions=[[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]])
    carbon = predict(model, ch4)["atomic_sph"][0]
    blocks = dict(zip(map(tuple, ALL_IRREPS), spherical_blocks(carbon, ALL_IRREPS)))
    assert blocks[(1, 1)].abs().max() < 1e-10 and blocks[(2, 1)].abs().max() < 1e-10
    assert blocks[(3, 1)].abs().max() > 1e-6


def test_density_couplings_pick_the_pairs_of_each_parity():
    from mlip.model.tensor_heads import _coupling_pairs

    assert _coupling_pairs(1, 1, 3) == [(1, 2), (2, 3)]  # a dipole: l=1 ⊗ l=2, l=2 ⊗ l=3
    assert _coupling_pairs(1, -1, 3) == [(1, 1), (2, 2), (3, 3)]  # a pseudovector
    assert _coupling_pairs(2, 1, 3) == [(1, 1), (1, 3), (2, 2), (3, 3)]
    assert _coupling_pairs(1, 1, 1) == []  # nothing to couple below l=2
    from mlip.model.tensor_heads import TensorHeads
    from mlip.targets import TargetSpec

    dipole = TargetSpec.from_dict({"name": "dipole", "kind": "vector", "key": "mu", "irreps": [[1, 1]]})
    heads = TensorHeads(8, 1, [dipole], density_couplings=2)
    assert not heads._couplings and heads._plan is not None  # nothing added: the fused path stays


def test_density_couplings_reach_the_outputs():
    """Changing only the coupling projections changes the dipole and the polarizability."""
    model = make_model(density_couplings=2)
    heads = model.tensor_heads
    assert set(heads._couplings) >= {"l1_p", "l2_p"} and heads._plan is None
    before = predict(model, random_molecule(3))
    with torch.no_grad():
        for proj in heads.coupling_projections.values():
            proj.weight.mul_(1.5)
    after = predict(model, random_molecule(3))
    for name in ("dipole", "polarizability"):
        assert (after[name] - before[name]).abs().max() > 1e-6, name
