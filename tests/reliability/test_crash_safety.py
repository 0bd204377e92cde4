"""Nothing is lost: a SIGKILLed run resumes to the same weights, NaN losses are handled,
interrupted predictions leave no partial file, checkpoints are replaced atomically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from mlip.cli.main import main
from mlip.errors import MLIPError
from mlip.io import atomic_torch_save, safe_torch_load
from mlip.training.config import load_config
from mlip.training.trainer import train
from tests.conftest import DATA, ROOT, tiny_raw_config

KILL_RUN = {"data.max_structures": 160, "training.max_epochs": 5, "training.batch_size": 4}


def _weights(run_dir):
    return safe_torch_load(str(run_dir / "checkpoint.pt"))


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    train(load_config(None, raw=tiny_raw_config(reference, **KILL_RUN)))

    killed = tmp_path / "killed"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_raw_config(killed, **KILL_RUN)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlip", "train", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 1800  # a wait for the first checkpoint, not a speed requirement
    ckpt = killed / "checkpoint.pt"
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint written"
    time.sleep(0.4)  # into the next epoch
    assert proc.poll() is None, "run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = _weights(killed)
    assert 1 <= saved["epoch"] < KILL_RUN["training.max_epochs"]

    result = main(["train", str(config), "-o", "resume=true"])
    assert result == 0
    a, b = _weights(reference), _weights(killed)
    assert a["epoch"] == b["epoch"] == KILL_RUN["training.max_epochs"]
    for key, value in a["model"]["state_dict"].items():
        assert torch.equal(value, b["model"]["state_dict"][key]), f"{key} differs after kill + resume"
    for key, value in a["ema"].items():
        assert torch.equal(value, b["ema"][key]), key
    rows = (killed / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, KILL_RUN["training.max_epochs"] + 1))


def _nan_on_calls(monkeypatch, calls):
    """Make the training loss NaN on the given (0-based) call numbers; None = always."""
    import mlip.training.trainer as trainer_module

    real = trainer_module.weighted_loss
    counter = {"n": 0}

    def patched(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        k = counter["n"]
        counter["n"] += 1
        if calls is None or k in calls:
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(trainer_module, "weighted_loss", patched)
    return counter


def test_nan_loss_batches_are_skipped(tmp_path, capsys, monkeypatch):
    _nan_on_calls(monkeypatch, {1, 4})
    raw = tiny_raw_config(
        tmp_path / "run", **{"data.max_structures": 24, "training.max_epochs": 2, "training.batch_size": 4}
    )
    train(load_config(None, raw=raw))
    state = safe_torch_load(str(tmp_path / "run" / "checkpoint.pt"))
    assert state["epoch"] == 2
    assert all(
        torch.isfinite(v).all() for v in state["model"]["state_dict"].values() if v.is_floating_point()
    )
    out = capsys.readouterr()
    assert (out.out + out.err).count("skipped a batch with NaN/Inf loss") == 2


def test_persistent_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    raw = tiny_raw_config(
        tmp_path / "run",
        **{
            "data.max_structures": 24,
            "training.max_epochs": 1,
            "training.batch_size": 4,
            "training.skip_nan_batches": 3,
        },
    )
    train(load_config(None, raw=raw))
    before = safe_torch_load(str(tmp_path / "run" / "checkpoint.pt"))
    _nan_on_calls(monkeypatch, None)
    raw.update({"resume": True})
    raw["training"]["max_epochs"] = 3
    with pytest.raises(MLIPError, match="NaN/Inf for 3 batches.*checkpoint.pt"):
        train(load_config(None, raw=raw))
    after = safe_torch_load(str(tmp_path / "run" / "checkpoint.pt"))
    assert after["epoch"] == before["epoch"] == 1
    for key, value in before["model"]["state_dict"].items():
        assert torch.equal(value, after["model"]["state_dict"][key])


def test_interrupted_predict_leaves_no_output(trained_run, tmp_path, monkeypatch):
    import mlip.cli.predict as predict_module

    real = predict_module.predict_batches

    def interrupted(*args, **kwargs):
        for k, item in enumerate(real(*args, **kwargs)):
            if k == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(predict_module, "predict_batches", interrupted)
    out = tmp_path / "out.xyz"
    code = main(
        [
            "predict",
            str(trained_run / "model.pt"),
            str(DATA / "ethanol" / "test.xyz"),
            "-o",
            str(out),
            "--batch-size",
            "8",
            "--no-progress",
        ]
    )
    assert code == 130
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"version": 1, "w": torch.ones(3)}, str(path))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"version": 2, "w": Boom()}, str(path))
    assert safe_torch_load(str(path))["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    np.testing.assert_array_equal(safe_torch_load(str(path))["w"].numpy(), np.ones(3))
