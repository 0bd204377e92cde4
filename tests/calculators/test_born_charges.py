"""Born effective charges and polarizability derivatives by autograd (float64).

They equal central finite differences of the model's own dipole and polarizability, sum to zero
over atoms (the model's tensors are sums of translation-invariant atomic terms), rotate as
tensors under O(3) and follow a permutation of the atoms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from mlip import MLIPCalculator
from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel
from tests.conftest import perturb_weights

TARGETS = [
    {"name": "energy", "kind": "energy", "key": "energy"},
    {"name": "forces", "kind": "forces", "key": "forces"},
    {"name": "dipole", "kind": "vector", "key": "mu", "irreps": [[1, 1]]},
    {"name": "polarizability", "kind": "rank2", "key": "alpha", "irreps": [[0, 1], [2, 1]]},
]


def tensor_model(targets=TARGETS, seed: int = 0, species=(1, 6, 8)) -> MLIPModel:
    """A small random float64 model with dipole and polarizability heads."""
    torch.manual_seed(seed)
    model = MLIPModel(
        list(species),
        3.5,
        targets=targets,
        backbone=dict(channels=8, lmax=2, num_layers=1, num_radial=4, radial_hidden=8),
        readout_hidden=8,
        tensor=dict(num_vectors=4, hidden=8),
    ).double()
    perturb_weights(model, 0.2)
    return model.eval()


def molecule(seed: int = 0) -> Atoms:
    """A distorted 5-atom molecule (C, O, 3 H) with every pair within the cutoff."""
    rng = np.random.default_rng(seed)
    pos = np.array([[0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [-0.5, 0.9, 0.1], [-0.4, -0.9, 0.3], [1.8, 0.8, -0.2]])
    return Atoms("COHHH", positions=pos + rng.normal(scale=0.08, size=pos.shape))


def with_charges(targets=TARGETS) -> list[dict]:
    """The targets with a partial-charge dipole (``μ = Σ q̃_i r_i + Σ μ_i``, mlip.model.charges)."""
    return [dict(t, charges=True) if t["name"] == "dipole" else t for t in targets]


@pytest.fixture(scope="module", params=["atomic dipoles", "partial charges"])
def calc(request):
    targets = with_charges() if request.param == "partial charges" else TARGETS
    return MLIPCalculator(tensor_model(targets), device="cpu", dtype="float64")


def _prop(calc, atoms, name):
    atoms = atoms.copy()
    atoms.calc = calc
    return np.asarray(calc.get_property(name, atoms))


def _finite_difference(calc, atoms, name, h=1e-5):
    """[N, *shape, 3]: central differences of a per-structure tensor property."""
    out = []
    for i in range(len(atoms)):
        cols = []
        for b in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, b] += h
            minus.positions[i, b] -= h
            cols.append((_prop(calc, plus, name) - _prop(calc, minus, name)) / (2 * h))
        out.append(np.stack(cols, axis=-1))
    return np.array(out)


def test_born_charges_equal_finite_differences(calc):
    atoms = molecule(1)
    z = _prop(calc, atoms, "born_charges")
    assert z.shape == (5, 3, 3)
    assert np.abs(z).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(z, _finite_difference(calc, atoms, "dipole"), atol=1e-8, rtol=1e-7)


def test_polarizability_derivatives_equal_finite_differences(calc):
    atoms = molecule(2)
    p = _prop(calc, atoms, "polarizability_derivatives")
    assert p.shape == (5, 3, 3, 3)
    assert np.abs(p).max() > 1e-3
    np.testing.assert_allclose(p, _finite_difference(calc, atoms, "polarizability"), atol=1e-8, rtol=1e-7)
    np.testing.assert_allclose(p, p.transpose(0, 2, 1, 3), atol=1e-12)  # α is symmetric


def test_energy_and_tensors_unchanged_when_derivatives_are_asked(calc):
    atoms = molecule(3)
    atoms.calc = calc
    e, f, mu = atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_dipole_moment().copy()
    calc.get_property("born_charges", atoms)
    assert set(calc.results) >= {"energy", "forces", "dipole", "born_charges"}
    assert calc.results["energy"] == pytest.approx(e, abs=1e-12)
    np.testing.assert_allclose(calc.results["forces"], f, atol=1e-12)
    np.testing.assert_allclose(calc.results["dipole"], mu, atol=1e-12)


def test_acoustic_sum_rule_holds_exactly(calc):
    """The dipole is a sum of atomic terms of interatomic vectors plus charges summing to zero times
    positions: translation invariant, Σ_i Z_i = 0."""
    atoms = molecule(4)
    z = _prop(calc, atoms, "born_charges")
    p = _prop(calc, atoms, "polarizability_derivatives")
    assert np.abs(z.sum(axis=0)).max() < 1e-11
    assert np.abs(p.sum(axis=0)).max() < 1e-11
    moved = atoms.copy()
    moved.positions += np.array([3.0, -1.0, 7.5])
    np.testing.assert_allclose(_prop(calc, moved, "dipole"), _prop(calc, atoms, "dipole"), atol=1e-12)


def _random_o3(seed: int, improper: bool) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


@pytest.mark.parametrize("improper", [False, True])
def test_derivatives_rotate_and_permute_as_tensors(calc, improper):
    atoms = molecule(5)
    rot = _random_o3(7 + improper, improper)
    z = _prop(calc, atoms, "born_charges")
    p = _prop(calc, atoms, "polarizability_derivatives")
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    np.testing.assert_allclose(
        _prop(calc, rotated, "born_charges"), np.einsum("ac,icd,bd->iab", rot, z, rot), atol=1e-10
    )
    np.testing.assert_allclose(
        _prop(calc, rotated, "polarizability_derivatives"),
        np.einsum("ad,be,cf,idef->iabc", rot, rot, rot, p),
        atol=1e-10,
    )
    perm = np.random.default_rng(3).permutation(len(atoms))
    np.testing.assert_allclose(_prop(calc, atoms[perm], "born_charges"), z[perm], atol=1e-10)


def test_missing_dipole_target_is_a_one_line_error():
    calc = MLIPCalculator(tensor_model(TARGETS[:2]), device="cpu")
    atoms = molecule(0)
    atoms.calc = calc
    assert "born_charges" not in calc.implemented_properties
    with pytest.raises(MLIPError, match="born_charges needs a per-structure vector target named 'dipole'"):
        calc.get_property("born_charges", atoms)
    only_dipole = MLIPCalculator(tensor_model(TARGETS[:3]), device="cpu")
    atoms.calc = only_dipole
    assert only_dipole.get_property("born_charges", atoms).shape == (5, 3, 3)
    with pytest.raises(MLIPError, match="named 'polarizability'") as err:
        only_dipole.get_property("polarizability_derivatives", atoms)
    assert "\n" not in str(err.value)


def test_predict_writes_born_charges(tmp_path, calc, capsys):
    import ase.io

    from mlip.cli.main import main
    from mlip.model.potential import save_model

    model_path, data, out = tmp_path / "model.pt", tmp_path / "in.xyz", tmp_path / "out.xyz"
    save_model(calc.model, str(model_path))
    frames = [molecule(8), molecule(9)[:4]]
    ase.io.write(data, frames)
    args = ["predict", str(model_path), str(data), "-o", str(out), "--device", "cpu", "--no-progress"]
    assert main([*args, "--born-charges", "--polarizability-derivatives", "--batch-size", "2"]) == 0
    written = ase.io.read(out, ":")
    for atoms, frame in zip(frames, written):
        n = len(atoms)
        atoms = frame.copy()  # the written positions (rounded to 1e-8 Å) are the ones to compare at
        assert frame.arrays["MLIP_born_charges"].shape == (n, 9)
        assert frame.arrays["MLIP_polarizability_derivatives"].shape == (n, 27)
        np.testing.assert_allclose(
            frame.arrays["MLIP_born_charges"].reshape(n, 3, 3), _prop(calc, atoms, "born_charges"), atol=1e-7
        )
        np.testing.assert_allclose(
            frame.arrays["MLIP_polarizability_derivatives"].reshape(n, 3, 3, 3),
            _prop(calc, atoms, "polarizability_derivatives"),
            atol=1e-7,
        )
        np.testing.assert_allclose(frame.info["MLIP_dipole"], _prop(calc, atoms, "dipole"), atol=1e-7)
    # Without a dipole target: one line, non-zero exit, nothing written.
    save_model(tensor_model(TARGETS[:2]), str(model_path))
    capsys.readouterr()
    assert main(["predict", str(model_path), str(data), "-o", str(tmp_path / "x.xyz"), "--born-charges"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlip: error: born_charges needs") and "'dipole'" in err[0]
    assert not (tmp_path / "x.xyz").exists()
