"""Device selection shared by training, the CLIs and the ASE calculator."""

from __future__ import annotations

import torch

from mlip.errors import MLIPError


def select_device(setting: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda[:N]`` without CUDA is a one-line error."""
    setting = str(setting)
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise MLIPError(f"device '{setting}' requested but CUDA is not available")
    try:
        return torch.device(setting)
    except RuntimeError as err:
        raise MLIPError(f"device '{setting}' is not a valid device ({str(err).splitlines()[0]})") from None
