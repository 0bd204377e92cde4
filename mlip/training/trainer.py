"""The training loop: data → model → optimiser/EMA/scheduler → metrics, checkpoints, logs.

Outputs in ``output_dir``:

* ``model.pt``        best-validation model (EMA weights), loadable without the config;
* ``checkpoint.pt``   everything needed to resume (model, optimiser, scheduler, EMA, epoch, RNG);
* ``metrics.csv``     one row per epoch (train and validation MAE/RMSE per target, lr, time);
* ``config.yaml``     the resolved config;
* ``test_metrics.json`` errors on ``data.test_file`` (if given) with the best model.

Checkpoints are written atomically every epoch, so a killed run resumes with ``resume=true``.
Shuffling is seeded by ``seed + epoch``, so a resumed run is bitwise identical on CPU to an
uninterrupted one.

Data come from the extxyz files (read into memory) or, with ``data.preprocessed_dir``, from a
store written by ``mlip preprocess`` (:mod:`mlip.data.store`; read from disk on demand). Both
give the same graphs, statistics and shuffling order, hence the same training.

Under ``torchrun`` (``WORLD_SIZE`` set) the job runs on several processes with
DistributedDataParallel; see :mod:`mlip.training.distributed`. Without it nothing changes.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import json
import math
import os
import shutil
import time
from dataclasses import dataclass

import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader
from tqdm import tqdm

from mlip.data.dataset import (
    DatasetStatistics,
    average_neighbours,
    compute_statistics,
    energy_label,
    make_loader,
    parse_e0s,
    read_for_training,
    split_train_valid,
    to_graphs,
)
from mlip.data.reading import check_stress_labels
from mlip.data.statistics import check_polarization_jumps
from mlip.device import select_device
from mlip.errors import MLIPError, warn_once
from mlip.io import atomic_torch_save, atomic_write_bytes_via, safe_torch_load
from mlip.model.potential import MLIPModel, model_from_payload, model_payload, save_model
from mlip.targets import TargetSpec
from mlip.training import distributed
from mlip.training.config import Config
from mlip.training.loss import weighted_loss
from mlip.training.metrics import MetricsAccumulator, format_metrics_table

CHECKPOINT_FORMAT_VERSION = 1


def build_model(cfg: Config, stats: DatasetStatistics, specs: list[TargetSpec]) -> MLIPModel:
    """Model from the config's architecture and the training-set statistics."""
    m = cfg.model
    return MLIPModel(
        species=stats.species,
        cutoff=cfg.data.cutoff,
        e0s=stats.e0s,
        scale=stats.scale,
        shift=stats.shift,
        targets=[s.to_dict() for s in specs],
        backbone=dict(
            channels=m.channels,
            num_layers=m.num_layers,
            lmax=m.lmax,
            num_radial=m.num_radial,
            radial_hidden=m.radial_hidden,
            avg_num_neighbours=stats.avg_num_neighbours,
            correlation=m.correlation,
            bond_channels=m.bond_channels,
            bispectrum_channels=m.bispectrum_channels,
            linear_update=m.linear_update,
            update_mlp=m.update_mlp,
            radial_species=m.radial_species,
            element_update=m.element_update,
            density_messages=m.density_messages,
            density_message_radial=m.density_message_radial,
            density_message_lmax=m.density_message_lmax,
        ),
        readout_hidden=m.readout_hidden,
        pair_repulsion={} if m.pair_repulsion else None,
        tensor=dict(
            num_vectors=m.num_vectors,
            hidden=m.tensor_hidden,
            density_couplings=m.tensor_couplings,
            scales=stats.tensor_scales,
            shifts=stats.tensor_shifts,
        ),
        loss_scales=stats.loss_scales,
        label_means=stats.label_means,
    )


