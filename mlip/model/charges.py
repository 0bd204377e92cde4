"""Partial charges for molecular dipoles: ``μ = Σ_i q_i (r_i − r̄) + Σ_i μ_i``.

A molecule's dipole is mostly charge separation: charges on atoms several ångström apart. Atomic
dipoles ``μ_i`` (the tensor heads' λ=1 output) can only describe it through their environment's
vectors, a local and indirect route; MACE-μα (``AtomicDielectricMACE``) and most dipole models add
learned partial charges times positions. Here an MLP of each atom's invariant backbone features
gives ``q_i`` (e), and the charges of each structure are shifted to sum to zero::

    q_i = s · MLP(h_i),     q̃_i = q_i − mean_{j ∈ structure} q_j,     μ_q = Σ_i q̃_i r_i   (e·Å)

``Σ q̃ = 0`` makes ``μ_q`` independent of the origin (translation invariant), so the Born-charge sum
rule ``Σ_i Z_i = 0`` still holds; ``q_i`` are invariants and ``r_i`` rotates, so ``μ_q`` is exactly
equivariant under O(3). ``s`` is the dipole's per-atom label scale (e·Å) over 1 Å, so the network
outputs O(1). Periodic structures are refused: a wrapped position makes ``Σ q r`` jump (the
polarisation of a crystal is a Berry phase, not a sum of charges times positions).

Enable per dipole target with ``charges: true`` in the config (``targets.dipole.charges``).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip.errors import MLIPError
from mlip.model.backbone import mlp


class PartialChargeDipole(nn.Module):
    """``μ_q [G, 3]`` (e·Å) from invariant features ``[N, C]`` and positions ``[N, 3]`` (Å).

    Args:
        channels: backbone feature width C.
        hidden: width of the charge MLP.
        scale: e, multiplies the MLP's output (the dipole's per-atom scale over 1 Å).
    """

    def __init__(self, channels: int, hidden: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.net = mlp([channels, hidden, 1])
        nn.init.normal_(self.net[-1].weight, std=0.1 * hidden**-0.5)  # start near zero charges
        self.register_buffer("scale", torch.tensor(float(scale)))

    def charges(self, features: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """Partial charges ``[N]`` (e) summing to zero in each structure."""
        q = self.scale * self.net(features).squeeze(-1)
        total = q.new_zeros(num_graphs).index_add(0, batch, q)
        count = q.new_zeros(num_graphs).index_add(0, batch, torch.ones_like(q))
        return q - (total / count.clamp_min(1.0))[batch]

    def forward(
        self, features: torch.Tensor, positions: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> torch.Tensor:
        q = self.charges(features, batch, num_graphs)
        return positions.new_zeros(num_graphs, 3).index_add(0, batch, q.unsqueeze(-1) * positions)


def refuse_periodic(pbc: torch.Tensor | None, target: str) -> None:
    """One-line error when a structure of the batch is periodic along any axis."""
    if pbc is not None and bool(pbc.any()):
        raise MLIPError(
            f"target '{target}' uses partial charges (charges: true), which are defined for "
            f"non-periodic structures only; this structure is periodic (pbc={pbc.view(-1, 3)[0].tolist()}): "
            f"train a periodic dipole without 'charges'"
        )
