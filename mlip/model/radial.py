"""Radial basis functions and the smooth cutoff envelope."""

from __future__ import annotations

import math

import torch
from torch import nn


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff ``u(x)``, ``x = r / r_c``: 1 at 0, and u, u', u'' vanish at ``r_c``.

    ``u(x) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^{p+1} − p(p+1)/2 x^{p+2}`` for x < 1, else 0
    (Klicpera et al., DimeNet). Energies and forces are continuous when atoms cross the cutoff.
    """

    def __init__(self, cutoff: float, exponent: int = 6) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(exponent)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``r``: distances ``[E]`` Å → envelope ``[E]``."""
        p = self.p
        x = r / self.cutoff
        u = 1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
        return u * (x < 1.0).to(r.dtype)


class BesselBasis(nn.Module):
    """``c · sin(n π r / r_c) / r`` for n = 1..num_basis; input ``[E]`` Å → ``[E, num_basis]``.

    The constant ``c`` gives the functions unit mean square for neighbours spread uniformly in the
    cutoff sphere, so the radial MLP starts with O(1) inputs whatever the cutoff.
    """

    def __init__(self, cutoff: float, num_basis: int = 8) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        freq = math.pi / cutoff * torch.arange(1, num_basis + 1, dtype=torch.float64)
        self.register_buffer("frequencies", freq.float())
        r = torch.linspace(0.0, cutoff, 2001, dtype=torch.float64)[1:]
        weight = r**2  # uniform density in the sphere
        values = torch.sin(freq * r[:, None]) / r[:, None]
        mean_square = ((values**2) * weight[:, None]).sum() / (weight.sum() * num_basis)
        self.prefactor = float(mean_square.rsqrt())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies.to(r.dtype) * r) / r