def _check_output_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise MLIPError(f"output_dir '{path}': cannot create ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise MLIPError(f"output_dir '{path}': not writable")


@dataclass
class PreparedData:
    """Graphs for training: lists (in memory) or :class:`~mlip.data.store.StoreDataset` (on disk)."""

    train: list | torch.utils.data.Dataset
    valid: list | torch.utils.data.Dataset
    test: list | torch.utils.data.Dataset
    stats: DatasetStatistics
    specs: list[TargetSpec]


def prepare_preprocessed(cfg: Config, dtype: torch.dtype, verify: str = "checksum") -> PreparedData:
    """Open the ``mlip preprocess`` store of ``cfg`` (verified, and checked against the config)."""
    from mlip.data.store import PreprocessedStore

    store = PreprocessedStore(cfg.data.preprocessed_dir, verify=verify)
    store.check_compatible(cfg)
    train_idx, valid_idx = store.split()
    train = store.dataset("train", train_idx, dtype)
    if "valid" in store.parts:
        valid = store.dataset("valid", None, dtype)
    else:
        valid = store.dataset("train", valid_idx, dtype) if valid_idx is not None and len(valid_idx) else []
    test = store.dataset("test", None, dtype) if "test" in store.parts else []
    return PreparedData(train, valid, test, store.statistics, cfg.target_specs())


def prepare_data(cfg: Config, dtype: torch.dtype, verify: str = "checksum") -> PreparedData:
    """Read files, split, compute statistics and build graphs (or open the preprocessed store)."""
    if cfg.data.preprocessed_dir:
        return prepare_preprocessed(cfg, dtype, verify)
    specs = cfg.target_specs()
    d = cfg.data
    train_structs, isolated = read_for_training(d.train_file, specs, d.format, d.max_structures)
    check_stress_labels(d.train_file, specs, train_structs)
    check_polarization_jumps(train_structs, specs, d.train_file)
    if d.valid_file:
        valid_structs, _ = read_for_training(d.valid_file, specs, d.format)
    else:
        split = (d.valid_fraction, cfg.seed, d.valid_split)
        train_structs, valid_structs = split_train_valid(train_structs, *split)
    test_structs = read_for_training(d.test_file, specs, d.format)[0] if d.test_file else []
    train = to_graphs(train_structs, d.cutoff, specs, d.min_distance, dtype)
    valid = to_graphs(valid_structs, d.cutoff, specs, d.min_distance, dtype)
    test = to_graphs(test_structs, d.cutoff, specs, d.min_distance, dtype)
    all_species = {int(z) for s in valid_structs + test_structs for z in s.atoms.numbers}
    stats = compute_statistics(
        train_structs,
        specs,
        parse_e0s(d.e0s, "config", *energy_label(cfg)),
        isolated,
        average_neighbours(train),
        extra_species=sorted(all_species),
    )
    return PreparedData(train, valid, test, stats, specs)


def evaluate(model: torch.nn.Module, loader, specs: list[TargetSpec], device: torch.device) -> dict:
    """Metrics of ``model`` on every batch of ``loader``."""
    return evaluate_accumulator(model, loader, specs, device).compute()


def evaluate_accumulator(
    model: torch.nn.Module, loader, specs: list[TargetSpec], device: torch.device, loss_scales=None
) -> MetricsAccumulator:
    """Error sums of ``model`` over ``loader`` (reduce them across ranks, then ``compute()``)."""
    acc = MetricsAccumulator(specs, loss_scales)
    names = {s.name for s in specs}
    module = model.module if isinstance(model, AveragedModel) else model
    module.eval()
    for batch in loader:
        batch = batch.to(device)
        with torch.enable_grad():
            pred = module(batch, compute_forces="forces" in names, compute_stress="stress" in names)
        acc.update({k: v.detach() for k, v in pred.items()}, batch)
    return acc


class Trainer:
    """Runs one training job described by a :class:`Config`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dist, dist_device = distributed.init(cfg.device)
        self.is_main = self.dist.is_main
        self.device = dist_device if dist_device is not None else select_device(cfg.device)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.out = cfg.output_dir
        if self.is_main:
            _check_output_dir(self.out)
        self.checkpoint_path = os.path.join(self.out, "checkpoint.pt")
        self.model_path = os.path.join(self.out, "model.pt")
        self.csv_path = os.path.join(self.out, "metrics.csv")

    # -------------------------------------------------------------- set-up
    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        # A preprocessed store is checksummed by one process per node; the others check sizes.
        self.data = prepare_data(cfg, self.dtype, verify="checksum" if self.dist.local_rank == 0 else "size")
        self.specs = self.data.specs
        resume_state = None
        if self.is_main and cfg.resume and os.path.exists(self.checkpoint_path):
            resume_state = safe_torch_load(self.checkpoint_path)
            if not isinstance(resume_state, dict) or resume_state.get("format") != "mlip-checkpoint":
                raise MLIPError(f"{self.checkpoint_path}: not an mlip checkpoint")
            if resume_state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
                raise MLIPError(
                    f"{self.checkpoint_path}: checkpoint format version "
                    f"{resume_state.get('format_version')} is not supported"
                )
        # Distributed: rank 0's checkpoint goes to every rank (no shared filesystem needed).
        resume_state = distributed.broadcast_object(resume_state, self.dist)
        if resume_state is not None:
            self.model = model_from_payload(resume_state.get("model"), self.checkpoint_path)
        else:
            self.model = build_model(cfg, self.data.stats, self.specs)
        self.model = self.model.to(device=self.device, dtype=self.dtype)
        if resume_state is not None:
            # model_from_payload loads into a default-dtype (float32) model: reload the weights
            # at the training dtype so that a float64 run resumes bit for bit.
            self.model.load_state_dict(resume_state["model"]["state_dict"])
        t = cfg.training
        opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(
            self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, amsgrad=t.amsgrad
        )
        self.stage = 1
        self.wall_time_offset = 0.0  # wall time of the epochs before a resume, s
        # cosine with a time budget: the learning rate follows the wall clock, set every step
        self.time_cosine = t.scheduler == "cosine" and bool(t.max_time_minutes)
        if t.scheduler == "plateau":
            self.scheduler = self._plateau_scheduler()
        elif t.scheduler == "cosine" and not self.time_cosine:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=t.max_epochs, eta_min=t.min_lr
            )
        else:
            self.scheduler = None
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
            if t.ema_decay
            else None
        )
        self.start_epoch = 0
        self.best_valid = math.inf
        self.epochs_without_improvement = 0
        if resume_state is not None:
            if resume_state.get("stage", 1) == 2:
                self._enter_stage_two(quiet=True)
            self.wall_time_offset = float(resume_state.get("wall_time_s", 0.0))
            self._restore(resume_state)
        self.loss_scales = self._loss_scales()
        # What the training step calls: the model itself, or its DistributedDataParallel wrapper.
        self.train_model = distributed.wrap_model(self.model, self.dist, self.device, probe=self._probe)
        self.valid_loader = self._eval_loader(self.data.valid)

    def _restore(self, state: dict) -> None:
        """Optimiser, scheduler, EMA, counters and RNG from a checkpoint (one-line error if damaged)."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None and state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            self.start_epoch = int(state["epoch"])
            self.best_valid = float(state["best_valid"])
            self.epochs_without_improvement = int(state["epochs_without_improvement"])
            torch.set_rng_state(state["rng_torch"])
        except Exception as err:  # a damaged checkpoint can fail in many ways
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            raise MLIPError(
                f"{self.checkpoint_path}: corrupted checkpoint, cannot resume ({type(err).__name__}: {first})"
            ) from None

    def _loss_scales(self) -> dict | None:
        """Loss normalisation: the model's stored scales (identical on resume), else the data's."""
        if self.cfg.training.loss_normalisation == "none":
            return None
        stored = self.model.hyperparameters.get("loss_scales") or {}
        computed = dict(self.data.stats.loss_scales)
        scales = {}
        for spec in self.specs:
            scale = stored.get(spec.name) or computed.get(spec.name)
            if scale is None and not spec.is_tensor:
                scale = [self.data.stats.scale]
            if scale is None:  # a store written before loss normalisation existed
                warn_once(
                    f"no loss scale for '{spec.name}' (preprocessed store from an older mlip? rerun "
                    f"`mlip preprocess`); its loss is not normalised"
                )
                scale = [1.0]
            scales[spec.name] = scale
        return scales

    def _plateau_scheduler(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        t = self.cfg.training
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=t.lr_factor, patience=t.scheduler_patience, min_lr=t.min_lr
        )

    # -------------------------------------------------------------- stage two
    def _stage_two_due(self, epoch: int, elapsed_s: float) -> bool:
        """Stage two starts at ``stage_two_start`` × the time budget (or × max_epochs)."""
        t = self.cfg.training
        if t.stage_two_start is None or self.stage == 2:
            return False
        if t.max_time_minutes:
            return elapsed_s >= t.stage_two_start * 60.0 * t.max_time_minutes
        return epoch >= t.stage_two_start * t.max_epochs

    def _enter_stage_two(self, quiet: bool = False) -> None:
        """Stage-two loss weights (and learning rate); best model reset.

        The learning rate: ``stage_two_lr`` if given (then constant, or a fresh plateau schedule
        under ``scheduler: plateau``); otherwise a cosine schedule simply continues (it is low by
        then) and any other schedule restarts from ``lr / 10``.
        """
        t = self.cfg.training
        self.stage = 2
        weights = t.stage_two_weights
        self.specs = [dataclasses.replace(s, weight=float(weights.get(s.name, s.weight))) for s in self.specs]
        lr = self.optimizer.param_groups[0]["lr"]
        if not (t.scheduler == "cosine" and t.stage_two_lr is None):
            lr = t.stage_two_lr if t.stage_two_lr is not None else t.lr / 10.0
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.time_cosine = False
            self.scheduler = self._plateau_scheduler() if t.scheduler == "plateau" else None
        # the validation score is a weighted sum: scores of the two stages are not comparable
        self.best_valid = math.inf
        self.epochs_without_improvement = 0
        if not quiet:
            weights = ", ".join(f"{s.name} {s.weight:g}" for s in self.specs)
            self._log(f"mlip: stage two: learning rate {lr:g}, loss weights {weights}")

    def _set_time_cosine_lr(self) -> None:
        """``min_lr + (lr − min_lr) · (1 + cos(π t / T)) / 2`` with t the wall time, T the budget."""
        t = self.cfg.training
        progress = min((time.perf_counter() - self.clock_start) / (60.0 * t.max_time_minutes), 1.0)
        lr = t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -------------------------------------------------------------- snapshots
    def _take_snapshots(self, epoch: int, wall_time_s: float) -> None:
        """Copy the best model so far for every snapshot mark that ``wall_time_s`` has passed."""
        marks = self.cfg.training.snapshot_minutes or []
        folder = os.path.join(self.out, "snapshots")
        for mark in sorted(float(m) for m in marks):
            path = os.path.join(folder, f"model_{mark:g}min.pt")
            if wall_time_s < 60.0 * mark or os.path.exists(path) or not os.path.exists(self.model_path):
                continue
            os.makedirs(folder, exist_ok=True)

            def copy_best(handle) -> None:
                with open(self.model_path, "rb") as best:
                    shutil.copyfileobj(best, handle)

            atomic_write_bytes_via(path, copy_best)
            index = os.path.join(folder, "snapshots.csv")
            new = not os.path.exists(index)
            with open(index, "a") as handle:
                if new:
                    handle.write("mark_min,wall_time_s,epoch,stage,file\n")
                handle.write(f"{mark:g},{wall_time_s:.3f},{epoch},{self.stage},{os.path.basename(path)}\n")

    def _probe(self, model: torch.nn.Module) -> None:
        """One forward/backward on the first training structure (finds unused parameters)."""
        batch = Batch.from_data_list([self.data.train[0]]).to(self.device)
        names = {s.name for s in self.specs}
        pred = model(batch, compute_forces="forces" in names, compute_stress="stress" in names, training=True)
        weighted_loss(self.specs, pred, batch, self.loss_scales)[0].backward()

    # -------------------------------------------------------------- data loaders
    def _eval_loader(self, data) -> DataLoader:
        """Validation/test loader: in order; under torchrun this rank's share of the set."""
        bs = self.cfg.training.valid_batch_size
        if self.dist.enabled:
            return DataLoader(distributed.shard_for_rank(data, self.dist), batch_size=bs, shuffle=False)
        if isinstance(data, list):
            return make_loader(data, bs, shuffle=False)
        return DataLoader(data, batch_size=bs, shuffle=False)

    def _train_loader(self, epoch: int) -> DataLoader:
        """Shuffled by ``seed + epoch``; under torchrun a DistributedSampler deals it out."""
        cfg, t = self.cfg, self.cfg.training
        data = self.data.train
        if self.dist.enabled:
            sampler = distributed.TrainSampler(
                data,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=cfg.seed,
                drop_last=False,
            )
            sampler.set_epoch(epoch)
            return DataLoader(data, batch_size=t.batch_size, sampler=sampler, num_workers=t.num_workers)
        if isinstance(data, list):
            return make_loader(
                data, t.batch_size, shuffle=True, seed=cfg.seed + epoch, num_workers=t.num_workers
            )
        generator = torch.Generator().manual_seed(cfg.seed + epoch)  # the order make_loader gives
        return DataLoader(
            data, batch_size=t.batch_size, shuffle=True, generator=generator, num_workers=t.num_workers
        )

    def _evaluate(self, model: torch.nn.Module, data) -> dict:
        """Metrics on ``data`` (under torchrun: each rank its share, sums all-reduced)."""
        loader = data if isinstance(data, DataLoader) else self._eval_loader(data)
        acc = evaluate_accumulator(model, loader, self.specs, self.device, self.loss_scales)
        return distributed.reduce_metrics(acc, self.dist).compute()

    # -------------------------------------------------------------- steps
    def _train_epoch(self, epoch: int) -> dict:
        cfg, t = self.cfg, self.cfg.training
        loader = self._train_loader(epoch)
        names = {s.name for s in self.specs}
        self.model.train()
        acc = MetricsAccumulator(self.specs, self.loss_scales)
        running, n_batches, bad_streak = 0.0, 0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{t.max_epochs}",
            leave=False,
            disable=not (cfg.logging.progress_bar and self.is_main),
            dynamic_ncols=True,
        )
        for batch in bar:
            batch = batch.to(self.device)
            pred, loss = self._predict_with_loss(batch, names)
            # Under torchrun all ranks skip a batch together (DDP needs every rank's backward).
            finite = bool(torch.isfinite(loss))
            if self.dist.enabled:
                finite = distributed.all_true(finite, self.dist)
            if not finite:
                bad_streak += 1
                self.optimizer.zero_grad(set_to_none=True)
                if self.dist.is_main:
                    tqdm.write(f"mlip: warning: epoch {epoch + 1}: skipped a batch with NaN/Inf loss")
                if bad_streak >= t.skip_nan_batches:
                    raise MLIPError(
                        f"training stopped at epoch {epoch + 1}: loss was NaN/Inf for {bad_streak} "
                        f"batches in a row (lower training.lr?); the last good checkpoint is "
                        f"{self.checkpoint_path}"
                    )
                continue
            bad_streak = 0
            self._apply_gradients(loss)
            acc.update({k: v.detach() for k, v in pred.items()}, batch)
            running += float(loss.detach())
            n_batches += 1
            bar.set_postfix(loss=f"{running / n_batches:.4g}")
        if self.dist.enabled:
            distributed.reduce_metrics(acc, self.dist)
            totals = torch.tensor([running, float(n_batches)], dtype=torch.float64)
            totals = distributed.all_reduce_sum(totals, self.dist)
            running, n_batches = float(totals[0]), int(totals[1])
        metrics = acc.compute()
        metrics["loss"] = running / max(n_batches, 1)
        return metrics

    def _predict_with_loss(self, batch, names: set[str]) -> tuple[dict, torch.Tensor]:
        """The training model's predictions on a batch (on the device) and the weighted loss."""
        pred = self.train_model(
            batch, compute_forces="forces" in names, compute_stress="stress" in names, training=True
        )
        loss, _ = weighted_loss(self.specs, pred, batch, self.loss_scales)
        return pred, loss

    def _apply_gradients(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``: learning rate, backward, clipping, step, EMA."""
        t = self.cfg.training
        self.optimizer.zero_grad(set_to_none=True)
        if self.time_cosine:
            self._set_time_cosine_lr()
        loss.backward()
        if t.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _valid_score(self, metrics: dict) -> float:
        """Weighted sum of the validation loss terms — the same weighting and normalisation as the loss."""
        score = 0.0
        for spec in self.specs:
            if f"{spec.name}_loss" in metrics:
                score += spec.weight * metrics[f"{spec.name}_loss"]
            elif f"{spec.name}_rmse" in metrics:
                score += spec.weight * metrics[f"{spec.name}_rmse"] ** 2
        return score

    def _save_checkpoint(self, epoch: int) -> None:
        payload = {
            "format": "mlip-checkpoint",
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model": model_payload(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch,
            "best_valid": self.best_valid,
            "epochs_without_improvement": self.epochs_without_improvement,
            "config": self.cfg.to_dict(),
            "rng_torch": torch.get_rng_state(),
            "stage": self.stage,
            "wall_time_s": self.wall_time_s,
        }
        atomic_torch_save(payload, self.checkpoint_path)

    def _best_module(self) -> MLIPModel:
        return self.ema.module if self.ema is not None else self.model

    def _truncate_csv(self, last_epoch: int) -> None:
        with open(self.csv_path, newline="") as handle:
            rows = list(csv.reader(handle))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= last_epoch]
        text = "".join(",".join(r) + "\n" for r in kept)
        atomic_write_bytes_via(self.csv_path, lambda h: h.write(text.encode()))

    def _write_csv(self, row: dict) -> None:
        new = not os.path.exists(self.csv_path)
        existing_fields = None
        if not new:
            with open(self.csv_path) as handle:
                existing_fields = next(csv.reader(handle), None)
        fields = existing_fields or list(row)
        with open(self.csv_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # -------------------------------------------------------------- main loop
    def run(self) -> dict:
        """Train; returns the final validation (and test) metrics (on every rank)."""
        try:
            results = self._run()
            distributed.barrier(self.dist)  # every rank done before the group goes away
            return results
        finally:
            if self.dist.enabled:
                # Free the DDP wrapper (its reducer holds the process group) before destroying
                # the group: destroying it first can hang the interpreter at exit.
                self.train_model = None
                gc.collect()
            distributed.cleanup(self.dist)

    def _log(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def _run(self) -> dict:
        cfg, t = self.cfg, self.cfg.training
        self._setup()
        main = self.is_main
        if main:
            atomic_write_bytes_via(
                os.path.join(self.out, "config.yaml"),
                lambda h: h.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()),
            )
        wandb_run = self._init_wandb() if main else None
        if main and os.path.exists(self.csv_path):
            if self.start_epoch == 0:
                os.remove(self.csv_path)
            else:  # resumed: drop rows of epochs the checkpoint does not contain (they are redone)
                self._truncate_csv(self.start_epoch)
        start_time = self.clock_start = time.perf_counter() - self.wall_time_offset
        self.wall_time_s = self.wall_time_offset
        last_valid: dict = {}
        n_train = len(self.data.train)
        source = f"store {cfg.data.preprocessed_dir}" if cfg.data.preprocessed_dir else "in memory"
        ranks = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        self._log(
            f"mlip: training on {n_train} structures, validating on {len(self.data.valid)} ({source}), "
            f"{sum(p.numel() for p in self.model.parameters())} parameters, device {self.device}{ranks}"
        )
        for epoch in range(self.start_epoch, t.max_epochs):
            if self._stage_two_due(epoch, time.perf_counter() - start_time):
                self._enter_stage_two()
            epoch_start = time.perf_counter()
            train_metrics = self._train_epoch(epoch)
            train_time = time.perf_counter() - epoch_start
            evaluated = self.ema if self.ema is not None else self.model
            valid_metrics = self._evaluate(evaluated, self.valid_loader) if self.data.valid else train_metrics
            last_valid = valid_metrics
            score = self._valid_score(valid_metrics)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(score)
            elif self.scheduler is not None:
                self.scheduler.step()
            improved = score < self.best_valid
            if improved:
                self.best_valid = score
                self.epochs_without_improvement = 0
                if main:
                    save_model(self._best_module(), self.model_path)
            else:
                self.epochs_without_improvement += 1
            self.wall_time_s = time.perf_counter() - start_time
            row = {
                "epoch": epoch + 1,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train_metrics["loss"],
                "epoch_time_s": train_time,
                "wall_time_s": self.wall_time_s,
                "stage": self.stage,
                "structures_per_s": n_train / max(train_time, 1e-9),
            }
            row.update({f"train_{k}": v for k, v in train_metrics.items() if k.endswith(("_mae", "_rmse"))})
            row.update({f"valid_{k}": v for k, v in valid_metrics.items() if k.endswith(("_mae", "_rmse"))})
            if main:  # metrics row first, then the checkpoint: a kill in between repeats the epoch
                self._write_csv(row)
                self._save_checkpoint(epoch + 1)
                self._take_snapshots(epoch + 1, self.wall_time_s)
            if wandb_run is not None:
                wandb_run.log(row, step=epoch + 1)
            summary = "  ".join(
                f"{k[6:]}={v:.4g}"
                for k, v in row.items()
                if k.startswith("valid_") and k.endswith("_rmse") and not k.endswith("_mean_rmse")
            )
            self._log(
                f"epoch {epoch + 1:4d}  loss {train_metrics['loss']:.4g}  valid {summary}  "
                f"({train_time:.1f} s){'  *' if improved else ''}"
            )
            if t.early_stopping_patience and self.epochs_without_improvement >= t.early_stopping_patience:
                self._log(f"mlip: early stopping after {epoch + 1} epochs")
                break
            elapsed = self.wall_time_s
            over_time = bool(t.max_time_minutes) and elapsed > 60 * t.max_time_minutes
            if distributed.any_true(over_time, self.dist):  # one rank over budget stops all together
                self._log(f"mlip: time budget of {t.max_time_minutes} min reached")
                break
        results = {"valid": last_valid}
        if self.data.test:
            best = self._load_best()
            results["test"] = self._evaluate(best, self.data.test)
            if main:
                atomic_write_bytes_via(
                    os.path.join(self.out, "test_metrics.json"),
                    lambda h: h.write(json.dumps(results["test"], indent=2).encode()),
                )
            self._log("test set errors (best model):\n" + format_metrics_table(results["test"], self.specs))
        if wandb_run is not None:
            wandb_run.finish()
        return results

    def _load_best(self) -> MLIPModel:
        """The best model as saved in model.pt (read by rank 0 and broadcast under torchrun)."""
        if not self.dist.enabled:
            from mlip.model.potential import load_model

            return load_model(self.model_path, self.device, self.dtype)
        distributed.barrier(self.dist)
        payload = safe_torch_load(self.model_path) if self.is_main else None
        payload = distributed.broadcast_object(payload, self.dist)
        best = model_from_payload(payload, self.model_path)
        return best.to(device=self.device, dtype=self.dtype).eval()

    def _init_wandb(self):
        lg = self.cfg.logging
        if not lg.wandb or lg.wandb_mode == "disabled":
            return None
        import wandb

        return wandb.init(
            project=lg.wandb_project,
            name=lg.wandb_name,
            mode=lg.wandb_mode,
            dir=self.out,
            config=self.cfg.to_dict(),
            resume="allow",
        )


def train(cfg: Config) -> dict:
    """Train a model as described by ``cfg``; see :class:`Trainer`."""
    return Trainer(cfg).run()
