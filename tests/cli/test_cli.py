"""The ``mlip`` command: train with overrides, eval, predict, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import ase.io
import numpy as np
import pytest
import yaml

from mlip.cli.main import main
from tests.conftest import DATA, ROOT, tiny_raw_config


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "mlip", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_train_command_with_overrides(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_raw_config(tmp_path / "ignored", **{"data.max_structures": 12})))
    out = tmp_path / "run1"
    result = run_cli("train", str(config), "-o", f"output_dir={out}", "-o", "training.max_epochs=1")
    assert result.returncode == 0, result.stderr
    assert (out / "model.pt").exists() and (out / "checkpoint.pt").exists()
    assert not (tmp_path / "ignored").exists()


def test_eval_prints_table(trained_run, capsys):
    assert (
        main(["eval", str(trained_run / "model.pt"), str(DATA / "ethanol" / "test.xyz"), "--device", "cpu"])
        == 0
    )
    out = capsys.readouterr().out
    assert "energy" in out and "forces" in out and "RMSE" in out


def test_predict_writes_labels(trained_run, tmp_path):
    out = tmp_path / "pred.xyz"
    assert (
        main(
            [
                "predict",
                str(trained_run / "model.pt"),
                str(DATA / "ethanol" / "test.xyz"),
                "-o",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
                "--batch-size",
                "7",
            ]
        )
        == 0
    )
    frames = ase.io.read(out, ":")
    assert len(frames) == 200
    assert "MLIP_energy" in frames[5].info and frames[5].arrays["MLIP_forces"].shape == (9, 3)
    assert np.isclose(frames[5].arrays["MLIP_energies"].sum(), frames[5].info["MLIP_energy"])
    # batching does not change results
    single = tmp_path / "single.xyz"
    main(
        [
            "predict",
            str(trained_run / "model.pt"),
            str(DATA / "ethanol" / "test.xyz"),
            "-o",
            str(single),
            "--device",
            "cpu",
            "--no-progress",
            "--batch-size",
            "1",
        ]
    )
    one = ase.io.read(single, 5)
    assert one.info["MLIP_energy"] == pytest.approx(frames[5].info["MLIP_energy"], abs=1e-8)


def test_predict_periodic_writes_stress(trained_run, tmp_path):
    out = tmp_path / "carbon.xyz"
    assert (
        main(
            [
                "predict",
                str(trained_run / "model.pt"),
                str(DATA / "carbon" / "carbon_reduced_100.xyz"),
                "-o",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    frame = ase.io.read(out, 0)
    assert np.asarray(frame.info["MLIP_stress"]).shape == (6,)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["eval", "{model}", "missing.xyz"], "missing.xyz: file not found"),
        (["eval", "missing.pt", "{data}"], "missing.pt: file not found"),
        (["predict", "{model}", "{empty}", "-o", "{out}"], "file is empty"),
        (["train", "missing.yaml"], "config file not found"),
        (
            ["eval", "{model}", "{data}", "--key", "energy=REF_nope", "--key", "forces=REF_nope"],
            "none of the model's label keys",
        ),
    ],
)
def test_errors_are_one_line_and_exit_nonzero(trained_run, tmp_path, args, fragment):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    fill = {
        "model": str(trained_run / "model.pt"),
        "data": str(DATA / "ethanol" / "test.xyz"),
        "empty": str(empty),
        "out": str(tmp_path / "o.xyz"),
    }
    result = run_cli(*[a.format(**fill) for a in args], cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlip: error:"), result.stderr
    assert fragment in lines[0]
