"""Multi-process training on CPU (gloo): DDP gradients, torchrun runs, resume, metric reduction."""

from __future__ import annotations

import csv
import datetime
import gc
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch_geometric.data import Batch

from mlip.data.store import preprocess
from mlip.io import safe_torch_load
from mlip.training import distributed
from mlip.training.config import load_config
from mlip.training.loss import weighted_loss
from mlip.training.metrics import MetricsAccumulator
from mlip.training.trainer import build_model, prepare_data, train
from tests.conftest import ROOT, tiny_raw_config

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is needed"
)


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ DDP gradients = one process
def _model_and_graphs(out_dir):
    cfg = load_config(None, raw=tiny_raw_config(out_dir, **{"data.max_structures": 12, "dtype": "float64"}))
    torch.manual_seed(0)
    data = prepare_data(cfg, torch.float64)
    model = build_model(cfg, data.stats, data.specs).double()
    return model, data.train[:8], data.specs


def _loss_backward(model, graphs, specs):
    batch = Batch.from_data_list(graphs)
    pred = model(batch, compute_forces=True, training=True)  # forces by autograd, create_graph=True
    loss, _ = weighted_loss(specs, pred, batch)
    loss.backward()  # double backward through the force graph


def _ddp_worker(rank, world_size, init_file, out_dir, result_file):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),  # a lost rank fails the collectives, not the CI job
    )
    try:
        info, device = distributed.init("cpu")  # reuses the group
        model, graphs, specs = _model_and_graphs(out_dir)
        probe = lambda m: _loss_backward(m, graphs[:1], specs)  # noqa: E731
        ddp = distributed.wrap_model(model, info, device, probe=probe)
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        share = len(graphs) // world_size
        # A batch whose backward every rank skips (what the trainer does on a NaN loss) is harmless.
        ddp(Batch.from_data_list(graphs[:1]), compute_forces=True, training=True)
        for _ in range(2):  # the second step checks that DDP's hooks re-arm after a double backward
            model.zero_grad(set_to_none=True)
            _loss_backward(ddp, graphs[rank * share : (rank + 1) * share], specs)
        if rank == 0:
            torch.save({n: p.grad.clone() for n, p in model.named_parameters()}, result_file)
        distributed.barrier(info)
        del ddp  # as the trainer does: the reducer holds the group
        gc.collect()
    finally:
        distributed.let_backend_threads_finish()
        dist.destroy_process_group()


def _spawn(worker, args: tuple, nprocs: int, timeout_s: float = 300.0) -> None:
    """``mp.spawn`` with a bounded wait: a hung rank fails the test with a message, not the CI job."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            alive = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
            for process in context.processes:
                process.kill()
            pytest.fail(f"DDP rank(s) {alive} still running after {timeout_s:.0f} s: a hang")


def test_ddp_gradients_equal_single_process_gradients_of_the_global_batch(tmp_path):
    model, graphs, specs = _model_and_graphs(tmp_path / "single")
    _loss_backward(model, graphs, specs)  # one process, all 8 structures
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None for g in reference.values())
    result = tmp_path / "grads.pt"
    _spawn(_ddp_worker, (2, str(tmp_path / "init"), tmp_path / "ddp", str(result)), nprocs=2)
    grads = torch.load(result, weights_only=True)
    # The loss is a mean: 2 ranks × 4 structures (each rank's mean, DDP averages the ranks) =
    # one mean over 8 — exactly, since every ethanol structure has 9 atoms.
    for name, ref in reference.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-9, atol=1e-12, msg=name)


# ------------------------------------------------------------------ torchrun, end to end
def _torchrun(config, *overrides, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "mlip",
        "train",
        str(config),
    ]
    for item in overrides:
        command += ["-o", item]
    # a hang guard, not a speed requirement (loaded CI machines are slow)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)


def test_torchrun_two_processes_train_resume_and_match_one_process(tmp_path):
    common = {
        "data.max_structures": 30,
        "data.valid_fraction": 0.2,
        "dtype": "float64",
        "training.batch_size": 3,
        "data.preprocessed_dir": str(tmp_path / "store"),
    }
    raw = tiny_raw_config(tmp_path / "ddp", **common)
    preprocess(load_config(None, raw=raw), shard_structures=10, log=None)  # streamed data, 3 shards
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "ddp"

    first = _torchrun(config, "training.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert safe_torch_load(str(out / "checkpoint.pt"))["epoch"] == 1
    resumed = _torchrun(config, "training.max_epochs=2", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 processes" in resumed.stdout
    assert resumed.stdout.count("epoch    2 ") == 1  # only rank 0 prints
    assert [int(r["epoch"]) for r in _rows(out / "metrics.csv")] == [1, 2]
    assert {p.name for p in out.iterdir()} >= {"model.pt", "checkpoint.pt", "metrics.csv", "config.yaml"}
    assert not list(out.glob(".tmp*"))

    # One process, batch 2 × 3, in memory: the same structures per step, hence the same run.
    single = tmp_path / "single"
    raw_single = tiny_raw_config(
        single,
        **{**common, "training.batch_size": 6, "data.preprocessed_dir": None, "training.max_epochs": 2},
    )
    train(load_config(None, raw=raw_single))
    a = safe_torch_load(str(out / "checkpoint.pt"))["model"]["state_dict"]
    b = safe_torch_load(str(single / "checkpoint.pt"))["model"]["state_dict"]
    for key, value in b.items():
        torch.testing.assert_close(a[key], value, rtol=1e-9, atol=1e-12, msg=key)
    for ddp_row, single_row in zip(_rows(out / "metrics.csv"), _rows(single / "metrics.csv")):
        for key in ("train_loss", "valid_energy_rmse", "valid_forces_rmse", "valid_forces_mae"):
            assert float(ddp_row[key]) == pytest.approx(float(single_row[key]), rel=1e-9), key


# ------------------------------------------------------------------ helpers without a process group
def test_sampler_deals_out_the_single_process_order():
    n, seed = 23, 5
    order = distributed.single_process_order(n, seed)
    loader = torch.utils.data.DataLoader(
        list(range(n)), batch_size=n, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    assert order == next(iter(loader)).tolist()
    seen = []
    for rank in range(3):
        sampler = distributed.TrainSampler(list(range(n)), num_replicas=3, rank=rank, shuffle=True, seed=2)
        sampler.set_epoch(3)
        part = list(sampler)
        assert len(part) == 8  # ceil(23 / 3)
        seen += part
    assert set(seen) == set(range(n)) and len(seen) == 24  # one structure repeated to even out


def test_single_process_is_untouched_without_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = distributed.init("cpu")
    assert not info.enabled and device is None and info.is_main
    acc = MetricsAccumulator([])
    assert distributed.reduce_metrics(acc, info) is acc
    assert distributed.all_true(True, info) and not distributed.any_true(False, info)
