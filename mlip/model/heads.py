"""Output heads on top of the backbone's invariant features."""

from __future__ import annotations

import torch
from torch import nn

from mlip.model.backbone import mlp


class EnergyHead(nn.Module):
    """Atomic energies ``ε_i = Σ_t w_t·h_i^t + MLP(h_i^T)`` (dimensionless; scaled by the model).

    Input: list of per-layer features, each ``[N, C]``. Output: ``[N]``.
    """

    def __init__(self, channels: int, num_layers: int, hidden: int = 64) -> None:
        super().__init__()
        self.linear = nn.ModuleList(nn.Linear(channels, 1, bias=False) for _ in range(num_layers - 1))
        self.final = mlp([channels, hidden, 1], bias_last=False)
        # Small readouts: the untrained model predicts nearly E0s + shift (little offset to unlearn)
        # while gradients still reach the backbone from the first step.
        for lin in self.linear:
            nn.init.normal_(lin.weight, std=0.1 * channels**-0.5)
        nn.init.normal_(self.final[-1].weight, std=0.1 * hidden**-0.5)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.final(features[-1]).squeeze(-1)
        for lin, h in zip(self.linear, features[:-1]):
            out = out + lin(h).squeeze(-1)
        return out
