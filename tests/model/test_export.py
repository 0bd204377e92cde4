"""``mlip export``: the exported program reproduces the eager model.

* float64, 1e-10: per-atom energies on a molecule and a periodic cell, and forces and stress that
  an engine assembles from the edge forces (``F_i += g_e``, ``F_j −= g_e``, ``W = −Σ r_e ⊗ g_e``)
  against :class:`~mlip.calculators.ase_calculator.MLIPCalculator` (padded path, positions
  autograd);
* a periodic cell given as local atoms plus explicit ghost images (the MPI-domain layout): local
  energies and the forces folded back onto the owners equal the calculator's;
* shapes are dynamic (one program, several N, E and n_local);
* float32 against the float32 eager model;
* the CLI writes a ``.pt2`` that plain torch loads and runs in a process that never imports mlip.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from mlip.calculators.ase_calculator import MLIPCalculator
from mlip.cli.main import main
from mlip.data.graph import atoms_to_graph
from mlip.model.export import METADATA_FILE, LocalEnergyModel, export_program
from mlip.model.potential import MLIPModel, save_model
from tests.conftest import perturb_weights

CUTOFF = 2.6


def _model() -> MLIPModel:
    """Two layers, bispectrum, bond projections and the pair repulsion (every branch), noisy weights."""
    torch.manual_seed(11)
    model = MLIPModel(
        [1, 6, 8],
        cutoff=CUTOFF,
        e0s={1: -13.6, 6: -1029.5, 8: -2041.3},
        scale=1.7,
        shift=-0.3,
        backbone=dict(
            channels=8,
            num_layers=2,
            lmax=2,
            num_radial=4,
            radial_hidden=8,
            avg_num_neighbours=6.0,
            correlation=3,
            bond_channels=4,
            linear_update=True,
            radial_species=3,
            element_update=True,
            density_messages=4,
        ),
        readout_hidden=8,
        pair_repulsion={},
    ).double()
    return perturb_weights(model, 0.1).eval()


@pytest.fixture(scope="module")
def model() -> MLIPModel:
    return _model()


@pytest.fixture(scope="module")
def program64(model):
    program = export_program(model, "float64").module()
    assert model.backbone.allow_padding  # the caller's model keeps the padded (default) path
    return program


def _crystal() -> Atoms:
    crystal = bulk("C", "diamond", a=3.57, cubic=True)
    crystal.numbers[[1, 6]] = [8, 1]
    crystal.rattle(0.05, seed=1)
    return crystal


def _molecule() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    return atoms


def _inputs(atoms: Atoms, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """Contract inputs of a structure, all atoms local (edge vectors r_j − r_i + S·cell)."""
    graph = atoms_to_graph(atoms, CUTOFF, dtype=torch.float64)
    receivers, senders = graph.edge_index
    shifts = graph.unit_shifts @ graph.cell[0]
    vectors = graph.pos[senders] - graph.pos[receivers] + shifts
    return graph.numbers, graph.edge_index, vectors.to(dtype), torch.tensor(len(atoms))


def _assemble(edge_index, vectors, edge_forces, n_atoms):
    """Engine side: forces ``[N, 3]`` and virial ``[3, 3]`` from ``∂E/∂r_e``."""
    receivers, senders = edge_index
    forces = torch.zeros(n_atoms, 3, dtype=edge_forces.dtype)
    forces.index_add_(0, receivers, edge_forces).index_add_(0, senders, -edge_forces)
    virial = -(vectors.unsqueeze(2) * edge_forces.unsqueeze(1)).sum(0)
    return forces, virial


def _calculator_results(model, atoms):
    atoms = atoms.copy()
    atoms.calc = MLIPCalculator(model, device="cpu", dtype="float64")
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return atoms.get_potential_energies(), atoms.get_forces(), stress


@pytest.mark.parametrize("name", ["molecule", "crystal"])
def test_float64_matches_calculator(model, program64, name):
    atoms = _molecule() if name == "molecule" else _crystal()
    species, edge_index, vectors, n_local = _inputs(atoms)
    energies, edge_forces = program64(species, edge_index, vectors, n_local)
    ref_energies, ref_forces, ref_stress = _calculator_results(model, atoms)
    forces, virial = _assemble(edge_index, vectors, edge_forces, len(atoms))
    assert np.abs(ref_forces).max() > 1e-2  # a non-trivial check
    np.testing.assert_allclose(energies.numpy(), ref_energies, rtol=0, atol=1e-10)
    np.testing.assert_allclose(forces.numpy(), ref_forces, rtol=0, atol=1e-10)
    if ref_stress is not None:
        np.testing.assert_allclose(-virial.numpy() / atoms.get_volume(), ref_stress, rtol=0, atol=1e-10)


def _with_ghosts(atoms: Atoms, depth: float) -> tuple[Atoms, np.ndarray]:
    """The cell's atoms followed by every periodic image within ``depth`` Å of the cell's atoms (an
    open cluster), and for each atom the index of its owner in the cell."""
    frac = np.arange(-3, 4)
    shifts = np.array([[a, b, c] for a in frac for b in frac for c in frac if (a, b, c) != (0, 0, 0)])
    images = (atoms.positions[None, :, :] + (shifts @ atoms.cell.array)[:, None, :]).reshape(-1, 3)
    owner = np.tile(np.arange(len(atoms)), len(shifts))
    distance = np.linalg.norm(images[:, None, :] - atoms.positions[None, :, :], axis=-1).min(axis=1)
    keep = distance < depth
    cluster = Atoms(
        numbers=np.concatenate([atoms.numbers, atoms.numbers[owner[keep]]]),
        positions=np.concatenate([atoms.positions, images[keep]]),
    )
    return cluster, np.concatenate([np.arange(len(atoms)), owner[keep]])


def test_ghost_atoms_give_local_energies_and_forces(model, program64):
    """A periodic cell as an MPI domain sees it: local atoms first, then ghosts to depth 2 × cutoff
    (two layers), edges between all of them; forces on ghosts are added to their owners."""
    crystal = _crystal()
    cluster, owner = _with_ghosts(crystal, 2 * CUTOFF + 0.1)
    i, j, vectors = neighbor_list("ijD", cluster, CUTOFF)
    edge_index = torch.tensor(np.stack([i, j]), dtype=torch.long)
    vectors = torch.tensor(vectors)
    species = torch.tensor(cluster.numbers, dtype=torch.long)
    energies, edge_forces = program64(species, edge_index, vectors, torch.tensor(len(crystal)))
    forces, virial = _assemble(edge_index, vectors, edge_forces, len(cluster))
    owned = torch.zeros(len(crystal), 3, dtype=torch.float64).index_add_(0, torch.tensor(owner), forces)
    ref_energies, ref_forces, ref_stress = _calculator_results(model, crystal)
    assert energies.shape == (len(cluster),) and len(cluster) > 10 * len(crystal)
    assert torch.all(energies[len(crystal) :] == 0)  # ghosts
    np.testing.assert_allclose(energies[: len(crystal)].numpy(), ref_energies, rtol=0, atol=1e-10)
    np.testing.assert_allclose(owned.numpy(), ref_forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(-virial.numpy() / crystal.get_volume(), ref_stress, rtol=0, atol=1e-10)


def test_dynamic_shapes_and_n_local(model, program64):
    """One program, many sizes; ``n_local`` selects the energies that are returned and summed."""
    eager = LocalEnergyModel(model)
    for k, n_copies in enumerate([1, 2, 3]):
        atoms = Atoms()
        for copy_index in range(n_copies):  # copies 3 Å apart along x: some pairs interact
            part = _molecule()
            part.translate([3.0 * copy_index, 0.0, 0.0])
            atoms += part
        atoms.rattle(0.02, seed=k)
        species, edge_index, vectors, _ = _inputs(atoms)
        for n_local in (2, len(atoms) - 1):
            n = torch.tensor(n_local)
            energies, edge_forces = program64(species, edge_index, vectors, n)
            ref_energies, ref_edge_forces = eager(species, edge_index, vectors, n)
            assert energies.shape == (len(atoms),) and torch.all(energies[n_local:] == 0)
            torch.testing.assert_close(energies, ref_energies, rtol=0, atol=1e-10)
            torch.testing.assert_close(edge_forces, ref_edge_forces, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def exported_file(model, tmp_path_factory):
    """A float32 ``.pt2`` written by ``mlip export``."""
    folder = tmp_path_factory.mktemp("export")
    save_model(model, str(folder / "model.pt"))
    out = folder / "model.pt2"
    assert main(["export", str(folder / "model.pt"), "-o", str(out), "--dtype", "float32"]) == 0
    return out


def test_cli_file_runs_in_plain_torch(model, exported_file, tmp_path):
    """The file loads with ``torch.export.load`` in a process that never imports mlip; float32
    results agree with the float32 eager model."""
    inputs = _inputs(_crystal(), torch.float32)
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        extra = {{"{METADATA_FILE}": ""}}
        program = torch.export.load({str(exported_file)!r}, extra_files=extra).module()
        outputs = program(*torch.load({str(tmp_path / "inputs.pt")!r}))
        torch.save(outputs, {str(tmp_path / "outputs.pt")!r})
        assert not any(name.split(".")[0] == "mlip" for name in sys.modules), "mlip was imported"
        print(extra["{METADATA_FILE}"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=3600
    )
    assert done.returncode == 0, done.stderr
    metadata = json.loads(done.stdout)
    assert metadata["species"] == "1 6 8" and float(metadata["cutoff"]) == CUTOFF
    assert metadata["dtype"] == "float32" and metadata["num_layers"] == "2"
    energies, edge_forces = torch.load(tmp_path / "outputs.pt")
    assert energies.dtype == torch.float32
    ref_energies, ref_edge_forces = LocalEnergyModel(copy.deepcopy(model).float())(*inputs)
    torch.testing.assert_close(energies, ref_energies, rtol=0, atol=2e-4)  # |E0| ~ 2000 eV
    torch.testing.assert_close(edge_forces, ref_edge_forces, rtol=1e-4, atol=1e-5)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "out.pt2")]) == 1
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "file not found" in err[0] and ".pt2" in err[1]


@pytest.mark.slow
def test_aoti_package_matches_eager(tmp_path):
    """``--aoti``: the AOTInductor package (compiled C++; minutes of CPU) on the tiniest model."""
    from torch._inductor import aoti_load_package

    from mlip.model.export import save_export

    torch.manual_seed(12)
    backbone = dict(channels=4, num_layers=1, lmax=1, num_radial=2, radial_hidden=4)
    tiny = MLIPModel([1, 6, 8], cutoff=CUTOFF, e0s={6: -1029.5}, backbone=backbone, readout_hidden=4)
    tiny = perturb_weights(tiny.double(), 0.1).eval()
    path = str(tmp_path / "tiny.pt2")
    save_export(tiny, path, dtype="float64", aoti=True, threads=2)  # OpenMP kernels (default: serial)
    package = aoti_load_package(path)
    assert package.get_metadata()["mlip_species"] == "1 6 8"
    assert package.get_metadata()["mlip_aoti_threads"] == "2"
    for atoms in (_molecule(), _crystal()):
        inputs = _inputs(atoms)
        for got, want in zip(package(*inputs), LocalEnergyModel(tiny)(*inputs)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
