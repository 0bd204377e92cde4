"""Any damaged model or checkpoint file gives the one-line MLIPError, never a traceback.

Deterministic and broad: seeded random bytes over many seeds, and seeded byte flips inside a real
model file and a real training checkpoint (a flip that lands in tensor data may still load: then
the file must load as a model, not crash).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlip.errors import MLIPError
from mlip.io import safe_torch_load
from mlip.model.potential import MLIPModel, load_model, model_payload, save_model

SEEDS = range(300)


def _tiny_model() -> MLIPModel:
    torch.manual_seed(0)
    return MLIPModel(
        [1, 8],
        cutoff=3.0,
        e0s={1: -1.0, 8: -2.0},
        backbone=dict(channels=4, num_layers=1, lmax=1, num_radial=2, radial_hidden=4),
        readout_hidden=4,
    )


@pytest.mark.parametrize("size", [2000, 64])
def test_random_bytes_are_a_one_line_error(tmp_path, size):
    path = tmp_path / "checkpoint.pt"
    for seed in SEEDS:
        path.write_bytes(np.random.default_rng(seed).bytes(size))
        with pytest.raises(MLIPError, match="checkpoint.pt") as info:
            safe_torch_load(path)
        assert "\n" not in str(info.value), seed


def _flip_bytes(data: bytes, seed: int, count: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for pos in rng.choice(len(out), size=count, replace=False):
        out[pos] ^= int(rng.integers(1, 256))
    return bytes(out)


def _check_flips(original: bytes, path: Path, load) -> tuple[int, int]:
    errors = loaded = 0
    for seed in SEEDS:
        path.write_bytes(_flip_bytes(original, seed))
        try:
            load(path)
            loaded += 1
        except MLIPError as err:
            assert "\n" not in str(err) and path.name in str(err), (seed, err)
            errors += 1
    return errors, loaded


def test_flipped_bytes_in_a_model_file(tmp_path):
    good = tmp_path / "good.pt"
    save_model(_tiny_model(), str(good))
    assert load_model(str(good)).species == [1, 8]
    errors, _ = _check_flips(good.read_bytes(), tmp_path / "model.pt", lambda p: load_model(str(p)))
    assert errors > len(SEEDS) // 10  # most flips land in the zip structure or the pickle


def test_flipped_bytes_in_a_checkpoint(tmp_path):
    from mlip.io import atomic_torch_save

    model = _tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    model(_water_graph(), compute_forces=False)["energy"].sum().backward()
    optimizer.step()
    payload = {
        "format": "mlip-checkpoint",
        "format_version": 1,
        "model": model_payload(model),
        "optimizer": optimizer.state_dict(),
        "epoch": 1,
    }
    good = tmp_path / "good.pt"
    atomic_torch_save(payload, str(good))
    errors, _ = _check_flips(good.read_bytes(), tmp_path / "checkpoint.pt", lambda p: load_model(str(p)))
    assert errors > len(SEEDS) // 10


def _water_graph():
    from ase.build import molecule

    from mlip.data.graph import atoms_to_graph

    return atoms_to_graph(molecule("H2O"), 3.0)


def test_payload_with_wrong_hyperparameters_is_a_one_line_error(tmp_path):
    payload = model_payload(_tiny_model())
    payload["hyperparameters"]["backbone"]["no_such_setting"] = 3
    torch.save(payload, tmp_path / "odd.pt")
    with pytest.raises(MLIPError, match="odd.pt"):
        load_model(str(tmp_path / "odd.pt"))
    payload = model_payload(_tiny_model())
    del payload["state_dict"]
    torch.save(payload, tmp_path / "nostate.pt")
    with pytest.raises(MLIPError, match="nostate.pt"):
        load_model(str(tmp_path / "nostate.pt"))
