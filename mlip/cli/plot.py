"""Figures for users: learning curves of a run (``mlip plot RUN_DIR``) and parity plots
(``mlip eval MODEL DATA --plot parity.png``).

Both need matplotlib (``pip install mlip[plot]``); without it the commands fail with a one-line
error. Every function that draws returns the matplotlib figure (tests count its panels) and
saves it as PNG.

Learning curve: one panel per target (``<split>_<target>_rmse`` columns of ``metrics.csv``),
training and validation RMSE versus epoch, log y; when the run recorded the cumulative wall time
(``wall_time_s`` column), a second row shows the same curves versus wall time in minutes. A stage
change (``stage`` column, stage two of the training recipe) is marked by a vertical line.

Parity plot: one panel per target, predicted versus reference values (energies per atom, forces,
stress and tensors per component), with the RMSE in the title.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from mlip.errors import MLIPError

# units of the model's outputs (tensor targets: as labelled, after the config's unit factor)
UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}


def _pyplot():
    """matplotlib.pyplot with a file-only backend, or a one-line error if it is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise MLIPError(
            "plotting needs matplotlib: pip install 'mlip[plot]' (or: pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _unit(name: str) -> str:
    base = name.split("_")[0] if name.endswith(("_iso", "_aniso")) else name
    return UNITS.get(base, "as labelled")


# ----------------------------------------------------------------------------- learning curves


def read_metrics(path: str) -> list[dict[str, float]]:
    """Rows of a run's metrics.csv as numbers (empty cells become NaN)."""
    if not os.path.exists(path):
        raise MLIPError(f"{path}: file not found (is this an mlip run directory?)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise MLIPError(f"{path}: no epochs recorded yet")

    def number(value: str | None) -> float:
        try:
            return float(value) if value not in (None, "") else float("nan")
        except ValueError:
            return float("nan")

    return [{k: number(v) for k, v in row.items()} for row in rows]


def metric_targets(columns: Sequence[str]) -> list[str]:
    """Targets with an RMSE column (``train_<t>_rmse`` / ``valid_<t>_rmse``), in column order."""
    names: list[str] = []
    for col in columns:
        for split in ("train_", "valid_"):
            if col.startswith(split) and col.endswith("_rmse") and not col.endswith("_mean_rmse"):
                name = col[len(split) : -len("_rmse")]
                if name not in names:
                    names.append(name)
    return names


def learning_curve_figure(rows: list[dict[str, float]], title: str = ""):
    """Training/validation RMSE per target versus epoch (and versus wall time if recorded)."""
    plt = _pyplot()
    targets = metric_targets(list(rows[0]))
    if not targets:
        raise MLIPError("metrics.csv has no RMSE columns to plot")
    epochs = np.array([r["epoch"] for r in rows])
    has_time = "wall_time_s" in rows[0] and not np.isnan(rows[-1]["wall_time_s"])
    axes_x = [("epoch", epochs)]
    if has_time:
        axes_x.append(("wall time (min)", np.array([r["wall_time_s"] for r in rows]) / 60.0))
    stage_change = None
    if "stage" in rows[0]:
        stages = [r["stage"] for r in rows]
        stage_change = next((i for i in range(1, len(stages)) if stages[i] != stages[i - 1]), None)
    fig, axes = plt.subplots(
        len(axes_x), len(targets), figsize=(4.2 * len(targets), 3.4 * len(axes_x)), squeeze=False
    )
    for row, (xlabel, x) in enumerate(axes_x):
        for col, name in enumerate(targets):
            ax = axes[row, col]
            for split, style in (("train", "--"), ("valid", "-")):
                key = f"{split}_{name}_rmse"
                if key in rows[0]:
                    y = np.array([r[key] for r in rows])
                    ax.plot(x, y, style, label=split)
            if stage_change is not None:
                ax.axvline(x[stage_change], color="grey", lw=0.8, ls=":", label="stage two")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{name} RMSE ({_unit(name)})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def run_plot(run_dir: str, output: str | None = None) -> str:
    """Write the learning curve of ``run_dir`` (default ``RUN_DIR/learning_curve.png``); returns the path."""
    rows = read_metrics(os.path.join(run_dir, "metrics.csv"))
    fig = learning_curve_figure(rows, title=os.path.basename(os.path.abspath(run_dir)))
    path = output or os.path.join(run_dir, "learning_curve.png")
    save_figure(fig, path)
    print(f"{path}: learning curve of {len(rows)} epochs")
    return path


def save_figure(fig, path: str) -> None:
    """Save as PNG (creating the folder) and release the figure's memory."""
    plt = _pyplot()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise MLIPError(f"{path}: cannot write ({err.strerror})") from None
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- parity plots


class ParityCollector:
    """Collects predicted and reference values per target over the batches of ``mlip eval``.

    Energies per atom; forces, stress and tensors per component (as the metrics count them).
    """

    def __init__(self, specs) -> None:
        self.specs = list(specs)
        self.pred: dict[str, list[np.ndarray]] = {s.name: [] for s in self.specs}
        self.ref: dict[str, list[np.ndarray]] = {s.name: [] for s in self.specs}

    def update(self, pred: dict, batch) -> None:
        from mlip.training.loss import num_atoms_per_graph

        for spec in self.specs:
            if spec.name not in pred or spec.name not in batch:
                continue
            p, y = pred[spec.name].detach(), batch[spec.name].detach()
            if spec.kind == "energy":
                n = num_atoms_per_graph(batch)
                p, y = p / n, y / n
            self.pred[spec.name].append(p.double().cpu().numpy().reshape(-1))
            self.ref[spec.name].append(y.double().cpu().numpy().reshape(-1))

    def figure(self, title: str = ""):
        """One panel per target with data: predicted vs reference, y = x, RMSE in the title."""
        plt = _pyplot()
        names = [s.name for s in self.specs if self.pred[s.name]]
        if not names:
            raise MLIPError("nothing to plot: no labelled target was evaluated")
        fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 4.0), squeeze=False)
        for ax, name in zip(axes.flat, names):
            p, y = np.concatenate(self.pred[name]), np.concatenate(self.ref[name])
            rmse = float(np.sqrt(np.mean((p - y) ** 2)))
            ax.scatter(y, p, s=4, alpha=0.5, lw=0)
            lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
            unit = _unit(name)
            ax.set_xlabel(f"reference {name} ({unit})")
            ax.set_ylabel(f"predicted {name} ({unit})")
            ax.set_title(f"{name}: RMSE {rmse:.4g} {unit}")
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(True, alpha=0.3)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig
