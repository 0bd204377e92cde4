"""training.loss_normalisation: each target's squared error over its training scale².

Energy, forces and stress share the energy scale (RMS force); tensor targets are normalised per
(λ, σ) block by that block's training spread, so a mean predictor has loss 1 per target.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from torch_geometric.data import Batch

from mlip.data.dataset import compute_statistics
from mlip.data.graph import atoms_to_graph
from mlip.data.reading import LabelledStructure
from mlip.data.statistics import BlockMoments
from mlip.targets import TargetSpec, block_keys, tensor_blocks
from mlip.training.loss import weighted_loss
from mlip.training.metrics import MetricsAccumulator

ALPHA = TargetSpec("alpha", "rank2", "alpha", irreps=((0, 1), (2, 1)))
MU = TargetSpec("mu", "vector", "mu", irreps=((1, 1),))
EFG = TargetSpec("efg", "spherical", "efg", per_atom=True, irreps=((0, 1), (2, 1)))
ENERGY = [TargetSpec("energy", "energy", "E"), TargetSpec("forces", "forces", "F")]


def _structures(n: int = 40, seed: int = 0) -> list[LabelledStructure]:
    """Water molecules with an isotropic polarizability part that varies 100× less than the rest."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule("H2O")
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        sym = rng.normal(size=(3, 3))
        sym = 5.0 * (sym + sym.T)
        sym -= np.trace(sym) / 3 * np.eye(3)
        alpha = sym + (10.0 + 0.05 * rng.normal()) * np.eye(3)
        labels = {
            "energy": np.array(-10.0 + rng.normal()),
            "forces": rng.normal(size=(3, 3)) * 2.0,
            "alpha": alpha,
            "mu": 0.3 * rng.normal(size=3) + np.array([0.0, 0.0, 0.7]),
            "efg": rng.normal(size=(3, 6)) * np.array([0.5, 1, 1, 1, 1, 1]),
        }
        out.append(LabelledStructure(atoms=atoms, labels=labels))
    return out


SPECS = [*ENERGY, MU, ALPHA, EFG]


def _batch(structures):
    by_name = {s.name: s for s in SPECS}
    graphs = [atoms_to_graph(s.atoms, 3.0, s.labels, by_name, dtype=torch.float64) for s in structures]
    return Batch.from_data_list(graphs)


def test_block_scales_are_the_training_spread_of_each_block():
    structures = _structures()
    stats = compute_statistics(structures, SPECS, "zero", {}, 2.0)
    assert stats.loss_scales["energy"] == stats.loss_scales["forces"] == [stats.scale]
    forces = np.concatenate([s.labels["forces"] for s in structures])
    assert stats.scale == pytest.approx(np.sqrt(np.mean(forces**2)))
    alpha = np.stack([s.labels["alpha"] for s in structures])
    iso, aniso = stats.loss_scales["alpha"]
    assert block_keys(ALPHA) == ["l0", "l2"]
    assert iso == pytest.approx(np.std(np.trace(alpha, axis1=1, axis2=2) / np.sqrt(3)), rel=1e-10)
    assert 0.04 < iso < 0.15 and aniso > 5.0  # the isotropic part varies ~100× less
    mu = np.stack([s.labels["mu"] for s in structures])
    assert stats.loss_scales["mu"] == pytest.approx([np.sqrt(np.mean(np.var(mu, axis=0)))], rel=1e-10)
    efg = np.concatenate([s.labels["efg"] for s in structures])  # per atom
    assert stats.loss_scales["efg"][0] == pytest.approx(np.std(efg[:, 0]), rel=1e-10)


def test_moments_merge_exactly_over_chunks():
    rows = np.stack([s.labels["alpha"] for s in _structures(30)])
    whole, chunks = BlockMoments(ALPHA), BlockMoments(ALPHA)
    whole.add(rows)
    for part in np.array_split(rows, 7):
        chunks.add(part)
    assert chunks.scales() == pytest.approx(whole.scales(), rel=1e-12)


