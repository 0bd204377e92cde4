"""Tensor targets from scalar coefficients × λ-bases (Domina, Bigi, Pegolo, Ceriotti 2025).

The backbone's last density ``A`` ``[N, (lmax+1)², C]`` supplies, for free:

* Q learned polar vectors per atom, ``v_iq = Σ_c W_cq A_i[c, l=1]`` (Cartesian), shared by every
  tensor target; a :class:`~mlip.model.tensor_basis.LambdaBasis` turns them into λ-tensors
  (solid harmonics, Clebsch–Gordan couplings, cross and triple products for pseudotensors);
* for proper λ ≤ lmax, K extra elements ``Σ_c U_ck A_i[c, λ]``: contracted λ-densities. They keep
  the basis alive where all vectors cancel by symmetry (the carbon of CO₂ or of methane);
* optionally (``density_couplings`` K' > 0), for every block with λ ≥ 1, K' Clebsch–Gordan couplings
  ``((U A_i[l1]) ⊗ (U' A_i[l2]))_λ`` per pair of density orders ``1 ≤ l1 ≤ l2 ≤ lmax`` of the block's
  parity (``l1 + l2 ≡ λ`` for proper tensors, ``≡ λ + 1`` for pseudotensors): vectors that are not
  linear in the l=1 density, such as MACE's l=1 features after its product basis (for a dipole: the
  l=1 ⊗ l=2 and l=2 ⊗ l=3 couplings).

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
are evaluated at once instead (:class:`FusedPlan`): ``u = (1, v_1, ..., v_Q)`` is one product of
the flattened l=1 density; each basis element is a fixed quadratic form of ``u``, so all of them,
already scaled and converted to Cartesian components, and the Gram invariants too, are one matrix
product of the pair products ``u_i u_j`` (i ≤ j, only the pairs some element uses); the coefficient
networks run as one network (concatenated first layers, block-diagonal second layers: the same
function and the same parameters); the density elements are two more products, and one batched
product sums coefficients × bases. About 90 tensor operations per call instead of ~500 block by
block. At inference the assembled weights are cached until a parameter changes. The result equals
the block-wise evaluation to rounding (tests/model/test_tensor_heads_fused.py); other models use the
block-wise path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlip.model.backbone import NormalisedSiLU, mlp
from mlip.model.cartesian import spherical_to_rank2, spherical_to_vector
from mlip.model.spherical import clebsch_gordan
from mlip.model.tensor_basis import LambdaBasis
from mlip.targets import TargetSpec


def _key(lam: int, sig: int) -> str:
    return f"l{lam}_{'p' if sig > 0 else 'm'}"


def _coupling_pairs(lam: int, sig: int, lmax: int) -> list[tuple[int, int]]:
    """Density orders ``(l1, l2)``, ``1 ≤ l1 ≤ l2 ≤ lmax``, whose coupling is a (λ, σ) tensor: the
    triangle rule, and the parity ``(-1)^(l1+l2)`` equal to ``σ (-1)^λ``."""
    parity = lam if sig > 0 else lam + 1
    return [
        (l1, l2)
        for l1 in range(1, lmax + 1)
        for l2 in range(l1, lmax + 1)
        if abs(l1 - l2) <= lam <= l1 + l2 and (l1 + l2 - parity) % 2 == 0
    ]


def _term_degree(lam: int, term) -> int:  # noqa: ANN001 - a tensor_basis.BasisTerm
    """Polynomial degree in the vectors of the elements of one basis family."""
    return {"const": 0, "single": lam, "cross": 2, "triple": 3}.get(term.kind, term.l1 + term.l2)


@dataclass
class FusedPlan:
    """Constants of the fused evaluation (float64 masters on the CPU; see the module docstring).

    Slots are the (target, block) pairs in the order of ``TensorHeads.coefficients``; ``K`` is the
    total number of coefficients (every slot's basis and density elements), ``M`` the total number of
    spherical components (every target's blocks, concatenated) and ``O`` the total number of output
    components (every target's Cartesian components, flattened, concatenated). The vectors enter as
    ``u = (1, P)``, ``P[a, q] = Σ_c A[c, l=1 row a] W[q, c] / √3`` flattened a-major (rows in the
    density's spherical order y, z, x), ``U = 1 + 3Q`` entries.

    Attributes:
        pair_first, pair_second: ``[P]`` the products ``u_i u_j`` (i ≤ j) that any basis element or Gram
            invariant uses (P ≤ U(U+1)/2); ``w = u[pair_first] · u[pair_second]``.
        quadratic: ``[P, K, M]``: basis element k, spherical component m is ``w @ quadratic[:, k, m]``
            (zero outside the element's own slot).
        gram: ``[P, Q(Q+1)/2]``: the Gram invariants ``v_p · v_q`` (p ≤ q) are ``w @ gram``.
        cartesian: ``[M, O]``: spherical components → output components (block-diagonal per target;
            the identity for ``spherical`` targets).
        outputs: per target, ``(first output column, last + 1, output shape per row)``.
        extra_coefficients: ``[K_e]`` positions in the K coefficients of the density elements;
            ``basis_coefficients`` ``[K − K_e]`` the others (the basis elements').
        extra_row_range: ``(first, last + 1)`` when ``extra_rows`` is a contiguous range (a slice, not
            a gather: e.g. a dipole and a polarizability), else None.
        extra_rows: ``[M_e]`` density rows (index into ``(lmax+1)²``) of each density-element component.
        extra_slot: ``[M_e]`` which density-element slot (0..S_e−1) each of those components belongs to.
        extra_columns: ``[M_e]`` their spherical columns (0..M−1).
        extra_keys: the ``density_projections`` key of each density-element slot.
        column_target: ``[M]`` target index of each column; ``column_lambda0``: ``[M]`` 1.0 at the
            λ=0 (σ=+1) column of each target, else 0.
    """

    pair_first: torch.Tensor
    pair_second: torch.Tensor
    quadratic: torch.Tensor
    gram: torch.Tensor
    cartesian: torch.Tensor
    outputs: list[tuple[int, int, tuple[int, ...]]]
    extra_coefficients: torch.Tensor
    basis_coefficients: torch.Tensor
    extra_row_range: tuple[int, int] | None
    extra_rows: torch.Tensor
    extra_slot: torch.Tensor
    extra_columns: torch.Tensor
    extra_keys: list[str]
    column_target: torch.Tensor
    column_lambda0: torch.Tensor
    num_coefficients: int
    num_columns: int
    num_outputs: int


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
        density_couplings: K', couplings of two contracted densities added to every basis with λ ≥ 1
            per allowed pair of density orders (0: none; the fused evaluation needs 0).
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
        density_couplings: int = 0,
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
        # density couplings: "<block key>__<l1>_<l2>" → projections of A[l1] and A[l2] to K' channels
        self.coupling_projections = nn.ModuleDict()
        self._couplings: dict[str, list[tuple[int, int, str]]] = {}
        for lam, sig in blocks:
            if lam == 0 or density_couplings <= 0:
                continue
            key = _key(lam, sig)
            for l1, l2 in _coupling_pairs(lam, sig, lmax):  # none where lmax is too low for the parity
                name = f"{key}__{l1}_{l2}"
                self._couplings.setdefault(key, []).append((l1, l2, name))
                proj = nn.Linear(channels, 2 * density_couplings, bias=False)
                nn.init.normal_(proj.weight, std=channels**-0.5)
                self.coupling_projections[name] = proj
                self.register_buffer(f"_cg__{name}", clebsch_gordan(l1, l2, lam), persistent=False)
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
                n_basis += len(self._couplings.get(_key(lam, sig), [])) * density_couplings
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
        self._stamped: list[torch.Tensor] | None = None  # the tensors whose versions key that cache
        # load_state_dict(assign=True) replaces the tensors instead of copying into them
        self.register_load_state_dict_post_hook(TensorHeads._drop_cache)

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
        coefficient networks of another shape, density couplings)."""
        if self._couplings:
            return None  # couplings are quadratic in the density: evaluated block by block
        forms = {}
        for key, basis in self.bases.items():
            form = self._quadratic_form(basis)
            if form is None:
                return None
            forms[key] = form
        for net in self.coefficients.values():
            if not (len(net) == 3 and isinstance(net[0], nn.Linear) and isinstance(net[2], nn.Linear)):
                return None
            if net[0].bias is None or net[2].bias is None or type(net[1]) is not NormalisedSiLU:
                return None  # the fused path folds this activation's factor into the second layer
        slots = []  # (basis key, first coefficient, first column, λ) of each (target, block)
        k_total = m_total = o_total = 0
        conversions, outputs = [], []
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
            converted = self._to_output(spec, torch.eye(width, dtype=torch.float64))  # linear: a matrix
            conversions.append(converted.reshape(width, -1))
            outputs.append((o_total, o_total + conversions[-1].shape[1], tuple(converted.shape[1:])))
            o_total += conversions[-1].shape[1]
        q = self.num_vectors
        u = 1 + 3 * q
        # u's order here: P flattened a-major with a in the density's row order (y, z, x); the forms
        # were derived for v flattened q-major in (x, y, z): old index of each new one
        xyz_of_row = torch.tensor([1, 2, 0])
        rest = (1 + 3 * torch.arange(q)[None, :] + xyz_of_row[:, None]).flatten()  # [3Q], a-major
        old = torch.cat([torch.zeros(1, dtype=torch.long), rest])
        quadratic = torch.zeros(u, u, k_total, m_total, dtype=torch.float64)
        extra_coefficients, extra_rows, extra_slot, extra_columns, extra_keys = [], [], [], [], []
        for key, k0, m0, lam in slots:
            form = forms[key][old][:, old]
            n_basis, width = form.shape[2], form.shape[3]
            quadratic[:, :, k0 : k0 + n_basis, m0 : m0 + width] = form
            if key in self.density_projections:
                n_extra = self.density_projections[key].out_features
                extra_coefficients += range(k0 + n_basis, k0 + n_basis + n_extra)
                extra_rows += range(lam * lam, (lam + 1) * (lam + 1))
                extra_slot += [len(extra_keys)] * width
                extra_columns += range(m0, m0 + width)
                extra_keys.append(key)
        upper = torch.triu_indices(q, q)
        gram = torch.zeros(u, u, upper.shape[1], dtype=torch.float64)
        for row in range(3):  # v_p · v_q = Σ_a P[a, p] P[a, q]
            gram[1 + row * q + upper[0], 1 + row * q + upper[1], torch.arange(upper.shape[1])] = 1.0

        # Σ_ij u_i u_j F[i, j] = Σ_{i ≤ j} u_i u_j F'[i, j] with F' = F + Fᵀ off the diagonal; only the
        # pairs (i ≤ j) some basis element or Gram invariant uses are kept (≤ U(U+1)/2 of the U² products)
        def upper_form(full: torch.Tensor) -> torch.Tensor:
            folded = full + full.transpose(0, 1)
            diagonal = torch.arange(u)
            folded[diagonal, diagonal] = full[diagonal, diagonal]
            return folded

        quadratic, gram = upper_form(quadratic), upper_form(gram)
        first, second = torch.triu_indices(u, u)
        used = (quadratic[first, second] != 0).flatten(1).any(1) | (gram[first, second] != 0).any(1)
        first, second = first[used], second[used]
        extra_set = set(extra_coefficients)
        row_range = (extra_rows[0], extra_rows[-1] + 1) if extra_rows else None
        if row_range and extra_rows != list(range(*row_range)):
            row_range = None  # slots of several targets repeat rows: a gather, not a slice
        return FusedPlan(
            pair_first=first,
            pair_second=second,
            quadratic=quadratic[first, second],
            gram=gram[first, second],
            cartesian=torch.block_diag(*conversions),
            outputs=outputs,
            extra_coefficients=torch.tensor(extra_coefficients, dtype=torch.long),
            basis_coefficients=torch.tensor(
                [k for k in range(k_total) if k not in extra_set], dtype=torch.long
            ),
            extra_row_range=row_range,
            extra_rows=torch.tensor(extra_rows, dtype=torch.long),
            extra_slot=torch.tensor(extra_slot, dtype=torch.long),
            extra_columns=torch.tensor(extra_columns, dtype=torch.long),
            extra_keys=extra_keys,
            column_target=torch.tensor(column_target, dtype=torch.long),
            column_lambda0=torch.tensor(column_lambda0, dtype=torch.float64),
            num_coefficients=k_total,
            num_columns=m_total,
            num_outputs=o_total,
        )

    # ------------------------------------------------------------------ fused evaluation: per call
    def _plan_constants(self, dtype: torch.dtype, device: torch.device) -> dict:
        """The plan's tensors in ``dtype`` on ``device`` (made once per dtype and device)."""
        key = (dtype, device)
        if key not in self._constants:
            plan = self._plan
            floats = ("quadratic", "gram", "cartesian", "column_lambda0")
            integers = ("pair_first", "pair_second", "extra_coefficients", "extra_rows", "extra_slot")
            integers += ("basis_coefficients",)
            integers += ("extra_columns", "column_target")
            constants = {name: getattr(plan, name).to(device=device, dtype=dtype) for name in floats}
            constants.update({name: getattr(plan, name).to(device) for name in integers})
            constants["u_0"] = torch.zeros(1 + 3 * self.num_vectors, dtype=dtype, device=device)
            constants["u_0"][0] = 1.0  # the constant entry of u, as the projection's bias
            self._constants[key] = constants
        return self._constants[key]

    def _assemble_weights(self, constants: dict) -> dict[str, torch.Tensor]:
        """Every weight of the fused evaluation, from the parameters and buffers (see _forward_fused).

        Folded so that a call is a handful of matrix products: the vectors' projection (and the
        constant ``u_0 = 1``, as a bias) acts on the flattened l=1 density; the scales and the
        spherical → Cartesian conversion sit in the bases' matrix, which also gives the Gram
        invariants; the activation's constant factor sits in the second layer, whose outputs are
        ordered basis coefficients first, density-element coefficients last; the density elements'
        conversion is spread over (row, slot) pairs so that no gather is needed.
        """
        plan = self._plan
        nets = list(self.coefficients.values())
        target = constants["column_target"]
        conversion = constants["cartesian"] * self.scales[target].unsqueeze(1)  # [M, O], scaled
        n_pairs, k, m = constants["quadratic"].shape
        basis, extra = constants["basis_coefficients"], constants["extra_coefficients"]
        bases_w = (constants["quadratic"][:, basis].reshape(-1, m) @ conversion).reshape(n_pairs, -1)
        channels = self.vector_projection.weight.shape[1]
        vectors = torch.block_diag(*[self.vector_projection.weight / 3**0.5] * 3)  # [3Q, 3C], rows a-major
        order = torch.cat([basis, extra])
        second_w = torch.block_diag(*[net[2].weight for net in nets])[order] * NormalisedSiLU.factor
        weights = {
            "u": torch.cat([vectors.new_zeros(1, 3 * channels), vectors]).t(),  # [3C, U]
            "pairs": torch.cat([bases_w, constants["gram"]], dim=1),  # [P, K_b·O + Q(Q+1)/2]
            "first_w": torch.cat([net[0].weight for net in nets]).t(),  # [C + Q(Q+1)/2, H]
            "first_b": torch.cat([net[0].bias for net in nets]),
            "second_w": second_w.t(),  # [H, K_b + K_e]
            "second_b": torch.cat([net[2].bias for net in nets])[order],
            # the λ=0 shifts are added after the scales, in spherical components: converted, not scaled
            "shift": (self.shifts[target] * constants["column_lambda0"]) @ constants["cartesian"],
        }
        if plan.extra_keys:
            weights["extra_w"] = torch.block_diag(
                *[self.density_projections[k].weight for k in plan.extra_keys]
            )  # [K_e, S_e·C]
            # row r of the density elements belongs to slot s(r): its conversion sits at (r, s(r))
            rows_conversion = conversion[constants["extra_columns"]]  # [M_e, O]
            slots = len(plan.extra_keys)
            spread = rows_conversion.new_zeros(rows_conversion.shape[0], slots, rows_conversion.shape[1])
            spread = spread.index_put(
                (torch.arange(rows_conversion.shape[0], device=spread.device), constants["extra_slot"]),
                rows_conversion,
            )
            weights["extra_conversion"] = spread.reshape(-1, rows_conversion.shape[1])  # [M_e·S_e, O]
        return weights

    def _fused_weights(self, constants: dict) -> dict[str, torch.Tensor]:
        """:meth:`_assemble_weights`, built on every call while autograd records (training:
        gradients reach the original parameters); otherwise cached until a parameter or buffer
        changes in place (optimiser steps, ``load_state_dict``: their version counters move), the
        module is converted (``.to()``, ``.double()``: :meth:`_apply` drops the cache) or the
        call's dtype or device does (``constants`` is per dtype and device)."""
        if torch.is_grad_enabled():
            self._weights = None
            return self._assemble_weights(constants)
        if self._stamped is None:
            self._stamped = [*self.parameters(), self.scales, self.shifts]
        try:
            versions = [t._version for t in self._stamped]  # a few µs; dtype/device reads cost far more
        except RuntimeError:  # inference tensors (made under torch.inference_mode) have no version
            return self._assemble_weights(constants)
        if self._weights is None or self._weights[0] is not constants or self._weights[1] != versions:
            self._weights = (constants, versions, self._assemble_weights(constants))
        return self._weights[2]

    def _drop_cache(self, *_hook_args) -> None:
        self._weights, self._stamped = None, None

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - nn.Module's signature
        """Conversions (``.to()``, ``.cuda()``, ``.double()``) replace the tensors: drop the cache."""
        self._drop_cache()
        return super()._apply(fn, *args, **kwargs)

    def _forward_fused(
        self, features: list[torch.Tensor], density: torch.Tensor, batch: torch.Tensor, num_graphs: int
    ) -> dict[str, torch.Tensor]:
        constants = self._plan_constants(density.dtype, density.device)
        w = self._fused_weights(constants)
        plan = self._plan
        n = density.shape[0]
        n_basis = constants["basis_coefficients"].shape[0]
        k_o = n_basis * plan.num_outputs
        u = torch.addmm(constants["u_0"], density[:, 1:4].reshape(n, -1), w["u"])  # [N, U] = (1, P a-major)
        # every basis element (in output components, scaled) and the Gram invariants, from u_i u_j
        pairs = torch.mm(u[:, constants["pair_first"]] * u[:, constants["pair_second"]], w["pairs"])
        invariants = torch.cat([features[-1], pairs[:, k_o:]], dim=1)
        hidden = F.silu(torch.addmm(w["first_b"], invariants, w["first_w"]))
        coefficients = torch.addmm(w["second_b"], hidden, w["second_w"])  # [N, K_b + K_e]
        constant = w["shift"]  # what multiplies no basis element: the shifts and the density elements
        if "extra_w" in w:  # Σ_k α_k Σ_c U_ck A[c, m] = Σ_c z_c A[c, m], z = α @ U per slot
            z = torch.mm(coefficients[:, n_basis:], w["extra_w"]).view(n, len(plan.extra_keys), -1)
            span = plan.extra_row_range
            rows = density[:, span[0] : span[1]] if span else density[:, constants["extra_rows"]]
            per_slot = torch.bmm(rows, z.transpose(1, 2))  # [N, M_e, S_e]: every row against every slot
            constant = torch.addmm(constant, per_slot.reshape(n, -1), w["extra_conversion"])
        bases = pairs[:, :k_o].view(n, n_basis, plan.num_outputs)
        atomic = torch.baddbmm(
            constant.view(-1, 1, plan.num_outputs), coefficients[:, None, :n_basis], bases
        ).squeeze(1)  # [N, O]
        summed = None
        out = {}
        for spec, (first, last, shape) in zip(self.specs, plan.outputs):
            if spec.per_atom:
                value = atomic[:, first:last]
            else:
                if summed is None:
                    summed = (
                        atomic.sum(0, keepdim=True)
                        if num_graphs == 1
                        else atomic.new_zeros(num_graphs, atomic.shape[1]).index_add(0, batch, atomic)
                    )
                value = summed[:, first:last]
            out[spec.name] = value.reshape(value.shape[0], *shape)
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
            if key in self._couplings:
                b = torch.cat([b, *self._coupled_elements(key, density)], dim=1)
            bases[key] = b
        return bases, self.gram(vectors)

    def _coupled_elements(self, key: str, density: torch.Tensor) -> list[torch.Tensor]:
        """The density couplings of block ``key``: per pair of orders ``[N, K', 2λ+1]``."""
        out = []
        for l1, l2, name in self._couplings[key]:
            weight = self.coupling_projections[name].weight  # [2K', C]: A[l1]'s rows, then A[l2]'s
            k = weight.shape[0] // 2
            first = F.linear(density[:, l1 * l1 : (l1 + 1) * (l1 + 1), :], weight[:k])  # [N, 2l1+1, K']
            second = F.linear(density[:, l2 * l2 : (l2 + 1) * (l2 + 1), :], weight[k:])  # [N, 2l2+1, K']
            cg = getattr(self, f"_cg__{name}")  # [2l1+1, 2l2+1, 2λ+1]
            out.append(torch.einsum("nak,nbk,abm->nkm", first, second, cg))
        return out

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
