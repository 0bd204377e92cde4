"""Tests of the λ-tensor basis, Cartesian ↔ spherical conversions and the spherical conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip.model.cartesian import (
    rank2_to_spherical,
    spherical_to_rank2,
    spherical_to_vector,
    vector_to_spherical,
)
from mlip.model.spherical import clebsch_gordan, solid_harmonics, wigner_d
from mlip.model.tensor_basis import LambdaBasis

LAMS = [0, 1, 2, 3, 4]
SIGMAS = [1, -1]
Q = 4
TOL = 1e-10


def _proper(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _rotations(seed: int = 0) -> list[np.ndarray]:
    """Two proper rotations, an improper rotation, a mirror and the inversion."""
    rng = np.random.default_rng(seed)
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    mirror = np.eye(3) - 2.0 * np.outer(n, n)
    rots = [_proper(rng), _proper(rng), -_proper(rng), mirror, -np.eye(3)]
    assert [round(np.linalg.det(r)) for r in rots] == [1, 1, -1, -1, -1]
    return rots


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _vectors(n: int = 6, q: int = Q, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, q, 3, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- LambdaBasis


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("lam", LAMS)
def test_basis_shape_and_equivariance(lam: int, sigma: int) -> None:
    basis = LambdaBasis(lam, sigma, Q)
    v = _vectors()
    out = basis(v)
    assert out.shape == (6, basis.num_basis, 2 * lam + 1)
    assert out.dtype == torch.float64
    assert len(basis.labels) == basis.num_basis
    assert basis.num_basis <= 4 * (2 * lam + 1)
    assert out.abs().max() > 1e-3  # not trivially zero
    for rot in _rotations(seed=lam):
        d = _t(wigner_d(rot, lam))
        sign = float(np.linalg.det(rot)) ** ((1 - sigma) // 2)
        rotated = basis(v @ _t(rot).T)
        expected = sign * out @ d
        assert torch.allclose(rotated, expected, atol=TOL * max(1.0, out.abs().max().item()), rtol=0)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("lam", LAMS)
def test_basis_wrong_parity_fails(lam: int, sigma: int) -> None:
    """Sanity check that the equivariance test can fail: the opposite parity is violated under -I."""
    basis = LambdaBasis(lam, sigma, Q)
    v = _vectors()
    out = basis(v)
    d = _t(wigner_d(-np.eye(3), lam))
    wrong = -float(sigma) * out @ d  # the correct sign is det(-I)^((1-σ)/2) = σ
    assert not torch.allclose(basis(-v), wrong, atol=1e-6)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("lam", LAMS)
def test_basis_full_rank(lam: int, sigma: int) -> None:
    basis = LambdaBasis(lam, sigma, Q)
    out = basis(_vectors(n=3, seed=5))
    expected = 1 if lam == 0 else 2 * lam + 1
    assert basis.num_basis >= expected
    for mat in out:
        assert np.linalg.matrix_rank(mat.numpy(), tol=1e-8) == expected
    if lam >= 2:
        assert basis.num_basis >= 2 * lam + 2  # spare elements


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("lam", [1, 2, 3, 4])
def test_basis_planar_rank(lam: int, sigma: int) -> None:
    """Coplanar vectors (mirror z → -z): exactly the mirror-allowed components are spanned."""
    basis = LambdaBasis(lam, sigma, Q)
    v = _vectors(n=3, seed=9)
    v[..., 2] = 0.0
    out = basis(v)
    expected = lam + 1 if sigma == 1 else lam
    for mat in out:
        assert np.linalg.matrix_rank(mat.numpy(), tol=1e-8) == expected


def _degenerate_inputs() -> dict[str, torch.Tensor]:
    n = 3
    zero = torch.zeros(n, Q, 3, dtype=torch.float64)
    lengths = torch.tensor([0.7, -1.3, 0.0, 2.1], dtype=torch.float64)
    parallel = torch.zeros(n, Q, 3, dtype=torch.float64)
    parallel[..., 2] = lengths
    one = torch.zeros(n, Q, 3, dtype=torch.float64)
    one[:, 1] = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    return {"zero": zero, "parallel": parallel, "one": one}


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("case", ["zero", "parallel", "one"])
def test_basis_degenerate_finite(case: str, lam: int, sigma: int) -> None:
    basis = LambdaBasis(lam, sigma, Q)
    v = _degenerate_inputs()[case].clone().requires_grad_(True)
    out = basis(v)
    assert torch.isfinite(out).all()
    if not out.requires_grad:  # the constant basis does not depend on the vectors
        assert lam == 0 and sigma == 1
        return
    g = torch.Generator().manual_seed(3)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * w).sum(), v, create_graph=True)
    assert torch.isfinite(grad).all()
    if not grad.requires_grad:  # the basis is linear in v (λ=1, σ=+1): no second derivative
        assert lam == 1 and sigma == 1
    else:
        u = torch.randn(v.shape, generator=g, dtype=torch.float64)
        (hess,) = torch.autograd.grad((grad * u).sum(), v, allow_unused=True)
        assert hess is not None and torch.isfinite(hess).all()
    if case == "zero" and lam > 0:
        assert out.abs().max() == 0.0


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("lam", [1, 2, 3, 4])
def test_basis_linear_environment(lam: int, sigma: int) -> None:
    """Vectors along z (C∞v): only m = 0 for proper tensors, nothing for pseudotensors."""
    out = LambdaBasis(lam, sigma, Q)(_degenerate_inputs()["parallel"])
    mask = torch.ones(2 * lam + 1, dtype=torch.bool)
    if sigma == 1:
        mask[lam] = False
        assert out[..., lam].abs().max() > 1e-3
    assert out[..., mask].abs().max() < 1e-12


def test_basis_lambda2_axial() -> None:
    out = LambdaBasis(2, 1, Q)(_degenerate_inputs()["parallel"])
    assert out[..., [0, 1, 3, 4]].abs().max() < 1e-12
    assert (out[..., 2].abs() > 0).any()


def test_basis_float32_and_known_values() -> None:
    v = _vectors(n=2)
    b1 = LambdaBasis(1, 1, Q)
    out64 = b1(v)
    assert torch.allclose(out64, np.sqrt(3.0) * v[..., [1, 2, 0]], atol=1e-14)
    cross = LambdaBasis(1, -1, Q)(v)
    expected = np.sqrt(3.0) * torch.linalg.cross(v[:, 0], v[:, 1])[..., [1, 2, 0]]
    assert torch.allclose(cross[:, 0], expected, atol=1e-14)
    triple = LambdaBasis(0, -1, Q)(v)
    assert torch.allclose(triple[:, 0, 0], torch.linalg.det(v[:, :3]), atol=1e-13)
    for lam, sigma in [(2, 1), (3, -1)]:
        b = LambdaBasis(lam, sigma, Q)
        ref = b(v)
        out32 = b(v.float())
        assert out32.dtype == torch.float32
        assert torch.allclose(out32.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_basis_scale_bound() -> None:
    """Every element has norm ≤ √(2λ+1) for unit vectors (and S_λ exactly √(2λ+1))."""
    v = _vectors(n=4)
    v = v / v.norm(dim=-1, keepdim=True)
    for lam in LAMS:
        for sigma in SIGMAS:
            b = LambdaBasis(lam, sigma, Q)
            norms = b(v).norm(dim=-1)
            assert (norms <= np.sqrt(2 * lam + 1) + 1e-12).all()
            if sigma == 1 and lam >= 1:
                assert torch.allclose(norms[:, :Q], torch.full((), np.sqrt(2 * lam + 1), dtype=torch.float64))


def test_basis_module_cast_keeps_float64_exact() -> None:
    b = LambdaBasis(3, 1, Q)
    v = _vectors()
    ref = b(v)
    assert not b.state_dict()  # no persistent buffers
    b.float()
    assert torch.allclose(b(v), ref, atol=1e-13, rtol=0)
    b.double()
    assert torch.allclose(b(v), ref, atol=1e-13, rtol=0)


def test_basis_bad_shape() -> None:
    with pytest.raises(ValueError):
        LambdaBasis(2, 1, Q)(torch.zeros(5, Q + 1, 3))
    with pytest.raises(ValueError):
        LambdaBasis(2, 0, Q)
    with pytest.raises(ValueError):
        LambdaBasis(2, 1, 2)


# ----------------------------------------------------------------------------- cartesian


def _random_matrices(n: int = 5, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 3, generator=g, dtype=torch.float64)


def test_vector_round_trip_and_equivariance() -> None:
    v = _random_matrices()[:, 0]
    c = vector_to_spherical(v)
    assert torch.equal(spherical_to_vector(c), v)
    assert torch.equal(c, v[:, [1, 2, 0]])
    for rot in _rotations(seed=11):
        r = _t(rot)
        assert torch.allclose(vector_to_spherical(v @ r.T), c @ _t(wigner_d(rot, 1)), atol=TOL)


def test_rank2_round_trip_and_norm() -> None:
    a = _random_matrices()
    parts = rank2_to_spherical(a)
    assert parts[(0, 1)].shape == (5, 1)
    assert parts[(1, -1)].shape == (5, 3)
    assert parts[(2, 1)].shape == (5, 5)
    assert torch.allclose(spherical_to_rank2(parts), a, atol=1e-14)
    flat = torch.cat([parts[k] for k in [(0, 1), (1, -1), (2, 1)]], dim=-1)
    assert torch.allclose(flat.norm(dim=-1), a.flatten(1).norm(dim=-1), atol=1e-13)
    # the inverse is also exact on the spherical side
    g = torch.Generator().manual_seed(4)
    rand = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in parts.items()}
    back = rank2_to_spherical(spherical_to_rank2(rand))
    for k, value in rand.items():
        assert torch.allclose(back[k], value, atol=1e-14)


def test_rank2_parts() -> None:
    a = _random_matrices()
    sym = 0.5 * (a + a.transpose(-1, -2))
    parts = rank2_to_spherical(sym)
    assert parts[(1, -1)].abs().max() < 1e-15
    # a symmetric tensor is recovered from λ=0 and λ=2 alone
    assert torch.allclose(spherical_to_rank2({(0, 1): parts[(0, 1)], (2, 1): parts[(2, 1)]}), sym, atol=1e-14)
    trace = torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(rank2_to_spherical(a)[(0, 1)][:, 0], trace / np.sqrt(3.0), atol=1e-14)
    iso = spherical_to_rank2({(0, 1): rank2_to_spherical(a)[(0, 1)]})
    assert torch.allclose(iso, trace[:, None, None] / 3.0 * torch.eye(3, dtype=torch.float64), atol=1e-14)
    anti = 0.5 * (a - a.transpose(-1, -2))
    assert torch.allclose(spherical_to_rank2({(1, -1): rank2_to_spherical(a)[(1, -1)]}), anti, atol=1e-14)
    # the pseudovector of the antisymmetric part of u vᵀ - v uᵀ is the cross product, (y, z, x) order, /√2·2
    u, w = a[:, 0], a[:, 1]
    outer = torch.einsum("ni,nj->nij", u, w)
    c1 = rank2_to_spherical(outer - outer.transpose(-1, -2))[(1, -1)]
    assert torch.allclose(c1, np.sqrt(2.0) * torch.linalg.cross(u, w)[:, [1, 2, 0]], atol=1e-13)


def test_rank2_equivariance() -> None:
    a = _random_matrices()
    parts = rank2_to_spherical(a)
    for rot in _rotations(seed=13):
        r = _t(rot)
        det = float(np.linalg.det(rot))
        rotated = rank2_to_spherical(r @ a @ r.T)
        for (lam, sigma), c in parts.items():
            d = _t(wigner_d(rot, lam))
            expected = det ** ((1 - sigma) // 2) * c @ d
            assert torch.allclose(rotated[(lam, sigma)], expected, atol=TOL), (lam, sigma, det)
    # under inversion every part of a rank-2 tensor is unchanged, while D_1(-I) = -I
    assert np.allclose(wigner_d(-np.eye(3), 1), -np.eye(3), atol=1e-12)
    inv = rank2_to_spherical((-torch.eye(3, dtype=torch.float64)) @ a @ (-torch.eye(3, dtype=torch.float64)))
    assert torch.allclose(inv[(1, -1)], parts[(1, -1)], atol=1e-15)


# ----------------------------------------------------------------------------- spherical.py


def test_harmonics_orthonormal_on_sphere() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    ys = torch.cat(solid_harmonics(x, 4), dim=-1)  # [P, 25]
    gram = ys.T @ ys / len(x)  # component normalisation: <Y_lm Y_l'm'> = δ
    assert torch.allclose(gram, torch.eye(25, dtype=torch.float64), atol=0.03)
    # and exactly Σ_m Y_lm² = 2l + 1 pointwise
    for l, y in enumerate(solid_harmonics(x[:100], 4)):
        assert torch.allclose((y**2).sum(-1), torch.full((), 2.0 * l + 1, dtype=torch.float64), atol=1e-12)
    # l = 1 convention: √3 (y, z, x)
    assert torch.allclose(solid_harmonics(x[:10], 1)[1], np.sqrt(3.0) * x[:10, [1, 2, 0]], atol=1e-14)


def test_solid_harmonics_homogeneous() -> None:
    x = _random_matrices()[:, 0]
    for l, (a, b) in enumerate(zip(solid_harmonics(x, 4), solid_harmonics(-2.5 * x, 4))):
        assert torch.allclose(b, (-2.5) ** l * a, atol=1e-11)


@pytest.mark.parametrize("l", [1, 2, 3, 4])
def test_wigner_d_orthogonal(l: int) -> None:
    for rot in _rotations(seed=17):
        d = wigner_d(rot, l)
        assert np.allclose(d @ d.T, np.eye(2 * l + 1), atol=1e-10)
        assert np.isclose(np.linalg.det(d), np.linalg.det(rot) ** l, atol=1e-10)
    r1, r2 = _rotations(seed=19)[:2]
    assert np.allclose(wigner_d(r2 @ r1, l), wigner_d(r1, l) @ wigner_d(r2, l), atol=1e-10)
    assert np.allclose(wigner_d(-np.eye(3), l), (-1) ** l * np.eye(2 * l + 1), atol=1e-10)


@pytest.mark.parametrize("ls", [(1, 1, 0), (1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 3), (1, 3, 4), (2, 3, 4)])
def test_clebsch_gordan_equivariance(ls: tuple[int, int, int]) -> None:
    l1, l2, l3 = ls
    c = clebsch_gordan(l1, l2, l3).numpy()
    assert np.isclose(np.linalg.norm(c), np.sqrt(2 * l3 + 1))
    # orthonormal columns: Σ_{m1 m2} C[m1, m2, m] C[m1, m2, m'] = δ
    flat = c.reshape(-1, 2 * l3 + 1)
    assert np.allclose(flat.T @ flat, np.eye(2 * l3 + 1), atol=1e-10)
    rng = np.random.default_rng(l1 + 10 * l2 + 100 * l3)
    a, b = rng.normal(size=2 * l1 + 1), rng.normal(size=2 * l2 + 1)
    for rot in _rotations(seed=23)[:3]:
        d1, d2, d3 = wigner_d(rot, l1), wigner_d(rot, l2), wigner_d(rot, l3)
        lhs = np.einsum("i,j,ijm->m", a @ d1, b @ d2, c)
        parity = np.linalg.det(rot) ** (l1 + l2 + l3)
        assert np.allclose(lhs, parity * np.einsum("i,j,ijm->m", a, b, c) @ d3, atol=1e-10)
