"""Atomic reference energies (E0s): one solver, a warning when compositions do not fix them, and one
source of truth in the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from mlip.data.graph import atoms_to_graph
from mlip.data.reading import LabelledStructure
from mlip.data.statistics import fit_e0s, solve_e0s
from mlip.errors import _warned
from mlip.model.potential import MLIPModel, load_model, model_payload
from mlip.training.config import load_config
from mlip.training.trainer import prepare_data
from tests.conftest import DATA, tiny_raw_config

TRUE_E0 = {1: -13.6, 6: -1029.0, 8: -2040.0}


def _labelled(formulas: list[str], noise: float = 0.0) -> list[LabelledStructure]:
    rng = np.random.default_rng(0)
    out = []
    for formula in formulas:
        atoms = molecule(formula)
        energy = sum(TRUE_E0[int(z)] for z in atoms.numbers) + noise * rng.normal()
        out.append(LabelledStructure(atoms=atoms, labels={"energy": np.array(energy)}))
    return out


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _warned.clear()


def test_full_rank_compositions_recover_the_e0s(capsys):
    e0s = fit_e0s(_labelled(["CH4", "H2O", "CH3OH", "C2H6", "CO2", "H2"]), [1, 6, 8])
    assert e0s == pytest.approx(TRUE_E0, abs=1e-8)
    assert "warning" not in capsys.readouterr().err


def test_single_composition_warns_once_and_suggests_isolated_atoms(capsys):
    structures = _labelled(["CH3CH2OH"] * 5, noise=0.01)
    e0s = fit_e0s(structures, [1, 6, 8])
    fit_e0s(structures, [1, 6, 8])
    err = capsys.readouterr().err
    assert err.count("mlip: warning: E0 fit") == 1, err
    assert "isolated-atom energies" in err and "H, C, O" in err
    # minimum norm, and the one combination the data fix is right: the molecule's energy
    total = sum(e0s[int(z)] for z in structures[0].atoms.numbers)
    mean = np.mean([float(s.labels["energy"]) for s in structures])
    assert total == pytest.approx(mean, abs=1e-8)


def test_isolated_atom_energies_make_the_fit_well_posed(capsys):
    e0s = fit_e0s(_labelled(["CH3CH2OH"] * 3), [1, 6, 8], fixed={1: TRUE_E0[1], 6: TRUE_E0[6]})
    assert e0s == pytest.approx(TRUE_E0, abs=1e-8)
    assert "warning" not in capsys.readouterr().err


def test_solver_drops_a_species_that_never_occurs():
    counts = np.array([[1.0, 0.0], [2.0, 0.0]])
    energies = np.array([-1.0, -2.0])
    e0s = solve_e0s(counts.T @ counts, counts.T @ energies, [1, 8])
    assert e0s == pytest.approx({1: -1.0, 8: 0.0})


def test_store_and_in_memory_fits_agree_on_single_composition_data(tmp_path, capsys):
    from mlip.data.store import PreprocessedStore, preprocess

    raw = tiny_raw_config(
        tmp_path / "run",
        **{"data.e0s": "fit", "data.max_structures": 20, "data.preprocessed_dir": str(tmp_path / "s")},
    )
    preprocess(load_config(None, raw=raw), log=None)
    stored = PreprocessedStore(tmp_path / "s").statistics.e0s
    raw["data"]["preprocessed_dir"] = None
    memory = prepare_data(load_config(None, raw=raw), torch.float64).stats.e0s
    assert stored == pytest.approx(memory, rel=1e-9, abs=1e-7)
    assert "E0 fit" in capsys.readouterr().err  # ethanol only: C2H6O fixes one combination


def _model() -> MLIPModel:
    torch.manual_seed(0)
    return MLIPModel(
        [1, 6, 8],
        cutoff=3.0,
        e0s=TRUE_E0,
        backbone=dict(channels=4, num_layers=1, lmax=1, num_radial=2, radial_hidden=4),
        readout_hidden=4,
    )


def test_model_e0s_have_one_source_of_truth(tmp_path):
    model = _model()
    assert "e0" not in model.state_dict()
    assert model.e0.dtype == torch.float64 and model.e0.tolist() == [TRUE_E0[z] for z in (1, 6, 8)]
    graph = atoms_to_graph(Atoms("H"), 3.0)
    energy = float(model(graph, compute_forces=False)["energy"][0])
    other = MLIPModel(**{**model.hyperparameters, "e0s": {1: -1.0, 6: 0.0, 8: 0.0}})
    other.load_state_dict(model.state_dict())
    assert float(other(graph, compute_forces=False)["energy"][0]) == pytest.approx(energy + 12.6, abs=1e-6)
    # a file written when the model still had an (unused) ``e0`` buffer loads, and that buffer
    # cannot disagree with the hyperparameters
    payload = model_payload(model)
    payload["state_dict"]["e0"] = torch.zeros(3)
    torch.save(payload, tmp_path / "old.pt")
    old = load_model(str(tmp_path / "old.pt"))
    assert float(old(graph, compute_forces=False)["energy"][0]) == pytest.approx(energy, abs=1e-9)
