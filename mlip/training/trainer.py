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
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from mlip.data.dataset import (
    DatasetStatistics,
    average_neighbours,
    compute_statistics,
    make_loader,
    parse_e0s,
    read_for_training,
    split_train_valid,
    to_graphs,
)
from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel, model_from_payload, model_payload, save_model
from mlip.targets import TargetSpec
from mlip.training.checkpoint import atomic_torch_save, atomic_write_bytes_via, safe_torch_load
from mlip.training.config import Config
from mlip.training.loss import weighted_loss
from mlip.training.metrics import MetricsAccumulator, format_metrics_table

CHECKPOINT_FORMAT_VERSION = 1


def select_device(setting: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise MLIPError(f"device '{setting}' requested but CUDA is not available")
    return torch.device(setting)


def spec_to_dict(spec: TargetSpec) -> dict:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "key": spec.key,
        "per_atom": spec.per_atom,
        "irreps": [list(x) for x in spec.irreps],
        "weight": spec.weight,
        "unit_factor": spec.unit_factor,
        "virial_key": spec.virial_key,
        "symmetric": spec.symmetric,
    }


def build_model(cfg: Config, stats: DatasetStatistics, specs: list[TargetSpec]) -> MLIPModel:
    """Model from the config's architecture and the training-set statistics."""
    m = cfg.model
    return MLIPModel(
        species=stats.species,
        cutoff=cfg.data.cutoff,
        e0s=stats.e0s,
        scale=stats.scale,
        shift=stats.shift,
        targets=[spec_to_dict(s) for s in specs],
        backbone=dict(
            channels=m.channels,
            num_layers=m.num_layers,
            lmax=m.lmax,
            num_radial=m.num_radial,
            radial_hidden=m.radial_hidden,
            avg_num_neighbours=stats.avg_num_neighbours,
        ),
        readout_hidden=m.readout_hidden,
        tensor=dict(
            num_vectors=m.num_vectors,
            hidden=m.tensor_hidden,
            scales=stats.tensor_scales,
            shifts=stats.tensor_shifts,
        ),
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
    train: list
    valid: list
    test: list
    stats: DatasetStatistics
    specs: list[TargetSpec]


def prepare_data(cfg: Config, dtype: torch.dtype) -> PreparedData:
    """Read files, split, compute statistics and build graphs."""
    specs = cfg.target_specs()
    d = cfg.data
    train_structs, isolated = read_for_training(d.train_file, specs, d.format, d.max_structures)
    if d.valid_file:
        valid_structs, _ = read_for_training(d.valid_file, specs, d.format)
    else:
        train_structs, valid_structs = split_train_valid(train_structs, d.valid_fraction, cfg.seed)
    test_structs = read_for_training(d.test_file, specs, d.format)[0] if d.test_file else []
    train = to_graphs(train_structs, d.cutoff, specs, d.min_distance, dtype)
    valid = to_graphs(valid_structs, d.cutoff, specs, d.min_distance, dtype)
    test = to_graphs(test_structs, d.cutoff, specs, d.min_distance, dtype)
    all_species = {int(z) for s in valid_structs + test_structs for z in s.atoms.numbers}
    stats = compute_statistics(
        train_structs,
        specs,
        parse_e0s(d.e0s, "config"),
        isolated,
        average_neighbours(train),
        extra_species=sorted(all_species),
    )
    return PreparedData(train, valid, test, stats, specs)


def evaluate(model: torch.nn.Module, loader, specs: list[TargetSpec], device: torch.device) -> dict:
    """Metrics of ``model`` on every batch of ``loader``."""
    acc = MetricsAccumulator(specs)
    names = {s.name for s in specs}
    module = model.module if isinstance(model, AveragedModel) else model
    module.eval()
    for batch in loader:
        batch = batch.to(device)
        with torch.enable_grad():
            pred = module(batch, compute_forces="forces" in names, compute_stress="stress" in names)
        acc.update({k: v.detach() for k, v in pred.items()}, batch)
    return acc.compute()


class Trainer:
    """Runs one training job described by a :class:`Config`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.device = select_device(cfg.device)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.out = cfg.output_dir
        _check_output_dir(self.out)
        self.checkpoint_path = os.path.join(self.out, "checkpoint.pt")
        self.model_path = os.path.join(self.out, "model.pt")
        self.csv_path = os.path.join(self.out, "metrics.csv")

    # -------------------------------------------------------------- set-up
    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.data = prepare_data(cfg, self.dtype)
        self.specs = self.data.specs
        resume_state = None
        if cfg.resume and os.path.exists(self.checkpoint_path):
            resume_state = safe_torch_load(self.checkpoint_path)
            if not isinstance(resume_state, dict) or resume_state.get("format") != "mlip-checkpoint":
                raise MLIPError(f"{self.checkpoint_path}: not an mlip checkpoint")
            if resume_state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
                raise MLIPError(
                    f"{self.checkpoint_path}: checkpoint format version "
                    f"{resume_state.get('format_version')} is not supported"
                )
            self.model = model_from_payload(resume_state["model"], self.checkpoint_path)
        else:
            self.model = build_model(cfg, self.data.stats, self.specs)
        self.model = self.model.to(device=self.device, dtype=self.dtype)
        t = cfg.training
        opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        if t.scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=t.lr_factor, patience=t.scheduler_patience, min_lr=t.min_lr
            )
        elif t.scheduler == "cosine":
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
            self.optimizer.load_state_dict(resume_state["optimizer"])
            if self.scheduler is not None and resume_state.get("scheduler"):
                self.scheduler.load_state_dict(resume_state["scheduler"])
            if self.ema is not None and resume_state.get("ema"):
                self.ema.load_state_dict(resume_state["ema"])
            self.start_epoch = int(resume_state["epoch"])
            self.best_valid = float(resume_state["best_valid"])
            self.epochs_without_improvement = int(resume_state["epochs_without_improvement"])
            torch.set_rng_state(resume_state["rng_torch"])
        self.valid_loader = make_loader(self.data.valid, t.valid_batch_size, shuffle=False)

    # -------------------------------------------------------------- steps
    def _train_epoch(self, epoch: int) -> dict:
        cfg, t = self.cfg, self.cfg.training
        loader = make_loader(
            self.data.train, t.batch_size, shuffle=True, seed=cfg.seed + epoch, num_workers=t.num_workers
        )
        names = {s.name for s in self.specs}
        self.model.train()
        acc = MetricsAccumulator(self.specs)
        running, n_batches, bad_streak = 0.0, 0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{t.max_epochs}",
            leave=False,
            disable=not cfg.logging.progress_bar,
            dynamic_ncols=True,
        )
        for batch in bar:
            batch = batch.to(self.device)
            pred = self.model(
                batch, compute_forces="forces" in names, compute_stress="stress" in names, training=True
            )
            loss, _ = weighted_loss(self.specs, pred, batch)
            if not torch.isfinite(loss):
                bad_streak += 1
                self.optimizer.zero_grad(set_to_none=True)
                if bad_streak >= t.skip_nan_batches:
                    raise MLIPError(
                        f"training stopped at epoch {epoch + 1}: loss was NaN/Inf for {bad_streak} "
                        f"batches in a row (lower training.lr?); the last good checkpoint is "
                        f"{self.checkpoint_path}"
                    )
                continue
            bad_streak = 0
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            acc.update({k: v.detach() for k, v in pred.items()}, batch)
            running += float(loss.detach())
            n_batches += 1
            bar.set_postfix(loss=f"{running / n_batches:.4g}")
        metrics = acc.compute()
        metrics["loss"] = running / max(n_batches, 1)
        return metrics

    def _valid_score(self, metrics: dict) -> float:
        """Weighted sum of validation RMSE² — the same weighting as the loss."""
        score = 0.0
        for spec in self.specs:
            key = f"{spec.name}_rmse"
            if key in metrics:
                score += spec.weight * metrics[key] ** 2
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
        }
        atomic_torch_save(payload, self.checkpoint_path)

    def _best_module(self) -> MLIPModel:
        return self.ema.module if self.ema is not None else self.model

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
        """Train; returns the final validation (and test) metrics."""
        cfg, t = self.cfg, self.cfg.training
        self._setup()
        atomic_write_bytes_via(
            os.path.join(self.out, "config.yaml"),
            lambda h: h.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()),
        )
        wandb_run = self._init_wandb()
        if self.start_epoch == 0 and os.path.exists(self.csv_path):
            os.remove(self.csv_path)
        start_time = time.perf_counter()
        last_valid: dict = {}
        n_train = len(self.data.train)
        print(
            f"mlip: training on {n_train} structures, validating on {len(self.data.valid)}, "
            f"{sum(p.numel() for p in self.model.parameters())} parameters, device {self.device}",
            flush=True,
        )
        for epoch in range(self.start_epoch, t.max_epochs):
            epoch_start = time.perf_counter()
            train_metrics = self._train_epoch(epoch)
            train_time = time.perf_counter() - epoch_start
            evaluated = self.ema if self.ema is not None else self.model
            valid_metrics = (
                evaluate(evaluated, self.valid_loader, self.specs, self.device)
                if self.data.valid
                else train_metrics
            )
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
                save_model(self._best_module(), self.model_path)
            else:
                self.epochs_without_improvement += 1
            self._save_checkpoint(epoch + 1)
            row = {
                "epoch": epoch + 1,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train_metrics["loss"],
                "epoch_time_s": train_time,
                "structures_per_s": n_train / max(train_time, 1e-9),
            }
            row.update({f"train_{k}": v for k, v in train_metrics.items() if k.endswith(("_mae", "_rmse"))})
            row.update({f"valid_{k}": v for k, v in valid_metrics.items() if k.endswith(("_mae", "_rmse"))})
            self._write_csv(row)
            if wandb_run is not None:
                wandb_run.log(row, step=epoch + 1)
            summary = "  ".join(
                f"{k[6:]}={v:.4g}" for k, v in row.items() if k.startswith("valid_") and k.endswith("_rmse")
            )
            print(
                f"epoch {epoch + 1:4d}  loss {train_metrics['loss']:.4g}  valid {summary}  "
                f"({train_time:.1f} s){'  *' if improved else ''}",
                flush=True,
            )
            if t.early_stopping_patience and self.epochs_without_improvement >= t.early_stopping_patience:
                print(f"mlip: early stopping after {epoch + 1} epochs", flush=True)
                break
            if t.max_time_minutes and time.perf_counter() - start_time > 60 * t.max_time_minutes:
                print(f"mlip: time budget of {t.max_time_minutes} min reached", flush=True)
                break
        results = {"valid": last_valid}
        if self.data.test:
            from mlip.model.potential import load_model

            best = load_model(self.model_path, self.device, self.dtype)
            test_loader = make_loader(self.data.test, t.valid_batch_size, shuffle=False)
            results["test"] = evaluate(best, test_loader, self.specs, self.device)
            atomic_write_bytes_via(
                os.path.join(self.out, "test_metrics.json"),
                lambda h: h.write(json.dumps(results["test"], indent=2).encode()),
            )
            print("test set errors (best model):\n" + format_metrics_table(results["test"], self.specs))
        if wandb_run is not None:
            wandb_run.finish()
        return results

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
