"""The scalar backbone: message passing with invariant angular features.

Each layer t, for every atom i:

1. expands its neighbour density in radial functions × real spherical harmonics, weighted by the
   neighbours' features (a learned two-body "atomic cluster expansion" density)::

       A_i[c, lm] = 1/⟨n⟩ · Σ_j R^t_{l c}(r_ij, s_ij) · (W h_j)[c] · Y_lm(r̂_ij)

   With ``model.radial_species`` the radial MLP also sees learned embeddings of both elements,
   ``R^t_{l c}(r_ij, z_i, z_j, s_ij)``: one radial function per element pair rather than per sender
   channel only (the receiver's element otherwise enters only after the contraction, in step 3).

   From the second layer on, the radial weights may also see *bond projections* of the
   neighbour's previous density, ``s_ij[c', l] = Σ_m (A_j P_l)[c', lm] · Y_lm(r̂_ij)`` (l ≥ 1;
   ``model.bond_channels`` channels c'): how j's environment is oriented relative to the bond
   i–j. They are exact invariants (both factors rotate with the same D^l and carry the same parity)
   and bring the angle k–j–i — hence torsions i–j–k–m across two layers — into i's update.

   With ``model.density_messages`` (D channels) the first D channels of the neighbours' previous
   densities also enter i's density itself, transported as the l-tensors they are (the l₂ = 0 path
   of an equivariant message) and mixed into all C channels::

       A_i[c, lm] += 1/⟨n⟩ · Σ_{d<D} (Σ_j R'^t_{l d}(r_ij, …) · A_j[d, lm]) · T^t_{l d c}

   Each l-block of A_j rotates with D^l and has the parity (−1)^l of Y_l, so the sum is an
   l-tensor of the same kind as the bond part and every invariant below stays exact. The power
   spectrum then holds A_j · Y(r̂_ik) and A_j · A_k: how j's environment is oriented relative to
   i's other bonds and to k's environment, which MACE's equivariant hidden features carry into its
   second layer and the bond projections (one scalar per bond) only partly do.
   ``model.density_message_lmax`` transports only the blocks l ≤ that value (the rest of A_i keeps
   its bond part only), which shrinks the per-neighbour gather by (lmax+1)² / (Lt+1)².
2. contracts the density to rotation invariants: the l=0 density, per channel and per l ≥ 1 a
   channel-mixed power spectrum ``p_i[c, l] = Σ_m A_i[c, lm] · (Σ_c' M^t_{l c c'} A_i[c', lm])``
   (three-body), and with ``correlation: 3`` the bispectrum (four-body) invariants
   ``b_i[c, l1 l2 l3] = Σ_{m1 m2 m3} C^{l1 l2 l3}_{m1 m2 m3} A_i[c, l1m1] A_i[c, l2m2] (A_i M^t)[c, l3m3]``
   for every even ``l1 + l2 + l3`` (odd sums are pseudoscalars: they would break inversion
   invariance), the scalar part of MACE's correlation-3 product;
3. updates ``h_i ← h_i + MLP([h_i, A_i[:, 00], p_i, b_i])``.

All operations are batched over edges and atoms, so the same code runs on CPU and GPU. Edges are
laid out per receiving atom on a padded ``[N, K, ·]`` grid (K = largest neighbour count; see
:class:`PaddedEdges`), so that step 1 is one batched matrix product per l,
``A_i[l] = Y_l(i)ᵀ · (R_l ⊙ u · W h)(i)`` with ``[2l+1, K] @ [K, C]`` per atom: the
``[E, (lmax+1)², C]`` per-edge messages are never formed and no scatter is needed (several times
faster and far less memory than multiplying the messages out and summing them with
``index_add``; the same sums up to rounding; empty slots hold exact zeros). Where padding would
waste too much (a few atoms with many more neighbours than the rest) the layers use that
``index_add`` scatter instead (:meth:`InteractionLayer.forward`).

Features are exactly invariant to rotations, inversion, translations and permutations of like
atoms. The last density is returned too: its l=1 part is a set of polar vectors per atom, from
which the tensor heads build their λ-bases for free, and its l ≥ 2 blocks are extra λ-tensors for
those bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlip.model.radial import BesselBasis, PolynomialEnvelope
from mlip.model.spherical import clebsch_gordan, spherical_harmonics


class NormalisedSiLU(nn.Module):
    """SiLU scaled to unit second moment for unit-normal inputs (keeps activations O(1) with depth)."""

    factor = 1.6790  # 1 / sqrt(E[silu(x)²]) for x ~ N(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.factor


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


def bispectrum_paths(lmax: int) -> list[tuple[int, int, int]]:
    """Even couplings ``(l1, l2, l3)``, ``1 ≤ l1 ≤ l2 ≤ l3 ≤ lmax``, triangle rule, ``l1+l2+l3`` even.

    One path per unordered triple (the mixed copy sits on ``l3``): 2 at lmax 2, 4 at lmax 3.
    """
    return [
        (l1, l2, l3)
        for l3 in range(1, lmax + 1)
        for l2 in range(1, l3 + 1)
        for l1 in range(1, l2 + 1)
        if l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0
    ]


class AngularInvariants(nn.Module):
    """Invariants of a density ``A`` ``[N, (L+1)², C]``: list of ``[N, C]`` and ``[N, C_b]`` blocks.

    The l=0 block, the channel-mixed power spectrum ``p[c, l]`` (l = 1..L) and, for
    ``correlation ≥ 3``, the even bispectrum ``b[c, path]`` (see the module docstring) of the first
    ``C_b = bispectrum_channels`` channels (all by default): the four-body invariants cost far more
    per channel than the power spectrum, and the channels are learned anyway, so the network can
    route what needs four-body resolution into those channels.

    The bispectrum is evaluated for all paths at once from the non-zero Clebsch–Gordan entries
    (98 at L = 3): select the three factors of every entry (products with one-hot matrices),
    multiply, and sum the entries of each path with one matrix product. Far fewer (and smaller)
    kernels than a dense contraction per path, which matters most in training, where forces need
    the second derivative.
    """

    def __init__(
        self, channels: int, lmax: int, correlation: int = 2, bispectrum_channels: int | None = None
    ) -> None:
        super().__init__()
        self.lmax = lmax
        self.channels = channels
        self.bispectrum_channels = min(bispectrum_channels or channels, channels)
        eye = torch.eye(channels).expand(lmax, channels, channels).clone()
        self.mix = nn.Parameter(eye + 0.1 * torch.randn(lmax, channels, channels) / channels**0.5)
        self.paths = bispectrum_paths(lmax) if correlation >= 3 else []
        first, second, third, path_of, weight = [], [], [], [], []
        for k, (l1, l2, l3) in enumerate(self.paths):
            cg = clebsch_gordan(l1, l2, l3)
            for m1, m2, m3 in torch.nonzero(cg.abs() > 1e-12).tolist():
                first.append(l1 * l1 + m1)  # index into the flattened (l, m) axis
                second.append(l2 * l2 + m2)
                third.append(l3 * l3 + m3)
                path_of.append(k)
                weight.append(float(cg[m1, m2, m3]) / (2 * l3 + 1))
        # [entries, paths]: entry weight in its path's column. Kept in float64 and cast per
        # (device, dtype) on use: a buffer would be rounded by a float32 model and stay rounded
        # after .double().
        summation = torch.zeros(len(weight), len(self.paths), dtype=torch.float64)
        summation[torch.arange(len(weight)), torch.tensor(path_of, dtype=torch.long)] = torch.tensor(
            weight, dtype=torch.float64
        )
        self._summation = summation

        # the gathers of the three factors as one-hot matrices [entries, (L+1)²] (first and second
        # stacked): a matrix product selects exactly, and its gradient is a matrix product too, far
        # cheaper on CPU than index_select's index_add along the (l, m) axis
        def one_hot(rows: list[int]) -> torch.Tensor:
            return nn.functional.one_hot(torch.tensor(rows, dtype=torch.long), (lmax + 1) ** 2).double()

        self._select_plain = one_hot(first + second)
        self._select_mixed = one_hot(third)
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @property
    def width(self) -> int:
        """Number of invariant features per atom."""
        return self.channels * (1 + self.lmax) + self.bispectrum_channels * len(self.paths)

    def forward(self, density: torch.Tensor) -> list[torch.Tensor]:
        """List of ``[N, C]`` invariants: A_00, p_1..p_L, then the bispectrum paths."""
        blocks = [density[:, l * l : (l + 1) * (l + 1), :] for l in range(self.lmax + 1)]  # [N, 2l+1, C]
        mixed = [blocks[0]] + [blocks[l] @ self.mix[l - 1] for l in range(1, self.lmax + 1)]
        out = [blocks[0][:, 0, :]]
        for l in range(1, self.lmax + 1):
            out.append((blocks[l] * mixed[l]).sum(dim=1) / (2 * l + 1))
        if self.paths:
            key = (density.device, density.dtype)
            if key not in self._cast:
                self._cast[key] = tuple(
                    t.to(device=density.device, dtype=density.dtype)
                    for t in (self._summation, self._select_plain, self._select_mixed)
                )
            summation, select_plain, select_mixed = self._cast[key]
            cb = self.bispectrum_channels
            plain = density[..., :cb]
            mixed_all = torch.cat(mixed, dim=1)[..., :cb]  # [N, (L+1)², C_b]
            first, second = torch.matmul(select_plain, plain).chunk(2, dim=1)  # [N, entries, C_b] each
            product = first * second * torch.matmul(select_mixed, mixed_all)  # [N, entries, C_b]
            out.extend(torch.matmul(summation.T, product).unbind(1))  # paths, each [N, C_b]
        return out


TRANSPORT_RADIAL_FORMS = ("mlp", "shared", "linear")


def gather_rows(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]`` for an integer ``index`` of any shape: ``[*index.shape, *source.shape[1:]]``.

    The same values as advanced indexing, through ``index_select``, whose gradient is an
    ``index_add``; advanced indexing's gradient is an accumulating ``index_put``, which on CPU is
    several times slower and dominated the density messages' cost (profiled: 38 % of an energy +
    forces call).
    """
    return source.index_select(0, index.reshape(-1)).unflatten(0, tuple(index.shape))


