"""NVE MD conserves energy with a trained model (float64): drift per atom per ps below a bound."""

from __future__ import annotations

import ase.io
import pytest
from ase.build import bulk

from mlip import MLIPCalculator
from mlip.training.config import load_config
from mlip.training.trainer import train
from scripts.nve_drift import nve_drift
from tests.conftest import DATA, tiny_raw_config

DRIFT_BOUND = 5e-4  # eV/atom/ps


def test_nve_molecule(trained_run):
    atoms = ase.io.read(DATA / "ethanol" / "test.xyz", 0)
    atoms.calc = None
    calc = MLIPCalculator(str(trained_run / "model.pt"), device="cpu", dtype="float64")
    result = nve_drift(atoms, calc, steps=400, timestep_fs=0.25)
    assert abs(result["drift_eV_per_atom_per_ps"]) < DRIFT_BOUND, result
    assert result["final_temperature_K"] > 10  # it really moved


@pytest.fixture(scope="module")
def carbon_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("carbon")
    raw = tiny_raw_config(
        out,
        **{
            "data.train_file": str(DATA / "carbon" / "carbon_reduced_100.xyz"),
            "data.max_structures": 40,
            "data.e0s": "fit",
            "data.cutoff": 3.5,
            "targets": {"energy": {"key": "energy"}, "forces": {"key": "force", "weight": 10.0}},
            "training.max_epochs": 3,
        },
    )
    train(load_config(None, raw=raw))
    return out / "model.pt"


def test_nve_periodic_box(carbon_model):
    atoms = bulk("C", "diamond", a=3.57, cubic=True).repeat((2, 2, 2))  # 64 atoms
    atoms.rattle(0.02, seed=0)
    calc = MLIPCalculator(str(carbon_model), device="cpu", dtype="float64")
    result = nve_drift(atoms, calc, steps=200, timestep_fs=0.5)
    assert abs(result["drift_eV_per_atom_per_ps"]) < DRIFT_BOUND, result
    assert result["final_temperature_K"] > 10
