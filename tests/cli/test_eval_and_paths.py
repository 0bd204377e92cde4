"""``mlip eval`` label keys and mean predictor; config paths; E0 files read with the target's key."""

from __future__ import annotations

import shutil

import ase.io
import numpy as np
import pytest
import torch
import yaml

from mlip.cli.evaluate import run_eval
from mlip.data.dataset import parse_e0s
from mlip.errors import MLIPError
from mlip.model.potential import load_model, model_payload
from mlip.training.config import load_config
from tests.conftest import DATA, ROOT

TEST_FILE = str(DATA / "ethanol" / "test.xyz")


def _ref_keyed_model(trained_run, tmp_path) -> str:
    """The trained model, as if trained on REF_energy / REF_forces."""
    model = load_model(str(trained_run / "model.pt"))
    payload = model_payload(model)
    for target in payload["hyperparameters"]["targets"]:
        target["key"] = "REF_" + target["key"]
    path = tmp_path / "ref_model.pt"
    torch.save(payload, path)
    return str(path)


def test_eval_falls_back_to_ase_standard_names(trained_run, tmp_path, capsys):
    path = _ref_keyed_model(trained_run, tmp_path)
    metrics = run_eval(path, TEST_FILE, [], 16, "cpu", "float64")
    out = capsys.readouterr().out
    assert "energy ← 'energy'" in out and "forces ← 'forces'" in out
    reference = run_eval(str(trained_run / "model.pt"), TEST_FILE, [], 16, "cpu", "float64")
    assert metrics["forces_rmse"] == pytest.approx(reference["forces_rmse"], rel=1e-12)
    # an explicit --key is taken as given: no silent fallback
    with pytest.raises(MLIPError, match="none of the model's label keys"):
        run_eval(path, TEST_FILE, ["energy=nope", "forces=nope"], 16, "cpu", "float64")


def test_eval_mean_predictor_is_the_training_mean(trained_run, capsys):
    model = load_model(str(trained_run / "model.pt"))
    means = model.hyperparameters["label_means"]
    assert sorted(means) == ["energy", "forces"] and len(means["forces"]) == 3
    metrics = run_eval(str(trained_run / "model.pt"), TEST_FILE, [], 16, "cpu", "float64")
    assert "training-set mean (stored in the model)" in capsys.readouterr().out
    frames = ase.io.read(TEST_FILE, ":")
    per_atom = np.array([a.get_potential_energy() / len(a) for a in frames])
    expected = np.sqrt(np.mean((per_atom - means["energy"][0]) ** 2))
    assert metrics["energy_mean_rmse"] == pytest.approx(expected, rel=1e-9)
    own = np.std(per_atom)  # what the column used to show: the test set's own mean
    assert abs(metrics["energy_mean_rmse"] - own) > 1e-6 * own
    forces = np.concatenate([a.get_forces() for a in frames])
    expected = np.sqrt(np.mean((forces - np.array(means["forces"])) ** 2))
    assert metrics["forces_mean_rmse"] == pytest.approx(expected, rel=1e-9)


def _write_config(folder, train_file, name="config.yaml", **data):
    folder.mkdir(parents=True, exist_ok=True)
    raw = {"data": {"train_file": train_file, **data}}
    (folder / name).write_text(yaml.safe_dump(raw))
    return folder / name


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "project"
    shutil.copy(TEST_FILE, tmp_path / "elsewhere.xyz")
    sub.mkdir()
    shutil.copy(TEST_FILE, sub / "train.xyz")
    shutil.copy(DATA / "ethanol" / "isolated_atoms.xyz", sub / "e0.xyz")
    config = _write_config(sub, "train.xyz", test_file="train.xyz", e0s="e0.xyz", preprocessed_dir="store")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("project/config.yaml")
    assert cfg.data.train_file == "project/train.xyz" and cfg.data.test_file == "project/train.xyz"
    assert cfg.data.e0s == "project/e0.xyz"
    assert cfg.data.preprocessed_dir == "store"  # an output folder not there yet: current directory
    # a file that is not beside the config but in the current directory (old behaviour) still works
    cfg = load_config(str(_write_config(sub, "elsewhere.xyz", "other.yaml")))
    assert cfg.data.train_file == "elsewhere.xyz"
    # command-line overrides stay relative to the current directory
    cfg = load_config(str(config), ["data.train_file=elsewhere.xyz"])
    assert load_config(str(config)).data.train_file == str(sub / "train.xyz")  # absolute config path
    assert cfg.data.train_file == "elsewhere.xyz"
    with pytest.raises(MLIPError) as err:
        load_config(str(_write_config(sub, "missing.xyz", "missing.yaml")))
    message = str(err.value)
    assert "missing.xyz" in message and str(sub) in message and str(tmp_path) in message


def test_shipped_configs_still_resolve_from_the_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    for name in ("example", "carbon", "tensors", "tensors_qm7x"):
        cfg = load_config(f"configs/{name}.yaml")
        assert (ROOT / cfg.data.train_file).is_file(), name


def test_e0s_file_is_read_with_the_energy_targets_key(tmp_path):
    frames = ase.io.read(DATA / "ethanol" / "isolated_atoms.xyz", ":")
    expected = {int(a.numbers[0]): a.get_potential_energy() for a in frames}
    for atoms in frames:
        atoms.info["REF_energy"] = atoms.get_potential_energy() / 27.211386245988
        atoms.calc = None
    ase.io.write(tmp_path / "e0.xyz", frames, format="extxyz")
    e0s = parse_e0s(str(tmp_path / "e0.xyz"), "config", "REF_energy", 27.211386245988)
    assert e0s == pytest.approx(expected, rel=1e-12)
    with pytest.raises(MLIPError, match="no energy under 'other' or 'energy'"):
        parse_e0s(str(tmp_path / "e0.xyz"), "config", "other")
    # ASE's standard name is the fallback (the shipped file stores `energy`)
    shipped = parse_e0s(str(DATA / "ethanol" / "isolated_atoms.xyz"), "config", "REF_energy")
    assert shipped == pytest.approx(expected)