def per_m(values: torch.Tensor, lmax: int, dim: int) -> torch.Tensor:
    """Repeat each l-entry of ``values`` (``lmax + 1`` along ``dim``) 2l+1 times: ``(lmax+1)²`` along
    ``dim``, ordered as the (l, m) axis of the densities. Slices and broadcasts, so its gradient is
    a plain sum (an integer index would need an accumulating ``index_put``)."""
    dim = dim % values.dim()
    blocks = []
    for l in range(lmax + 1):
        block = values.narrow(dim, l, 1)
        shape = list(block.shape)
        shape[dim] = 2 * l + 1
        blocks.append(block.expand(shape))
    return torch.cat(blocks, dim=dim)


def per_l_linear(blocks: torch.Tensor, weights: torch.Tensor, first_l: int = 0) -> list[torch.Tensor]:
    """Channel mixing per angular momentum: ``[..., (L+1)², C_in]`` with ``weights[l - first_l]``
    ``[C_in, C_out]`` → one ``[..., 2l+1, C_out]`` block per l = first_l .. first_l + len(weights) − 1.

    The same matrix acts on every m of an l, so the blocks stay l-tensors (equivariant).
    """
    return [
        blocks[..., l * l : (l + 1) * (l + 1), :] @ weights[l - first_l]
        for l in range(first_l, first_l + weights.shape[0])
    ]


