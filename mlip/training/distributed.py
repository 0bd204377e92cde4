"""Multi-process (multi-GPU, multi-node) training helpers around ``torch.distributed``.

``torchrun --nproc_per_node=N -m mlip train CONFIG.yaml`` starts N copies of ``mlip train`` with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set; :func:`init` joins them
into a process group (NCCL on GPUs, gloo on CPU). Without ``WORLD_SIZE`` nothing here does
anything and training runs in one process exactly as before.

How the trainer uses it:

* every rank builds the same model (same seed) and wraps it in ``DistributedDataParallel``
  (:func:`wrap_model`), which also broadcasts rank 0's weights once; gradients are averaged over
  ranks during ``loss.backward()``. The model computes forces inside ``forward`` with
  ``torch.autograd.grad(..., create_graph=True)`` on the *positions*; that call does not touch
  parameter gradients, so it fires none of DDP's hooks, and the later ``loss.backward()``
  (the double backward through the force graph) triggers exactly one all-reduce per bucket.
  ``tests/training/test_distributed.py`` checks that 2 ranks × 4 structures give the gradients
  of one process on the 8 structures. Parameters that receive no gradient (a head whose target
  has weight 0, the energy head of a tensor-only model) are found by a one-batch probe and
  switch on ``find_unused_parameters``;
* ``training.batch_size`` is per process: one optimiser step sees ``batch_size × world_size``
  structures. The loss is each rank's mean and DDP averages the ranks' gradients, i.e. the
  gradient of the mean of per-rank means (the global-batch mean when ranks hold equally many
  atoms, e.g. molecules of one size);
* the training set is split by a ``DistributedSampler`` (:class:`TrainSampler`, reshuffled
  each epoch with ``set_epoch``; the permutation is the single-process run's, dealt out round
  robin), so every structure is seen once per epoch and W ranks × batch B reproduce one process
  with batch W·B; when the count is not a multiple of the world size the sampler repeats up to
  ``world_size − 1`` structures so that all ranks take the same number of steps (DDP needs it);
* validation/test sets are dealt out without padding and the metrics are exact: the sums and
  counts of :class:`~mlip.training.metrics.MetricsAccumulator` are all-reduced
  (:func:`reduce_metrics`), so every rank gets identical metrics and takes identical decisions
  (scheduler, early stopping, best model);
* only rank 0 writes files (checkpoint, model, CSV, config, logs) and prints; on resume rank 0
  reads the checkpoint and broadcasts it, so other nodes need not share its filesystem.
"""

from __future__ import annotations

