"""Backbone internals against independent references.

* the padded and the scatter (``index_add``) message paths give the same features, energies and
  forces, each forced on the same structures;
* the gathers and per-m expansion equal plain indexing, derivatives included;
* the real spherical harmonics equal scipy's complex ones turned real (without the Condon–Shortley
  phase, component normalisation, m = −l..l), for l ≤ 4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.special import sph_harm_y
from torch_geometric.data import Batch

from mlip.data.graph import atoms_to_graph
from mlip.model import backbone
from mlip.model.potential import MLIPModel, load_model, save_model
from mlip.model.spherical import spherical_harmonics
from tests.conftest import perturb_weights

_ORIGINAL_BUILD = backbone.PaddedEdges.build


def _structures() -> dict[str, Atoms]:
    crystal = bulk("C", "diamond", a=3.57, cubic=True)
    crystal.numbers[[1, 6]] = [8, 1]
    crystal.rattle(0.05, seed=1)
    # one atom with many more neighbours than the rest: padding would waste, scatter by default
    star = Atoms("C" + "H" * 12, positions=[[0, 0, 0]] + [list(v) for v in 2.55 * _icosahedron()])
    star.positions[1:] += np.random.default_rng(2).normal(scale=0.02, size=(12, 3))
    return {"molecule": molecule("CH3CH2OH"), "crystal": crystal, "star": star}


def _icosahedron() -> np.ndarray:
    phi = (1 + 5**0.5) / 2
    v = [(0, s1, s2 * phi) for s1 in (-1, 1) for s2 in (-1, 1)]
    v = v + [(a, b, c) for (c, a, b) in v] + [(b, c, a) for (c, a, b) in v]
    v = np.array(v, dtype=float)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _model(density_message_radial: str = "mlp", density_message_lmax: int | None = None) -> MLIPModel:
    torch.manual_seed(4)
    model = MLIPModel(
        [1, 6, 8],
        cutoff=2.6,
        backbone=dict(
            channels=8,
            num_layers=2,
            lmax=3,
            num_radial=4,
            radial_hidden=8,
            avg_num_neighbours=6.0,
            bond_channels=2,
            radial_species=2,
            density_messages=4,
            density_message_radial=density_message_radial,
            density_message_lmax=density_message_lmax,
        ),
        readout_hidden=8,
    ).double()
    perturb_weights(model, 0.1)
    return model


def _run(model, graph, path: str, monkeypatch) -> tuple[dict, bool]:
    """Outputs with the ``padded`` or ``scatter`` path forced, and whether padding was used."""
    used = []

    def build(*args, **kwargs):
        layout = None if path == "scatter" else _ORIGINAL_BUILD(*args, **{**kwargs, "max_waste": math.inf})
        used.append(layout is not None)
        return layout

    with monkeypatch.context() as m:
        m.setattr(backbone.PaddedEdges, "build", staticmethod(build))
        out = model(Batch.from_data_list([graph]), compute_forces=True)
    return {k: v.detach() for k, v in out.items()}, all(used)


@pytest.mark.parametrize(
    "name, form, transport_lmax",
    [
        ("molecule", "mlp", None),
        ("crystal", "mlp", None),
        ("star", "mlp", None),
        ("crystal", "shared", None),
        ("crystal", "linear", None),
        ("crystal", "linear", 1),
        ("molecule", "shared", 0),
    ],
)
def test_padded_and_scatter_paths_agree(name, form, transport_lmax, monkeypatch):
    model = _model(form, transport_lmax)
    graph = atoms_to_graph(_structures()[name], model.cutoff, dtype=torch.float64)
    padded, used_padding = _run(model, graph, "padded", monkeypatch)
    scatter, used_scatter = _run(model, graph, "scatter", monkeypatch)
    assert used_padding and not used_scatter
    assert padded["forces"].abs().max() > 1e-5  # non-trivial (the star sits near the cutoff)
    torch.testing.assert_close(padded["energy"], scatter["energy"], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(padded["forces"], scatter["forces"], rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize(
    "form, transport_lmax", [("shared", None), ("linear", None), ("linear", 1), ("mlp", 2)]
)
def test_density_message_radial_forms_are_o3_invariant_and_conservative(form, transport_lmax, tmp_path):
    """The other radial functions of the transported densities and the truncated transport
    (``density_message_lmax``; the model-wide checks in test_energy_physics run the class default,
    ``mlp`` with every l): O(3) invariance of the energy, equivariance and finite-difference
    exactness of the forces, a model file round trip, and the transport really contributes."""
    model = _model(form, transport_lmax)
    save_model(model, str(tmp_path / "model.pt"))
    reloaded = load_model(str(tmp_path / "model.pt"))
    assert reloaded.backbone.layers[1].transport_radial_form == form
    assert reloaded.backbone.layers[1].transport_lmax == (3 if transport_lmax is None else transport_lmax)
    atoms = _structures()["molecule"]
    atoms.rattle(0.05, seed=3)

    def energy_forces(positions: np.ndarray) -> tuple[float, np.ndarray]:
        moved = atoms.copy()
        moved.positions = positions
        graph = atoms_to_graph(moved, model.cutoff, dtype=torch.float64)
        out = model(Batch.from_data_list([graph]), compute_forces=True)
        return float(out["energy"].sum()), out["forces"].detach().numpy()

    energy, forces = energy_forces(atoms.positions)
    graph = atoms_to_graph(atoms, model.cutoff, dtype=torch.float64)
    assert float(reloaded(Batch.from_data_list([graph]))["energy"].sum()) == pytest.approx(energy, rel=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    q = q if np.linalg.det(q) < 0 else -q  # a rotation times the inversion
    energy_q, forces_q = energy_forces(atoms.positions @ q.T)
    assert energy_q == pytest.approx(energy, rel=1e-10)
    np.testing.assert_allclose(forces_q, forces @ q.T, rtol=1e-9, atol=1e-11)
    step = 1e-5
    for atom, axis in [(0, 0), (2, 1), (5, 2)]:
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        numeric = -(energy_forces(plus)[0] - energy_forces(minus)[0]) / (2 * step)
        assert forces[atom, axis] == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    with torch.no_grad():
        model.backbone.layers[1].transport.zero_()
    assert abs(energy_forces(atoms.positions)[0] - energy) > 1e-6


def test_default_path_choice_covers_both():
    """The structures above exercise both paths without forcing (the star falls back to scatter)."""
    model = _model()
    chosen = {}
    for name, atoms in _structures().items():
        graph = atoms_to_graph(atoms, model.cutoff, dtype=torch.float64)
        receivers = graph.edge_index[0]
        n_edges = receivers.shape[0]
        k = int(torch.bincount(receivers, minlength=graph.num_nodes).max())
        chosen[name] = graph.num_nodes * k <= 2.0 * n_edges
    assert chosen == {"molecule": True, "crystal": True, "star": False}


def _real_harmonics_oracle(unit: np.ndarray, l: int) -> np.ndarray:
    """Real harmonics from scipy's complex Y_l^m (which include the Condon–Shortley phase):
    Y_{l,m} = √2 (−1)^m Re Y_l^m (m > 0), Y_l^0 (m = 0), √2 (−1)^m Im Y_l^{|m|} (m < 0) — the
    standard real forms, which carry no Condon–Shortley phase — times √(4π) (component
    normalisation: Σ_m Y_{l,m}² = 2l+1)."""
    theta = np.arccos(np.clip(unit[:, 2], -1.0, 1.0))  # polar
    phi = np.arctan2(unit[:, 1], unit[:, 0])  # azimuth
    out = []
    for m in range(-l, l + 1):
        y = sph_harm_y(l, abs(m), theta, phi)
        if m > 0:
            value = math.sqrt(2) * (-1) ** m * y.real
        elif m < 0:
            value = math.sqrt(2) * (-1) ** m * y.imag
        else:
            value = y.real
        out.append(math.sqrt(4 * math.pi) * value)
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("l", [0, 1, 2, 3, 4])
def test_real_spherical_harmonics_match_scipy(l):
    rng = np.random.default_rng(l)
    points = rng.normal(size=(200, 3))
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    ours = spherical_harmonics(torch.tensor(unit), l)[:, l * l :].numpy()
    np.testing.assert_allclose(ours, _real_harmonics_oracle(unit, l), rtol=1e-10, atol=1e-12)
    if l == 1:  # the documented order: √3 (y, z, x)
        np.testing.assert_allclose(ours, math.sqrt(3) * unit[:, [1, 2, 0]], atol=1e-12)


def test_gather_rows_and_per_m_equal_plain_indexing_with_gradients() -> None:
    """The backbone's gathers (``index_select``) and per-m expansion (slices) give the values and
    the first and second derivatives of the advanced indexing they replace (a faster gradient)."""
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(5, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    index = torch.randint(0, 5, (6, 7), generator=gen)
    radial = torch.randn(6, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)  # l = 0, 1, 2
    l_of_lm = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2])
    weights = torch.randn(6, 7, 4, 3, dtype=torch.float64, generator=gen)
    weights_m = torch.randn(6, 9, 2, dtype=torch.float64, generator=gen)

    def outputs(gather, expand) -> list[torch.Tensor]:
        gathered = gather(source, index)
        expanded = expand(radial)
        value = (gathered**2 * weights).sum() + (expanded**3 * weights_m).sum()
        first = torch.autograd.grad(value, (source, radial), create_graph=True)
        second = torch.autograd.grad(sum((g**2).sum() for g in first), (source, radial))
        return [gathered, expanded, *first, *second]

    ours = outputs(backbone.gather_rows, lambda r: backbone.per_m(r, 2, dim=1))
    reference = outputs(lambda s, i: s[i], lambda r: r[:, l_of_lm, :])
    assert ours[0].shape == (6, 7, 4, 3) and ours[1].shape == (6, 9, 2)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
