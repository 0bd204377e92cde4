"""The scalar backbone: message passing with invariant angular (power-spectrum) features.

Each layer t, for every atom i:

1. expands its neighbour density in radial functions × real spherical harmonics, weighted by the
   neighbours' features (a learned two-body "atomic cluster expansion" density)::

       A_i[c, lm] = 1/⟨n⟩ · Σ_j R^t_{l c}(r_ij) · (W h_j)[c] · Y_lm(r̂_ij)

2. contracts it to rotation invariants: the l=0 density and, per channel and per l ≥ 1, a
   channel-mixed power spectrum ``p_i[c, l] = Σ_m A_i[c, lm] · (Σ_c' M^t_{l c c'} A_i[c', lm])``
   (three-body; stacking layers raises the body order),
3. updates ``h_i ← h_i + MLP([h_i, A_i[:, 00], p_i])``.

All operations are batched over edges and atoms, so the same code runs on CPU and GPU. Edges are
laid out per receiving atom on a padded ``[N, K, ·]`` grid (K = largest neighbour count; see
:class:`PaddedEdges`), so that step 1 is one batched matrix product per l,
``A_i[l] = Y_l(i)ᵀ · (R_l ⊙ u · W h)(i)`` with ``[2l+1, K] @ [K, C]`` per atom: the
``[E, (lmax+1)², C]`` per-edge messages are never formed and no scatter is needed (several times
faster and far less memory than multiplying the messages out and summing them with
``index_add``; the same sums up to rounding; empty slots hold exact zeros). Where padding would
waste too much (a few atoms with many more neighbours than the rest) the layers use that
``index_add`` scatter instead (:meth:`InteractionLayer.forward`).

Features are exactly invariant to rotations, inversion (power spectra are even), translations and
permutations of like atoms. The last density is returned too: its l=1 part is a
set of polar vectors per atom, from which the tensor heads build their λ-bases for free, and its
l ≥ 2 blocks are extra λ-tensors for those bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlip.model.radial import BesselBasis, PolynomialEnvelope
from mlip.model.spherical import spherical_harmonics


class NormalisedSiLU(nn.Module):
    """SiLU scaled to unit second moment for unit-normal inputs (keeps activations O(1) with depth)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * 1.6790


def mlp(sizes: list[int], bias_last: bool = True) -> nn.Sequential:
    """Dense network with normalised SiLU between layers (none after the last).

    Weights start as N(0, 1/fan_in) and biases at zero, so unit-scale inputs give unit-scale outputs.
    """
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = k == len(sizes) - 2
        linear = nn.Linear(n_in, n_out, bias=bias_last or not last)
        nn.init.normal_(linear.weight, std=n_in**-0.5)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(NormalisedSiLU())
    return nn.Sequential(*layers)