import datetime
import inspect
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mlip.errors import MLIPError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``enabled`` False: plain single-process training)."""

    enabled: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we created the process group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def requested() -> bool:
    """Launched by torchrun (or another launcher that sets ``WORLD_SIZE``)?"""
    return "WORLD_SIZE" in os.environ or (dist.is_available() and dist.is_initialized())


def init(device_setting: str, timeout_minutes: float = 30.0) -> tuple[DistInfo, torch.device | None]:
    """Join the process group described by the environment; returns (info, device).

    ``device`` is ``cuda:LOCAL_RANK`` when CUDA is used, ``cpu`` otherwise, or None when not
    distributed (the caller picks the device as usual). An already-initialised default group
    (e.g. created by a test harness) is reused and left alone at the end.
    """
    if not requested():
        return SINGLE, None
    if not dist.is_available():
        raise MLIPError("WORLD_SIZE is set but this torch build has no torch.distributed")
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if device_setting.startswith("cuda") and not torch.cuda.is_available():
        raise MLIPError(f"device '{device_setting}' requested but CUDA is not available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MLIPError(f"could not join the distributed job ({first[:200]})") from None
        owns = True
    elif use_cuda:
        torch.cuda.set_device(local_rank)
    info = DistInfo(True, dist.get_rank(), local_rank, dist.get_world_size(), owns)
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return info, device


def let_backend_threads_finish(seconds: float = 0.2) -> None:
    """Release the GIL briefly so the backend's worker threads finish disposing of finished work.

    Call it after the last collective and before the process group is destroyed. A gloo worker
    thread frees each finished collective's work object after the caller's ``wait()`` returned,
    and that needs the GIL (the work keeps a Python object from the caller's thread-local state).
    The group's C++ destructor runs with the GIL held and joins those threads, so if it runs
    while a worker still waits for the GIL, both wait for ever. Seen in the DDP test about once in
    15 runs (py-spy: ``~ProcessGroupGloo`` → ``thread::join`` against ``~AsyncBarrierWork`` →
    ``gil_scoped_acquire``); sleeping hands the GIL over.
    """
    time.sleep(seconds)


def cleanup(info: DistInfo) -> None:
    if info.enabled and info.owns_group and dist.is_initialized():
        let_backend_threads_finish()
        dist.destroy_process_group()


def _comm_device(info: DistInfo) -> torch.device:
    """Device collectives run on (NCCL needs CUDA tensors)."""
    if info.enabled and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``values`` over ranks (float64 on CPU returned; a no-op when not distributed)."""
    if not info.enabled:
        return values
    buf = values.detach().to(_comm_device(info), torch.float64).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def all_true(flag: bool | torch.Tensor, info: DistInfo) -> bool:
    """True on every rank iff ``flag`` is true on every rank."""
    flag = bool(flag)
    if not info.enabled:
        return flag
    total = all_reduce_sum(torch.tensor([0.0 if flag else 1.0]), info)
    return float(total[0]) == 0.0


def any_true(flag: bool, info: DistInfo) -> bool:
    """True on every rank iff ``flag`` is true on some rank."""
    if not info.enabled:
        return bool(flag)
    return float(all_reduce_sum(torch.tensor([1.0 if flag else 0.0]), info)[0]) > 0.0


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; only for our own trusted objects)."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device(info))
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def reduce_metrics(acc, info: DistInfo):
    """All-reduce a MetricsAccumulator's sums in place, so ``compute()`` gives the metrics of the
    whole evaluated set on every rank.

    Every dict attribute of the accumulator (``abs``, ``sq``, ``count``, ``label_sq``,
    ``label_sum``, ``component_sum``, ...) holds additive per-quantity sums (numbers or tensors).
    Ranks may have seen different quantities (a rank with no data has none), so the layout is
    agreed first (one small ``all_gather_object``), then everything goes in one ``all_reduce``.
    """
    if not info.enabled:
        return acc
    fields = {k: v for k, v in vars(acc).items() if isinstance(v, dict)}
    layout = {}
    for field, values in fields.items():
        for key, value in values.items():
            shape = tuple(value.shape) if torch.is_tensor(value) else ()
            layout[(field, key)] = (shape, isinstance(value, int) and not isinstance(value, bool))
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, sorted(layout.items()))
    union: dict = {}
    for items in gathered:
        for entry, meta in items:
            union.setdefault(entry, meta)
    entries = sorted(union)
    chunks = []
    for field, key in entries:
        shape, _ = union[(field, key)]
        value = fields[field].get(key)
        if value is None:
            chunks.append(torch.zeros(int(torch.tensor(shape).prod()) if shape else 1, dtype=torch.float64))
        else:
            chunks.append(torch.as_tensor(value, dtype=torch.float64).reshape(-1).cpu())
    if not chunks:
        return acc
    total = all_reduce_sum(torch.cat(chunks), info)
    pos = 0
    for field, key in entries:
        shape, is_int = union[(field, key)]
        size = int(torch.tensor(shape).prod()) if shape else 1
        part = total[pos : pos + size]
        pos += size
        if shape:
            fields[field][key] = part.reshape(shape).clone()
        else:
            fields[field][key] = int(round(float(part[0]))) if is_int else float(part[0])
    return acc


def single_process_order(n: int, seed: int) -> list[int]:
    """The order in which the single-process trainer visits ``n`` structures in an epoch
    (``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``), computed with
    torch's own DataLoader so that it stays exact across torch versions."""
    if n == 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(range(n), batch_size=n, shuffle=True, generator=generator)
    return next(iter(loader)).tolist()


class TrainSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (call ``set_epoch``) that deals out the single-process order.

    Epoch ``e`` uses the permutation of the single-process run (seeded by ``seed + e``), padded
    to a multiple of the world size and dealt round robin like ``DistributedSampler``: step
    ``k`` of W ranks with batch B together sees exactly the structures of step ``k`` of one
    process with batch W·B. So a W-rank run reproduces a one-process run with W× the batch
    (same gradients when the ranks' batches have equally many atoms).
    """

    def __iter__(self):
        indices = single_process_order(len(self.dataset), self.seed + self.epoch)
        if not self.drop_last:
            padding = self.total_size - len(indices)
            if padding > 0:
                indices += (indices * (padding // max(len(indices), 1) + 1))[:padding]
        else:
            indices = indices[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def shard_for_rank(data, info: DistInfo):
    """This rank's share of an evaluation set: items ``rank, rank + W, ...`` (no padding)."""
    if not info.enabled:
        return data
    return torch.utils.data.Subset(data, list(range(info.rank, len(data), info.world_size)))


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device, probe=None) -> torch.nn.Module:
    """``DistributedDataParallel(model)``, or ``model`` itself when not distributed.

    ``probe(model)`` (optional) runs one forward/backward; parameters left without a gradient
    switch on ``find_unused_parameters`` (decided identically on every rank).
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    unused = False
    if probe is not None:
        model.zero_grad(set_to_none=True)
        probe(model)
        unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
        model.zero_grad(set_to_none=True)
        unused = any_true(unused, info)
    # A [1, k] parameter's gradient may come back with strides (1, 1): harmless, but DDP warns.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Buffers (E0s, scale, species map) are constants, equal on every rank: no per-step sync.
    # (torch ≥ 2.13 renamed broadcast_buffers to forward_sync_buffers.)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    no_sync = {key: False}
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
        **no_sync,
    )
