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

Fused evaluation. Evaluated block by block, the heads cost a few hundred small tensor operations,
which on small systems is a large fraction of a whole energy + forces call. Where every basis element
is a polynomial of degree ≤ 2 in the vectors (dipoles, polarizabilities, any rank-2 tensor: λ ≤ 2
proper tensors and the λ=1 pseudovector; not the λ=0 and λ=2 pseudotensors or λ ≥ 3), all targets
are evaluated at once instead (:class:`FusedPlan`): each basis element is a fixed quadratic form of
``u = (1, v_1, ..., v_Q)``, so all of them are one matrix product of ``u ⊗ u``; the coefficient
networks run as one network (concatenated first layers, block-diagonal second layers: the same
function and the same parameters); the density elements, scales, shifts and the spherical →
Cartesian conversion are single products too. The result equals the block-wise evaluation to
rounding (tests/model/test_tensor_heads_fused.py); other models use the block-wise path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlip.model.backbone import mlp
from mlip.model.cartesian import spherical_to_rank2, spherical_to_vector
from mlip.model.tensor_basis import LambdaBasis
from mlip.targets import TargetSpec


def _key(lam: int, sig: int) -> str:
    return f"l{lam}_{'p' if sig > 0 else 'm'}"


def _term_degree(lam: int, term) -> int:  # noqa: ANN001 - a tensor_basis.BasisTerm
    """Polynomial degree in the vectors of the elements of one basis family."""
    return {"const": 0, "single": lam, "cross": 2, "triple": 3}.get(term.kind, term.l1 + term.l2)


