"""Stage two of training (raised loss weights, lower learning rate near the end), wall-clock
snapshots of the best model (learning curves from one run) and the wall-time column."""

from __future__ import annotations

import csv
import math

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


def test_cosine_over_a_time_budget_follows_the_wall_clock(tmp_path):
    """With max_time_minutes, scheduler: cosine sets the learning rate from the wall time at every
    step: the last step of epoch k ran between the wall times recorded for epochs k−1 and k, so its
    learning rate lies between the schedule's values there. AMSGrad is passed through."""
    budget_s, lr0, min_lr = 3.0, 0.005, 1e-5
    raw = tiny_raw_config(
        tmp_path,
        **{
            "data.max_structures": 30,
            "training.max_epochs": 1000,
            "training.max_time_minutes": budget_s / 60,
            "training.scheduler": "cosine",
            "training.lr": lr0,
            "training.min_lr": min_lr,
            "training.amsgrad": True,
        },
    )
    trainer = Trainer(load_config(None, raw=raw))
    trainer.run()
    assert trainer.optimizer.param_groups[0]["amsgrad"] is True

    def schedule(t: float) -> float:
        return min_lr + (lr0 - min_lr) * 0.5 * (1 + math.cos(math.pi * min(t / budget_s, 1.0)))

    rows = _rows(tmp_path / "metrics.csv")
    assert len(rows) >= 2
    previous = 0.0
    for row in rows:
        lr, wall = float(row["lr"]), float(row["wall_time_s"])
        assert schedule(wall) - 1e-12 <= lr <= schedule(previous) + 1e-12
        previous = wall
    lrs = [float(r["lr"]) for r in rows]
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] < lrs[0]
