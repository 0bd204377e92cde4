"""The fused evaluation of the tensor heads (mlip.model.tensor_heads, "Fused evaluation") against the
block-by-block reference: same outputs, same gradients (weights and positions), caches that follow
parameter updates and dtype changes, exact O(3) equivariance, and the fallback where a basis is not
quadratic in the vectors (float64)."""

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

CUTOFF = 4.0
QUADRATIC_IRREPS = [[0, 1], [1, 1], [1, -1], [2, 1]]  # every block of degree ≤ 2 in the vectors


def make_model(extra_targets: list[dict] | None = None, dtype=torch.float64) -> MLIPModel:
    targets = [
        {"name": "energy", "kind": "energy", "key": "energy"},
        {"name": "dipole", "kind": "vector", "key": "mu"},
        {"name": "polarizability", "kind": "rank2", "key": "alpha"},
        {"name": "born", "kind": "rank2", "key": "z", "per_atom": True, "symmetric": False},
        {"name": "sph", "kind": "spherical", "key": "s", "irreps": QUADRATIC_IRREPS},
        *(extra_targets or []),
    ]
    torch.manual_seed(0)
    model = MLIPModel(
        [1, 6, 8],
        CUTOFF,
        targets=targets,
        backbone=dict(channels=12, lmax=2, num_layers=2, num_radial=6, radial_hidden=12),
        tensor=dict(
            num_vectors=4,
            hidden=12,
            scales={"dipole": 0.7, "polarizability": 2.0},
            shifts={"polarizability": 1.5},
        ),
    ).to(dtype)
    perturb_weights(model, 0.1)
    return model


def molecules(seed: int = 0, dtype=torch.float64) -> Batch:
    rng = np.random.default_rng(seed)
    frames = []
    for n in (7, 11):
        pos = []
        while len(pos) < n:
            p = rng.uniform(-2.0, 2.0, size=3)
            if all(np.linalg.norm(p - q) > 0.9 for q in pos):
                pos.append(p)
        frames.append(Atoms(numbers=rng.choice([1, 6, 8], size=n), positions=pos))
    return Batch.from_data_list([atoms_to_graph(a, CUTOFF, dtype=dtype) for a in frames])


def both(model: MLIPModel, batch: Batch, **kw) -> tuple[dict, dict]:
    model.tensor_heads.fused = True
    fused = model(batch, **kw)
    model.tensor_heads.fused = False
    blocks = model(batch, **kw)
    model.tensor_heads.fused = True
    return fused, blocks


TENSORS = ("dipole", "polarizability", "born", "sph")


def test_plan_exists_for_quadratic_bases_and_outputs_match():
    model = make_model().eval()
    assert model.tensor_heads._plan is not None
    assert model.tensor_heads._plan.extra_row_range is None  # rows repeat across targets: the gather
    fused, blocks = both(model, molecules(), compute_forces=False)
    for name in TENSORS:
        assert fused[name].shape == blocks[name].shape
        torch.testing.assert_close(fused[name], blocks[name], rtol=1e-12, atol=1e-12)
    assert fused["born"].shape[0] == 18 and fused["polarizability"].shape == (2, 3, 3)


@pytest.mark.parametrize("density_elements", [0, 4])
def test_one_structure_and_no_density_elements_match(density_elements):
    """One structure (a plain sum instead of the scatter) and heads without density elements."""
    torch.manual_seed(1)
    model = MLIPModel(
        [1, 6, 8],
        CUTOFF,
        targets=[
            {"name": "dipole", "kind": "vector", "key": "mu"},
            {"name": "alpha", "kind": "rank2", "key": "a"},
        ],
        backbone=dict(channels=8, lmax=2, num_layers=1, num_radial=4, radial_hidden=8),
        tensor=dict(num_vectors=4, hidden=8, density_elements=density_elements, shifts={"alpha": 0.7}),
    ).double()
    perturb_weights(model, 0.1)
    model.eval()
    assert model.tensor_heads._plan is not None
    plan = model.tensor_heads._plan
    assert bool(plan.extra_keys) == (density_elements > 0)
    assert (plan.extra_row_range is not None) == (density_elements > 0)  # the slice, not the gather
    one = Batch.from_data_list([molecules(3).get_example(0)])
    fused, blocks = both(model, one, compute_forces=False)
    for name in ("dipole", "alpha"):
        assert fused[name].shape[0] == 1 and fused[name].abs().max() > 1e-3
        torch.testing.assert_close(fused[name], blocks[name], rtol=1e-12, atol=1e-12)


