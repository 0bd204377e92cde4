"""Bases of λ-tensors built from learned per-atom vectors (arXiv 2505.05404).

An equivariant per-atom target of angular order λ and parity σ is written as
``T_i = Σ_k α_ik · B_ik`` with invariant coefficients ``α_ik`` (from any scalar model) and
the basis ``B_i = LambdaBasis(λ, σ, Q)(v_i)`` computed here from ``Q`` polar vectors ``v_iq``
per atom.

Convention
----------
* Components follow :mod:`mlip.model.spherical`: real harmonics, ``m = -λ..λ``, l=1 order
  ``(y, z, x)``, "component" normalisation (``S_1(v) = √3 · (v_y, v_z, v_x)``).
* Input ``vectors``: shape ``[N, Q, 3]``, Cartesian polar vectors (any length unit ``u``);
  output: shape ``[N, num_basis, 2λ+1]``.
* Equivariance, for any orthogonal ``R`` (proper or improper, row-vector points ``v ↦ v Rᵀ``)::

      basis(v Rᵀ) = det(R)^((1-σ)/2) · basis(v) @ D_λ(R)

  where ``D_λ = spherical.wigner_d(R, λ)`` already contains ``(-1)^λ`` for improper ``R``.
  ``σ = +1``: proper tensors (a polarizability's λ=0, 2 parts, a dipole);
  ``σ = -1``: pseudotensors (e.g. the antisymmetric part of a rank-2 tensor, λ=1).

Basis elements (``p < q < r`` index the Q vectors unless "ordered", which means all ``p ≠ q``)
----------------------------------------------------------------------------------------------
* λ=0, σ=+1: the constant ``1`` (one element; invariants belong to the coefficient model).
* λ=0, σ=-1: triple products ``v_p · (v_q × v_r)``.
* λ=1, σ=+1: the vectors, ``S_1(v_q) = √3 v_q``. No couplings are added: every polar vector
  built from the ``v_q`` lies in their span, so extra elements would not enlarge it.
* λ=1, σ=-1: cross products ``S_1(v_p × v_q) = √3 (v_p × v_q)``.
* λ≥2: single-vector solid harmonics ``S_λ(v_q)`` (σ=+1 only) and Clebsch–Gordan couplings
  ``(S_l1(v_p) ⊗ S_l2(v_q))_λ`` with ``1 ≤ l1 ≤ l2``, ``|l1-l2| ≤ λ ≤ l1+l2``. Parity of a
  coupling is ``(-1)^(l1+l2)`` while ``D_λ`` carries ``(-1)^λ``, so σ=+1 uses
  ``l1+l2 ≡ λ (mod 2)`` and σ=-1 uses ``l1+l2 ≡ λ+1 (mod 2)``. Terms are added greedily by
  polynomial degree ``l1+l2`` (starting at λ for σ=+1, λ+1 for σ=-1); pairs with ``l1 = l2`` use
  ``p < q`` (the ``p = q`` term is zero or proportional to ``S_λ(v_p)``), pairs with ``l1 < l2``
  use ``p < q`` and switch to ordered pairs if needed, until there are at least ``2λ+3``
  elements (two spare). See :func:`select_terms`; :attr:`LambdaBasis.labels` names each element.

Scale
-----
Vectors are used as they come: no normalisation anywhere, so every element is a homogeneous
polynomial of the vector components (finite, with finite derivatives of all orders at v → 0).
Every element is scaled so that its norm is at most ``√(2λ+1) · Π|v|`` over its factors
(``S_λ(v)`` has norm exactly ``√(2λ+1)|v|^λ``; couplings use the orthonormal CG tensor times
``√(2λ+1) / √((2l1+1)(2l2+1))``). Units: ``u^d`` for an element of degree ``d``. The caller
should keep vectors O(1) so that elements of different degrees have similar magnitudes.

Symmetric environments: all vectors parallel to ``z`` give only ``m = 0`` components for
σ=+1 and an identically zero basis for σ=-1 (as required by C∞v symmetry); coplanar vectors
give the ``λ+1`` (σ=+1) or ``λ`` (σ=-1) mirror-allowed components. Vectors vanish at
centrosymmetric sites (e.g. the carbon of CO₂), so such a basis is zero there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mlip.model.spherical import cartesian_to_l1, clebsch_gordan, solid_harmonics

__all__ = ["BasisTerm", "LambdaBasis", "select_terms"]

_SPARE = 2
_MAX_EXTRA_DEGREE = 4


@dataclass(frozen=True)
class BasisTerm:
    """One family of basis elements.

    ``kind`` is ``"const"``, ``"single"`` (``S_λ(v_q)``), ``"cross"`` (``√3 v_p × v_q``),
    ``"triple"`` (``v_p · (v_q × v_r)``) or ``"pair"`` (``(S_l1(v_p) ⊗ S_l2(v_q))_λ``);
    ``ordered`` selects all ``p ≠ q`` instead of ``p < q`` for pairs.
    """

    kind: str
    l1: int = 0
    l2: int = 0
    ordered: bool = False


def _pairs(num_vectors: int, ordered: bool) -> list[tuple[int, int]]:
    if ordered:
        return [(p, q) for p in range(num_vectors) for q in range(num_vectors) if p != q]
    return [(p, q) for p in range(num_vectors) for q in range(p + 1, num_vectors)]


def _triples(num_vectors: int) -> list[tuple[int, int, int]]:
    q = num_vectors
    return [(a, b, c) for a in range(q) for b in range(a + 1, q) for c in range(b + 1, q)]


def _term_size(term: BasisTerm, num_vectors: int) -> int:
    if term.kind == "const":
        return 1
    if term.kind == "single":
        return num_vectors
    if term.kind == "triple":
        return len(_triples(num_vectors))
    return len(_pairs(num_vectors, term.ordered))


def select_terms(lam: int, sigma: int, num_vectors: int) -> list[BasisTerm]:
    """The families of basis elements used for ``(lam, sigma)`` with ``num_vectors`` vectors."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if sigma not in (1, -1):
        raise ValueError(f"sigma must be +1 or -1, got {sigma}")
    if num_vectors < 3:
        raise ValueError(f"num_vectors must be >= 3, got {num_vectors}")
    if lam == 0:
        return [BasisTerm("const")] if sigma == 1 else [BasisTerm("triple")]
    if lam == 1:
        return [BasisTerm("single")] if sigma == 1 else [BasisTerm("cross")]

    terms: list[BasisTerm] = [BasisTerm("single")] if sigma == 1 else []
    target = 2 * lam + 1 + _SPARE

    def count() -> int:
        return sum(_term_size(t, num_vectors) for t in terms)

    degree = lam if sigma == 1 else lam + 1
    while count() < target and degree <= lam + 1 + _MAX_EXTRA_DEGREE:
        new = [(l1, degree - l1) for l1 in range(1, degree // 2 + 1) if abs(degree - 2 * l1) <= lam <= degree]
        start = len(terms)
        terms.extend(BasisTerm("pair", l1, l2, ordered=False) for l1, l2 in new)
        if count() < target:
            for i in range(start, len(terms)):
                t = terms[i]
                if t.l1 != t.l2:
                    terms[i] = BasisTerm("pair", t.l1, t.l2, ordered=True)
        degree += 2
    return terms


class LambdaBasis(torch.nn.Module):
    """Basis of λ-tensors (parity σ) from ``Q`` polar vectors per atom.

    Args:
        lam: angular order λ ≥ 0 (unit tests cover 0..4; equivariance and rank also checked up to 6).
        sigma: parity, +1 (proper tensor) or -1 (pseudotensor).
        num_vectors: Q ≥ 3, the number of vectors per atom.

    Attributes:
        num_basis: number of basis elements K.
        terms: the :class:`BasisTerm` families, in output order.
        labels: a readable name for each of the K elements.

    ``forward(vectors[N, Q, 3]) -> [N, K, 2λ+1]``; see the module docstring for the convention.
    Clebsch–Gordan tensors are float64 buffers (``persistent=False``: not in the state dict; moved by
    ``.to(device)``; kept float64 by ``.float()``/``.to(dtype)``) cast to the input dtype in ``forward``.
    """

    def __init__(self, lam: int, sigma: int, num_vectors: int) -> None:
        super().__init__()
        self.lam = int(lam)
        self.sigma = int(sigma)
        self.num_vectors = int(num_vectors)
        self.terms: list[BasisTerm] = select_terms(self.lam, self.sigma, self.num_vectors)
        self._lmax = 0
        self.labels: list[str] = []
        q = self.num_vectors
        for i, term in enumerate(self.terms):
            if term.kind == "const":
                self.labels.append("1")
            elif term.kind == "single":
                if self.lam >= 2:  # λ=1 is a plain permutation, computed without solid_harmonics
                    self._lmax = max(self._lmax, self.lam)
                self.labels.extend(f"S{self.lam}(v{p})" for p in range(q))
            elif term.kind == "triple":
                idx = torch.tensor(_triples(q), dtype=torch.long).T
                self.register_buffer(f"_idx{i}", idx, persistent=False)
                self.labels.extend(f"v{a}.(v{b}xv{c})" for a, b, c in _triples(q))
            elif term.kind == "cross":
                pairs = _pairs(q, term.ordered)
                self.register_buffer(f"_idx{i}", torch.tensor(pairs, dtype=torch.long).T, persistent=False)
                self.labels.extend(f"S1(v{a}xv{b})" for a, b in pairs)
            elif term.kind == "pair":
                pairs = _pairs(q, term.ordered)
                self.register_buffer(f"_idx{i}", torch.tensor(pairs, dtype=torch.long).T, persistent=False)
                self.register_buffer(f"_cg{i}", self._scaled_cg(term.l1, term.l2), persistent=False)
                self._lmax = max(self._lmax, term.l1, term.l2)
                self.labels.extend(f"(S{term.l1}(v{a})xS{term.l2}(v{b}))_{self.lam}" for a, b in pairs)
            else:  # pragma: no cover - select_terms only produces the kinds above
                raise ValueError(term.kind)
        self.num_basis: int = len(self.labels)

    def _scaled_cg(self, l1: int, l2: int) -> Tensor:
        """CG tensor as a ``[(2l1+1)(2l2+1), 2λ+1]`` float64 matrix, scaled by √(2λ+1)/√((2l1+1)(2l2+1))."""
        n1, n2, n3 = 2 * l1 + 1, 2 * l2 + 1, 2 * self.lam + 1
        cg = clebsch_gordan(l1, l2, self.lam, dtype=torch.float64)
        return cg.reshape(n1 * n2, n3) * math.sqrt(n3 / (n1 * n2))

    def _apply(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        # ``.float()`` / ``.half()`` / ``.to(dtype)`` would round the CG buffers; keep them exact float64
        # (on whatever device they were moved to) so that float64 use after a cast stays exact.
        out = super()._apply(*args, **kwargs)
        for i, term in enumerate(self.terms):
            if term.kind == "pair":
                device = self._buffers[f"_cg{i}"].device
                self._buffers[f"_cg{i}"] = self._scaled_cg(term.l1, term.l2).to(device)
        return out

    def extra_repr(self) -> str:
        return (
            f"lam={self.lam}, sigma={self.sigma}, num_vectors={self.num_vectors}, num_basis={self.num_basis}"
        )

    def forward(self, vectors: Tensor) -> Tensor:
        """Basis elements of each atom.

        Args:
            vectors: polar vectors, shape ``[N, Q, 3]`` (Cartesian, length unit ``u``).

        Returns:
            Shape ``[N, num_basis, 2λ+1]``; an element of polynomial degree ``d`` has unit ``u^d``.
        """
        if vectors.dim() != 3 or vectors.shape[1] != self.num_vectors or vectors.shape[2] != 3:
            raise ValueError(
                f"expected vectors of shape [N, {self.num_vectors}, 3], got {tuple(vectors.shape)}"
            )
        n = vectors.shape[0]
        sh = solid_harmonics(vectors, self._lmax) if self._lmax > 0 else []
        outs: list[Tensor] = []
        for i, term in enumerate(self.terms):
            if term.kind == "const":
                outs.append(vectors.new_ones(n, 1, 1))
            elif term.kind == "single":
                outs.append(sh[self.lam] if self.lam >= 2 else cartesian_to_l1(vectors) * math.sqrt(3.0))
            elif term.kind == "triple":
                idx = getattr(self, f"_idx{i}")
                va, vb, vc = vectors[:, idx[0]], vectors[:, idx[1]], vectors[:, idx[2]]
                outs.append((va * torch.linalg.cross(vb, vc, dim=-1)).sum(-1, keepdim=True))
            elif term.kind == "cross":
                idx = getattr(self, f"_idx{i}")
                c = torch.linalg.cross(vectors[:, idx[0]], vectors[:, idx[1]], dim=-1)
                outs.append(cartesian_to_l1(c) * math.sqrt(3.0))
            else:
                idx = getattr(self, f"_idx{i}")
                cg = getattr(self, f"_cg{i}").to(dtype=vectors.dtype, device=vectors.device)
                a = sh[term.l1][:, idx[0]]  # [N, K, 2l1+1]
                b = sh[term.l2][:, idx[1]]  # [N, K, 2l2+1]
                outer = (a.unsqueeze(-1) * b.unsqueeze(-2)).reshape(n, a.shape[1], -1)
                outs.append(outer @ cg)
        return torch.cat(outs, dim=1)
