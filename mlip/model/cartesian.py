"""Conversions between Cartesian tensors and spherical irreps (convention of :mod:`mlip.model.spherical`).

Rank 1: a Cartesian vector ``(x, y, z)`` is the λ=1 row vector ``(y, z, x)`` (plain permutation, no
√3 factor). Under ``v ↦ R v`` its components transform as ``c ↦ c @ wigner_d(R, 1)``, for proper
and improper ``R`` alike (a polar vector).

Rank 2: ``A = A0 + A1 + A2`` with

* ``A0 = (tr A / 3) I`` → key ``(0, 1)``, ``c0 = tr(A) / √3`` (so ``A0 = c0 · I / √3``);
* ``A1 = (A - Aᵀ) / 2`` → key ``(1, -1)``, the axial vector ``ω`` with ``A1[i, j] = ε_ijk ω_k``
  stored as ``c1 = √2 · (ω_y, ω_z, ω_x)``, i.e. ``c1 = (A_zx - A_xz, A_xy - A_yx, A_yz - A_zy) / √2``;
* ``A2 = (A + Aᵀ)/2 - A0`` → key ``(2, 1)``, ``c2_m = tr(M_m A)`` with ``M = symmetric_traceless_basis()``.

The map ``A ↦ (c0, c1, c2)`` is orthonormal: ``‖A‖_F² = |c0|² + |c1|² + |c2|²``, and
:func:`spherical_to_rank2` is its exact inverse. For any orthogonal ``R``, with ``A' = R A Rᵀ``::

    c0(A') = c0(A)
    c1(A') = det(R) · c1(A) @ wigner_d(R, 1)
    c2(A') = c2(A) @ wigner_d(R, 2)

i.e. ``c1`` is a pseudovector (σ = -1): under inversion ``R = -I`` the Cartesian tensor, and so
``c1``, is unchanged, while ``wigner_d(-I, 1) = -I``, which the ``det(R)`` factor compensates.
``c0`` and ``c2`` are proper (σ = +1); ``wigner_d(-I, λ)`` is ``+I`` for λ = 0, 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlip.model.spherical import cartesian_to_l1, l1_to_cartesian, symmetric_traceless_basis

__all__ = [
    "rank2_to_spherical",
    "spherical_to_rank2",
    "spherical_to_vector",
    "vector_to_spherical",
]

_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)


def vector_to_spherical(v: Tensor) -> Tensor:
    """Cartesian vector ``[..., 3]`` (x, y, z) → λ=1 components ``[..., 3]`` (y, z, x); same units."""
    return cartesian_to_l1(v)


def spherical_to_vector(c: Tensor) -> Tensor:
    """λ=1 components ``[..., 3]`` (y, z, x) → Cartesian vector ``[..., 3]`` (x, y, z); same units."""
    return l1_to_cartesian(c)


def rank2_to_spherical(a: Tensor) -> dict[tuple[int, int], Tensor]:
    """Split a rank-2 Cartesian tensor into irreps.

    Args:
        a: shape ``[..., 3, 3]``.

    Returns:
        ``{(0, 1): [..., 1], (1, -1): [..., 3], (2, 1): [..., 5]}`` keyed by ``(λ, σ)``, same units
        as ``a``; see the module docstring for the normalisation and transformation rules.
    """
    if a.shape[-2:] != (3, 3):
        raise ValueError(f"expected [..., 3, 3], got {tuple(a.shape)}")
    c0 = (a[..., 0, 0] + a[..., 1, 1] + a[..., 2, 2]).unsqueeze(-1) / _SQRT3
    # (A_zx - A_xz, A_xy - A_yx, A_yz - A_zy) / √2 = √2 (ω_y, ω_z, ω_x)
    c1 = (
        torch.stack(
            [a[..., 2, 0] - a[..., 0, 2], a[..., 0, 1] - a[..., 1, 0], a[..., 1, 2] - a[..., 2, 1]], dim=-1
        )
        / _SQRT2
    )
    m = symmetric_traceless_basis(dtype=a.dtype).to(a.device)
    c2 = torch.einsum("mij,...ij->...m", m, a)
    return {(0, 1): c0, (1, -1): c1, (2, 1): c2}


def spherical_to_rank2(parts: dict[tuple[int, int], Tensor]) -> Tensor:
    """Inverse of :func:`rank2_to_spherical`.

    Args:
        parts: any non-empty subset of ``{(0, 1): [..., 1], (1, -1): [..., 3], (2, 1): [..., 5]}``;
            missing parts are taken as zero (e.g. a symmetric polarizability from λ=0 and λ=2).

    Returns:
        The Cartesian tensor, shape ``[..., 3, 3]``.
    """
    unknown = set(parts) - {(0, 1), (1, -1), (2, 1)}
    if unknown or not parts:
        raise ValueError(f"expected keys among (0, 1), (1, -1), (2, 1); got {sorted(parts)}")
    out: Tensor | None = None

    def add(x: Tensor) -> None:
        nonlocal out
        out = x if out is None else out + x

    if (0, 1) in parts:
        c0 = parts[(0, 1)]
        eye = torch.eye(3, dtype=c0.dtype, device=c0.device)
        add(c0[..., 0, None, None] / _SQRT3 * eye)
    if (1, -1) in parts:
        c1 = parts[(1, -1)]
        wy, wz, wx = (c1 / _SQRT2).unbind(-1)
        zero = torch.zeros_like(wx)
        rows = [
            torch.stack([zero, wz, -wy], dim=-1),
            torch.stack([-wz, zero, wx], dim=-1),
            torch.stack([wy, -wx, zero], dim=-1),
        ]
        add(torch.stack(rows, dim=-2))
    if (2, 1) in parts:
        c2 = parts[(2, 1)]
        m = symmetric_traceless_basis(dtype=c2.dtype).to(c2.device)
        add(torch.einsum("...m,mij->...ij", c2, m))
    assert out is not None
    return out
