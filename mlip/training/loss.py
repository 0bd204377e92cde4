"""Weighted losses over all targets of a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlip.outputs import STRESS_MASK
from mlip.targets import TargetSpec


def num_atoms_per_graph(batch) -> torch.Tensor:
    """``[G]`` atom counts of a batch (works for a single ``Data`` too)."""
    ptr = getattr(batch, "ptr", None)
    if ptr is not None:
        return (ptr[1:] - ptr[:-1]).to(batch.pos.dtype)
    return torch.tensor([batch.num_nodes], dtype=batch.pos.dtype, device=batch.pos.device)


def target_residual(spec: TargetSpec, pred: dict, batch) -> torch.Tensor:
    """Prediction − label for one target, flattened per component.

    Energies are compared per atom (eV/atom) so large and small structures count alike.
    """
    pred_value, label = labelled_pair(spec, pred, batch)
    diff = pred_value - label
    if spec.kind == "energy":
        diff = diff / num_atoms_per_graph(batch)
    return diff.reshape(-1)


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


def weighted_loss(specs: Sequence[TargetSpec], pred: dict, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ_t w_t · mean(residual_t²)``; also returns each term (unweighted) for logging."""
    total = pred["energy"].new_zeros(()) if "energy" in pred else None
    parts = {}
    for spec in specs:
        if spec.weight == 0:
            continue
        residual = target_residual(spec, pred, batch)
        mse = residual.pow(2).sum() / max(residual.numel(), 1)  # 0 when no structure is labelled
        parts[spec.name] = float(mse.detach())
        total = spec.weight * mse if total is None else total + spec.weight * mse
    return total, parts
