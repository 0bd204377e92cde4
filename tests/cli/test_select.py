"""``mlip select``: query by committee. The chosen structures are the pool's highest spreads within
the trust window, their scores equal the spreads ``mlip predict --committee`` writes, the same
choice comes from the models or from a file holding their spread, and bad input gives one line."""

from __future__ import annotations

import re

import ase.io
import numpy as np
import pytest
from ase import Atoms

from mlip.cli.main import main
from mlip.cli.select import choose
from mlip.errors import MLIPError
from mlip.model.potential import save_model
from tests.calculators.test_born_charges import TARGETS, tensor_model
from tests.calculators.test_committee import model_files, models, molecule  # noqa: F401 (fixtures)


def pool(n: int = 12) -> list[Atoms]:
    """``n`` geometries of one molecule, increasingly distorted (so the spreads differ), each with a
    label the output must keep."""
    rng = np.random.default_rng(7)
    base = molecule()
    frames = []
    for k in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.02 * (1 + k % 5), size=atoms.positions.shape)
        atoms.info["REF_energy"] = float(k)
        frames.append(atoms)
    return frames


def test_choose_takes_the_highest_scores_in_the_window_apart_from_each_other():
    scores = np.array([0.1, 0.9, 0.5, 0.8, np.nan, 0.7, 3.0, 0.2])
    assert choose(scores, 3) == [6, 1, 3]
    assert choose(scores, 3, upper=1.0) == [1, 3, 5]  # 3.0 is above the trust window
    assert choose(scores, None, lower=0.6, upper=1.0) == [1, 3, 5]  # all that qualify
    assert choose(scores, 3, upper=1.0, min_separation=2) == [1, 3, 5]  # |3 - 1| = 2 is allowed
    assert choose(scores, 3, upper=1.0, min_separation=3) == [1, 5]  # 3, 2, 0 near 1; 7 near 5
    assert choose(np.array([0.5, 0.5, 0.4]), 1) == [0]  # ties: the earlier structure
    assert choose(scores, 2, lower=5.0) == []
    with pytest.raises(MLIPError, match="-n must be at least 1"):
        choose(scores, 0)


def test_select_writes_the_highest_spreads_as_predict_measures_them(model_files, tmp_path, capsys):  # noqa: F811
    frames = pool()
    data = tmp_path / "pool.xyz"
    ase.io.write(data, frames)
    in_file = ase.io.read(data, ":")
    spread_file = tmp_path / "spread.xyz"
    args = ["--no-progress", "--dtype", "float64", "--device", "cpu"]
    predict = ["predict", model_files[0], str(data), "-o", str(spread_file), "--committee"]
    assert main([*predict, *model_files[1:], *args]) == 0
    written = ase.io.read(spread_file, ":")
    expected_scores = np.array([np.max(a.arrays["MLIP_forces_std"]) for a in written])
    assert np.ptp(expected_scores) > 0  # the pool's spreads differ

    out = tmp_path / "chosen.xyz"
    assert main(["select", str(data), "-o", str(out), "-n", "4", "--models", *model_files, *args]) == 0
    chosen = ase.io.read(out, ":")
    expected = list(np.argsort(-expected_scores, kind="stable")[:4])
    assert [a.info["MLIP_select_index"] for a in chosen] == expected
    for atoms in chosen:
        i = atoms.info["MLIP_select_index"]
        assert atoms.info["MLIP_select_score"] == pytest.approx(expected_scores[i], rel=1e-8)
        assert atoms.info["REF_energy"] == float(i)  # the pool's labels and positions are kept
        np.testing.assert_array_equal(atoms.positions, in_file[i].positions)
    assert "wrote the 4 chosen" in capsys.readouterr().out

    # the same choice from the spread already in a file (mlip predict/md --committee wrote it)
    out2 = tmp_path / "chosen_from_file.xyz"
    assert main(["select", str(spread_file), "-o", str(out2), "-n", "4"]) == 0
    assert [a.info["MLIP_select_index"] for a in ase.io.read(out2, ":")] == expected

    # the energy score is the energy spread per atom; a window that excludes everything writes nothing
    out3 = tmp_path / "by_energy.xyz"
    assert main(["select", str(spread_file), "-o", str(out3), "--by", "energy", "-n", "2"]) == 0
    energy_scores = np.array([a.info["MLIP_energy_std"] / len(a) for a in written])
    chosen3 = ase.io.read(out3, ":")
    assert [a.info["MLIP_select_index"] for a in chosen3] == list(
        np.argsort(-energy_scores, kind="stable")[:2]
    )
    out4 = tmp_path / "none.xyz"
    assert (
        main(["select", str(spread_file), "-o", str(out4), "--lower", str(10 * expected_scores.max())]) == 0
    )
    assert not out4.exists() and "nothing written" in capsys.readouterr().out


def test_select_errors_are_one_line(model_files, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "pool.xyz"
    ase.io.write(data, pool(3))
    out = str(tmp_path / "out.xyz")
    dipole_only = [str(tmp_path / f"dipole{k}.pt") for k in range(2)]
    for k, path in enumerate(dipole_only):
        save_model(tensor_model([t for t in TARGETS if t["name"] == "dipole"], seed=k), path)
    cases = [
        (["select", str(data), "-o", out, "--models", *dipole_only], r"dipole0\.pt: the model predicts no"),
        (
            ["select", str(data), "-o", out],
            r"pool\.xyz, structure 0, key 'MLIP_forces_std': no committee spread",
        ),
        (["select", str(data), "-o", out, "--models", model_files[0]], "two or more models"),
        (["select", str(data), "-o", out, "--lower", "1", "--upper", "0.5"], "must be below --upper"),
        (["select", str(data), "-o", out, "-n", "0"], "-n must be at least 1"),  # before reading
        (["select", str(data), "-o", str(tmp_path / "no" / "x.xyz")], "cannot write"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mlip: error:"), err
        assert re.search(message, err[0]), (message, err[0])
