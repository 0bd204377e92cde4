"""Partial-charge dipoles (``targets.<name>.charges: true``, mlip.model.charges), float64.

Equivariance, translation/permutation invariance and Born charges of such a model are covered with
the other tensor outputs (tests/model/test_tensor_model.py, tests/calculators/test_born_charges.py);
here: the charges themselves, the refusal of periodic structures, the config checks and a round
trip through training and a saved model file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip.data.graph import atoms_to_graph
from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel, load_model, save_model
from tests.conftest import DATA, perturb_weights, tiny_raw_config

TARGETS = [
    {"name": "dipole", "kind": "vector", "key": "mu", "charges": True},
    {"name": "atomic_only", "kind": "vector", "key": "mu"},
]


def charge_model() -> MLIPModel:
    torch.manual_seed(0)
    model = MLIPModel(
        [1, 6, 8],
        3.5,
        targets=TARGETS,
        backbone=dict(channels=8, lmax=1, num_layers=1, num_radial=4, radial_hidden=8),
        tensor=dict(num_vectors=4, hidden=8, scales={"dipole": 0.3, "atomic_only": 0.3}),
    ).double()
    perturb_weights(model, 0.2)
    return model.eval()


def molecule(seed: int, n: int = 6) -> Atoms:
    rng = np.random.default_rng(seed)
    pos = np.cumsum(rng.normal(scale=0.6, size=(n, 3)) + [0.9, 0.0, 0.0], axis=0)
    return Atoms(numbers=rng.choice([1, 6, 8], size=n), positions=pos)


def batch_of(frames: list[Atoms]) -> Batch:
    return Batch.from_data_list([atoms_to_graph(a, 3.5, dtype=torch.float64) for a in frames])


def test_charges_sum_to_zero_and_add_the_charge_dipole():
    model = charge_model()
    frames = [molecule(1), molecule(2, n=4)]
    data = batch_of(frames)
    with torch.no_grad():
        out = model(data, compute_forces=False)
        vectors = data.pos[data.edge_index[1]] - data.pos[data.edge_index[0]]  # molecules: no shifts
        features, _ = model.backbone(model.species_index(data.numbers), data.edge_index, vectors)
        q = model.charge_dipoles["dipole"].charges(features[-1], data.batch, 2)
    totals = torch.zeros(2, dtype=q.dtype).index_add(0, data.batch, q)
    assert q.abs().max() > 1e-2  # charges are not trivially zero ...
    torch.testing.assert_close(totals, torch.zeros_like(totals), atol=1e-12, rtol=0)  # ... but neutral
    # the dipole is the atomic-dipole part plus Σ q r: remove the charge module and Σ q r is left
    expected = torch.zeros(2, 3, dtype=q.dtype).index_add(0, data.batch, q.unsqueeze(-1) * data.pos)
    charges = model.charge_dipoles
    model.charge_dipoles = torch.nn.ModuleDict()
    with torch.no_grad():
        without = model(data, compute_forces=False)["dipole"]
    model.charge_dipoles = charges
    torch.testing.assert_close(out["dipole"] - without, expected, atol=1e-12, rtol=0)
    assert expected.abs().max() > 1e-2


def test_periodic_structure_is_refused_in_one_line():
    atoms = molecule(3)
    atoms.cell = np.eye(3) * 12.0
    atoms.pbc = True
    with pytest.raises(MLIPError, match="partial charges") as err:
        charge_model()(batch_of([atoms]), compute_forces=False)
    assert "\n" not in str(err.value) and "'dipole'" in str(err.value)


@pytest.mark.parametrize(
    "name, entry",
    [
        ("polarizability", {"key": "polarizability", "type": "rank2", "charges": True}),
        ("dipole", {"key": "dipole", "type": "vector", "per_atom": True, "charges": True}),
        ("energy", {"key": "energy", "charges": True}),
    ],
)
def test_charges_on_other_targets_is_a_config_error(tmp_path, name, entry):
    from mlip.training.config import load_config

    raw = tiny_raw_config(tmp_path)
    raw["targets"] = {"energy": {"key": "energy"}, name: entry}
    with pytest.raises(MLIPError, match=f"'targets.{name}.charges' needs a per-structure vector") as err:
        load_config(None, raw=raw)
    assert "\n" not in str(err.value)


def test_training_with_charges_saves_and_reloads(tmp_path):
    from mlip.training.config import load_config
    from mlip.training.trainer import train

    raw = tiny_raw_config(tmp_path / "run")
    raw["data"]["train_file"] = str(DATA / "tensors" / "ethanol_b3lyp_train.xyz")
    raw["data"].pop("test_file", None)
    raw["data"]["e0s"] = "fit"
    raw["targets"] = {"dipole": {"key": "dipole", "type": "vector", "unit": "e*angstrom", "charges": True}}
    raw["training"]["max_epochs"] = 2
    train(load_config(None, raw=raw))
    model = load_model(str(tmp_path / "run" / "model.pt"), dtype=torch.float64)
    assert "dipole" in model.charge_dipoles
    import ase.io

    frames = ase.io.read(DATA / "tensors" / "ethanol_b3lyp_test.xyz", ":2")
    with torch.no_grad():
        first = model(batch_of(frames), compute_forces=False)["dipole"]
    path = tmp_path / "again.pt"
    save_model(model, str(path))
    with torch.no_grad():
        second = load_model(str(path), dtype=torch.float64)(batch_of(frames), compute_forces=False)["dipole"]
    torch.testing.assert_close(first, second, atol=1e-12, rtol=0)
    labels = torch.tensor(np.array([f.get_dipole_moment() for f in frames]))
    assert first.shape == labels.shape
