"""The learned short-range pair repulsion (mlip.model.pair): its formula, symmetry and smoothness.

Its place in the full model's physics (O(3), translation and permutation invariance, forces and
stress as exact derivatives, extensivity) is tested with every other backbone feature in
test_energy_physics.py ("bispectrum+bonds+pair").
"""

from __future__ import annotations

import math

import pytest
import torch
from ase.data import covalent_radii

from mlip.model.pair import PairRepulsion

SPECIES = [1, 6, 8]


def _dimer_energy(term: PairRepulsion, a: int, b: int, r: torch.Tensor) -> torch.Tensor:
    """Total pair energy (eV) of a dimer of species indices a, b at distances ``r`` [M]."""
    out = []
    for d in r:
        vec = torch.stack([d, torch.zeros_like(d), torch.zeros_like(d)])
        species = torch.tensor([a, b])
        edges = torch.tensor([[0, 1], [1, 0]])
        out.append(term(species, edges, torch.stack([vec, -vec])).sum())
    return torch.stack(out)


def _term(seed: int = 0) -> PairRepulsion:
    torch.manual_seed(seed)
    term = PairRepulsion(SPECIES).double()
    with torch.no_grad():
        for p in term.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return term


def test_dimer_energy_is_the_formula_and_symmetric_in_the_pair():
    term = _term()
    r0 = covalent_radii[1] + covalent_radii[8]
    r = torch.tensor([0.8, 1.0], dtype=torch.float64)
    energy = _dimer_energy(term, 0, 2, r)
    log_a = 0.5 * (term.log_amplitude[0, 2] + term.log_amplitude[2, 0])
    log_alpha = 0.5 * (term.log_steepness[0, 2] + term.log_steepness[2, 0])
    x = r / (1.4 * r0)
    u = 1 - 28 * x**6 + 48 * x**7 - 21 * x**8  # the p = 6 envelope
    expected = log_a.exp() * torch.exp(-log_alpha.exp() * (r - r0)) * u
    torch.testing.assert_close(energy, expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(_dimer_energy(term, 2, 0, r), energy, rtol=1e-12, atol=0.0)
    assert energy.min() > 1e-3 and energy[0] > energy[1]  # repulsive, growing on compression


@pytest.mark.parametrize("pair", [(0, 0), (1, 2), (1, 1)])
def test_zero_beyond_its_cutoff_and_smooth_there(pair):
    term = _term(1)
    a, b = pair
    rc = 1.4 * (covalent_radii[SPECIES[a]] + covalent_radii[SPECIES[b]])
    beyond = _dimer_energy(term, a, b, torch.tensor([rc + 1e-9, rc + 0.3, 4.0], dtype=torch.float64))
    assert torch.all(beyond == 0.0)
    r = torch.tensor([rc - 1e-5], dtype=torch.float64, requires_grad=True)
    energy = _dimer_energy(term, a, b, r)
    (force,) = torch.autograd.grad(energy.sum(), r)
    inside = _dimer_energy(term, a, b, torch.tensor([0.8 * rc], dtype=torch.float64))
    assert inside.item() > 1e-3  # non-trivial inside ...
    assert abs(energy.item()) < 1e-10 * inside.item()  # u ∝ (1 − x)³ at the cutoff
    assert abs(force.item()) < 1e-6 * inside.item()  # ... and the force vanishes at the cutoff (u' = 0)


def test_compression_force_grows_faster_than_linear():
    """The exponential wall: the restoring force grows convexly as the bond shortens."""
    term = _term(2)
    r0 = covalent_radii[1] + covalent_radii[6]
    r = torch.tensor([r0 - 0.2, r0 - 0.1, r0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_dimer_energy(term, 0, 1, r).sum(), r)
    force = -grad  # along the bond, repulsive > 0
    assert torch.all(force > 0)
    assert (force[0] - force[1]) > (force[1] - force[2]) > 0
    assert math.isfinite(force[0].item())