@dataclass
class FusedPlan:
    """Constants of the fused evaluation (float64 masters on the CPU; see the module docstring).

    Slots are the (target, block) pairs in the order of ``TensorHeads.coefficients``; ``K`` is the
    total number of coefficients (every slot's basis and density elements), ``M`` the total number of
    spherical components (every target's blocks, concatenated).

    Attributes:
        quadratic: ``[U², K·M]``, ``U = 1 + 3Q``: basis element k of slot s, component m, is
            ``(u ⊗ u) @ quadratic[:, k·M + col(s, m)]`` (zero outside the slot's own block).
        extra_coefficients: ``[K_e]`` positions in the K coefficients of the density elements.
        extra_rows: ``[M_e]`` density rows (index into ``(lmax+1)²``) of each density-element component.
        extra_slot: ``[M_e]`` which density-element slot (0..S_e−1) each of those components belongs to.
        extra_columns: ``[M_e]`` their output columns (0..M−1).
        extra_keys: the ``density_projections`` key of each density-element slot.
        column_target: ``[M]`` target index of each column; ``column_lambda0``: ``[M]`` 1.0 at the
            λ=0 (σ=+1) column of each target, else 0.
        cartesian: per target, ``(first column, last column + 1, [m_t, d_t] map or None, output shape)``.
    """

    quadratic: torch.Tensor
    extra_coefficients: torch.Tensor
    extra_rows: torch.Tensor
    extra_slot: torch.Tensor
    extra_columns: torch.Tensor
    extra_keys: list[str]
    column_target: torch.Tensor
    column_lambda0: torch.Tensor
    cartesian: list[tuple[int, int, torch.Tensor | None, tuple[int, ...]]]
    num_coefficients: int
    num_columns: int


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
        upper = torch.triu_indices(num_vectors, num_vectors)  # the Gram matrix's upper triangle, flattened
        self.register_buffer("_gram_flat", upper[0] * num_vectors + upper[1], persistent=False)
        # density rows of l=1 in Cartesian order: spherical (y, z, x) → (x, y, z)
        self.register_buffer("_l1_rows", torch.tensor([3, 1, 2]), persistent=False)
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
        self.fused = True  # use the fused evaluation where the plan exists (False: block by block)
        self._plan = self._build_plan()
        self._constants: dict = {}  # (dtype, device) → the plan's constants there
        self._weights: tuple | None = None  # inference cache of the fused weights (see _fused_weights)

    # ------------------------------------------------------------------ fused evaluation: set-up
    def _quadratic_form(self, basis: LambdaBasis) -> torch.Tensor | None:
        """``[U, U, K, 2λ+1]`` float64 with ``basis(v) = Σ_ij u_i u_j M[i, j]``, ``u = (1, v)``, or None
        where the basis is not a polynomial of degree ≤ 2 (checked on random vectors)."""
        if any(_term_degree(basis.lam, t) > 2 for t in basis.terms):
            return None
        q = self.num_vectors
        d = 3 * q
        eye = torch.eye(d, dtype=torch.float64)
        pairs = torch.triu_indices(d, d, offset=1)
        probes = torch.cat([torch.zeros(1, d, dtype=torch.float64), eye, -eye, eye[pairs[0]] + eye[pairs[1]]])
        with torch.no_grad():
            f = basis(probes.view(-1, q, 3))  # [P, K, m]
        c, plus, minus, both = f[0], f[1 : 1 + d], f[1 + d : 1 + 2 * d], f[1 + 2 * d :]
        linear = (plus - minus) / 2
        diagonal = (plus + minus) / 2 - c
        off = (both - c - linear[pairs[0]] - linear[pairs[1]] - diagonal[pairs[0]] - diagonal[pairs[1]]) / 2
        form = torch.zeros(d + 1, d + 1, *c.shape, dtype=torch.float64)
        form[0, 0] = c
        form[0, 1:] = form[1:, 0] = linear / 2
        form[1 + torch.arange(d), 1 + torch.arange(d)] = diagonal
        form[1 + pairs[0], 1 + pairs[1]] = off
        form[1 + pairs[1], 1 + pairs[0]] = off
        # the construction is exact for quadratics: a random check guards the degree bookkeeping
        v = torch.randn(5, q, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        u = torch.cat([torch.ones(5, 1, dtype=torch.float64), v.reshape(5, d)], dim=1)
        with torch.no_grad():
            ref = basis(v)
        got = torch.einsum("ni,nj,ijkm->nkm", u, u, form)
        if not torch.allclose(got, ref, rtol=1e-10, atol=1e-10):
            return None
        return form

    def _build_plan(self) -> FusedPlan | None:
        """The fused evaluation's constants, or None where it does not apply (a basis of degree > 2,
        coefficient networks of another shape)."""
        forms = {}
        for key, basis in self.bases.items():
            form = self._quadratic_form(basis)
            if form is None:
                return None
            forms[key] = form
        for net in self.coefficients.values():
            if not (len(net) == 3 and isinstance(net[0], nn.Linear) and isinstance(net[2], nn.Linear)):
                return None
            if net[0].bias is None or net[2].bias is None or type(net[1]) is not type(self._first_net()[1]):
                return None
        slots = []  # (basis key, first coefficient, first column, λ) of each (target, block)
        k_total = m_total = 0
        cartesian = []
        column_target, column_lambda0 = [], []
        for t, spec in enumerate(self.specs):
            first_column = m_total
            for lam, sig in spec.irreps:
                key = _key(lam, sig)
                slots.append((key, k_total, m_total, lam))
                k_total += self.coefficients[f"{spec.name}__{key}"][2].out_features
                m_total += 2 * lam + 1
                column_target += [t] * (2 * lam + 1)
                column_lambda0 += [1.0 if (lam, sig) == (0, 1) else 0.0] + [0.0] * (2 * lam)
            width = m_total - first_column
            identity = torch.eye(width, dtype=torch.float64)
            converted = self._to_output(spec, identity)
            shape = tuple(converted.shape[1:])
            matrix = None if spec.kind == "spherical" else converted.reshape(width, -1)
            cartesian.append((first_column, m_total, matrix, shape))
        u = 1 + 3 * self.num_vectors
        quadratic = torch.zeros(u, u, k_total, m_total, dtype=torch.float64)
        extra_coefficients, extra_rows, extra_slot, extra_columns, extra_keys = [], [], [], [], []
        for key, k0, m0, lam in slots:
            form = forms[key]
            n_basis, width = form.shape[2], form.shape[3]
            quadratic[:, :, k0 : k0 + n_basis, m0 : m0 + width] = form
            if key in self.density_projections:
                n_extra = self.density_projections[key].out_features
                extra_coefficients += range(k0 + n_basis, k0 + n_basis + n_extra)
                extra_rows += range(lam * lam, (lam + 1) * (lam + 1))
                extra_slot += [len(extra_keys)] * width
                extra_columns += range(m0, m0 + width)
                extra_keys.append(key)
        return FusedPlan(
            quadratic=quadratic.reshape(u * u, k_total * m_total),
            extra_coefficients=torch.tensor(extra_coefficients, dtype=torch.long),
            extra_rows=torch.tensor(extra_rows, dtype=torch.long),
            extra_slot=torch.tensor(extra_slot, dtype=torch.long),
            extra_columns=torch.tensor(extra_columns, dtype=torch.long),
            extra_keys=extra_keys,
            column_target=torch.tensor(column_target, dtype=torch.long),
            column_lambda0=torch.tensor(column_lambda0, dtype=torch.float64),
            cartesian=cartesian,
            num_coefficients=k_total,
            num_columns=m_total,
        )

    def _first_net(self) -> nn.Sequential:
        return next(iter(self.coefficients.values()))

    # ------------------------------------------------------------------ fused evaluation: per call
    def _plan_constants(self, dtype: torch.dtype, device: torch.device) -> dict:
        """The plan's tensors in ``dtype`` on ``device`` (made once per dtype and device)."""
        key = (dtype, device)
        if key not in self._constants:
            plan = self._plan
            self._constants[key] = {
                "quadratic": plan.quadratic.to(device=device, dtype=dtype),
                "extra_coefficients": plan.extra_coefficients.to(device),
                "extra_rows": plan.extra_rows.to(device),
                "extra_slot": plan.extra_slot.to(device),
                "extra_columns": plan.extra_columns.to(device),
                "column_target": plan.column_target.to(device),
                "column_lambda0": plan.column_lambda0.to(device=device, dtype=dtype),
                "cartesian": [
                    (a, b, None if m is None else m.to(device=device, dtype=dtype), shape)
                    for a, b, m, shape in plan.cartesian
                ],
            }
        return self._constants[key]

    def _assemble_weights(self, constants: dict) -> tuple:
        nets = list(self.coefficients.values())
        first_w = torch.cat([net[0].weight for net in nets])
        first_b = torch.cat([net[0].bias for net in nets])
        second_w = torch.block_diag(*[net[2].weight for net in nets])
        second_b = torch.cat([net[2].bias for net in nets])
        extra_w = None
        if self._plan.extra_keys:
            extra_w = torch.block_diag(*[self.density_projections[k].weight for k in self._plan.extra_keys])
        target = constants["column_target"]
        scale = self.scales[target]
        shift = self.shifts[target] * constants["column_lambda0"]
        return first_w, first_b, second_w, second_b, extra_w, scale, shift

    def _fused_weights(self, constants: dict) -> tuple:
        """The concatenated / block-diagonal weights, and per-column scales and shifts.

        Built from the parameters on every call while autograd records (training: gradients reach the
        original parameters); otherwise cached until a parameter or buffer changes (in-place updates,
        ``load_state_dict``) or the dtype or device does.
        """
        if torch.is_grad_enabled():
            self._weights = None
            return self._assemble_weights(constants)
        tensors = [*self.parameters(), self.scales, self.shifts]
        try:
            stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        except RuntimeError:  # inference tensors (made under torch.inference_mode) have no version
            return self._assemble_weights(constants)
        if self._weights is None or self._weights[0] != stamp:
            self._weights = (stamp, self._assemble_weights(constants))
        return self._weights[1]

    def _forward_fused(
        self, features: list[torch.Tensor], density: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> dict[str, torch.Tensor]:
        constants = self._plan_constants(density.dtype, density.device)
        first_w, first_b, second_w, second_b, extra_w, scale, shift = self._fused_weights(constants)
        plan = self._plan
        vectors = self.vectors(density)  # [N, Q, 3]
        n = vectors.shape[0]
        u = torch.cat([vectors.new_ones(n, 1), vectors.reshape(n, -1)], dim=1)  # [N, U]
        bases = (u.unsqueeze(2) * u.unsqueeze(1)).reshape(n, -1) @ constants["quadratic"]
        invariants = torch.cat([features[-1], self.gram(vectors)], dim=-1)
        hidden = self._first_net()[1](F.linear(invariants, first_w, first_b))
        coefficients = F.linear(hidden, second_w, second_b)  # [N, K]
        atomic = torch.bmm(
            coefficients.unsqueeze(1), bases.view(n, plan.num_coefficients, plan.num_columns)
        ).squeeze(1)  # [N, M]
        if extra_w is not None:  # Σ_k α_k Σ_c U_ck A[c, m] = Σ_c (α @ U)_c A[c, m]
            z = (coefficients[:, constants["extra_coefficients"]] @ extra_w).view(n, len(plan.extra_keys), -1)
            extra = (density[:, constants["extra_rows"], :] * z[:, constants["extra_slot"], :]).sum(-1)
            atomic = atomic.index_add(1, constants["extra_columns"], extra)
        atomic = atomic * scale + shift
        summed = None
        out = {}
        for spec, (first, last, matrix, shape) in zip(self.specs, constants["cartesian"]):
            if spec.per_atom:
                value = atomic[:, first:last]
            else:
                if summed is None:
                    summed = atomic.new_zeros(num_graphs, atomic.shape[1]).index_add(0, batch, atomic)
                value = summed[:, first:last]
            if matrix is not None:
                value = (value @ matrix).view(value.shape[0], *shape)
            out[spec.name] = value
        return out

    def vectors(self, density: torch.Tensor) -> torch.Tensor:
        """Density ``[N, (lmax+1)², C]`` → learned polar vectors ``[N, Q, 3]`` (Cartesian)."""
        l1 = density[:, self._l1_rows, :] / 3**0.5  # √3·(y, z, x) → (x, y, z)
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
        return bases, self.gram(vectors)

    def gram(self, vectors: torch.Tensor) -> torch.Tensor:
        """Invariants ``v_p · v_q`` (p ≤ q) of the vectors ``[N, Q, 3]`` → ``[N, Q(Q+1)/2]``."""
        return torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)[:, self._gram_flat]

    def forward(
        self, features: list[torch.Tensor], density: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> dict[str, torch.Tensor]:
        """Predictions of every tensor target (per structure ``[G, ...]`` or per atom ``[N, ...]``).

        Args:
            features: the backbone's per-layer invariant features; the last, ``[N, C]``, is used.
            density: the backbone's last neighbour density ``[N, (lmax+1)², C]``.
            batch: ``[N]`` structure index of each atom; num_graphs: G.
        """
        if self.fused and self._plan is not None:
            return self._forward_fused(features, density, batch, num_graphs)
        return self.forward_blocks(features, density, batch, num_graphs)

    def forward_blocks(
        self, features: list[torch.Tensor], density: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` evaluated block by block (the reference for the fused evaluation)."""
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
