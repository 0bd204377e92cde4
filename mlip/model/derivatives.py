"""Derivatives of tensor targets with respect to atomic positions, by autograd.

* **Born effective charges** ``Z[i, a, b] = ∂μ_a/∂r_{i,b}`` from a per-structure ``dipole`` target
  (units: the dipole's unit per Å, i.e. e for a dipole in e·Å);
* **polarizability derivatives** ``P[i, a, b, c] = ∂α_ab/∂r_{i,c}`` from a per-structure
  ``polarizability`` target (the polarizability's unit per Å, e.g. Å² for α in Å³).

and, for molecular dynamics in a uniform electric field ``E``, the field's coupling through the
model's dipole (:func:`forward_in_electric_field`): energy ``U − μ·E`` and forces ``F_i + Z_iᵀ E``.

Both are exact derivatives of the model's predictions (one forward pass, then one backward pass
per tensor component). The model's per-structure tensors are sums of atomic terms, each a function
of the interatomic vectors only, plus (with ``charges: true``) learned charges that sum to zero in
each structure times positions, so they are translation invariant and ``Σ_i Z_i = 0`` (and
``Σ_i P_i = 0``) holds exactly, whatever the total charge: a charged system's dipole does not
depend on the origin either (the model does not know the net charge). Under a rotation or reflection ``R``
of the structure ``Z_i ↦ R Z_i Rᵀ`` and ``P_i ↦ (R ⊗ R ⊗ R) P_i``, as the equivariant heads imply.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mlip.errors import MLIPError
from mlip.outputs import ENERGY, FORCES

BORN_CHARGES = "born_charges"
POLARIZABILITY_DERIVATIVES = "polarizability_derivatives"
# derived quantity → (the per-structure target it differentiates, the target's kind)
SOURCES = {BORN_CHARGES: ("dipole", "vector"), POLARIZABILITY_DERIVATIVES: ("polarizability", "rank2")}


def derivative_source(model: Any, name: str) -> str:
    """The target that ``name`` (born_charges | polarizability_derivatives) differentiates.

    Raises a one-line :class:`MLIPError` naming the missing target if the model lacks it.
    """
    if name not in SOURCES:
        raise MLIPError(f"unknown position derivative {name!r} (known: {', '.join(SOURCES)})")
    target, kind = SOURCES[name]
    if name in model.tensor_target_names:
        raise MLIPError(f"the model has a learned target named {name!r}: it is predicted, not derived")
    for spec in model.target_specs:
        if spec.name == target and spec.kind == kind and not spec.per_atom:
            return target
    have = ", ".join(s.name for s in model.target_specs) or "none"
    raise MLIPError(
        f"{name} needs a per-structure {kind} target named '{target}', which the model lacks "
        f"(its targets: {have})"
    )


def forward_with_position_derivatives(
    model: Any,
    data: Any,
    names: tuple[str, ...] | list[str] = (BORN_CHARGES,),
    compute_forces: bool = True,
    compute_stress: bool = False,
) -> dict[str, torch.Tensor]:
    """``model(data)`` plus the requested position derivatives, from one forward pass.

    Args:
        model: an :class:`~mlip.model.potential.MLIPModel`.
        data: a graph or batch of graphs (as for ``model.forward``); not modified.
        names: ``born_charges`` ([N, 3, 3]) and/or ``polarizability_derivatives`` ([N, 3, 3, 3]).
        compute_forces, compute_stress: as for ``model.forward``.

    Returns:
        The model's outputs (detached) and one ``[N, ...]`` entry per name: atom ``i``'s
        derivative of its own structure's tensor (in a batch, structures do not interact).
    """
    sources = {name: derivative_source(model, name) for name in names}
    pos = data.pos.detach().clone().requires_grad_(True)
    data = copy.copy(data)  # shallow: only pos is replaced
    data.pos = pos
    with torch.enable_grad():
        out = model(data, compute_forces=compute_forces and model.has_energy, compute_stress=compute_stress)
        result = {k: v.detach() for k, v in out.items()}
        for name, target in sources.items():
            value = out[target]  # [G, 3] or [G, 3, 3]
            flat = value.reshape(value.shape[0], -1)
            rows = []
            for k in range(flat.shape[1]):
                # Σ over structures: atom i only feeds its own structure's tensor.
                (grad,) = torch.autograd.grad(flat[:, k].sum(), pos, retain_graph=True, allow_unused=True)
                rows.append(torch.zeros_like(pos) if grad is None else grad)
            jac = torch.stack(rows, dim=1)  # [N, K, 3]
            result[name] = jac.reshape(pos.shape[0], *value.shape[1:], 3).detach()
    return result


def forward_in_electric_field(model: Any, data: Any, field: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model(data)`` with a uniform electric field ``E`` coupled through the model's dipole.

    The field adds ``−μ(r)·E`` to each structure's energy, so the forces gain ``∂(μ·E)/∂r_i = Z_iᵀ E``
    (``Z_i`` the Born effective charges of atom i): the field-driven MD of dipole-learning potentials,
    with one extra backward pass instead of the three that ``Z`` itself costs. The model's dipole is
    a smooth sum of atomic terms, so ``U − μ·E`` is a conserved energy in NVE, also in periodic cells
    (where it stands for the field's coupling to the model's polarization, not to a Berry-phase one).

    Args:
        model: an :class:`~mlip.model.potential.MLIPModel` with energy and a per-structure ``dipole``.
        data: a graph or batch of graphs; not modified.
        field: ``[3]`` (or ``[G, 3]``) in the dipole's unit per eV: V/Å for a dipole in e·Å.

    Returns:
        The model's outputs (detached) with ``energy`` ``[G]`` = ``U − μ·E`` and ``forces`` ``[N, 3]``
        including the field's; ``node_energy`` stays the model's ``U_i`` (without the field term).
    """
    target = derivative_source(model, BORN_CHARGES)  # the dipole; one-line error if absent
    if not model.has_energy:
        raise MLIPError("an electric field needs a model with an energy target (it only adds to forces)")
    pos = data.pos.detach().clone().requires_grad_(True)
    data = copy.copy(data)
    data.pos = pos
    with torch.enable_grad():
        out = model(data, compute_forces=True, compute_stress=False)
        dipole = out[target]  # [G, 3]
        coupling = (dipole * field.to(dipole.dtype)).sum(-1)  # μ·E per structure, [G]
        (grad,) = torch.autograd.grad(coupling.sum(), pos, allow_unused=True)
    result = {k: v.detach() for k, v in out.items()}
    if grad is not None:
        result[FORCES] = result[FORCES] + grad.detach()
    result[ENERGY] = result[ENERGY] - coupling.detach().to(result[ENERGY].dtype)
    return result
