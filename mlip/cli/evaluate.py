"""``mlip eval MODEL DATA``: MAE/RMSE per target available in the file."""

from __future__ import annotations

import dataclasses

from mlip.calculators.batched import predict_batches
from mlip.data.reading import _raw_label, is_isolated_atom, normalise_pbc, read_atoms, structure_labels
from mlip.device import select_device
from mlip.errors import MLIPError, where
from mlip.model.potential import load_model
from mlip.targets import TargetSpec
from mlip.training.metrics import MetricsAccumulator, format_metrics_table


def standard_key(spec: TargetSpec) -> str:
    """ASE's name for a quantity (``energy``, ``forces``, ``stress``; tensors: the target name)."""
    return spec.kind if spec.kind in ("energy", "forces", "stress") else spec.name


def _has_label(frames, spec: TargetSpec) -> bool:
    keys = [spec.key] + ([spec.virial_key] if spec.virial_key else [])
    return any(_raw_label(a, k) is not None for a in frames for k in keys)


def resolve_label_keys(
    frames, specs: list[TargetSpec], explicit: set[str]
) -> tuple[list[TargetSpec], list[str]]:
    """The targets labelled in ``frames``, each with the key it is read from.

    A target whose training key (e.g. ``REF_energy``) is absent falls back to ASE's standard
    name (``energy``, ``forces``, ``stress``, as stored by a calculator), unless ``--key`` named it.
    Returns (specs found, ``"target ← 'key'"`` lines for the report).
    """
    present, used = [], []
    for spec in specs:
        if not _has_label(frames[:1] if spec.kind != "stress" else frames, spec):
            fallback = dataclasses.replace(spec, key=standard_key(spec), virial_key=None)
            if spec.name in explicit or fallback.key == spec.key or not _has_label(frames, fallback):
                continue
            spec = fallback
        present.append(spec)
        used.append(f"{spec.name} ← '{spec.key}'")
    return present, used


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
    # A target counts as labelled when its key (or ASE's standard name) is in the first structure.
    present, used = resolve_label_keys(frames, specs, set(keys))
    if not present:
        tried = sorted({s.key for s in specs} | {standard_key(s) for s in specs if s.name not in keys})
        raise MLIPError(
            f"{data_path}: none of the model's label keys ({', '.join(s.key for s in specs)}) nor "
            f"ASE's standard names are in the file (tried {', '.join(tried)}); use --key TARGET=KEY"
        )
    labels = [structure_labels(a, present, where(data_path, i)) for i, a in enumerate(frames)]
    means = model.hyperparameters.get("label_means") or None
    acc = MetricsAccumulator(present, reference_means=means)
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
    print(f"{data_path}: {len(frames)} structures; labels: {', '.join(used)}")
    print(format_metrics_table(metrics, present))
    if means:
        print("mean predictor: predicts the training-set mean (stored in the model) for every structure/atom")
    else:
        print("mean predictor: this file's own mean (the model file stores no training means)")
    return metrics
