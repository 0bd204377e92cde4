"""Training tensor targets on shipped data: errors fall well below the mean predictor's."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

from mlip import MLIPCalculator
from mlip.cli.main import main
from mlip.training.config import load_config
from mlip.training.trainer import train
from tests.conftest import DATA, tiny_raw_config


@pytest.fixture(scope="module")
def tensor_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tensors")
    raw = tiny_raw_config(
        out,
        **{
            "data.train_file": str(DATA / "tensors" / "ethanol_b3lyp_train.xyz"),
            "data.test_file": str(DATA / "tensors" / "ethanol_b3lyp_test.xyz"),
            "data.max_structures": None,
            "data.valid_fraction": 0.15,
            "data.e0s": "fit",
            "targets": {
                "energy": {"key": "energy", "weight": 1.0},
                "dipole": {"key": "dipole", "type": "vector", "unit": "e*angstrom", "weight": 10.0},
                "polarizability": {"key": "polarizability", "type": "rank2", "weight": 1.0},
            },
            "training.max_epochs": 12,
            "training.batch_size": 8,
            "training.ema_decay": 0.9,
            "model.channels": 24,
            "model.radial_hidden": 24,
            "model.tensor_hidden": 24,
        },
    )
    result = train(load_config(None, raw=raw))
    return out, result


def test_tensor_errors_well_below_mean_predictor(tensor_run):
    _, result = tensor_run
    test = result["test"]
    # baseline: predicting the mean tensor of the test labels for every structure
    for name in ("dipole", "polarizability", "polarizability_aniso"):
        assert test[f"{name}_rmse"] < 0.5 * test[f"{name}_mean_rmse"], (name, test)
    # The isotropic part (a small conformational variation on a large mean) learns slowest: ~0.6×
    # after these 12 short epochs, 0.31× with configs/tensors.yaml (60 epochs).
    assert test["polarizability_iso_rmse"] < 0.8 * test["polarizability_iso_mean_rmse"], test


def test_calculator_gives_dipole_and_polarizability(tensor_run):
    """Through the ASE calculator: far better than predicting the training mean (or zero)."""
    out, _ = tensor_run
    frames = ase.io.read(DATA / "tensors" / "ethanol_b3lyp_test.xyz", ":12")
    calc = MLIPCalculator(str(out / "model.pt"), device="cpu")
    means = calc.model.hyperparameters["label_means"]
    mu_err, mu_mean_err, mu_zero_err, alpha_err, alpha_mean_err = [], [], [], [], []
    for atoms in frames:
        label_mu = atoms.get_dipole_moment()
        label_alpha = np.asarray(atoms.info["polarizability"], dtype=float).reshape(3, 3)
        atoms.calc = calc
        mu = atoms.get_dipole_moment()
        alpha = atoms.calc.get_property("polarizability", atoms)
        assert mu.shape == (3,) and alpha.shape == (3, 3)
        np.testing.assert_allclose(alpha, alpha.T, atol=1e-10)
        assert np.isfinite(atoms.get_potential_energy())
        mu_err.append(mu - label_mu)
        mu_mean_err.append(np.asarray(means["dipole"]) - label_mu)
        mu_zero_err.append(label_mu)
        alpha_err.append(alpha - label_alpha)
        alpha_mean_err.append(np.asarray(means["polarizability"]).reshape(3, 3) - label_alpha)

    def rms(values):
        return float(np.sqrt(np.mean(np.square(values))))

    assert rms(mu_err) < 0.5 * min(rms(mu_mean_err), rms(mu_zero_err)), (rms(mu_err), rms(mu_mean_err))
    assert rms(alpha_err) < 0.5 * rms(alpha_mean_err), (rms(alpha_err), rms(alpha_mean_err))


def test_predict_and_eval_with_tensors(tensor_run, tmp_path, capsys):
    out, _ = tensor_run
    pred = tmp_path / "pred.xyz"
    data = str(DATA / "tensors" / "ethanol_b3lyp_test.xyz")
    assert (
        main(["predict", str(out / "model.pt"), data, "-o", str(pred), "--device", "cpu", "--no-progress"])
        == 0
    )
    frame = ase.io.read(pred, 3)
    assert np.asarray(frame.info["MLIP_dipole"]).shape == (3,)
    assert np.asarray(frame.info["MLIP_polarizability"]).shape == (9,)
    assert main(["eval", str(out / "model.pt"), data, "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    for name in ("dipole", "polarizability_iso", "polarizability_aniso"):
        assert name in table
