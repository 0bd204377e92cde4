"""Per-atom tensor targets on real data: atomic (Wannier-centroid) dipoles of liquid water."""

from __future__ import annotations

import ase.io
import numpy as np

from mlip.cli.main import main
from mlip.training.config import load_config
from mlip.training.trainer import train
from tests.conftest import DATA, tiny_raw_config


def test_per_atom_dipoles_train_and_predict(tmp_path):
    raw = tiny_raw_config(
        tmp_path / "run",
        **{
            "data.train_file": str(DATA / "tensors" / "water_atomic_dipole_train.xyz"),
            "data.valid_file": str(DATA / "tensors" / "water_atomic_dipole_valid.xyz"),
            "data.max_structures": 16,
            "data.cutoff": 3.5,
            "targets": {"atomic_dipole": {"key": "atomic_dipole", "type": "vector", "per_atom": True}},
            "training.max_epochs": 6,
            "training.batch_size": 2,
        },
    )
    result = train(load_config(None, raw=raw))["valid"]
    assert result["atomic_dipole_rmse"] < 0.5 * result["atomic_dipole_mean_rmse"], result

    out = tmp_path / "pred.xyz"
    data = str(DATA / "tensors" / "water_atomic_dipole_valid.xyz")
    assert main(["predict", str(tmp_path / "run" / "model.pt"), data, "-o", str(out), "--no-progress"]) == 0
    frame = ase.io.read(out, 0)
    pred = frame.arrays["MLIP_atomic_dipole"]
    assert pred.shape == (len(frame), 3)
    hydrogen = frame.numbers == 1
    # labels are zero on H; the model has learned that to within a small fraction of the O dipoles
    assert np.abs(pred[hydrogen]).mean() < 0.3 * np.abs(frame.arrays["atomic_dipole"][~hydrogen]).mean()