@dataclass
class PaddedEdges:
    """Edges grouped by receiving atom on a padded ``[N, K, ·]`` grid, shared by all layers.

    Edge ``e`` sits in row ``receivers[e]``, column ``slot[e]`` (flat position ``flat[e]`` of the
    ``N·K`` grid); ``flat`` is None when the edges are sorted by receiver and every atom has exactly
    K of them (then a reshape is the layout). Empty slots hold zeros, so they add nothing.

    Attributes (besides the layout): ``sh_blocks[l]`` the edge harmonics of order l as
    ``[N, 2l+1, K]``; ``radial`` ``[N, K, num_radial]`` and ``envelope`` ``[N, K]`` the radial
    inputs and cutoff envelope; ``senders`` ``[N, K]`` the neighbour of each slot (0 where empty).
    """

    flat: torch.Tensor | None
    num_atoms: int
    max_neighbours: int
    sh_blocks: list[torch.Tensor]
    radial: torch.Tensor
    envelope: torch.Tensor
    senders: torch.Tensor

    @staticmethod
    def build(
        receivers: torch.Tensor,
        senders: torch.Tensor,
        num_atoms: int,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        envelope: torch.Tensor,
        lmax: int,
        max_waste: float = 2.0,
    ) -> PaddedEdges | None:
        """The layout, or None where ``N · K > max_waste · E`` (then use the scatter path)."""
        n_edges = receivers.shape[0]
        if n_edges == 0 or num_atoms == 0:
            return None
        counts = torch.bincount(receivers, minlength=num_atoms)
        k = int(counts.max())
        if num_atoms * k > max_waste * n_edges:
            return None
        first = torch.cumsum(counts, 0) - counts  # position of each atom's first edge once sorted
        arange = torch.arange(n_edges, device=receivers.device)
        sorted_edges = bool((receivers[1:] >= receivers[:-1]).all())
        if sorted_edges and n_edges == num_atoms * k:
            flat = None
        elif sorted_edges:
            flat = receivers * k + (arange - first[receivers])
        else:
            order = torch.argsort(receivers, stable=True)
            slot = torch.empty_like(receivers)
            slot[order] = arange - first[receivers[order]]
            flat = receivers * k + slot
        layout = PaddedEdges(flat, num_atoms, k, [], edge_radial, envelope, senders)
        layout.sh_blocks = [
            layout.pad(edge_sh[:, l * l : (l + 1) * (l + 1)]).transpose(1, 2) for l in range(lmax + 1)
        ]
        layout.radial = layout.pad(edge_radial)
        layout.envelope = layout.pad(envelope)
        layout.senders = layout.pad(senders)
        return layout

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """Per-edge values ``[E, ...]`` → ``[N, K, ...]`` (zeros in empty slots)."""
        shape = (self.num_atoms, self.max_neighbours, *values.shape[1:])
        if self.flat is None:
            return values.reshape(shape)
        grid = values.new_zeros((self.num_atoms * self.max_neighbours, *values.shape[1:]))
        return grid.index_copy(0, self.flat, values).view(shape)


