"""Weighted losses over all targets of a batch.

``training.loss_normalisation: scale`` (default) divides each target's mean squared error by the
square of a training-set scale (stored with the model, ``hyperparameters["loss_scales"]``):

* energy (per atom), forces and stress share one scale, the model's energy scale (RMS force,
  eV/Å), so the energy : forces : stress weights mean what they mean in MACE or NequIP;
* a tensor target is split into its (λ, σ) blocks (:func:`mlip.targets.tensor_blocks`), each
  block's mean squared error is divided by that block's training spread, and the blocks are
  averaged: a polarizability's isotropic (λ=0) and anisotropic (λ=2) parts count alike, and a
  mean predictor has loss ≈ 1 per target whatever the label units.

``none`` is the plain mean squared error in label units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mlip.outputs import STRESS_MASK
from mlip.targets import TargetSpec, tensor_blocks

LossScales = Mapping[str, Sequence[float]]


def num_atoms_per_graph(batch) -> torch.Tensor:
    """``[G]`` atom counts of a batch (works for a single ``Data`` too)."""
    ptr = getattr(batch, "ptr", None)
    if ptr is not None:
        return (ptr[1:] - ptr[:-1]).to(batch.pos.dtype)
    return torch.tensor([batch.num_nodes], dtype=batch.pos.dtype, device=batch.pos.device)


def labelled_pair(spec: TargetSpec, pred: dict, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, label) of one target, restricted to the structures that have that label.

    Stress: only structures with ``stress_mask`` (a stress label on a cell periodic along x, y
    and z); every other target: all structures/atoms of the batch.
    """
    value, label = pred[spec.name], batch[spec.name]
    if spec.kind == "stress":
        mask = batch[STRESS_MASK].view(-1).to(value.device)
        value, label = value[mask], label[mask]
    return value, label


def residual_rows(spec: TargetSpec, pred: dict, batch) -> torch.Tensor:
    """Prediction − label ``[R, *label_shape]`` (energies per atom: eV/atom, so large and small
    structures count alike)."""
    value, label = labelled_pair(spec, pred, batch)
    diff = value - label
    if spec.kind == "energy":
        diff = diff / num_atoms_per_graph(batch)
    return diff.reshape(-1, *spec.label_shape)


def target_residual(spec: TargetSpec, pred: dict, batch) -> torch.Tensor:
    """Prediction − label for one target, flattened per component."""
    return residual_rows(spec, pred, batch).reshape(-1)


def squared_error_sums(
    spec: TargetSpec, rows: torch.Tensor, by_block: bool
) -> list[tuple[torch.Tensor, int]]:
    """``[(Σ residual², number of components)]``: one entry, or one per (λ, σ) block."""
    if by_block:
        return [(part.pow(2).sum(), part.shape[0] * dof) for part, dof in tensor_blocks(spec, rows)]
    return [(rows.pow(2).sum(), rows.numel())]


def normalised_mse(
    spec: TargetSpec, sums: Sequence[tuple[torch.Tensor | float, int]], scales: LossScales | None
) -> torch.Tensor | float:
    """One target's loss term from :func:`squared_error_sums` (0 where nothing is labelled)."""
    if scales is None or spec.name not in scales:
        total = sum(sq for sq, _ in sums)
        return total / max(sum(n for _, n in sums), 1)
    factors = list(scales[spec.name])
    if len(factors) != len(sums):  # e.g. normalised per block, summed as one
        factors = [factors[0]] * len(sums)
    terms = [sq / max(n, 1) / float(s) ** 2 for (sq, n), s in zip(sums, factors)]
    return sum(terms) / len(terms)


def weighted_loss(
    specs: Sequence[TargetSpec], pred: dict, batch, scales: LossScales | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ_t w_t · loss_t`` (see the module docstring; ``scales=None``: plain MSE in label units);
    also returns each target's plain mean squared error (for logging)."""
    total = pred["energy"].new_zeros(()) if "energy" in pred else None
    parts = {}
    for spec in specs:
        if spec.weight == 0:
            continue
        rows = residual_rows(spec, pred, batch)
        by_block = scales is not None and spec.is_tensor
        term = normalised_mse(spec, squared_error_sums(spec, rows, by_block), scales)
        parts[spec.name] = float(rows.detach().pow(2).sum()) / max(rows.numel(), 1)
        total = spec.weight * term if total is None else total + spec.weight * term
    return total, parts
