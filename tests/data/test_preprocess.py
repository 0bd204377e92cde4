"""Preprocessed on-disk stores: exact round trip, streamed statistics, same training, integrity."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from dataclasses import replace

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.cli.main import main
from mlip.data.graph import atoms_to_graph
from mlip.data.reading import is_isolated_atom, read_labelled
from mlip.data.store import MANIFEST, PreprocessedStore, preprocess, split_indices
from mlip.errors import MLIPError
from mlip.training.config import load_config
from mlip.training.trainer import prepare_data, train
from tests.conftest import DATA, tiny_raw_config

TENSOR_TARGETS = {
    "energy": {"key": "energy"},
    "forces": {"key": "forces", "weight": 10.0},
    "dipole": {"key": "dipole", "type": "vector", "unit": "e*angstrom"},
    "polarizability": {"key": "polarizability", "type": "rank2", "unit": "angstrom3"},
}
CARBON_TARGETS = {
    "energy": {"key": "energy"},
    "forces": {"key": "force"},
    "stress": {"key": "stress", "virial_key": "virial"},
}


def _cfg(tmp_path, **overrides):
    overrides.setdefault("data.preprocessed_dir", str(tmp_path / "store"))
    return load_config(None, raw=tiny_raw_config(tmp_path / "run", **overrides))


def _assert_stats_close(a, b):
    assert a.species == b.species
    for z in a.species:
        assert a.e0s[z] == pytest.approx(b.e0s[z], rel=1e-10, abs=1e-9)
    assert a.scale == pytest.approx(b.scale, rel=1e-10)
    assert a.shift == pytest.approx(b.shift, rel=1e-8, abs=1e-10)
    assert a.avg_num_neighbours == pytest.approx(b.avg_num_neighbours, rel=1e-12)
    assert a.tensor_scales == pytest.approx(b.tensor_scales, rel=1e-10)
    assert a.tensor_shifts == pytest.approx(b.tensor_shifts, rel=1e-10)
    assert sorted(a.loss_scales) == sorted(b.loss_scales)
    for name, scales in a.loss_scales.items():
        assert scales == pytest.approx(b.loss_scales[name], rel=1e-10), name


@pytest.mark.parametrize(
    "overrides",
    [
        {"data.max_structures": 40},
        {"data.max_structures": 25, "data.e0s": "fit", "data.test_file": str(DATA / "ethanol" / "test.xyz")},
        {"data.train_file": str(DATA / "tensors" / "ethanol_b3lyp_train.xyz"), "data.max_structures": 30,
         "data.e0s": "fit", "targets": TENSOR_TARGETS},
        {"data.train_file": str(DATA / "carbon" / "carbon_reduced_100.xyz"), "data.max_structures": 30,
         "data.e0s": "fit", "dtype": "float64", "targets": CARBON_TARGETS},
    ],
    ids=["ethanol", "fit-e0s-test-file", "tensors", "periodic-stress"],
)
def test_store_round_trips_every_label_and_graph_exactly(tmp_path, overrides):
    cfg = _cfg(tmp_path, **overrides)
    manifest = preprocess(cfg, shard_structures=7, log=None)  # several shards
    assert len(manifest["parts"]["train"]["shards"]) > 1
    store = PreprocessedStore(cfg.data.preprocessed_dir)
    specs = cfg.target_specs()
    by_name = {s.name: s for s in specs}
    reference = read_labelled(cfg.data.train_file, specs)
    reference = [s for s in reference if not (is_isolated_atom(s.atoms) and len(s.atoms) == 1)]
    reference = reference[: cfg.data.max_structures]
    everything = store.dataset("train", None, torch.float64)
    assert len(everything) == len(reference)
    for k, ref in enumerate(reference):
        stored = everything.read_arrays(k)
        assert np.array_equal(stored["positions"], ref.atoms.positions)
        assert np.array_equal(stored["numbers"], ref.atoms.numbers)
        for spec in specs:
            assert stored[spec.name].dtype == np.float64
            assert np.array_equal(stored[spec.name], ref.labels[spec.name]), (k, spec.name)
        graph = atoms_to_graph(ref.atoms, cfg.data.cutoff, ref.labels, by_name, cfg.data.min_distance,
                               dtype=torch.float64)
        mine = everything[k]
        assert sorted(mine.keys()) == sorted(graph.keys())
        for key in graph.keys():
            if torch.is_tensor(graph[key]):
                assert mine[key].dtype == graph[key].dtype and torch.equal(mine[key], graph[key]), key
    # streamed statistics = in-memory statistics; split and graphs = the in-memory trainer's
    in_memory = prepare_data(replace(cfg, data=replace(cfg.data, preprocessed_dir=None)), torch.float64)
    from_store = prepare_data(cfg, torch.float64)
    _assert_stats_close(from_store.stats, in_memory.stats)
    for name in ("train", "valid", "test"):
        mem, disk = getattr(in_memory, name), getattr(from_store, name)
        assert len(mem) == len(disk), name
        for k in range(0, len(mem), 5):
            assert torch.equal(mem[k].pos, disk[k].pos) and torch.equal(mem[k].energy, disk[k].energy)


def test_split_indices_match_in_memory_split():
    from mlip.data.dataset import split_train_valid

    for n, fraction, seed in [(60, 0.2, 0), (7, 0.1, 3), (1, 0.5, 0), (100, 0.0, 1)]:
        train, valid = split_train_valid(list(range(n)), fraction, seed)
        t_idx, v_idx = split_indices(n, fraction, seed)
        assert list(t_idx) == train and list(v_idx) == valid


def test_training_from_store_gives_the_same_metrics(tmp_path):
    test_file = str(DATA / "ethanol" / "test.xyz")
    common = {"data.max_structures": 30, "training.max_epochs": 2, "data.test_file": test_file}
    disk_cfg = _cfg(tmp_path / "disk", **common)
    preprocess(disk_cfg, shard_structures=8, log=None)
    disk = train(disk_cfg)
    memory = train(load_config(None, raw=tiny_raw_config(tmp_path / "memory", **common)))
    for part in ("valid", "test"):
        assert disk[part].keys() == memory[part].keys()
        for key, value in memory[part].items():
            assert disk[part][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (part, key)


def test_incomplete_or_damaged_store_is_refused(tmp_path):
    cfg = _cfg(tmp_path, **{"data.max_structures": 12})
    folder = cfg.data.preprocessed_dir
    with pytest.raises(MLIPError, match="not found"):
        PreprocessedStore(folder)
    manifest = preprocess(cfg, shard_structures=5, log=None)
    PreprocessedStore(folder)  # fine
    shard = os.path.join(folder, manifest["parts"]["train"]["shards"][1]["file"])
    original = open(shard, "rb").read()

    def expect(fragment):
        with pytest.raises(MLIPError, match=fragment) as err:
            PreprocessedStore(folder)
        assert "\n" not in str(err.value)

    with open(shard, "ab") as handle:  # size changed
        handle.write(b"x")
    expect("size")
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, other content
    open(shard, "wb").write(bytes(damaged))
    expect("checksum")
    os.remove(shard)
    expect("missing")
    open(shard, "wb").write(original)
    path = os.path.join(folder, MANIFEST)
    text = json.loads(open(path).read())
    text["complete"] = False
    open(path, "w").write(json.dumps(text))
    expect("incomplete")
    open(path, "w").write("{ truncated")
    expect("corrupted manifest")
    os.remove(path)
    expect(f"no {MANIFEST}")
    # through the CLI: one line on stderr, exit status 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_raw_config(tmp_path / "run", **{"data.preprocessed_dir": folder})))
    assert main(["train", str(config)]) == 1


def test_config_that_differs_from_the_store_is_refused(tmp_path):
    cfg = _cfg(tmp_path, **{"data.max_structures": 12})
    preprocess(cfg, log=None)
    other = _cfg(tmp_path, **{"data.max_structures": 12, "data.cutoff": 5.0, "seed": 3})
    with pytest.raises(MLIPError, match=r"data\.cutoff.*seed|seed.*data\.cutoff"):
        train(other)


def test_interrupted_rerun_keeps_the_previous_store(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, **{"data.max_structures": 12})
    first = preprocess(cfg, shard_structures=5, log=None)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    import mlip.data.store.build as store_module

    monkeypatch.setattr(store_module, "compute_store_statistics", boom)
    with pytest.raises(KeyboardInterrupt):
        preprocess(cfg, shard_structures=3, log=None)
    store = PreprocessedStore(cfg.data.preprocessed_dir)  # still the first, complete and verified
    assert store.manifest["run_id"] == first["run_id"]
    monkeypatch.undo()
    second = preprocess(cfg, shard_structures=4, log=None)
    names = {s["file"] for s in second["parts"]["train"]["shards"]}
    on_disk = {n for n in os.listdir(cfg.data.preprocessed_dir) if n.endswith(".h5")}
    assert on_disk == names  # old and interrupted shards cleaned up


def test_preprocess_command(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    raw = tiny_raw_config(tmp_path / "run", **{"data.max_structures": 20})
    config.write_text(yaml.safe_dump(raw))
    store = tmp_path / "store"
    assert main(["preprocess", str(config), "-o", f"data.preprocessed_dir={store}", "--shard-size", "6",
                 "--compression", "gzip"]) == 0
    out = capsys.readouterr().out
    assert "20 train" in out and "structures/s" in out
    manifest = json.loads((store / MANIFEST).read_text())
    assert manifest["parts"]["train"]["count"] == 20 and len(manifest["parts"]["train"]["shards"]) == 4
    data = PreprocessedStore(store).dataset("train")
    assert data[19].pos.shape == (9, 3)
    assert main(["preprocess", str(config)]) == 1  # no data.preprocessed_dir
    assert "preprocessed_dir" in capsys.readouterr().err


def _synthetic_extxyz(path, n):
    """``n`` rattled copies of shipped ethanol molecules (labels copied)."""
    base = ase.io.read(DATA / "ethanol" / "train.xyz", ":20")
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        src = base[i % len(base)]
        atoms = src.copy()
        atoms.positions += rng.normal(0.0, 0.01, atoms.positions.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=src.get_potential_energy(), forces=src.get_forces())
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def test_memory_does_not_grow_with_the_number_of_structures(tmp_path):
    peaks = {}
    for n in (400, 1600):
        source = tmp_path / f"synthetic{n}.xyz"
        _synthetic_extxyz(source, n)
        cfg = _cfg(tmp_path / str(n), **{"data.train_file": str(source), "data.max_structures": None,
                                          "data.e0s": "fit"})
        tracemalloc.start()
        preprocess(cfg, shard_structures=50, log=None)
        preprocess_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        data = PreprocessedStore(cfg.data.preprocessed_dir).dataset("train")
        data.max_open_shards = 2
        data[0]
        tracemalloc.start()
        for i, k in enumerate(np.random.default_rng(0).permutation(len(data))):  # random access
            data[int(k)]
            if i % 100 == 0:
                gc.collect()  # h5py objects form reference cycles: count live memory, not garbage
        iterate_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks[n] = (preprocess_peak, iterate_peak)
    small, large = peaks[400], peaks[1600]
    # 4x the structures: the same bounded buffers (one shard, a few open files), not 4x the memory
    assert large[0] < 1.5 * small[0] + 200_000, peaks
    assert large[1] < 1.5 * small[1] + 50_000, peaks
