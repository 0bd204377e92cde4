"""Stage two of training (raised loss weights, lower learning rate near the end), wall-clock
snapshots of the best model (learning curves from one run) and the wall-time column."""

from __future__ import annotations

import csv

import pytest
import torch

from mlip.errors import MLIPError
from mlip.training.checkpoint import safe_torch_load
from mlip.training.config import load_config
from mlip.training.trainer import Trainer, train
from tests.conftest import tiny_raw_config

STAGE_TWO = {
    "training.stage_two_start": 0.5,
    "training.stage_two_lr": 0.0007,
    "training.stage_two_weights": {"energy": 100.0},
    "data.max_structures": 30,
}


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_stage_two_switches_weights_and_learning_rate(tmp_path):
    cfg = load_config(None, raw=tiny_raw_config(tmp_path, **{**STAGE_TWO, "training.max_epochs": 4}))
    trainer = Trainer(cfg)
    trainer.run()
    rows = _rows(tmp_path / "metrics.csv")
    # epochs 1-2 in stage one (epoch index < 0.5 · 4), 3-4 in stage two
    assert [int(r["stage"]) for r in rows] == [1, 1, 2, 2]
    assert float(rows[1]["lr"]) == pytest.approx(0.005)
    assert float(rows[2]["lr"]) == pytest.approx(0.0007)
    weights = {s.name: s.weight for s in trainer.specs}
    assert weights == {"energy": 100.0, "forces": 10.0}  # forces keep their weight
    assert safe_torch_load(str(tmp_path / "checkpoint.pt"))["stage"] == 2
    wall = [float(r["wall_time_s"]) for r in rows]
    assert all(b > a > 0 for a, b in zip(wall, wall[1:]))


def test_stage_two_resume_matches_uninterrupted(tmp_path):
    """Stopped in stage two and resumed: the same weights as a run that never stopped."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(None, raw=tiny_raw_config(full, **{**STAGE_TWO, "training.max_epochs": 4})))
    # with 3 epochs stage two also starts at epoch index 2 (2 ≥ 0.5 · 3), so the first three
    # epochs are those of the 4-epoch run; the resumed fourth epoch must stay in stage two
    train(load_config(None, raw=tiny_raw_config(part, **{**STAGE_TWO, "training.max_epochs": 3})))
    train(
        load_config(
            None, raw=tiny_raw_config(part, **{**STAGE_TWO, "training.max_epochs": 4, "resume": True})
        )
    )
    assert [int(r["stage"]) for r in _rows(part / "metrics.csv")] == [1, 1, 2, 2]
    a = safe_torch_load(str(full / "checkpoint.pt"))
    b = safe_torch_load(str(part / "checkpoint.pt"))
    for key, value in a["model"]["state_dict"].items():
        assert torch.equal(value, b["model"]["state_dict"][key]), key
    # the resumed run's wall clock continues from the checkpoint's
    part_rows = _rows(part / "metrics.csv")
    assert float(part_rows[3]["wall_time_s"]) > float(part_rows[2]["wall_time_s"])


def test_snapshots_copy_the_best_model_at_each_mark(tmp_path):
    raw = tiny_raw_config(
        tmp_path,
        **{"training.max_epochs": 2, "data.max_structures": 30, "training.snapshot_minutes": [1e-6, 1e4]},
    )
    train(load_config(None, raw=raw))
    snaps = tmp_path / "snapshots"
    assert (snaps / "model_1e-06min.pt").exists()
    assert not (snaps / "model_10000min.pt").exists()  # never reached
    rows = _rows(snaps / "snapshots.csv")
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and float(rows[0]["wall_time_s"]) > 0
    snapshot = safe_torch_load(str(snaps / "model_1e-06min.pt"))
    assert snapshot["format"] == "mlip-model"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"training.stage_two_start": 1.5}, "stage_two_start"),
        ({"training.stage_two_weights": {"dipole": 1.0}}, "not a target"),
        ({"training.stage_two_weights": {"energy": "big"}}, "should be a number"),
        ({"training.snapshot_minutes": [5, -1]}, "snapshot_minutes"),
    ],
)
def test_invalid_stage_two_and_snapshot_settings(tmp_path, overrides, message):
    with pytest.raises(MLIPError, match=message):
        load_config(None, raw=tiny_raw_config(tmp_path, **overrides))
