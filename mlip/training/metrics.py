"""Error metrics (MAE/RMSE) accumulated over batches, per target and per tensor part."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch

from mlip.targets import TargetSpec, block_keys
from mlip.training.loss import (
    LossScales,
    labelled_pair,
    normalised_mse,
    num_atoms_per_graph,
    residual_rows,
    squared_error_sums,
)

UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}


class MetricsAccumulator:
    """Collects absolute and squared errors; ``compute()`` → {"energy_mae": ..., ...}.

    Reported quantities: ``energy`` per atom, ``forces`` per component, ``stress`` per component,
    tensor targets per component of the full tensor; rank-2 tensors additionally ``<name>_iso``
    (trace/3) and ``<name>_aniso`` (symmetric traceless part, per component).
    """

    def __init__(
        self,
        specs: Sequence[TargetSpec],
        loss_scales: LossScales | None = None,
        reference_means: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.specs = list(specs)
        # ``_mean_rmse`` of a quantity: the RMSE of predicting these per-component means (the
        # training set's, stored in the model) instead of the evaluated labels' own mean.
        self.reference_means = None if reference_means is None else MappingProxyType(dict(reference_means))
        # read-only view, not a dict: distributed.reduce_metrics all-reduces every dict attribute
        self.loss_scales = None if loss_scales is None else MappingProxyType(dict(loss_scales))
        self.reference_sq = defaultdict(float)  # Σ (label − reference mean)² per quantity
        self.block_sq = defaultdict(float)  # "<name>/<block>" → Σ residual² (as in the loss)
        self.block_count = defaultdict(int)
        self.abs = defaultdict(float)
        self.sq = defaultdict(float)
        self.count = defaultdict(int)
        self.label_sq = defaultdict(float)
        self.label_sum = defaultdict(float)
        self.component_sum: dict[str, torch.Tensor] = {}  # per-component label sums (mean predictor)

    def _add(self, name: str, diff: torch.Tensor, label: torch.Tensor, width: int) -> None:
        diff = diff.detach().double().reshape(-1)
        label = label.detach().double().reshape(-1, width)
        self.abs[name] += float(diff.abs().sum())
        self.sq[name] += float(diff.pow(2).sum())
        self.count[name] += diff.numel()
        self.label_sq[name] += float(label.pow(2).sum())
        self.label_sum[name] += float(label.sum())
        sums = label.sum(dim=0).cpu()
        self.component_sum[name] = self.component_sum[name] + sums if name in self.component_sum else sums
        reference = (self.reference_means or {}).get(name)
        if reference is not None and len(reference) == width:  # Σ |y − m|², summed directly (no cancellation)
            m = torch.tensor(reference, dtype=label.dtype, device=label.device)
            self.reference_sq[name] += float((label - m).pow(2).sum())

    def update(self, pred: dict, batch) -> None:
        for spec in self.specs:
            if spec.name not in pred:
                continue
            p, y = labelled_pair(spec, pred, batch)
            if p.shape[0] == 0:
                continue
            rows = residual_rows(spec, pred, batch).detach().double()
            by_block = self.loss_scales is not None and spec.is_tensor
            for key, (sq, n) in zip(block_keys(spec), squared_error_sums(spec, rows, by_block)):
                self.block_sq[f"{spec.name}/{key}"] += float(sq)
                self.block_count[f"{spec.name}/{key}"] += n
            if spec.kind == "energy":
                n = num_atoms_per_graph(batch)
                p, y = p / n, y / n
            width = int(torch.tensor(spec.label_shape).prod()) if spec.label_shape else 1
            self._add(spec.name, p - y, y, width)
            if spec.kind == "rank2":
                eye = torch.eye(3, dtype=p.dtype, device=p.device)
                iso_p = p.diagonal(dim1=-2, dim2=-1).mean(-1)
                iso_y = y.diagonal(dim1=-2, dim2=-1).mean(-1)
                self._add(spec.name + "_iso", iso_p - iso_y, iso_y, 1)
                aniso_p = 0.5 * (p + p.transpose(-1, -2)) - iso_p[..., None, None] * eye
                aniso_y = 0.5 * (y + y.transpose(-1, -2)) - iso_y[..., None, None] * eye
                self._add(spec.name + "_aniso", aniso_p - aniso_y, aniso_y, 9)

    def compute(self) -> dict[str, float]:
        """Per quantity: ``_mae``, ``_rmse``, ``_label_std`` (spread of all label components) and
        ``_mean_rmse``: the RMSE of the *mean predictor*, which predicts every structure's (atom's)
        label as the per-component mean of the evaluated labels (for a polarizability: the mean
        tensor). Errors well below ``_mean_rmse`` mean the model learned more than the average.
        Per target also ``<name>_loss``: its loss term over the whole set (normalised as in
        training, unweighted), which the trainer's validation score sums with the weights."""
        out = {}
        for name, n in self.count.items():
            if n == 0:
                continue
            out[f"{name}_mae"] = self.abs[name] / n
            out[f"{name}_rmse"] = (self.sq[name] / n) ** 0.5
            mean = self.label_sum[name] / n
            out[f"{name}_label_std"] = max(self.label_sq[name] / n - mean**2, 0.0) ** 0.5
            if name in self.reference_sq:
                out[f"{name}_mean_rmse"] = (self.reference_sq[name] / n) ** 0.5
            elif name in self.component_sum:
                sums = self.component_sum[name]
                rows = n / sums.numel()
                mean_sq = float((sums / rows).pow(2).sum()) / sums.numel()
                out[f"{name}_mean_rmse"] = max(self.label_sq[name] / n - mean_sq, 0.0) ** 0.5
        for spec in self.specs:
            by_block = self.loss_scales is not None and spec.is_tensor
            keys = block_keys(spec) if by_block else block_keys(spec)[:1]
            sums = [(self.block_sq[f"{spec.name}/{k}"], self.block_count[f"{spec.name}/{k}"]) for k in keys]
            if sum(n for _, n in sums):
                out[f"{spec.name}_loss"] = float(normalised_mse(spec, sums, self.loss_scales))
        return out


def format_metrics_table(metrics: dict[str, float], specs: Sequence[TargetSpec]) -> str:
    """A plain-text table: quantity | unit | MAE | RMSE | RMSE of the mean predictor."""
    rows = [("quantity", "unit", "MAE", "RMSE", "mean-predictor RMSE")]
    names = []
    for spec in specs:
        names.append(spec.name)
        if spec.kind == "rank2":
            names += [spec.name + "_iso", spec.name + "_aniso"]
    for name in names:
        if f"{name}_mae" in metrics:
            unit = UNITS.get(name, "as labelled")
            baseline = metrics.get(f"{name}_mean_rmse")
            rows.append(
                (
                    name,
                    unit,
                    f"{metrics[name + '_mae']:.6g}",
                    f"{metrics[name + '_rmse']:.6g}",
                    f"{baseline:.6g}" if baseline is not None else "-",
                )
            )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