class BondProjection(nn.Module):
    """Bond projections ``s_ij[c', l] = Σ_m (A_j P_l)[c', lm] Y_lm(r̂_ij) / √(2l+1)``, l = 1..L.

    ``A_j`` is the previous layer's density of the neighbour j, ``P_l`` a learned channel
    compression ``C → C'``; the output is ``[..., L · C']`` per edge (padded layout ``[N, K, ·]``).
    """

    def __init__(self, channels: int, lmax: int, bond_channels: int) -> None:
        super().__init__()
        self.lmax = lmax
        self.compress = nn.Parameter(torch.randn(lmax, channels, bond_channels) / channels**0.5)

    def compressed(self, density: torch.Tensor) -> list[torch.Tensor]:
        """Per atom and l ≥ 1: ``(A P_l)`` ``[N, 2l+1, C']``."""
        return per_l_linear(density, self.compress, first_l=1)

    def padded(self, density: torch.Tensor, layout: PaddedEdges) -> torch.Tensor:
        """``[N, K, L·C']`` on the padded layout (zeros in empty slots: their Y are zero)."""
        out = []
        for l, block in enumerate(self.compressed(density), start=1):
            neighbour = gather_rows(block, layout.senders)  # [N, K, 2l+1, C']
            sh = layout.sh_blocks[l].transpose(1, 2)  # [N, K, 2l+1]
            out.append((neighbour * sh.unsqueeze(-1)).sum(dim=2) / (2 * l + 1) ** 0.5)
        return torch.cat(out, dim=-1)

    def per_edge(self, density: torch.Tensor, edge_sh: torch.Tensor, senders: torch.Tensor) -> torch.Tensor:
        """``[E, L·C']`` for the scatter path (``edge_sh`` ``[E, (L+1)²]``)."""
        out = []
        for l, block in enumerate(self.compressed(density), start=1):
            sh = edge_sh[:, l * l : (l + 1) * (l + 1)]
            out.append((gather_rows(block, senders) * sh.unsqueeze(-1)).sum(dim=1) / (2 * l + 1) ** 0.5)
        return torch.cat(out, dim=-1)


