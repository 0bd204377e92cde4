"""Config parsing: overrides, unknown keys with suggestions, type errors, targets."""

from __future__ import annotations

import pytest

from mlip.errors import MLIPError
from mlip.training.config import apply_overrides, load_config

BASE = {"data": {"train_file": "x.xyz"}}


def test_dotted_overrides_parse_yaml_values():
    raw = apply_overrides(
        {"training": {"max_epochs": 5}},
        ["training.max_epochs=2", "output_dir=run1", "training.ema_decay=null", "data.e0s={H: -1.0}"],
    )
    assert raw["training"]["max_epochs"] == 2
    assert raw["output_dir"] == "run1"
    assert raw["training"]["ema_decay"] is None
    assert raw["data"]["e0s"] == {"H": -1.0}


def test_example_config_loads_with_overrides():
    cfg = load_config("configs/example.yaml", ["output_dir=run1", "training.max_epochs=2"])
    assert cfg.output_dir == "run1" and cfg.training.max_epochs == 2
    names = [s.name for s in cfg.target_specs()]
    assert names[:2] == ["energy", "forces"]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({**BASE, "trainig": {}}, "did you mean 'training'"),
        ({**BASE, "training": {"max_epoch": 3}}, "did you mean 'max_epochs'"),
        ({**BASE, "training": {"lr": "fast"}}, "'training.lr' should be a number"),
        ({**BASE, "training": {"batch_size": 2.5}}, "'training.batch_size' should be an integer"),
        ({**BASE, "resume": "yes"}, "'resume' should be true or false"),
        ({**BASE, "dtype": "float16"}, "'dtype' has an invalid value 'float16' (allowed: float32, float64)"),
        (
            {**BASE, "training": {"scheduler": "cosin"}},
            "(allowed: plateau, cosine, none); did you mean 'cosine'?",
        ),
        ({**BASE, "device": "gpu"}, "(allowed: auto, cpu, cuda, cuda:N)"),
        ({**BASE, "device": "cuda:N"}, "'device' has an invalid value 'cuda:N'"),
        ({**BASE, "targets": {"dipole": {"key": "mu"}}}, "target 'dipole' needs 'type'"),
        ({**BASE, "targets": {"efg": {"type": "spherical", "irreps": [[2, 3]]}}}, "needs 'irreps'"),
        ({**BASE, "targets": {"forces": {"key": "f"}}}, "need an 'energy' target"),
        ({**BASE, "targets": {"mu": {"type": "vector", "unit": "debey"}}}, "did you mean 'debye'"),
        ({**BASE, "targets": {"mu": {"type": "vector", "unit": "Debye"}}}, "did you mean 'debye'"),
        ({**BASE, "targets": {"mu": {"type": "vector", "unit": "furlong"}}}, "valid: eV, Hartree"),
        ({**BASE, "targets": {"energy": {"unit": "hartree"}}}, "did you mean 'Hartree'"),
        # a type was given: say that its value is not allowed, not that it is missing
        (
            {**BASE, "targets": {"mu": {"type": "tensor"}}},
            "'targets.mu.type' is 'tensor', which is not one of",
        ),
        ({**BASE, "targets": {"energy": {"weight": -1}}}, "'targets.energy.weight' must be ≥ 0"),
        # model settings that used to end in tracebacks inside the model
        ({**BASE, "model": {"num_vectors": 2}}, "'model.num_vectors' must be ≥ 3 (got 2)"),
        ({**BASE, "model": {"num_layers": 0}}, "'model.num_layers' must be ≥ 1 (got 0)"),
        ({**BASE, "model": {"channels": -4}}, "'model.channels' must be ≥ 1 (got -4)"),
        ({**BASE, "model": {"channels": 0}}, "'model.channels' must be ≥ 1 (got 0)"),
        ({**BASE, "model": {"lmax": -1}}, "'model.lmax' must be ≥ 0 and ≤ 8 (got -1)"),
        ({**BASE, "model": {"num_radial": 0}}, "'model.num_radial' must be ≥ 1"),
        ({**BASE, "model": {"readout_hidden": 0}}, "'model.readout_hidden' must be ≥ 1"),
        ({**BASE, "model": {"radial_species": -2}}, "'model.radial_species' must be ≥ 0"),
        (
            {**BASE, "model": {"channels": 32, "density_messages": 64}},
            "'model.density_messages' (64) cannot exceed 'model.channels' (32)",
        ),
        (
            {**BASE, "model": {"lmax": 2, "density_message_lmax": 3}},
            "'model.density_message_lmax' (3) cannot exceed 'model.lmax' (2)",
        ),
        ({**BASE, "model": {"density_message_lmax": -1}}, "'model.density_message_lmax' must be ≥ 0"),
        (
            {**BASE, "model": {"density_message_radial": "cubic"}},
            "'model.density_message_radial' has an invalid value 'cubic'",
        ),
        (
            {**BASE, "model": {"bispectrum_channels": 65}},
            "'model.bispectrum_channels' (65) cannot exceed 'model.channels' (64)",
        ),
        (
            {**BASE, "model": {"lmax": 0}, "targets": {"energy": {}, "mu": {"type": "vector"}}},
            "'model.lmax' must be ≥ 1 with tensor targets (mu)",
        ),
        ({**BASE, "training": {"lr": 0}}, "'training.lr' must be > 0.0 (got 0.0)"),
        ({**BASE, "training": {"valid_batch_size": 0}}, "'training.valid_batch_size' must be ≥ 1"),
        ({**BASE, "data": {"train_file": "x.xyz", "cutoff": -1}}, "'data.cutoff' must be > 0.0"),
        ({"data": {}}, "'data.train_file' is required"),
        ({**BASE, "training": []}, "should be a mapping"),
    ],
)
def test_bad_configs_give_one_line_errors(raw, fragment):
    with pytest.raises(MLIPError) as err:
        load_config(None, raw=raw)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_choices_accept_indexed_cuda(device):
    assert load_config(None, raw={**BASE, "device": device}).device == device


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(MLIPError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train_file: [unclosed\n")
    with pytest.raises(MLIPError, match="invalid YAML"):
        load_config(str(bad))


def test_tensor_target_specs_units():
    cfg = load_config(
        None,
        raw={
            **BASE,
            "targets": {
                "polarizability": {"key": "alpha", "type": "rank2", "unit": "bohr3"},
                "efg": {"key": "efg", "type": "spherical", "irreps": [[2, 1]], "per_atom": True},
            },
        },
    )
    specs = {s.name: s for s in cfg.target_specs()}
    assert specs["polarizability"].irreps == ((0, 1), (2, 1))
    assert specs["polarizability"].unit_factor == pytest.approx(0.529177210903**3)
    assert specs["efg"].per_atom and specs["efg"].label_shape == (5,)


@pytest.mark.parametrize("path", sorted(p.name for p in __import__("pathlib").Path("configs").glob("*.yaml")))
def test_shipped_configs_are_valid_and_their_files_exist(path):
    import os

    cfg = load_config(f"configs/{path}")
    for name in ("train_file", "valid_file", "test_file"):
        value = getattr(cfg.data, name)
        assert value is None or os.path.exists(value), (path, name, value)
    if isinstance(cfg.data.e0s, str) and cfg.data.e0s not in ("auto", "fit", "zero"):
        assert os.path.exists(cfg.data.e0s)
    assert cfg.target_specs()


def test_model_setting_at_the_edge_of_its_range_builds_a_model():
    """The lowest allowed values really work (the ranges are not stricter than the model)."""
    import torch
    from ase.build import molecule

    from mlip.data.graph import atoms_to_graph
    from mlip.model.potential import MLIPModel

    cfg = load_config(
        None,
        raw={
            **BASE,
            "model": {
                "channels": 1,
                "num_layers": 1,
                "lmax": 1,
                "num_radial": 1,
                "radial_hidden": 1,
                "readout_hidden": 1,
                "num_vectors": 3,
                "tensor_hidden": 1,
            },
            "targets": {"energy": {}, "forces": {}, "alpha": {"type": "rank2", "symmetric": False}},
        },
    )
    m = cfg.model
    model = MLIPModel(
        [1, 8],
        cutoff=3.0,
        targets=[s.to_dict() for s in cfg.target_specs()],
        backbone=dict(
            channels=m.channels,
            num_layers=m.num_layers,
            lmax=m.lmax,
            num_radial=m.num_radial,
            radial_hidden=m.radial_hidden,
        ),
        readout_hidden=m.readout_hidden,
        tensor=dict(num_vectors=m.num_vectors, hidden=m.tensor_hidden),
    )
    out = model(atoms_to_graph(molecule("H2O"), 3.0))
    assert out["alpha"].shape == (1, 3, 3) and torch.isfinite(out["forces"]).all()
