"""``mlip eval MODEL DATA``: MAE/RMSE per target available in the file."""

from __future__ import annotations

import dataclasses

from mlip.calculators.batched import predict_batches
from mlip.data.reading import _raw_label, extract_label, is_isolated_atom, normalise_pbc, read_atoms
from mlip.errors import MLIPError, where
from mlip.model.potential import load_model
from mlip.training.metrics import MetricsAccumulator, format_metrics_table
from mlip.training.trainer import select_device


def run_eval(
    model_path: str,
    data_path: str,
    key_overrides: list[str],
    batch_size: int,
    device: str,
    dtype: str,
    plot: str | None = None,
) -> dict:
    """Print and return the metrics of the model on every labelled target in ``data_path``.

    ``plot``: also write a parity plot (one panel per target) to this PNG file.
    """
    import torch

    dev = select_device(device)
    model = load_model(model_path, dev, torch.float64 if dtype == "float64" else torch.float32)
    keys = {}
    for text in key_overrides:
        if "=" not in text:
            raise MLIPError(f"--key '{text}' should look like TARGET=KEY")
        name, key = text.split("=", 1)
        keys[name] = key
    specs = [dataclasses.replace(s, key=keys.get(s.name, s.key)) for s in model.target_specs]
    frames = [normalise_pbc(a) for a in read_atoms(data_path)]
    frames = [a for a in frames if not is_isolated_atom(a)]
    if not frames:
        raise MLIPError(f"{data_path}: no structures to evaluate")
    # A target counts as labelled when its key is in the first structure.
    present = [
        s
        for s in specs
        if _raw_label(frames[0], s.key) is not None
        or (s.virial_key and _raw_label(frames[0], s.virial_key) is not None)
    ]
    if not present:
        raise MLIPError(
            f"{data_path}: none of the model's label keys "
            f"({', '.join(s.key for s in specs)}) are in the file; use --key TARGET=KEY"
        )
    labels = [
        {s.name: extract_label(a, s, where(data_path, i)) for s in present} for i, a in enumerate(frames)
    ]
    acc = MetricsAccumulator(present)
    parity = None
    if plot:
        from mlip.cli.plot import ParityCollector

        parity = ParityCollector(present)
    for batch, pred, _ in predict_batches(model, frames, batch_size, dev, data_path, labels=labels):
        acc.update(pred, batch)
        if parity is not None:
            parity.update(pred, batch)
    metrics = acc.compute()
    if parity is not None:
        from mlip.cli.plot import save_figure

        save_figure(parity.figure(title=f"{model_path} on {data_path}"), plot)
        print(f"{plot}: parity plot")
    print(f"{data_path}: {len(frames)} structures")
    print(format_metrics_table(metrics, present))
    return metrics
