"""Real spherical harmonics, Wigner-D matrices and Clebsch–Gordan couplings.

Convention (used everywhere in ``mlip``):

* ``solid_harmonics(x, l)`` returns the *real regular solid harmonics*
  ``S_lm(x) = |x|^l Y_lm(x̂)``, homogeneous polynomials of degree ``l`` in the
  Cartesian components of ``x``; components ordered ``m = -l .. l``.
* Normalisation is "component" (as in e3nn): ``Σ_m Y_lm(x̂)² = 2l + 1``, so
  ``Y_00 = 1`` and ``Y_1(x̂) = √3 · (y, z, x)``.
* Under a rotation ``R`` (row-vector points, ``x ↦ x Rᵀ``) every l-block obeys
  ``S_l(x Rᵀ) = S_l(x) D_l(R)`` with an orthogonal ``D_l(R)``;
  under inversion ``S_l(-x) = (-1)^l S_l(x)``.

Wigner-D matrices and Clebsch–Gordan coefficients are *derived numerically
from these harmonics* (least squares / null spaces in float64), so they are
consistent with this convention by construction.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "solid_harmonics",
    "spherical_harmonics",
    "wigner_d",
    "clebsch_gordan",
    "cartesian_to_l1",
    "l1_to_cartesian",
    "symmetric_traceless_basis",
]

# Permutation between Cartesian (x, y, z) and the l=1 order (y, z, x).
_L1_FROM_XYZ = [1, 2, 0]
_XYZ_FROM_L1 = [2, 0, 1]


def _legendre_factors(lmax: int) -> list[list[float]]:
    """Normalisation F_lm such that the harmonics are component-normalised."""
    out = []
    for l in range(lmax + 1):
        row = []
        for m in range(l + 1):
            f = math.sqrt((2 * l + 1) * math.factorial(l - m) / math.factorial(l + m))
            if m > 0:
                f *= math.sqrt(2.0)
            row.append(f)
        out.append(row)
    return out


def solid_harmonics(x: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """Real regular solid harmonics of ``x`` for ``l = 0..lmax``.

    Args:
        x: Cartesian vectors, shape ``[..., 3]`` (any units; output scales as |x|^l).
        lmax: highest angular order.

    Returns:
        List of ``lmax + 1`` tensors, entry ``l`` of shape ``[..., 2l + 1]``.
        Smooth everywhere (polynomials): finite values and gradients at ``x = 0``.
    """
    xx, yy, zz = x[..., 0], x[..., 1], x[..., 2]
    r2 = xx * xx + yy * yy + zz * zz
    fac = _legendre_factors(lmax)
    # cos/sin parts of (x + i y)^m
    cm = [torch.ones_like(xx)]
    sm = [torch.zeros_like(xx)]
    for m in range(1, lmax + 1):
        cm.append(xx * cm[m - 1] - yy * sm[m - 1])
        sm.append(xx * sm[m - 1] + yy * cm[m - 1])
    # Q[l][m]: associated-Legendre-like polynomials in (z, r²)
    q: list[list[torch.Tensor]] = [[torch.ones_like(xx)]]
    for l in range(1, lmax + 1):
        row: list[torch.Tensor] = []
        for m in range(l + 1):
            if m == l:
                val = (2 * l - 1) * q[l - 1][l - 1]
            elif m == l - 1:
                val = (2 * l - 1) * zz * q[l - 1][m]
            else:
                val = ((2 * l - 1) * zz * q[l - 1][m] - (l + m - 1) * r2 * q[l - 2][m]) / (l - m)
            row.append(val)
        q.append(row)
    out = []
    for l in range(lmax + 1):
        comps = []
        for m in range(-l, l + 1):
            a = abs(m)
            base = fac[l][a] * q[l][a]
            if m < 0:
                comps.append(base * sm[a])
            elif m == 0:
                comps.append(base)
            else:
                comps.append(base * cm[a])
        out.append(torch.stack(comps, dim=-1))
    return out


def spherical_harmonics(unit_vectors: torch.Tensor, lmax: int) -> torch.Tensor:
    """Concatenated real spherical harmonics of unit vectors.

    Args:
        unit_vectors: shape ``[..., 3]``, assumed normalised.
        lmax: highest angular order.

    Returns:
        Shape ``[..., (lmax + 1)²]``, blocks ``l = 0..lmax`` in order.
    """
    return torch.cat(solid_harmonics(unit_vectors, lmax), dim=-1)


@functools.cache
def _sample_points(n: int = 64, seed: int = 1234) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3))


def _harmonics_np(points: np.ndarray, l: int) -> np.ndarray:
    t = torch.as_tensor(points, dtype=torch.float64)
    return solid_harmonics(t, l)[l].numpy()


def wigner_d(rotation: np.ndarray | torch.Tensor, l: int) -> np.ndarray:
    """Wigner-D matrix of ``rotation`` (3×3, proper or improper) for order ``l``.

    Solves ``S_l(X Rᵀ) = S_l(X) D`` by least squares on random points, so that a
    row vector of l-components transforms as ``T(R·A) = T(A) D``. For an improper
    matrix it includes the ``(-1)^l`` parity factor. Float64, shape ``[2l+1, 2l+1]``.
    """
    rot = np.asarray(rotation, dtype=np.float64)
    pts = _sample_points()
    y0 = _harmonics_np(pts, l)
    y1 = _harmonics_np(pts @ rot.T, l)
    d, *_ = np.linalg.lstsq(y0, y1, rcond=None)
    return d


def _random_rotations(n: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    rots = []
    for _ in range(n):
        qmat, rmat = np.linalg.qr(rng.normal(size=(3, 3)))
        qmat = qmat * np.sign(np.diag(rmat))
        if np.linalg.det(qmat) < 0:
            qmat[:, 0] *= -1
        rots.append(qmat)
    return rots


@functools.cache
def _clebsch_gordan_np(l1: int, l2: int, l3: int) -> np.ndarray:
    if not (abs(l1 - l2) <= l3 <= l1 + l2):
        raise ValueError(f"({l1}, {l2}, {l3}) violates the triangle rule")
    # C[m1, m2, m3] with (a ⊗ b)_m3 = Σ a_m1 b_m2 C[m1, m2, m3] equivariant:
    # (D1 ⊗ D2)ᵀ-contracted: Σ D1[m1,n1] D2[m2,n2] C[n1,n2,m3] = Σ C[m1,m2,n3] D3[n3,m3]
    n1, n2, n3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
    rows = []
    for rot in _random_rotations(4):
        d1, d2, d3 = wigner_d(rot, l1), wigner_d(rot, l2), wigner_d(rot, l3)
        # vec(C) with index (m1, m2, m3); equation: (D1 ⊗ D2 ⊗ I) vec C - (I ⊗ I ⊗ D3ᵀ) vec C = 0
        left = np.kron(np.kron(d1, d2), np.eye(n3))
        right = np.kron(np.eye(n1 * n2), d3.T)
        rows.append(left - right)
    mat = np.concatenate(rows, axis=0)
    _, s, vt = np.linalg.svd(mat)
    c = vt[-1].reshape(n1, n2, n3)
    if s[-1] > 1e-8 or (len(s) > 1 and s[-2] < 1e-6):
        raise RuntimeError(f"Clebsch-Gordan null space for ({l1},{l2},{l3}) is not one-dimensional")
    # Fix the scale: unit Frobenius norm times sqrt(2 l3 + 1); sign: first large entry positive.
    c = c / np.linalg.norm(c) * math.sqrt(n3)
    flat = c.reshape(-1)
    idx = np.argmax(np.abs(flat) > 1e-6)
    if flat[idx] < 0:
        c = -c
    c[np.abs(c) < 1e-12] = 0.0
    return c


def clebsch_gordan(l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Real Clebsch–Gordan tensor ``C[m1, m2, m3]`` in this module's convention.

    ``(a ⊗ b)_{m3} = Σ_{m1 m2} a_{m1} b_{m2} C[m1, m2, m3]`` is an l3-tensor when ``a`` is an
    l1-tensor and ``b`` an l2-tensor. Shape ``[2l1+1, 2l2+1, 2l3+1]``.
    """
    return torch.as_tensor(_clebsch_gordan_np(l1, l2, l3), dtype=dtype)


