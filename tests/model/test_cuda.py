"""CUDA agrees with the CPU in float64: energy, forces, stress and tensor targets of the same model.

Skipped where no CUDA device is visible (CI has none); ``scripts/bench/gpu.sh`` runs it on a GPU
machine. Both backbone paths (padded per-atom sums and the edge scatter) and both backbone variants
are compared, on a molecule batch and on a periodic cell.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from torch_geometric.data import Batch

from mlip.data.graph import atoms_to_graph
from mlip.model import backbone
from mlip.model.potential import MLIPModel
from tests.conftest import perturb_weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")

CUTOFF = 4.5
TOL = 1e-10  # relative, float64: the same arithmetic up to summation order


def _model(architecture: str) -> MLIPModel:
    extra = {}
    if architecture == "bispectrum+bonds":
        extra = dict(
            correlation=3,
            bond_channels=4,
            num_layers=3,
            linear_update=True,
            radial_species=3,
            density_messages=4,
        )
    targets = [
        {"name": "energy", "kind": "energy", "key": "energy"},
        {"name": "forces", "kind": "forces", "key": "forces"},
        {"name": "stress", "kind": "stress", "key": "stress"},
        {"name": "dipole", "kind": "vector", "key": "mu", "irreps": [[1, 1]]},
        {"name": "polarizability", "kind": "rank2", "key": "alpha", "irreps": [[0, 1], [2, 1]]},
    ]
    torch.manual_seed(0)
    model = MLIPModel(
        [1, 6, 8],
        CUTOFF,
        e0s={1: -1.0, 6: -2.0, 8: -3.0},
        targets=targets,
        backbone=dict(channels=16, lmax=3, radial_hidden=16, avg_num_neighbours=8.0, **extra),
        tensor=dict(num_vectors=4, hidden=12),
        pair_repulsion={} if architecture == "bispectrum+bonds" else None,
    ).double()
    perturb_weights(model, 0.1)
    return model.eval()


def _structures() -> list:
    rng = np.random.default_rng(0)
    mols = [molecule("CH3CH2OH"), molecule("H2O"), molecule("CH3COCH3")]
    cell = bulk("C", "diamond", a=3.57).repeat((2, 1, 1))
    frames = mols + [cell]
    for a in frames:
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
    return frames


_ORIGINAL_BUILD = backbone.PaddedEdges.build


@pytest.mark.parametrize("path", ["padded", "scatter"])
@pytest.mark.parametrize("architecture", ["power-spectrum", "bispectrum+bonds"])
def test_cuda_matches_cpu_float64(architecture, path, monkeypatch):
    def build(*args, **kwargs):  # force one neighbour-sum path on both devices
        return None if path == "scatter" else _ORIGINAL_BUILD(*args, **{**kwargs, "max_waste": math.inf})

    monkeypatch.setattr(backbone.PaddedEdges, "build", staticmethod(build))
    model = _model(architecture)
    batch = Batch.from_data_list([atoms_to_graph(a, CUTOFF, dtype=torch.float64) for a in _structures()])
    cpu = model(batch, compute_forces=True, compute_stress=True)
    gpu = model.to("cuda")(batch.to("cuda"), compute_forces=True, compute_stress=True)
    for name in ("energy", "forces", "stress", "dipole", "polarizability"):
        ref, got = cpu[name].detach(), gpu[name].detach().cpu()
        scale = ref.abs().max().item()
        assert scale > 1e-3, f"{name}: reference too small to compare ({scale})"
        err = (got - ref).abs().max().item() / scale
        assert err < TOL, f"{name}: CUDA vs CPU relative difference {err:.2e} ({path} path)"
