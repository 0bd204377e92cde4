"""Unit tests of the backbone's building blocks: the bispectrum (four-body) invariants and the
bond projections, checked directly on random densities and edges (float64), the element-pair radial
inputs, and loading of model files written before these blocks existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip.model.backbone import AngularInvariants, BondProjection, bispectrum_paths
from mlip.model.potential import MLIPModel
from mlip.model.spherical import spherical_harmonics, wigner_d

REL = 1e-10


def _random_o3(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        out.append(q * np.sign(np.diag(r)))
    out.append(-np.eye(3))  # inversion
    out.append(np.diag([1.0, 1.0, -1.0]))  # a mirror
    return out


def _rotate_density(density: torch.Tensor, rot: np.ndarray, lmax: int) -> torch.Tensor:
    """Each l-block of a density as a proper l-tensor: ``A_l ↦ D_l(R)ᵀ A_l`` (rows are m)."""
    blocks = []
    for l in range(lmax + 1):
        d = torch.as_tensor(wigner_d(rot, l), dtype=density.dtype)
        blocks.append(torch.einsum("mk,nmc->nkc", d, density[:, l * l : (l + 1) * (l + 1), :]))
    return torch.cat(blocks, dim=1)


def _density_of_points(points: torch.Tensor, weights: torch.Tensor, lmax: int) -> torch.Tensor:
    """A density that really is a sum of neighbour harmonics: ``[1, (L+1)², C]``."""
    sh = spherical_harmonics(points / points.norm(dim=-1, keepdim=True), lmax)  # [P, (L+1)²]
    return torch.einsum("pl,pc->lc", sh, weights).unsqueeze(0)


@pytest.mark.parametrize("lmax,expected", [(1, []), (2, [(1, 1, 2), (2, 2, 2)]), (3, 4)])
def test_bispectrum_paths_are_even_and_triangular(lmax, expected):
    paths = bispectrum_paths(lmax)
    if isinstance(expected, int):
        assert len(paths) == expected
    else:
        assert paths == expected
    for l1, l2, l3 in paths:
        assert (l1 + l2 + l3) % 2 == 0 and abs(l1 - l2) <= l3 <= l1 + l2


@pytest.mark.parametrize("lmax", [2, 3])
def test_invariants_are_o3_invariant(lmax):
    torch.manual_seed(0)
    inv = AngularInvariants(channels=5, lmax=lmax, correlation=3).double()
    with torch.no_grad():
        inv.mix.add_(0.3 * torch.randn_like(inv.mix))
    density = torch.randn(7, (lmax + 1) ** 2, 5, dtype=torch.float64)
    reference = torch.cat(inv(density), dim=-1)
    assert reference.shape == (7, inv.width) and inv.width == 5 * (1 + lmax + len(inv.paths))
    paths = reference[:, 5 * (1 + lmax) :]
    assert paths.abs().max() > 1e-2  # the four-body invariants are not trivially zero
    for rot in _random_o3(1):
        rotated = torch.cat(inv(_rotate_density(density, rot, lmax)), dim=-1)
        err = (rotated - reference).abs().max()
        assert err <= REL * reference.abs().max(), f"det {np.linalg.det(rot):+.0f}: {err:.3g}"


def test_bispectrum_sees_what_the_power_spectrum_does_not():
    """Two neighbour shells with identical power spectra (a point set and its mirror image differ
    only in chirality; here instead: same radial and angular distances, different triple angles)
    give different four-body invariants. Built as a rotation of one l-block alone, which keeps every
    |A_l| (hence p_l with M = I) but changes the relative orientation of the blocks."""
    torch.manual_seed(1)
    lmax = 2
    inv = AngularInvariants(channels=3, lmax=lmax, correlation=3).double()
    with torch.no_grad():
        inv.mix.copy_(torch.eye(3).expand_as(inv.mix))  # plain power spectrum
    points = torch.randn(6, 3, dtype=torch.float64)
    density = _density_of_points(points, torch.rand(6, 3, dtype=torch.float64), lmax)
    rot = _random_o3(3)[0]
    d1 = torch.as_tensor(wigner_d(rot, 1), dtype=torch.float64)
    other = density.clone()
    other[:, 1:4, :] = torch.einsum("mk,nmc->nkc", d1, density[:, 1:4, :])  # rotate l=1 only
    a, b = inv(density), inv(other)
    for k in range(1 + lmax):  # A_00 and p_l agree ...
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12)
    # ... the (1, 1, 2) path (the only one coupling l=1 to l=2) does not
    assert (a[1 + lmax] - b[1 + lmax]).abs().max() > 1e-3


def test_bond_projection_is_invariant():
    torch.manual_seed(2)
    lmax, channels = 3, 4
    proj = BondProjection(channels, lmax, bond_channels=2).double()
    density = torch.randn(5, (lmax + 1) ** 2, channels, dtype=torch.float64)
    vectors = torch.randn(9, 3, dtype=torch.float64)
    senders = torch.randint(0, 5, (9,))

    def project(dens, vec):
        sh = spherical_harmonics(vec / vec.norm(dim=-1, keepdim=True), lmax)
        return proj.per_edge(dens, sh, senders)

    reference = project(density, vectors)
    assert reference.shape == (9, lmax * 2) and reference.abs().max() > 1e-2
    for rot in _random_o3(4):
        rotated = project(_rotate_density(density, rot, lmax), vectors @ torch.as_tensor(rot).T)
        assert (rotated - reference).abs().max() <= REL * reference.abs().max()


def test_element_pair_radial_functions_see_the_receiving_element():
    """With ``radial_species`` an O–H pair's radial weights differ from an H–O pair's at the same
    distance: the density at the receiver depends on the receiver's element, not only the sender's."""
    torch.manual_seed(5)
    model = MLIPModel([1, 8], cutoff=4.0, backbone=dict(channels=4, lmax=1, num_layers=1, radial_species=2))
    backbone = model.backbone
    edge_index = torch.tensor([[0, 1], [1, 0]])  # receiver 0 (O) ← 1 (H) and receiver 1 (H) ← 0 (O)
    vectors = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    _, density = backbone(torch.tensor([1, 0]), edge_index, vectors)
    assert backbone.layers[0].radial[0].in_features == 8 + 2 * 2
    # swapping the receiver embeddings of O and H changes O's density (the sender, H, is unchanged)
    with torch.no_grad():
        backbone.radial_species[0].weight[:] = backbone.radial_species[0].weight.flip(0).clone()
    _, swapped = backbone(torch.tensor([1, 0]), edge_index, vectors)
    assert (swapped[0] - density[0]).abs().max() > 1e-3


def test_element_update_uses_the_receiving_elements_weights():
    """With ``element_update`` each element has its own linear update: the path changes the
    features, and swapping O's and H's weight blocks changes the features of both atoms of an O–H pair."""
    torch.manual_seed(6)
    model = MLIPModel(
        [1, 8], cutoff=4.0, backbone=dict(channels=4, lmax=1, num_layers=1, element_update=True)
    )
    backbone = model.backbone
    weights = backbone.layers[0].element_linear
    assert weights.shape[1] == 2 * 4  # [update inputs, elements × channels]
    edge_index = torch.tensor([[0, 1], [1, 0]])
    vectors = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    species = torch.tensor([1, 0])
    (h,), _ = backbone(species, edge_index, vectors)
    with torch.no_grad():
        weights.mul_(5.0)  # make the path matter at this scale
    (h5,), _ = backbone(species, edge_index, vectors)
    with torch.no_grad():
        weights[:] = weights.view(-1, 2, 4).flip(1).reshape(-1, 8).clone()  # O's block ↔ H's block
    (swapped,), _ = backbone(species, edge_index, vectors)
    assert (h5 - h).abs().max() > 1e-3
    assert (swapped - h5).abs().max(dim=1).values.min() > 1e-4  # every atom's features moved
    # the layer refuses to guess the elements
    layer, x = backbone.layers[0], torch.zeros(2, 4)
    with pytest.raises(ValueError, match="element_update needs the atoms' species"):
        layer._update(x, torch.zeros(2, 4, 4))


def test_model_files_from_before_the_invariants_module_load():
    """mlip ≤ 0.1 stored the channel mixing as ``backbone.layers.<t>.mix``."""
    torch.manual_seed(3)
    model = MLIPModel([1, 8], cutoff=4.0, backbone=dict(channels=4, lmax=2, num_layers=2))
    state = model.state_dict()
    old = {k.replace("invariants.mix", "mix"): v for k, v in state.items()}
    assert any(k.endswith("layers.0.mix") for k in old)
    fresh = MLIPModel([1, 8], cutoff=4.0, backbone=dict(channels=4, lmax=2, num_layers=2))
    fresh.load_state_dict(old)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