def cartesian_to_l1(vec: torch.Tensor) -> torch.Tensor:
    """Cartesian ``(x, y, z)`` → l=1 component order ``(y, z, x)``; shape ``[..., 3]``."""
    return vec[..., _L1_FROM_XYZ]


def l1_to_cartesian(vec: torch.Tensor) -> torch.Tensor:
    """l=1 component order ``(y, z, x)`` → Cartesian ``(x, y, z)``; shape ``[..., 3]``."""
    return vec[..., _XYZ_FROM_L1]


@functools.cache
def _sym_traceless_np() -> np.ndarray:
    # Find M_m (symmetric traceless) with S_2m(x) ∝ xᵀ M_m x, then make them Frobenius-orthonormal.
    pts = _sample_points()
    y = _harmonics_np(pts, 2)  # [P, 5]
    quad = np.einsum("pi,pj->pij", pts, pts).reshape(len(pts), 9)
    m, *_ = np.linalg.lstsq(quad, y, rcond=None)  # [9, 5]
    m = m.T.reshape(5, 3, 3)
    m = 0.5 * (m + m.transpose(0, 2, 1))
    m = m / np.linalg.norm(m.reshape(5, 9), axis=1)[:, None, None]
    m[np.abs(m) < 1e-12] = 0.0
    return m


def symmetric_traceless_basis(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Five Frobenius-orthonormal symmetric traceless 3×3 matrices ``M[m]``, shape ``[5, 3, 3]``.

    ``M[m]`` matches the λ=2 harmonic ``S_2m``: a λ=2 component vector ``c`` maps to the
    Cartesian matrix ``Σ_m c_m M[m]`` and back by ``c_m = tr(M[m] A)``; rotating the matrix
    ``R A Rᵀ`` is the same as ``c D_2(R)``.
    """
    return torch.as_tensor(_sym_traceless_np(), dtype=dtype)
