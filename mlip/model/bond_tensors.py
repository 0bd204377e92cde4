"""Bond terms of tensor targets: per-bond scalar coefficients × solid harmonics of the bond.

The tensor heads (:mod:`mlip.model.tensor_heads`) write an atom's λ-tensor as invariant
coefficients of the atom times λ-tensors built from its learned vectors, which are linear in the
atom's l=1 density: the weight a neighbour's direction gets depends on the centre atom's features
and on a few radial channels only. Bond terms add, for every proper block with λ ≥ 1, one element per
bond whose coefficient depends on both atoms' final features and on the distance::

    T_i^λ += scale · Σ_j β^λ(h_i, h_j, r_ij) · u(r_ij) · S_λ(r_ij / r_c)

``h`` are the backbone's last invariant features, ``u`` the smooth cutoff envelope (bond terms
vanish with their derivatives as a neighbour leaves the cutoff sphere), ``S_λ`` the regular solid
harmonics (polynomials: no division by the distance) and ``β`` one small network shared by the bonds,
with one output per (target, block). For a polarizability this is the bond-polarizability model
(anisotropy along each bond), for a dipole a bond-dipole model with many-body coefficients.
``β(h_i, h_j, ·) ≠ β(h_j, h_i, ·)``, so the two directions of a bond do not cancel in a sum over
atoms. Invariant coefficients times covariant harmonics: exactly equivariant (proper tensors, since
``S_λ(−r) = (−1)^λ S_λ(r)`` is the parity a polar λ-tensor has), translation invariant (bond vectors
only) and permutation invariant (a sum over bonds).

Enable with ``model.tensor_bonds: H`` (the network's width; 0, the default, leaves them out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlip.model.backbone import mlp
from mlip.model.radial import BesselBasis, PolynomialEnvelope
from mlip.model.spherical import solid_harmonics
from mlip.model.tensor_heads import TensorHeads
from mlip.targets import TargetSpec


class BondTensorTerms(nn.Module):
    """Per-atom (or per-structure) bond terms of every tensor target, in the targets' output form.

    Args:
        channels: backbone feature width C.
        cutoff: Å, the model's cutoff (the envelope and the harmonics' length unit).
        specs: tensor target specs; every proper block with λ ≥ 1 of each gets one coefficient per bond.
        hidden: width of the bond network.
        num_radial: Bessel functions of the distance fed to the network.
        scales: target name → output scale (as the tensor heads').
    """

    def __init__(
        self,
        channels: int,
        cutoff: float,
        specs: Sequence[TargetSpec],
        hidden: int = 32,
        num_radial: int = 8,
        scales: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.specs = list(specs)
        self.cutoff = float(cutoff)
        # (target index, first spherical column of the block, λ) for every proper block with λ ≥ 1
        self.slots: list[tuple[int, int, int]] = []
        self.widths: list[int] = []
        for t, spec in enumerate(self.specs):
            column = 0
            for lam, sig in spec.irreps:
                if sig > 0 and lam >= 1:
                    self.slots.append((t, column, lam))
                column += 2 * lam + 1
            self.widths.append(column)
        self.lmax = max((lam for _, _, lam in self.slots), default=0)
        self.radial = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialEnvelope(cutoff)
        self.net = mlp([2 * channels + num_radial, hidden, max(len(self.slots), 1)])
        nn.init.normal_(self.net[-1].weight, std=0.1 * hidden**-0.5)  # start near the heads' model
        nn.init.zeros_(self.net[-1].bias)
        scales = scales or {}
        self.register_buffer("scales", torch.tensor([float(scales.get(s.name, 1.0)) for s in self.specs]))

    def forward(
        self,
        features: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> dict[str, torch.Tensor]:
        """Bond terms of each target, shaped as the target (``[G, ...]``, or ``[N, ...]`` per atom).

        Args:
            features: ``[N, C]`` the backbone's last invariant features.
            edge_index: ``[2, E]`` (receiver i, sender j); edge_vectors: ``[E, 3]`` Å, ``r_j − r_i``.
            batch: ``[N]`` structure index of each atom; num_graphs: G.
        """
        receivers, senders = edge_index[0], edge_index[1]
        n = features.shape[0]
        out: dict[str, torch.Tensor] = {}
        if not self.slots:
            return out
        r = edge_vectors.norm(dim=-1)
        inputs = torch.cat([features[receivers], features[senders], self.radial(r)], dim=-1)
        beta = self.net(inputs) * self.envelope(r).unsqueeze(-1)  # [E, slots]
        harmonics = solid_harmonics(edge_vectors / self.cutoff, self.lmax)
        per_target: list[list[torch.Tensor]] = [[] for _ in self.specs]
        for s, (t, column, lam) in enumerate(self.slots):
            filled = sum(b.shape[1] for b in per_target[t])
            if column > filled:  # blocks without bond terms (λ = 0, pseudotensors) stay zero
                per_target[t].append(features.new_zeros(n, column - filled))
            per_bond = beta[:, s : s + 1] * harmonics[lam]  # [E, 2λ+1]
            per_target[t].append(features.new_zeros(n, 2 * lam + 1).index_add(0, receivers, per_bond))
        atomic = []
        for t, blocks in enumerate(per_target):
            filled = sum(b.shape[1] for b in blocks)
            if self.widths[t] > filled:
                blocks.append(features.new_zeros(n, self.widths[t] - filled))
            atomic.append(torch.cat(blocks, dim=1))
        for t, spec in enumerate(self.specs):
            value = atomic[t] * self.scales[t]
            if not spec.per_atom:
                value = value.new_zeros(num_graphs, value.shape[1]).index_add(0, batch, value)
            out[spec.name] = TensorHeads._to_output(spec, value)
        return out
