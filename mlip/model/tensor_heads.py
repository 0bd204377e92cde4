"""Tensor targets from scalar coefficients × λ-bases (Domina, Bigi, Pegolo, Ceriotti 2025).

The backbone's last density ``A`` ``[N, (lmax+1)², C]`` supplies, for free:

* Q learned polar vectors per atom, ``v_iq = Σ_c W_cq A_i[c, l=1]`` (Cartesian), shared by every
  tensor target; a :class:`~mlip.model.tensor_basis.LambdaBasis` turns them into λ-tensors
  (solid harmonics, Clebsch–Gordan couplings, cross and triple products for pseudotensors);
* for proper λ ≤ lmax, K extra elements ``Σ_c U_ck A_i[c, λ]``: contracted λ-densities. They keep
  the basis alive where all vectors cancel by symmetry (the carbon of CO₂ or of methane).

An MLP of the invariant features (backbone features ⊕ Gram matrix ``v_p·v_q``) gives coefficients
``α_iq`` and the atomic tensor is ``T_i = scale · Σ_q α_iq B_iq``. Per-structure targets sum ``T_i``
over atoms. Products of invariants and covariant bases are covariant, so every output is exactly
equivariant by construction, and the bases are polynomials of the vectors (no division by |v|), so
degenerate environments give finite values and gradients.

Cartesian targets are assembled from their spherical blocks: vectors from λ=1, rank-2 tensors from
λ=0 ⊕ (λ=1, σ=−1) ⊕ λ=2 (see :mod:`mlip.model.cartesian`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlip.model.backbone import mlp
from mlip.model.cartesian import spherical_to_rank2, spherical_to_vector
from mlip.model.tensor_basis import LambdaBasis
from mlip.targets import TargetSpec


def _key(lam: int, sig: int) -> str:
    return f"l{lam}_{'p' if sig > 0 else 'm'}"


class TensorHeads(nn.Module):
    """All tensor targets of a model.

    Args:
        channels: backbone feature width C.
        lmax: highest l of the backbone density.
        specs: tensor target specs (kind ``vector``, ``rank2`` or ``spherical``).
        num_vectors: Q, learned vectors per atom (≥ 3).
        hidden: width of the coefficient MLPs.
        scales: target name → output scale (RMS of the per-atom label), so networks output O(1).
        shifts: target name → per-atom offset of the λ=0 (σ=+1) component (like E0s for energies).
        density_elements: K, contracted λ-densities added to each proper basis with 1 ≤ λ ≤ lmax.
    """

    def __init__(
        self,
        channels: int,
        lmax: int,
        specs: Sequence[TargetSpec],
        num_vectors: int = 4,
        hidden: int = 64,
        scales: dict[str, float] | None = None,
        shifts: dict[str, float] | None = None,
        density_elements: int = 4,
    ) -> None:
        super().__init__()
        self.specs = list(specs)
        self.lmax = lmax
        self.num_vectors = num_vectors
        self.vector_projection = nn.Linear(channels, num_vectors, bias=False)
        nn.init.normal_(self.vector_projection.weight, std=channels**-0.5)
        blocks = sorted({irrep for spec in self.specs for irrep in spec.irreps})
        self.bases = nn.ModuleDict(
            {_key(lam, sig): LambdaBasis(lam, sig, num_vectors) for lam, sig in blocks}
        )
        self.density_projections = nn.ModuleDict()
        for lam, sig in blocks:
            if sig > 0 and 1 <= lam <= lmax and density_elements > 0:
                proj = nn.Linear(channels, density_elements, bias=False)
                nn.init.normal_(proj.weight, std=channels**-0.5)
                self.density_projections[_key(lam, sig)] = proj
        n_gram = num_vectors * (num_vectors + 1) // 2
        self.register_buffer("gram_index", torch.triu_indices(num_vectors, num_vectors), persistent=False)
        self.coefficients = nn.ModuleDict()
        for spec in self.specs:
            for lam, sig in spec.irreps:
                n_basis = self.bases[_key(lam, sig)].num_basis
                if _key(lam, sig) in self.density_projections:
                    n_basis += density_elements
                self.coefficients[f"{spec.name}__{_key(lam, sig)}"] = mlp(
                    [channels + n_gram, hidden, n_basis]
                )
        scales = scales or {}
        self.register_buffer("scales", torch.tensor([float(scales.get(s.name, 1.0)) for s in self.specs]))
        shifts = shifts or {}
        self.register_buffer("shifts", torch.tensor([float(shifts.get(s.name, 0.0)) for s in self.specs]))
        self.lambda0_offsets = []
        for spec in self.specs:
            offset, found = 0, None
            for lam, sig in spec.irreps:
                if (lam, sig) == (0, 1):
                    found = offset
                offset += 2 * lam + 1
            self.lambda0_offsets.append(found)

    def vectors(self, density: torch.Tensor) -> torch.Tensor:
        """Density ``[N, (lmax+1)², C]`` → learned polar vectors ``[N, Q, 3]`` (Cartesian)."""
        l1 = density[:, 1:4, :][:, [2, 0, 1], :] / 3**0.5  # √3·(y, z, x) → (x, y, z)
        return self.vector_projection(l1).transpose(1, 2)

    def bases_for(self, density: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every (λ, σ) basis ``[N, n_basis, 2λ+1]`` and the invariants ``[N, C + Q(Q+1)/2]``."""
        vectors = self.vectors(density)
        bases = {}
        for key, basis in self.bases.items():
            b = basis(vectors)
            if key in self.density_projections:
                lam = int(key[1:].split("_")[0])
                block = density[:, lam * lam : (lam + 1) * (lam + 1), :]  # [N, 2λ+1, C]
                extra = self.density_projections[key](block).transpose(1, 2)  # [N, K, 2λ+1]
                b = torch.cat([b, extra], dim=1)
            bases[key] = b
        gram = torch.einsum("nqa,npa->nqp", vectors, vectors)[:, self.gram_index[0], self.gram_index[1]]
        return bases, gram

    def forward(
        self, features: list[torch.Tensor], density: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> dict[str, torch.Tensor]:
        """Predictions of every tensor target (per structure ``[G, ...]`` or per atom ``[N, ...]``)."""
        bases, gram = self.bases_for(density)
        invariants = torch.cat([features[-1], gram], dim=-1)
        out = {}
        for t, spec in enumerate(self.specs):
            blocks = []
            for lam, sig in spec.irreps:
                coeff = self.coefficients[f"{spec.name}__{_key(lam, sig)}"](invariants)
                blocks.append(torch.einsum("nb,nbm->nm", coeff, bases[_key(lam, sig)]))
            atomic = torch.cat(blocks, dim=-1) * self.scales[t]
            offset = self.lambda0_offsets[t]
            if offset is not None:  # per-atom mean of the invariant part
                shift = torch.zeros_like(atomic[0])
                shift[offset] = self.shifts[t]
                atomic = atomic + shift
            if spec.per_atom:
                value = atomic
            else:
                value = atomic.new_zeros(num_graphs, atomic.shape[1]).index_add(0, batch, atomic)
            out[spec.name] = self._to_output(spec, value)
        return out

    @staticmethod
    def _to_output(spec: TargetSpec, value: torch.Tensor) -> torch.Tensor:
        if spec.kind == "vector":
            return spherical_to_vector(value)
        if spec.kind == "rank2":
            parts, start = {}, 0
            for lam, sig in spec.irreps:
                parts[(lam, sig)] = value[..., start : start + 2 * lam + 1]
                start += 2 * lam + 1
            return spherical_to_rank2(parts)
        return value