class InteractionLayer(nn.Module):
    """One message-passing layer; see the module docstring. Shapes: h ``[N, C]``.

    Args:
        channels: feature width C.
        lmax: highest l of the density.
        num_radial: radial inputs per edge (Bessel functions, plus element-pair embeddings if any).
        radial_hidden: width of the radial MLP.
        correlation: 2 (power spectrum) or 3 (+ bispectrum invariants).
        bispectrum_channels: channels that get the bispectrum (None: all).
        bond_channels: channels C' of the bond projections of the previous density (0: none; the
            first layer has no previous density).
        linear_update: add a linear path ``W x`` next to the update MLP.
        update_mlp: False makes the update linear in ``x`` (no MLP).
        element_update: S > 0 adds a linear path with one weight matrix per element of the
            receiving atom, ``W_{z_i} x`` (S elements): as MACE's product-basis weights depend on the
            receiving element, each element gets its own linear function of the invariants.
        density_messages: D > 0 adds the first D channels of the neighbours' previous densities to
            the density, transported as l-tensors (see the module docstring; the first layer has
            no previous density).
        density_message_radial: how the transport's radial functions R'_ld(r) are made: ``linear``
            (a linear map of the radial inputs; the training config's default, the most accurate
            on small sets), ``mlp`` (a second output block of the radial MLP; the default here so
            that model files written before the option existed load as they were) or ``shared``
            (the bond part's R_l of the first D channels).
        density_message_lmax: transport only the blocks l ≤ this of the neighbours' densities
            (None: all, up to ``lmax``); the gather and product per neighbour shrink from
            (lmax+1)² to (density_message_lmax+1)² components.
    """

    def __init__(
        self,
        channels: int,
        lmax: int,
        num_radial: int,
        radial_hidden: int,
        correlation: int = 2,
        bond_channels: int = 0,
        bispectrum_channels: int | None = None,
        linear_update: bool = False,
        update_mlp: bool = True,
        element_update: int = 0,
        density_messages: int = 0,
        density_message_radial: str = "mlp",
        density_message_lmax: int | None = None,
    ) -> None:
        super().__init__()
        if density_message_radial not in TRANSPORT_RADIAL_FORMS:
            raise ValueError(f"density_message_radial must be one of {TRANSPORT_RADIAL_FORMS}")
        if density_message_lmax is not None and not 0 <= density_message_lmax <= lmax:
            raise ValueError(f"density_message_lmax must be in [0, lmax={lmax}], got {density_message_lmax}")
        self.channels = channels
        self.lmax = lmax
        self.bond = BondProjection(channels, lmax, bond_channels) if bond_channels > 0 and lmax > 0 else None
        radial_in = num_radial + (lmax * bond_channels if self.bond is not None else 0)
        # radial functions R_l (bond part, C channels) and R'_l (transport part, D channels)
        self.transported = min(int(density_messages), channels)  # D ≤ C
        self.transport_radial_form = density_message_radial
        self.transport_lmax = lmax if density_message_lmax is None else int(density_message_lmax)
        transport_ls = self.transport_lmax + 1  # l = 0 .. transport_lmax
        extra = transport_ls * self.transported if density_message_radial == "mlp" else 0
        self.radial = mlp([radial_in, radial_hidden, radial_hidden, (lmax + 1) * channels + extra])
        self.transport_radial: nn.Linear | None = None
        if self.transported > 0 and density_message_radial == "linear":
            self.transport_radial = nn.Linear(radial_in, transport_ls * self.transported, bias=False)
            nn.init.normal_(self.transport_radial.weight, std=radial_in**-0.5)
        # per-l channel mixing T_l (D → C) of the transported densities, after the sum (unit scale)
        self.transport: nn.Parameter | None = None
        if self.transported > 0:
            d = self.transported
            self.transport = nn.Parameter(torch.randn(transport_ls, d, channels) / d**0.5)
        self.neighbour_linear = nn.Linear(channels, channels, bias=False)
        nn.init.normal_(self.neighbour_linear.weight, std=channels**-0.5)
        self.invariants = AngularInvariants(channels, lmax, correlation, bispectrum_channels)
        # update_mlp=False: the update is linear in [h, invariants] (the invariants are polynomials
        # of the density, so h stays a body-ordered polynomial feature, as in MACE's interactions)
        update_in = channels + self.invariants.width
        self.update = mlp([update_in, channels, channels] if update_mlp else [update_in, channels])
        with torch.no_grad():  # start close to the identity map: small residual updates
            self.update[-1].weight.mul_(0.2)
        # optional linear path from [h, invariants] next to the MLP: the invariants are polynomials
        # of the density, and a linear path keeps their growth outside the trained range (SiLU
        # networks continue roughly linearly in their pre-activations, MACE's features are products)
        self.update_linear: nn.Linear | None = None
        if linear_update:
            self.update_linear = nn.Linear(channels + self.invariants.width, channels, bias=False)
            nn.init.normal_(self.update_linear.weight, std=0.1 * (channels + self.invariants.width) ** -0.5)
        # optional per-element linear path: x @ W[:, s] for every element s, the receiver's one kept
        self.element_linear: nn.Parameter | None = None
        if element_update > 0:
            self.element_linear = nn.Parameter(
                torch.randn(update_in, element_update * channels) * (0.1 * update_in**-0.5)
            )
        self._register_load_state_dict_pre_hook(self._rename_old_keys)

    @staticmethod
    def _rename_old_keys(state_dict: dict, prefix: str, *args) -> None:
        """Model files of mlip ≤ 0.1 kept the channel mixing as ``<layer>.mix``."""
        if prefix + "mix" in state_dict:
            state_dict[prefix + "invariants.mix"] = state_dict.pop(prefix + "mix")

    def forward(
        self,
        h: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        receivers: torch.Tensor,
        senders: torch.Tensor,
        inv_avg_neighbours: float,
        edge_envelope: torch.Tensor | None = None,
        previous_density: torch.Tensor | None = None,
        species: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-edge messages summed with ``index_add``; returns the updated features ``[N, C]`` and
        the density ``A`` ``[N, (lmax+1)², C]``. (:meth:`forward_padded` computes the same.)
        ``species`` ``[N]`` (element indices) is needed by the per-element update path only.

        ``edge_envelope`` ``[E]`` multiplies the radial MLP's output: the MLP has biases, so
        MLP(0) ≠ 0 and only this makes the messages (and the energy) vanish smoothly at r_c.
        ``previous_density`` feeds the bond projections (when the layer has them).
        """
        n_atoms, c = h.shape[0], self.channels
        radial_in = edge_radial
        if self.bond is not None and previous_density is not None:
            radial_in = torch.cat([edge_radial, self.bond.per_edge(previous_density, edge_sh, senders)], -1)
        all_weights = self.radial(radial_in)
        weights = all_weights[:, : (self.lmax + 1) * c].view(-1, self.lmax + 1, c)  # [E, L+1, C]
        hj = gather_rows(self.neighbour_linear(h), senders)  # [E, C]
        if edge_envelope is not None:  # applied to the [E, C] factor: cheaper than to [E, L+1, C]
            hj = hj * edge_envelope.unsqueeze(-1)
        weights = weights * hj.unsqueeze(1)  # [E, L+1, C]: R_l(r_ij) · u(r_ij) · (W h_j)
        messages = per_m(weights, self.lmax, dim=1) * edge_sh.unsqueeze(-1)  # [E, (L+1)², C]
        density = torch.zeros(n_atoms, messages.shape[1], c, dtype=h.dtype, device=h.device)
        density = density.index_add(0, receivers, messages)
        if self.transported > 0 and previous_density is not None:
            transport = self._transport_radial(radial_in, all_weights)  # [E, Lt+1, D]
            if edge_envelope is not None:  # R'_l(r_ij) · u(r_ij), [E, Lt+1, D]
                transport = transport * edge_envelope.view(-1, 1, 1)
            lm = (self.transport_lmax + 1) ** 2
            neighbours = gather_rows(previous_density[:, :lm, : self.transported], senders)  # [E, (Lt+1)², D]
            moved = neighbours * per_m(transport, self.transport_lmax, dim=1)
            summed = moved.new_zeros(n_atoms, lm, self.transported).index_add(0, receivers, moved)
            density = density + self._mixed(summed)  # mixed once per atom, after the sum
        density = density * inv_avg_neighbours
        return self._update(h, density, species), density

    def _transport_radial(self, radial_in: torch.Tensor, all_weights: torch.Tensor) -> torch.Tensor:
        """R'_ld of every edge (or padded slot), ``[..., Lt+1, D]`` (Lt = ``transport_lmax``),
        before the envelope."""
        c, d, ls = self.channels, self.transported, self.transport_lmax + 1
        if self.transport_radial_form == "mlp":
            return all_weights[..., (self.lmax + 1) * c :].unflatten(-1, (ls, d))
        if self.transport_radial_form == "shared":
            return all_weights[..., : (self.lmax + 1) * c].unflatten(-1, (self.lmax + 1, c))[..., :ls, :d]
        assert self.transport_radial is not None
        return self.transport_radial(radial_in).unflatten(-1, (ls, d))

    def _mixed(self, blocks: torch.Tensor) -> torch.Tensor:
        """Per-l channel mixing ``[..., (Lt+1)², D] → [..., (L+1)², C]`` by ``T_l`` (transport part);
        the blocks above Lt = ``transport_lmax`` are zero."""
        assert self.transport is not None
        mixed = torch.cat(per_l_linear(blocks, self.transport), dim=-2)
        missing = (self.lmax + 1) ** 2 - mixed.shape[-2]
        return nn.functional.pad(mixed, (0, 0, 0, missing)) if missing else mixed

    def forward_padded(
        self,
        h: torch.Tensor,
        layout: PaddedEdges,
        inv_avg_neighbours: float,
        previous_density: torch.Tensor | None = None,
        species: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`forward`, on the padded layout: per atom and l, ``[2l+1, K] @ [K, C]``."""
        n_atoms, k, c = layout.num_atoms, layout.max_neighbours, self.channels
        radial_in = layout.radial
        if self.bond is not None and previous_density is not None:
            radial_in = torch.cat([layout.radial, self.bond.padded(previous_density, layout)], dim=-1)
        all_weights = self.radial(radial_in)
        weights = all_weights[..., : (self.lmax + 1) * c].view(n_atoms, k, self.lmax + 1, c)  # R_l per slot
        hj = gather_rows(self.neighbour_linear(h), layout.senders)  # [N, K, C]
        hj = hj * layout.envelope.unsqueeze(-1)
        blocks = [torch.bmm(layout.sh_blocks[l], radial * hj) for l, radial in enumerate(weights.unbind(2))]
        density = torch.cat(blocks, dim=1)  # [N, (L+1)², C]
        if self.transported > 0 and previous_density is not None:
            # R'_l · u per slot, [N, K, Lt+1, D]; empty slots: envelope 0 (their sender 0 is a real atom)
            transport = self._transport_radial(radial_in, all_weights)  # [N, K, Lt+1, D]
            transport = transport * layout.envelope.view(n_atoms, k, 1, 1)
            # per l: Σ_k R'_l(slot k) · A_k[l] [N, 2l+1, D] (the radial broadcast over m); gathered per
            # l-block, since the gradient of a slice of the gathered [N, K, (Lt+1)², D] would be a
            # zero-filled tensor of that size per l
            summed = []
            for l in range(self.transport_lmax + 1):
                block = previous_density[:, l * l : (l + 1) ** 2, : self.transported]  # [N, 2l+1, D]
                summed.append((gather_rows(block, layout.senders) * transport[:, :, l : l + 1, :]).sum(dim=1))
            density = density + self._mixed(torch.cat(summed, dim=1))
        density = density * inv_avg_neighbours
        return self._update(h, density, species), density

    def _update(
        self, h: torch.Tensor, density: torch.Tensor, species: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``h + MLP(x)`` (``+ W x`` with ``linear_update``, ``+ W_{z_i} x`` with ``element_update``),
        ``x = [h, A_00, p_1 .. p_L, b_paths]``."""
        x = torch.cat([h, *self.invariants(density)], dim=-1)
        out = h + self.update(x)
        if self.update_linear is not None:
            out = out + self.update_linear(x)
        if self.element_linear is not None:
            if species is None:
                raise ValueError("InteractionLayer: element_update needs the atoms' species")
            per_element = (x @ self.element_linear).view(x.shape[0], -1, self.channels)  # [N, S, C]
            out = out + per_element.gather(1, species.view(-1, 1, 1).expand(-1, 1, self.channels)).squeeze(1)
        return out


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
        correlation: 2 = power-spectrum invariants (three-body per layer); 3 = also the even
            bispectrum (four-body per layer).
        bond_channels: channels of the bond projections fed to layers ≥ 2 (0 = off).
        bispectrum_channels: channels with bispectrum invariants (None: all).
        radial_species: width of learned element embeddings of the receiving and of the sending
            atom, appended to every layer's radial-MLP input, so that R(r) can differ between
            element pairs (C–O vs O–H) rather than only through the sender's channels (0 = off).
        linear_update, update_mlp: see :class:`InteractionLayer`.
        element_update: add each layer's per-element linear update path (:class:`InteractionLayer`).
        density_messages: D > 0: layers ≥ 2 also receive the first D channels of the neighbours'
            previous densities, transported as l-tensors (:class:`InteractionLayer`).
        density_message_radial: the transport's radial functions (:class:`InteractionLayer`).
        density_message_lmax: highest l of the transported blocks (None: lmax; :class:`InteractionLayer`).

    Attribute ``allow_padding`` (default True) lets :meth:`forward` take the padded path where it
    wastes little; False always takes the scatter path (what :mod:`mlip.model.export` uses).
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
        correlation: int = 2,
        bond_channels: int = 0,
        bispectrum_channels: int | None = None,
        linear_update: bool = False,
        update_mlp: bool = True,
        radial_species: int = 0,
        element_update: bool = False,
        density_messages: int = 0,
        density_message_radial: str = "mlp",
        density_message_lmax: int | None = None,
    ) -> None:
        super().__init__()
        self.lmax = lmax
        self.channels = channels
        self.embedding = nn.Embedding(num_species, channels)
        self.radial_basis = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialEnvelope(cutoff)
        # element pair → radial input: [Bessel(r)·u(r), e_recv(z_i), e_send(z_j)] (unit-normal start)
        self.radial_species: nn.ModuleList | None = None
        if radial_species > 0:
            self.radial_species = nn.ModuleList(nn.Embedding(num_species, radial_species) for _ in range(2))
        self.layers = nn.ModuleList(
            InteractionLayer(
                channels,
                lmax,
                num_radial + 2 * radial_species,
                radial_hidden,
                correlation,
                bond_channels if t > 0 else 0,
                bispectrum_channels,
                linear_update,
                update_mlp,
                num_species if element_update else 0,
                int(density_messages) if t > 0 else 0,
                density_message_radial,
                density_message_lmax,
            )
            for t in range(num_layers)
        )
        self.inv_avg_neighbours = 1.0 / max(float(avg_num_neighbours), 1e-3)
        # False forces the scatter path (no data-dependent shapes: what torch.export needs);
        # True (default) pads where that wastes little (faster eager inference and training).
        self.allow_padding = True

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
        if self.radial_species is not None:
            receiver_embedding, sender_embedding = self.radial_species
            edge_radial = torch.cat(
                [edge_radial, receiver_embedding(species[receivers]), sender_embedding(species[senders])], -1
            )
        h = self.embedding(species)
        layout = None
        if self.allow_padding:
            n_atoms = h.shape[0]
            layout = PaddedEdges.build(receivers, senders, n_atoms, edge_sh, edge_radial, envelope, self.lmax)
        features = []
        density = None
        for layer in self.layers:
            if layout is not None:
                h, density = layer.forward_padded(h, layout, self.inv_avg_neighbours, density, species)
            else:
                h, density = layer(
                    h,
                    edge_sh,
                    edge_radial,
                    receivers,
                    senders,
                    self.inv_avg_neighbours,
                    envelope,
                    density,
                    species,
                )
            features.append(h)
        if density is None:
            density = h.new_zeros(h.shape[0], (self.lmax + 1) ** 2, self.channels)
        return features, density
