"""``mlip export MODEL -o OUT.pt2``: the model as a self-contained program for MD engines.

See :mod:`mlip.model.export` for the contract (inputs, outputs, units, ghost atoms).
"""

from __future__ import annotations

import time

from mlip.cli.predict import check_writable
from mlip.errors import MLIPError


def run_export(
    model_path: str, output: str, dtype: str = "float64", aoti: bool = False, threads: int = 1
) -> None:
    """Export ``model_path`` to ``output`` (``torch.export`` program, or AOTInductor with ``aoti``)."""
    import torch

    from mlip.model.export import save_export
    from mlip.model.potential import load_model

    if not output.endswith(".pt2"):
        raise MLIPError(f"{output}: the output name must end in .pt2 (torch.export / AOTInductor package)")
    model = load_model(model_path, "cpu", torch.float64 if dtype == "float64" else torch.float32)
    if not model.has_energy:
        raise MLIPError(f"{model_path}: the model has no energy target; only energy models can be exported")
    check_writable(output)
    skipped = model.tensor_target_names
    start = time.perf_counter()
    if threads < 1:
        raise MLIPError(f"--threads must be at least 1, got {threads}")
    save_export(model, output, dtype=dtype, aoti=aoti, threads=threads)
    kind = "AOTInductor package" if aoti else "torch.export program"
    note = f"; tensor targets not exported: {', '.join(skipped)}" if skipped else ""
    print(f"mlip: wrote {kind} ({dtype}) to {output} in {time.perf_counter() - start:.0f} s{note}")