def test_training_gradients_match():
    model = make_model().train()
    batch = molecules(1)
    grads = []
    for fused in (True, False):
        model.tensor_heads.fused = fused
        model.zero_grad()
        out = model(batch, compute_forces=False, training=True)
        loss = sum((out[name] ** 2).sum() for name in TENSORS)
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(k.startswith("tensor_heads.coefficients") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-10, atol=1e-12, msg=k)


def test_position_derivatives_match():
    """Born charges and polarizability derivatives differentiate the heads through the positions."""
    model = make_model().eval()
    batch = molecules(2)
    results = []
    for fused in (True, False):
        model.tensor_heads.fused = fused
        pos = batch.pos.detach().clone().requires_grad_(True)
        b = batch.clone()
        b.pos = pos
        mu = model(b, compute_forces=False)["dipole"]
        results.append(torch.autograd.grad(mu[:, 0].sum(), pos)[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_inference_cache_follows_parameter_updates():
    model = make_model().eval()
    batch = molecules(3)
    with torch.no_grad():
        before = model(batch, compute_forces=False)["polarizability"]
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for p in model.tensor_heads.parameters():
            p.grad = torch.ones_like(p)
        opt.step()  # in-place update of every head parameter
        fused, blocks = both(model, batch, compute_forces=False)
        assert not torch.allclose(fused["polarizability"], before)
        torch.testing.assert_close(fused["polarizability"], blocks["polarizability"], rtol=1e-12, atol=1e-12)
        model.load_state_dict(make_model().state_dict())  # copies into the same tensors
        torch.testing.assert_close(model(batch, compute_forces=False)["polarizability"], before)
        model.tensor_heads.scales.mul_(2.0)  # a buffer changed in place
        fused, blocks = both(model, batch, compute_forces=False)
        torch.testing.assert_close(fused["dipole"], blocks["dipole"], rtol=1e-12, atol=1e-12)
        other = make_model()
        torch.manual_seed(1)
        perturb_weights(other, 0.3)
        model.load_state_dict(other.state_dict(), assign=True)  # new tensors, versions start again
        torch.testing.assert_close(
            model(batch, compute_forces=False)["polarizability"],
            other.eval()(batch, compute_forces=False)["polarizability"],
            rtol=1e-12,
            atol=1e-12,
        )


def test_dtype_change_keeps_float64_exactness():
    """Constants are float64 masters: a model built in float32 and cast to float64 stays exact."""
    model32 = make_model(dtype=torch.float32).eval()
    batch = molecules(4)
    model32(molecules(4, torch.float32), compute_forces=False)  # float32 constants and weights cached
    model64 = model32.double()
    fused, blocks = both(model64, batch, compute_forces=False)
    for name in TENSORS:
        torch.testing.assert_close(fused[name], blocks[name], rtol=1e-12, atol=1e-12)


def test_fused_outputs_are_o3_equivariant():
    model = make_model().eval()
    rng = np.random.default_rng(5)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    for rot in (q, -q):  # proper and improper (× inversion)
        batch = molecules(6)
        rotated = batch.clone()
        rotated.pos = batch.pos @ torch.tensor(rot.T)
        a = model(batch, compute_forces=False)
        b = model(rotated, compute_forces=False)
        r_t = torch.tensor(rot)
        det = float(np.linalg.det(rot))
        torch.testing.assert_close(b["dipole"], a["dipole"] @ r_t.T, rtol=1e-10, atol=1e-12)
        for name in ("polarizability", "born"):
            torch.testing.assert_close(b[name], r_t @ a[name] @ r_t.T, rtol=1e-10, atol=1e-12)
        start = 0
        for lam, sig in QUADRATIC_IRREPS:  # c ↦ det(R)^((1−σ)/2) · c @ D_λ(R)
            d = torch.tensor(wigner_d(rot, lam))
            block = slice(start, start + 2 * lam + 1)
            expected = (det if sig == -1 else 1.0) * a["sph"][:, block] @ d
            torch.testing.assert_close(b["sph"][:, block], expected, rtol=1e-10, atol=1e-12)
            assert a["sph"][:, block].abs().max() > 1e-6, (lam, sig)
            start += 2 * lam + 1


@pytest.mark.parametrize("irreps", [[[0, -1]], [[2, -1]], [[3, 1]]])
def test_higher_degree_bases_fall_back_to_blocks(irreps):
    """Pseudoscalar (triple products), λ=2 pseudotensor and λ=3 bases are cubic in the vectors: no plan."""
    model = make_model([{"name": "extra", "kind": "spherical", "key": "e", "irreps": irreps}]).eval()
    assert model.tensor_heads._plan is None
    fused, blocks = both(model, molecules(7), compute_forces=False)
    torch.testing.assert_close(fused["extra"], blocks["extra"], rtol=0, atol=0)
