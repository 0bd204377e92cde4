"""Stress exists only for cells periodic along x, y and z (σ = (1/V) ∂E/∂ε, ASE convention).

Molecules and slabs batched with crystals get no stress (zeros, never a division by a clamped
volume), structures without a stress label are masked out of the loss and the metrics, and a
training set that mixes molecules and crystals with a stress target trains.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from torch_geometric.data import Batch

from mlip import MLIPCalculator
from mlip.data.graph import atoms_to_graph
from mlip.model.potential import MLIPModel
from mlip.outputs import STRESS_MASK
from mlip.targets import TargetSpec
from mlip.training.config import load_config
from mlip.training.loss import weighted_loss
from mlip.training.metrics import MetricsAccumulator
from mlip.training.trainer import prepare_data, train
from tests.conftest import DATA, perturb_weights, tiny_raw_config

SPECS = [
    TargetSpec("energy", "energy", "REF_energy"),
    TargetSpec("forces", "forces", "REF_forces", per_atom=True),
    TargetSpec("stress", "stress", "REF_stress"),
]
BY_NAME = {s.name: s for s in SPECS}


def _model() -> MLIPModel:
    torch.manual_seed(3)
    model = MLIPModel(
        [1, 6, 8],
        cutoff=3.5,
        targets=[s.to_dict() for s in SPECS],
        backbone=dict(channels=8, num_layers=1, lmax=2, num_radial=4, radial_hidden=8),
        readout_hidden=8,
    ).double()
    perturb_weights(model, 0.1)
    return model


def _crystal(seed: int = 0) -> Atoms:
    atoms = bulk("C", "diamond", a=3.57, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _graph(atoms, labels=None):
    return atoms_to_graph(atoms, 3.5, labels, BY_NAME if labels is not None else None, dtype=torch.float64)


def _labels(atoms, stress=True):
    out = {"energy": np.array(-1.0), "forces": np.zeros((len(atoms), 3))}
    if stress:
        out["stress"] = np.full((3, 3), 0.01)
    return out


def test_molecule_batched_with_crystal_gets_no_stress():
    model = _model()
    crystal, mol = _crystal(), molecule("CH3OH")
    alone = model(Batch.from_data_list([_graph(crystal)]), compute_stress=True)["stress"][0]
    assert alone.abs().max() > 1e-3
    out = model(Batch.from_data_list([_graph(mol), _graph(crystal)]), compute_stress=True)
    # before: the molecule's ∂E/∂ε divided by a clamped zero volume gave ~1e12 eV/Å³
    assert torch.equal(out["stress"][0], torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(out["stress"][1], alone, rtol=1e-12, atol=1e-14)
    assert torch.isfinite(out["virial"]).all() and out["virial"][0].abs().max() > 0


def test_slab_has_no_stress():
    """A slab (pbc T T F): a 3D stress needs a volume, a 2D one an area/thickness convention."""
    model = _model()
    slab = fcc111("Al", size=(2, 2, 2), vacuum=5.0)
    slab.numbers[:] = 6
    assert list(slab.pbc) == [True, True, False]
    graph = _graph(slab, {**_labels(slab), "stress": np.ones((3, 3))})
    assert not bool(graph[STRESS_MASK][0])  # a stress label on a slab is not used
    out = model(Batch.from_data_list([graph]), compute_stress=True)
    assert torch.equal(out["stress"], torch.zeros(1, 3, 3, dtype=torch.float64))
    slab.calc = MLIPCalculator(model, device="cpu")
    assert np.isfinite(slab.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        slab.get_stress()


def test_unlabelled_and_non_periodic_structures_are_masked_in_loss_and_metrics():
    model = _model()
    crystal = _crystal()
    graphs = [
        _graph(molecule("CH3OH"), _labels(molecule("CH3OH"), stress=False)),
        _graph(crystal, _labels(crystal)),
        _graph(_crystal(1), _labels(crystal, stress=False)),  # periodic, but no stress label
    ]
    assert [bool(g[STRESS_MASK][0]) for g in graphs] == [False, True, False]
    stress_only = [s for s in SPECS if s.name == "stress"]
    pred = model(Batch.from_data_list(graphs), compute_stress=True, training=True)
    loss, _ = weighted_loss(stress_only, pred, Batch.from_data_list(graphs))
    single = model(Batch.from_data_list(graphs[1:2]), compute_stress=True, training=True)
    expected = (single["stress"][0] - 0.01).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0.0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    acc = MetricsAccumulator(stress_only)
    acc.update({k: v.detach() for k, v in pred.items()}, Batch.from_data_list(graphs))
    metrics = acc.compute()
    assert acc.count["stress"] == 9  # one structure's 3×3
    rmse = float((single["stress"][0] - 0.01).pow(2).mean().sqrt())
    assert metrics["stress_rmse"] == pytest.approx(rmse, rel=1e-10)
    # a batch without any stress label adds nothing (and no NaN)
    unlabelled = Batch.from_data_list([graphs[0], graphs[2]])
    empty, _ = weighted_loss(stress_only, model(unlabelled, compute_stress=True), unlabelled)
    assert float(empty) == 0.0


def _mixed_file(tmp_path) -> str:
    frames = []
    for atoms in ase.io.read(DATA / "carbon" / "carbon_reduced_100.xyz", ":12"):
        virial = np.asarray(atoms.info["virial"], dtype=float).reshape(3, 3)
        out = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
        out.info["REF_energy"] = atoms.get_potential_energy()
        out.info["REF_stress"] = (-virial / atoms.get_volume()).reshape(-1)
        out.arrays["REF_forces"] = atoms.arrays["force"]
        frames.append(out)
    for atoms in ase.io.read(DATA / "ethanol" / "train.xyz", ":12"):
        out = Atoms(atoms.numbers, atoms.positions)
        out.info["REF_energy"] = atoms.get_potential_energy()
        out.arrays["REF_forces"] = atoms.get_forces()
        frames.append(out)
    path = tmp_path / "mixed.xyz"
    ase.io.write(path, frames[::2] + frames[1::2], format="extxyz")
    return str(path)


def _mixed_config(tmp_path, **extra):
    return tiny_raw_config(
        tmp_path / "run",
        **{
            "data.train_file": _mixed_file(tmp_path),
            "data.max_structures": None,
            "data.valid_fraction": 0.25,
            "data.e0s": "fit",
            "dtype": "float64",
            "targets": {
                "energy": {"key": "REF_energy"},
                "forces": {"key": "REF_forces", "weight": 1.0},
                "stress": {"key": "REF_stress", "weight": 10.0},
            },
            "training.max_epochs": 2,
            "training.batch_size": 4,
            **extra,
        },
    )


def test_molecules_and_crystals_with_a_stress_target_train(tmp_path):
    cfg = load_config(None, raw=_mixed_config(tmp_path))
    data = prepare_data(cfg, torch.float64)
    masks = [bool(g[STRESS_MASK][0]) for g in data.train]
    periodic = [bool(g.pbc.all()) for g in data.train]
    assert masks == periodic and any(masks) and not all(masks)
    result = train(cfg)
    for split in ("valid",):
        metrics = result[split]
        assert np.isfinite(metrics["stress_rmse"]) and metrics["stress_rmse"] < 1.0, metrics
        assert np.isfinite(metrics["forces_rmse"])


def test_store_keeps_the_stress_mask(tmp_path):
    from mlip.data.store import PreprocessedStore, preprocess

    raw = _mixed_config(tmp_path, **{"data.preprocessed_dir": str(tmp_path / "store")})
    cfg = load_config(None, raw=raw)
    preprocess(cfg, log=None)
    store = PreprocessedStore(tmp_path / "store")
    dataset = store.dataset("train", None, torch.float64)
    in_memory = prepare_data(
        load_config(None, raw={**raw, "data": {**raw["data"], "preprocessed_dir": None}}), torch.float64
    )
    graphs = list(in_memory.train) + list(in_memory.valid)
    assert len(dataset) == len(graphs)
    stored = sorted(
        (bool(dataset[k][STRESS_MASK][0]), float(dataset[k].stress.abs().sum())) for k in range(len(dataset))
    )
    memory = sorted((bool(g[STRESS_MASK][0]), float(g.stress.abs().sum())) for g in graphs)
    assert stored == pytest.approx(memory)


def test_a_stress_key_found_nowhere_is_an_error(tmp_path):
    from mlip.errors import MLIPError

    raw = _mixed_config(tmp_path)
    raw["targets"]["stress"]["key"] = "REF_stres"
    with pytest.raises(MLIPError, match="no structure has a stress label"):
        prepare_data(load_config(None, raw=raw), torch.float64)
