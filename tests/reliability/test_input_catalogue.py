"""A catalogue of malformed or hostile inputs, each run through the real ``mlip`` entry point.

Every bad input must end with exit code 1 and ONE line on stderr that names the file, the structure
index and the key or field at fault (no traceback). Valid but unusual inputs must give the right answer
(see test_unusual_inputs.py).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import bulk

from mlip.cli.main import main
from tests.conftest import DATA, tiny_raw_config


def ethanol_frames(n: int = 6) -> list[Atoms]:
    """Frames with labels in info/arrays under REF_ keys (no calculator)."""
    out = []
    for atoms in ase.io.read(DATA / "ethanol" / "test.xyz", f":{n}"):
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info["REF_energy"] = energy
        atoms.arrays["REF_forces"] = forces
        out.append(atoms)
    return out


def carbon_frames(n: int = 4) -> list[Atoms]:
    out = []
    for k in range(n):
        atoms = bulk("C", "diamond", a=3.57)
        atoms.rattle(0.02, seed=k)
        atoms.info["REF_energy"] = -10.0 - k
        atoms.info["REF_stress"] = np.zeros(6)
        atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
        out.append(atoms)
    return out


REF_TARGETS = {"energy": {"key": "REF_energy"}, "forces": {"key": "REF_forces", "weight": 10.0}}


def write_config(tmp: Path, train_file: str, **overrides) -> str:
    raw = tiny_raw_config(
        tmp / "run",
        **{
            "data.train_file": train_file,
            "data.max_structures": None,
            "data.e0s": "fit",
            "targets": REF_TARGETS,
            "training.max_epochs": 1,
            **overrides,
        },
    )
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def write_xyz(tmp: Path, frames, name: str = "data.xyz") -> str:
    path = tmp / name
    ase.io.write(path, frames, format="extxyz")
    return str(path)


# Each builder gets tmp_path and returns (argv, fragments that must all appear in the error line).
def case_empty_file(tmp):
    (tmp / "empty.xyz").write_text("")
    return ["train", write_config(tmp, str(tmp / "empty.xyz"))], ["empty.xyz", "file is empty"]


def case_truncated_last_frame(tmp):
    path = Path(write_xyz(tmp, ethanol_frames(4)))
    text = path.read_text()
    path.write_text(text[: len(text) - 300])
    return ["train", write_config(tmp, str(path))], ["data.xyz", "structure 3", "could not be read"]


def case_non_numeric_field(tmp):
    frames = ethanol_frames()
    frames[3].info["REF_energy"] = "abc"
    return ["train", write_config(tmp, write_xyz(tmp, frames))], [
        "structure 3",
        "'REF_energy'",
        "not numeric",
    ]


def case_missing_label_in_some_frames(tmp):
    frames = ethanol_frames()
    del frames[2].info["REF_energy"]
    return ["train", write_config(tmp, write_xyz(tmp, frames))], ["structure 2", "'REF_energy'", "not found"]


def case_forces_wrong_shape(tmp):
    frames = ethanol_frames()
    frames[4].arrays["REF_forces"] = frames[4].arrays["REF_forces"][:, :2].copy()
    return ["train", write_config(tmp, write_xyz(tmp, frames))], ["structure 4", "'REF_forces'", "shape"]


def case_stress_wrong_size(tmp):
    frames = carbon_frames()
    frames[1].info["REF_stress"] = np.zeros(5)
    cfg = write_config(tmp, write_xyz(tmp, frames), targets={**REF_TARGETS, "stress": {"key": "REF_stress"}})
    return ["train", cfg], ["structure 1", "'REF_stress'", "5 numbers"]


def case_nan_in_positions(tmp):
    frames = ethanol_frames()
    frames[2].positions[3, 1] = np.nan
    return ["train", write_config(tmp, write_xyz(tmp, frames))], ["structure 2", "atom 3", "NaN"]


def case_nan_in_label(tmp):
    frames = ethanol_frames()
    frames[5].info["REF_energy"] = float("nan")
    return ["train", write_config(tmp, write_xyz(tmp, frames))], ["structure 5", "'REF_energy'", "NaN"]


def case_inf_in_forces(tmp):
    frames = ethanol_frames()
    frames[1].arrays["REF_forces"][0, 0] = np.inf
    return ["train", write_config(tmp, write_xyz(tmp, frames))], ["structure 1", "'REF_forces'", "Inf"]


def case_coincident_atoms(tmp):
    frames = ethanol_frames()
    frames[3].positions[1] = frames[3].positions[0]
    return ["train", write_config(tmp, write_xyz(tmp, frames))], ["structure 3", "atoms", "min_distance"]


def case_atoms_closer_than_configured_minimum(tmp):
    frames = ethanol_frames()
    cfg = write_config(tmp, write_xyz(tmp, frames), **{"data.min_distance": 1.2})
    return ["train", cfg], ["structure 0", "closer than min_distance=1.2"]


def case_unknown_element_at_inference(tmp, model):
    frames = ethanol_frames(3)
    frames[2].numbers[0] = 16
    return ["predict", model, write_xyz(tmp, frames), "-o", str(tmp / "o.xyz")], [
        "structure 2",
        "S not known",
    ]


def case_coincident_atoms_at_inference(tmp, model):
    frames = ethanol_frames(3)
    frames[1].positions[2] = frames[1].positions[5]
    return ["predict", model, write_xyz(tmp, frames), "-o", str(tmp / "o.xyz")], ["structure 1", "apart"]


def case_zero_volume_cell(tmp):
    frames = carbon_frames()
    frames[2].cell[2] = frames[2].cell[0] + frames[2].cell[1]
    return ["train", write_config(tmp, write_xyz(tmp, frames))], ["structure 2", "degenerate"]


def case_near_singular_cell(tmp, model):
    atoms = bulk("C", "diamond", a=3.57)
    atoms.cell[2] = atoms.cell[0] + atoms.cell[1] + 1e-9 * np.array([0.0, 0.0, 1.0])
    return ["predict", model, write_xyz(tmp, [atoms]), "-o", str(tmp / "o.xyz")], [
        "structure 0",
        "degenerate",
    ]


def case_zero_cell_vector_on_periodic_axis(tmp, model):
    atoms = bulk("C", "diamond", a=3.57)
    atoms.cell[1] = 0.0
    atoms.pbc = [True, True, True]
    return ["predict", model, write_xyz(tmp, [atoms]), "-o", str(tmp / "o.xyz")], ["structure 0", "axis 1"]


def case_huge_coordinates(tmp, model):
    frames = ethanol_frames(2)
    frames[1].positions += 1e8
    return ["predict", model, write_xyz(tmp, frames), "-o", str(tmp / "o.xyz")], [
        "structure 1",
        "larger than",
    ]


def case_unknown_yaml_key(tmp):
    path = Path(write_config(tmp, str(DATA / "ethanol" / "train.xyz")))
    raw = yaml.safe_load(path.read_text())
    raw["training"]["learning_rate"] = 0.01
    path.write_text(yaml.safe_dump(raw))
    return ["train", str(path)], ["config.yaml", "training.learning_rate", "did you mean"]


def case_wrong_yaml_type(tmp):
    cfg = write_config(tmp, str(DATA / "ethanol" / "train.xyz"))
    return ["train", cfg, "-o", "training.batch_size=eight"], [
        "config.yaml",
        "training.batch_size",
        "integer",
    ]


def case_invalid_yaml_syntax(tmp):
    path = tmp / "bad.yaml"
    path.write_text("data:\n  train_file: [oops\n")
    return ["train", str(path)], ["bad.yaml", "invalid YAML"]


def case_missing_train_file(tmp):
    return ["train", write_config(tmp, str(tmp / "nope.xyz"))], ["nope.xyz", "file not found"]


def case_missing_model_file(tmp):
    return ["eval", str(tmp / "nope.pt"), str(DATA / "ethanol" / "test.xyz")], ["nope.pt", "file not found"]


def case_directory_as_data(tmp, model):
    return ["eval", model, str(tmp)], [str(tmp), "directory"]


def case_garbage_structure_file(tmp, model):
    (tmp / "garbage.xyz").write_text("this is not\nan xyz file at all\n")
    return ["eval", model, str(tmp / "garbage.xyz")], ["garbage.xyz", "could not be read"]


def case_unwritable_output_dir(tmp):
    (tmp / "file").write_text("x")
    cfg = write_config(tmp, str(DATA / "ethanol" / "train.xyz"))
    return ["train", cfg, "-o", f"output_dir={tmp / 'file' / 'sub'}"], ["output_dir", "cannot create"]


def case_unwritable_predict_output(tmp, model):
    (tmp / "file").write_text("x")
    args = ["predict", model, str(DATA / "ethanol" / "test.xyz"), "-o", str(tmp / "file" / "out.xyz")]
    return args, ["out.xyz", "cannot write"]


def case_corrupted_checkpoint(tmp):
    cfg = write_config(tmp, write_xyz(tmp, ethanol_frames()))
    (tmp / "run").mkdir()
    # Seeded bytes (os.urandom made this test flaky: some byte strings raised IndexError inside
    # torch's unpickler); tests/reliability/test_corrupted_files.py covers many seeds and byte flips.
    (tmp / "run" / "checkpoint.pt").write_bytes(np.random.default_rng(12).bytes(2000))
    return ["train", cfg, "-o", "resume=true"], ["checkpoint.pt", "corrupted"]


def case_truncated_checkpoint(tmp, model):
    cfg = write_config(tmp, write_xyz(tmp, ethanol_frames()))
    (tmp / "run").mkdir()
    data = Path(model).read_bytes()
    (tmp / "run" / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    return ["train", cfg, "-o", "resume=true"], ["checkpoint.pt", "corrupted or truncated"]


def case_model_from_other_version(tmp, model):
    payload = torch.load(model, weights_only=True)
    payload["format_version"] = 999
    torch.save(payload, tmp / "future.pt")
    args = ["eval", str(tmp / "future.pt"), str(DATA / "ethanol" / "test.xyz")]
    return args, ["future.pt", "format version 999"]


def case_not_a_model_file(tmp):
    torch.save({"weights": torch.zeros(3)}, tmp / "other.pt")
    return ["eval", str(tmp / "other.pt"), str(DATA / "ethanol" / "test.xyz")], [
        "other.pt",
        "not an mlip model",
    ]


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MLIP_PWNED', '/tmp/mlip_pwned')}",))


def case_crafted_pickle(tmp):
    os.environ["MLIP_PWNED"] = str(tmp / "pwned")
    with open(tmp / "evil.pt", "wb") as handle:
        pickle.dump({"format": "mlip-model", "x": _Exploit()}, handle)
    return ["eval", str(tmp / "evil.pt"), str(DATA / "ethanol" / "test.xyz")], ["evil.pt", "refused"]


def case_empty_targets(tmp):
    cfg = write_config(tmp, str(DATA / "ethanol" / "train.xyz"), targets={})
    return ["train", cfg], ["config.yaml", "targets"]


def case_only_isolated_atoms(tmp):
    return [
        "train",
        write_config(
            tmp, str(DATA / "ethanol" / "isolated_atoms.xyz"), targets={"energy": {"key": "energy"}}
        ),
    ], ["isolated_atoms.xyz", "no structures"]


CASES_WITHOUT_MODEL = [
    case_empty_file,
    case_truncated_last_frame,
    case_non_numeric_field,
    case_missing_label_in_some_frames,
    case_forces_wrong_shape,
    case_stress_wrong_size,
    case_nan_in_positions,
    case_nan_in_label,
    case_inf_in_forces,
    case_coincident_atoms,
    case_atoms_closer_than_configured_minimum,
    case_zero_volume_cell,
    case_unknown_yaml_key,
    case_wrong_yaml_type,
    case_invalid_yaml_syntax,
    case_missing_train_file,
    case_missing_model_file,
    case_unwritable_output_dir,
    case_corrupted_checkpoint,
    case_not_a_model_file,
    case_crafted_pickle,
    case_empty_targets,
    case_only_isolated_atoms,
]
CASES_WITH_MODEL = [
    case_unknown_element_at_inference,
    case_coincident_atoms_at_inference,
    case_near_singular_cell,
    case_zero_cell_vector_on_periodic_axis,
    case_huge_coordinates,
    case_directory_as_data,
    case_garbage_structure_file,
    case_unwritable_predict_output,
    case_truncated_checkpoint,
    case_model_from_other_version,
]


def check_one_line_error(capsys, argv, fragments):
    if argv[0] == "predict":
        argv = [*argv, "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, f"exit code {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one line, got: {err}"
    assert lines[0].startswith("mlip: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("case", CASES_WITHOUT_MODEL, ids=lambda c: c.__name__[5:])
def test_bad_input_without_model(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, fragments = case(tmp_path)
    check_one_line_error(capsys, argv, fragments)
    assert not (tmp_path / "pwned").exists(), "a crafted pickle executed code"


@pytest.mark.parametrize("case", CASES_WITH_MODEL, ids=lambda c: c.__name__[5:])
def test_bad_input_with_model(case, tmp_path, capsys, monkeypatch, trained_run):
    monkeypatch.chdir(tmp_path)
    argv, fragments = case(tmp_path, str(trained_run / "model.pt"))
    check_one_line_error(capsys, argv, fragments)


def test_catalogue_size():
    assert len(CASES_WITHOUT_MODEL) + len(CASES_WITH_MODEL) >= 25
