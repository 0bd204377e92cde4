"""data.valid_split: random (seeded), last / first (contiguous, for MD) or explicit indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip.data.dataset import split_indices, split_train_valid
from mlip.errors import MLIPError
from mlip.training.config import load_config
from mlip.training.trainer import prepare_data
from tests.conftest import tiny_raw_config


def test_contiguous_splits_keep_md_frames_together():
    train, valid = split_indices(20, 0.25, seed=3, mode="last")
    assert valid.tolist() == [15, 16, 17, 18, 19] and train.tolist() == list(range(15))
    train, valid = split_indices(20, 0.25, seed=3, mode="first")
    assert valid.tolist() == [0, 1, 2, 3, 4] and train.tolist() == list(range(5, 20))
    train, valid = split_indices(20, 0.25, seed=3, mode="random")
    assert len(valid) == 5 and np.any(np.diff(valid) > 1)  # scattered through the trajectory
    assert sorted(train.tolist() + valid.tolist()) == list(range(20))


def test_explicit_validation_indices():
    train, valid = split_indices(10, 0.5, seed=0, mode=[7, 2, 2])
    assert valid.tolist() == [2, 7] and train.tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    with pytest.raises(MLIPError, match="index 10 is outside the 10 training structures"):
        split_indices(10, 0.5, seed=0, mode=[10])
    items = list("abcdef")
    assert split_train_valid(items, 0.0, 0, [1, 4]) == (list("acdf"), list("be"))


@pytest.mark.parametrize(
    "value, fragment",
    [("end", "must be random, last, first"), ([1, "x"], "list of integers"), ([-1], "must be ≥ 0")],
)
def test_bad_split_settings(value, fragment):
    with pytest.raises(MLIPError, match=fragment):
        load_config(None, raw={"data": {"train_file": "x.xyz", "valid_split": value}})


def test_training_and_store_use_the_same_contiguous_split(tmp_path):
    from mlip.data.store import PreprocessedStore, preprocess

    raw = tiny_raw_config(
        tmp_path / "run",
        **{
            "data.max_structures": 20,
            "data.valid_split": "last",
            "data.preprocessed_dir": str(tmp_path / "s"),
        },
    )
    preprocess(load_config(None, raw=raw), log=None)
    train_idx, valid_idx = PreprocessedStore(tmp_path / "s").split()
    assert valid_idx.tolist() == [16, 17, 18, 19]
    raw["data"]["preprocessed_dir"] = None
    data = prepare_data(load_config(None, raw=raw), torch.float64)
    first_valid = data.valid[0].pos
    full = prepare_data(
        load_config(None, raw={**raw, "data": {**raw["data"], "valid_fraction": 0.0}}), torch.float64
    )
    assert torch.equal(first_valid, full.train[16].pos)
    raw["data"]["preprocessed_dir"] = str(tmp_path / "s")
    raw["data"]["valid_split"] = "random"
    with pytest.raises(MLIPError, match="data.valid_split"):
        PreprocessedStore(tmp_path / "s").check_compatible(load_config(None, raw=raw))