def test_blocks_split_the_norm_of_a_rank2_tensor():
    full = TargetSpec("a", "rank2", "a", irreps=((0, 1), (1, -1), (2, 1)), symmetric=False)
    rows = np.random.default_rng(1).normal(size=(5, 3, 3))
    parts = tensor_blocks(full, rows)
    assert sum(float((p**2).sum()) for p, _ in parts) == pytest.approx(float((rows**2).sum()))
    assert [dof for _, dof in parts] == [1, 3, 5]


def test_mean_predictor_has_loss_one_per_target():
    structures = _structures()
    stats = compute_statistics(structures, SPECS, "zero", {}, 2.0)
    batch = _batch(structures)
    tensor_specs = [MU, ALPHA, EFG]
    pred = {}
    for spec in tensor_specs:
        labels = batch[spec.name]
        pred[spec.name] = labels.mean(dim=0, keepdim=True).expand_as(labels)
    for spec in tensor_specs:
        loss, _ = weighted_loss([spec], pred, batch, stats.loss_scales)
        assert float(loss) == pytest.approx(1.0, rel=1e-10), spec.name
        plain, _ = weighted_loss([spec], pred, batch, None)
        assert abs(float(plain) - 1.0) > 0.05  # the old loss is in label units
    # the isotropic polarizability error now weighs as much as the anisotropic one
    wrong_iso = {"alpha": pred["alpha"] + 3 * 0.1 * torch.eye(3, dtype=torch.float64)}
    wrong_aniso = {"alpha": pred["alpha"] + 0.1 * torch.diag(torch.tensor([1.0, -1.0, 0.0]).double())}
    scaled = [float(weighted_loss([ALPHA], p, batch, stats.loss_scales)[0]) for p in (wrong_iso, wrong_aniso)]
    plain = [float(weighted_loss([ALPHA], p, batch, None)[0]) for p in (wrong_iso, wrong_aniso)]
    assert scaled[0] > 10 * scaled[1] and plain[0] < 10 * plain[1]


def test_energy_forces_keep_their_relative_weights():
    structures = _structures()
    stats = compute_statistics(structures, SPECS, "zero", {}, 2.0)
    batch = _batch(structures)
    pred = {"energy": batch.energy + 0.3, "forces": batch.forces + 0.2}
    scaled, _ = weighted_loss(ENERGY, pred, batch, stats.loss_scales)
    plain, _ = weighted_loss(ENERGY, pred, batch, None)
    assert float(scaled) == pytest.approx(float(plain) / stats.scale**2, rel=1e-10)


def test_validation_metric_uses_the_same_normalisation():
    structures = _structures()
    stats = compute_statistics(structures, SPECS, "zero", {}, 2.0)
    batch = _batch(structures)
    pred = {s.name: batch[s.name] * 1.1 for s in [MU, ALPHA, EFG]}
    loss, _ = weighted_loss([MU, ALPHA, EFG], pred, batch, stats.loss_scales)
    acc = MetricsAccumulator([MU, ALPHA, EFG], stats.loss_scales)
    for k in range(0, len(structures), 7):  # several batches
        part = _batch(structures[k : k + 7])
        acc.update({s.name: part[s.name] * 1.1 for s in [MU, ALPHA, EFG]}, part)
    metrics = acc.compute()
    assert sum(metrics[f"{s.name}_loss"] for s in [MU, ALPHA, EFG]) == pytest.approx(float(loss), rel=1e-10)


def test_scales_are_stored_with_the_model(trained_run):
    from mlip.model.potential import load_model
    from mlip.training.config import load_config
    from mlip.training.trainer import prepare_data

    stored = load_model(str(trained_run / "model.pt")).hyperparameters["loss_scales"]
    cfg = load_config(str(trained_run / "config.yaml"))
    assert cfg.training.loss_normalisation == "scale"
    stats = prepare_data(cfg, torch.float32).stats
    assert stored == {"energy": [stats.scale], "forces": [stats.scale]}
