"""A learned short-range pair repulsion added to the network's atomic energies.

Message-passing networks extrapolate poorly to bonds shorter than any in their training data: the
energy wall of a compressed bond steepens (a Morse bond's restoring force grows faster than
harmonic), while SiLU networks continue roughly linearly. A pair term with the right asymptotic
shape carries that steepening out of the training range. For atoms ``i``, ``j`` of species ``a``,
``b`` at distance ``r``:

    φ_ab(r) = A_ab · exp(−α_ab (r − r_ab)) · u(r / (f · r_ab))

with ``r_ab`` the sum of the covalent radii (Å, ase.data), ``u`` the smooth polynomial cutoff
envelope (zero with two derivatives at ``f · r_ab``; ``f`` = ``cutoff_factor``, 1.4 by default:
covalent bonds, not non-bonded contacts) and ``A_ab > 0`` (eV), ``α_ab > 0`` (1/Å) learned, one pair
each per unordered species pair. Each atom gets half of each of its pairs' energies. The term is
rotation, translation and permutation invariant like the rest of the energy, and smooth.
"""

from __future__ import annotations

import math

import torch
from ase.data import covalent_radii
from torch import nn

from mlip.model.radial import PolynomialEnvelope


class PairRepulsion(nn.Module):
    """Per-atom pair repulsion energies ``[N]`` (eV) from edges.

    Args:
        species: atomic numbers in the model's species order.
        cutoff_factor: the pair term of species ``a``, ``b`` vanishes beyond
            ``cutoff_factor · (R_a + R_b)`` (covalent radii).
        amplitude: initial ``A`` (eV) at ``r = R_a + R_b``.
        steepness: initial ``α`` (1/Å).
    """

    def __init__(
        self, species: list[int], cutoff_factor: float = 1.4, amplitude: float = 0.1, steepness: float = 3.0
    ) -> None:
        super().__init__()
        radii = torch.tensor([float(covalent_radii[z]) for z in species], dtype=torch.float64)
        s = len(species)
        # float64 (cast with the model by .float()/.double()): float32 would round the radii
        self.register_buffer("reference_distance", radii[:, None] + radii[None, :])
        self.cutoff_factor = float(cutoff_factor)
        # log-parameters of an unordered pair: symmetrised in forward, so [a, b] and [b, a] agree
        self.log_amplitude = nn.Parameter(torch.full((s, s), math.log(amplitude)))
        self.log_steepness = nn.Parameter(torch.full((s, s), math.log(steepness)))
        self.envelope = PolynomialEnvelope(1.0)

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> torch.Tensor:
        """``species`` ``[N]`` indices, ``edge_index`` ``[2, E]``, ``edge_vectors`` ``[E, 3]`` Å → ``[N]`` eV.

        Every edge i→j is one half of the pair's energy (the neighbour list holds both directions).
        """
        receivers, senders = edge_index[0], edge_index[1]
        a, b = species[receivers], species[senders]
        log_amp = 0.5 * (self.log_amplitude + self.log_amplitude.T)
        log_alpha = 0.5 * (self.log_steepness + self.log_steepness.T)
        dtype = edge_vectors.dtype
        r = torch.linalg.vector_norm(edge_vectors, dim=-1)
        r0 = self.reference_distance.to(dtype)[a, b]
        alpha = log_alpha.to(dtype)[a, b].exp()
        pair = log_amp.to(dtype)[a, b].exp() * torch.exp(-alpha * (r - r0))
        pair = pair * self.envelope(r / (self.cutoff_factor * r0))
        out = torch.zeros(species.shape[0], dtype=dtype, device=edge_vectors.device)
        return out.index_add(0, receivers, 0.5 * pair)