class InteractionLayer(nn.Module):
    """One message-passing layer; see the module docstring. Shapes: h ``[N, C]``."""

    def __init__(self, channels: int, lmax: int, num_radial: int, radial_hidden: int) -> None:
        super().__init__()
        self.channels = channels
        self.lmax = lmax
        self.radial = mlp([num_radial, radial_hidden, radial_hidden, (lmax + 1) * channels])
        self.neighbour_linear = nn.Linear(channels, channels, bias=False)
        nn.init.normal_(self.neighbour_linear.weight, std=channels**-0.5)
        eye = torch.eye(channels).expand(lmax, channels, channels).clone()
        self.mix = nn.Parameter(eye + 0.1 * torch.randn(lmax, channels, channels) / channels**0.5)
        self.update = mlp([channels * (lmax + 2), channels, channels])
        with torch.no_grad():  # start close to the identity map: small residual updates
            self.update[-1].weight.mul_(0.2)
        l_of_lm = torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])
        self.register_buffer("l_of_lm", l_of_lm, persistent=False)

    def forward(
        self,
        h: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        receivers: torch.Tensor,
        senders: torch.Tensor,
        inv_avg_neighbours: float,
        edge_envelope: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-edge messages summed with ``index_add``; returns the updated features ``[N, C]`` and
        the density ``A`` ``[N, (lmax+1)², C]``. (:meth:`forward_padded` computes the same.)

        ``edge_envelope`` ``[E]`` multiplies the radial MLP's output: the MLP has biases, so
        MLP(0) ≠ 0 and only this makes the messages (and the energy) vanish smoothly at r_c.
        """
        n_atoms, c = h.shape[0], self.channels
        weights = self.radial(edge_radial).view(-1, self.lmax + 1, c)  # [E, L+1, C]
        hj = self.neighbour_linear(h)[senders]  # [E, C]
        if edge_envelope is not None:  # applied to the [E, C] factor: cheaper than to [E, L+1, C]
            hj = hj * edge_envelope.unsqueeze(-1)
        weights = weights * hj.unsqueeze(1)  # [E, L+1, C]: R_l(r_ij) · u(r_ij) · (W h_j)
        messages = weights[:, self.l_of_lm, :] * edge_sh.unsqueeze(-1)  # [E, (L+1)², C]
        density = torch.zeros(n_atoms, messages.shape[1], c, dtype=h.dtype, device=h.device)
        density = density.index_add(0, receivers, messages) * inv_avg_neighbours
        return self._update(h, density), density

    def forward_padded(
        self, h: torch.Tensor, layout: PaddedEdges, inv_avg_neighbours: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`forward`, on the padded layout: per atom and l, ``[2l+1, K] @ [K, C]``."""
        n_atoms, k, c = layout.num_atoms, layout.max_neighbours, self.channels
        weights = self.radial(layout.radial).view(n_atoms, k, self.lmax + 1, c)  # R_l per slot
        hj = self.neighbour_linear(h)[layout.senders] * layout.envelope.unsqueeze(-1)  # [N, K, C]
        blocks = [torch.bmm(layout.sh_blocks[l], radial * hj) for l, radial in enumerate(weights.unbind(2))]
        density = torch.cat(blocks, dim=1) * inv_avg_neighbours  # [N, (L+1)², C]
        return self._update(h, density), density

    def _update(self, h: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
        """``h + MLP([h, A_00, p_1 .. p_L])`` with the channel-mixed power spectrum ``p_l``."""
        invariants = [h, density[:, 0, :]]
        for l in range(1, self.lmax + 1):
            block = density[:, l * l : (l + 1) * (l + 1), :]  # [N, 2l+1, C]
            mixed = block @ self.mix[l - 1]
            invariants.append((block * mixed).sum(dim=1) / (2 * l + 1))
        return h + self.update(torch.cat(invariants, dim=-1))


class ScalarBackbone(nn.Module):
    """Species embedding + ``num_layers`` interaction layers.

    Args:
        num_species: number of elements the model knows.
        cutoff: radial cutoff, Å.
        channels: feature width C.
        num_layers: message-passing layers.
        lmax: highest spherical-harmonic order of the densities.
        num_radial: Bessel functions.
        radial_hidden: width of the radial MLP.
        avg_num_neighbours: dataset average, normalises the densities.
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        channels: int = 64,
        num_layers: int = 2,
        lmax: int = 3,
        num_radial: int = 8,
        radial_hidden: int = 64,
        avg_num_neighbours: float = 10.0,
    ) -> None:
        super().__init__()
        self.lmax = lmax
        self.channels = channels
        self.embedding = nn.Embedding(num_species, channels)
        self.radial_basis = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialEnvelope(cutoff)
        self.layers = nn.ModuleList(
            InteractionLayer(channels, lmax, num_radial, radial_hidden) for _ in range(num_layers)
        )
        self.inv_avg_neighbours = 1.0 / max(float(avg_num_neighbours), 1e-3)

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer invariant features and the last layer's density.

        Args:
            species: ``[N]`` species indices.
            edge_index: ``[2, E]`` (receiver i, neighbour j).
            edge_vectors: ``[E, 3]`` r_j − r_i (+ shift), Å.

        Returns:
            ``([h_1, ..., h_T] each [N, C], density [N, (lmax+1)², C])``; the density's l-blocks are
            proper l-tensors in :mod:`mlip.model.spherical`'s convention (l=1 is √3·(y, z, x)).
        """
        receivers, senders = edge_index[0], edge_index[1]
        lengths = torch.linalg.norm(edge_vectors, dim=-1)
        edge_sh = spherical_harmonics(edge_vectors / lengths.unsqueeze(-1), self.lmax)
        envelope = self.envelope(lengths)
        edge_radial = self.radial_basis(lengths) * envelope.unsqueeze(-1)
        h = self.embedding(species)
        layout = PaddedEdges.build(receivers, senders, h.shape[0], edge_sh, edge_radial, envelope, self.lmax)
        features = []
        density = h.new_zeros(h.shape[0], (self.lmax + 1) ** 2, self.channels)
        for layer in self.layers:
            if layout is not None:
                h, density = layer.forward_padded(h, layout, self.inv_avg_neighbours)
            else:
                h, density = layer(
                    h, edge_sh, edge_radial, receivers, senders, self.inv_avg_neighbours, envelope
                )
            features.append(h)
        return features, density
