"""MACE side of the benchmarks (runs in the peers' virtual environment, e.g. /work/peers).

    PEERS=/work/peers/bin/python
    $PEERS scripts/bench/peer_mace.py train --task ethanol --splits S.json --budget-min 3 --out DIR
    $PEERS scripts/bench/peer_mace.py serve

``train`` runs MACE's own training CLI (``mace_run_train``, called in-process through
``mace.cli.run_train.main`` with the argv recorded in ``result.json``) with MACE's documented
recipe for the task (``task_args``; sources in docs/benchmarks.md) under a wall-clock budget, and
writes test-set predictions of the best model so far at each mark (``install_snapshots``). MACE's
stage two ("swa": raised energy weight, lower learning rate) starts at 75 % of the budget. The
clock starts at the first training epoch (after MACE's data loading, statistics and initial
validation), as for the other codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    MACE_RECIPE_WEIGHTS,
    MLIP_ACCURATE_WEIGHTS,
    STAGE_TWO_FRACTION,
    BudgetReached,
    CallTimer,
    SnapshotClock,
    SnapshotWriter,
    diamond,
    e0s_of,
    ethanol_cluster,
    ethanol_frames,
    exit_on_sigterm,
    machine_info,
    package_versions,
    parse_marks,
    peak_memory,
    read_json,
    serve,
    set_threads,
    split_tests,
    synchronize,
    take_due_snapshots,
    time_calls,
    timed_calls_with_memory,
    write_json,
)

CODE = "mace"
VERSION_PACKAGES = ["mace-torch", "e3nn", "torch", "ase", "matscipy", "numpy"]

# Model sizes (channels; max_L 1 for energy models as in the README's recommended
# "128x0e + 128x1o", max_L 2 for the dipole/polarizability model as guide/polarizability.rst
# requires). "default" = the size of the task's recipe: 128 channels (README; polarizability.rst)
# except bulk water, whose published command uses 32 (data/water_bulk/README.md).
SIZES = {"small": 32, "medium": 64, "large": 128}
DEFAULT_SIZE = {
    "ethanol": "large",
    "acac": "large",
    "carbon": "large",
    "tensors": "large",
    "water": "small",
    "dipoles": "large",
}

# Settings of MACE's documented recipe shared by every task (see docs/benchmarks.md for sources):
# README (develop): E0s from isolated atoms, EMA 0.99, AMSGrad, stage two ("swa"); otherwise the
# mace_run_train defaults (lr 0.01, weight decay 5e-7, ReduceLROnPlateau factor 0.8 patience 50,
# clip_grad 10, max_ell 3, correlation 3, 2 interactions, r_max 5 Å). float32 for every code.
COMMON_ARGS = [
    "--num_interactions", "2",
    "--max_ell", "3",
    "--correlation", "3",
    "--r_max", "5.0",
    "--max_num_epochs", "1000000",
    "--patience", "1000000",
    "--eval_interval", "1",
    "--ema",
    "--ema_decay", "0.99",
    "--amsgrad",
    "--default_dtype", "float32",
    "--plot", "False",
    "--num_workers", "0",
]  # fmt: skip
# stage two starts by time (the budget wrapper sets it); the epoch number only has to be below
# max_num_epochs for MACE to enable it
START_SWA_PLACEHOLDER = "999999"


def _e0s_arg(split: dict, zs: list[int]) -> str:
    """--E0s: isolated-atom energies where the data give them, else MACE's least-squares average."""
    e0s = e0s_of(split)
    if e0s:
        return "{" + ", ".join(f"{z}: {e0s[z]!r}" for z in sorted(e0s) if z in zs) + "}"
    return "average"


def task_args(task: str, split: dict, size: str = "default", weights: str = "recipe") -> list[str]:
    """mace_run_train arguments of a task (data, model, loss, weights, stage two, size).

    ``weights``: "recipe" (MACE's documented weights) or "mlip" (mlip's accurate.yaml weighting,
    energy + forces tasks only, for comparisons at equal loss weights)."""
    import ase.io

    size = DEFAULT_SIZE[task] if size == "default" else size
    channels = str(SIZES[size])
    frames = ase.io.read(split["train"], ":")
    zs = sorted({int(z) for a in frames for z in a.numbers})
    files = ["--train_file", split["train"], "--valid_file", split["valid"]]
    w = MACE_RECIPE_WEIGHTS[task]
    if weights == "mlip":
        if task not in ("ethanol", "acac"):
            raise SystemExit(f"peer_mace.py: --weights mlip is defined for ethanol and acac, not {task}")
        w = MLIP_ACCURATE_WEIGHTS

    def batch(size: int) -> str:  # MACE drops the last incomplete batch: at most the training set
        return str(min(size, len(frames)))

    if task in ("ethanol", "acac", "carbon"):
        one, two = w["stage_one"], w["stage_two"]
        args = files + [
            "--model", "ScaleShiftMACE",
            "--num_channels", channels, "--max_L", "1",
            "--batch_size", batch(10), "--valid_batch_size", "10",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces",
            "--E0s", _e0s_arg(split, zs),
            "--energy_weight", str(one["energy"]), "--forces_weight", str(one["forces"]),
            "--swa", "--start_swa", START_SWA_PLACEHOLDER, "--swa_lr", "0.001",
            "--swa_energy_weight", str(two["energy"]), "--swa_forces_weight", str(two["forces"]),
        ]  # fmt: skip
        if task == "carbon":
            return args + [
                "--virials_key", "REF_virial", "--loss", "virials",
                "--virials_weight", str(one["virials"]), "--swa_virials_weight", str(two["virials"]),
                "--error_table", "PerAtomRMSEstressvirials",
            ]  # fmt: skip
        return args + ["--loss", "weighted", "--error_table", "PerAtomRMSE"]
    if task == "dipoles":
        # energy + forces + dipole: EnergyDipolesMACE, the model MACE's docs name for training on
        # energies and dipoles together (docs/guide/training.rst, "Model options"), with the
        # README's "128x0e + 128x1o" (max_L 1) and the energy recipe's stage two. The readout MLP
        # gets vectors as for the dielectric model (guide/polarizability.rst): with the default
        # "16x0e" the last layer's readout has no l=1 path and only the first layer gives dipoles.
        # The B3LYP data have no isolated atoms: E0s from MACE's least-squares average.
        one, two = w["stage_one"], w["stage_two"]
        return files + [
            "--model", "EnergyDipolesMACE",
            "--num_channels", channels, "--max_L", "1",
            "--MLP_irreps", "16x0e+16x1o",
            "--batch_size", batch(10), "--valid_batch_size", "10",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--dipole_key", "REF_dipole",
            "--E0s", _e0s_arg(split, zs),
            "--loss", "energy_forces_dipole", "--error_table", "EnergyDipoleRMSE",
            "--energy_weight", str(one["energy"]), "--forces_weight", str(one["forces"]),
            "--dipole_weight", str(one["dipole"]),
            "--swa", "--start_swa", START_SWA_PLACEHOLDER, "--swa_lr", "0.001",
            "--swa_energy_weight", str(two["energy"]), "--swa_forces_weight", str(two["forces"]),
            "--swa_dipole_weight", str(two["dipole"]),
        ]  # fmt: skip
    # dipole + polarizability ("MACE-μα", AtomicDielectricMACE); MACE has no stage two for it
    one = w["stage_one"]
    size = 64 if task == "water" else 10
    return files + [
        "--model", "AtomicDielectricMACE",
        "--num_channels", channels, "--max_L", "2",
        "--MLP_irreps", "16x0e+16x1o+16x2e",
        "--batch_size", batch(size), "--valid_batch_size", str(size),
        "--dipole_key", "REF_dipole", "--polarizability_key", "REF_polarizability",
        "--E0s", "{" + ", ".join(f"{z}: 0.0" for z in zs) + "}",  # required, unused by this model
        "--loss", "dipole_polar",
        "--dipole_weight", str(one["dipole"]), "--polarizability_weight", str(one["polarizability"]),
        "--weight_decay", "5e-10", "--clip_grad", "1.0",
        "--scheduler_patience", "20" if task == "water" else "15",
        "--error_table", "DipolePolarRMSE",
        "--compute_forces", "False", "--compute_polarizability", "True",
    ]  # fmt: skip


class TrainingFinished(Exception):
    """Raised after the last snapshot, to skip run_train's own post-training evaluation."""


def install_snapshots(clock: SnapshotClock, state: dict, snapshot, stage_two_fraction: float) -> None:
    """Wrap MACE's training loop: wall-clock budget, stage two by time, snapshots at marks.

    * ``mace.tools.train`` is wrapped to get the live model, the SWA container and the
      checkpoint handler; after the loop (budget spent) the final snapshot is taken and
      :class:`TrainingFinished` ends ``run_train`` early.
    * ``train_one_epoch``: at the start of each epoch (after the previous epoch's validation)
      due marks get a snapshot, the budget is checked, and once the clock passes
      ``stage_two_fraction`` of the budget MACE's stage two starts at the next epoch
      (``swa.start`` is read by the loop every epoch).
    * ``CheckpointHandler.save`` (called by MACE whenever the validation loss improves, inside
      the EMA context) is wrapped to keep the best model so far in memory: the snapshot rule.
    """
    import copy

    import mace.tools
    from mace.tools.checkpoint import CheckpointHandler

    train_mod = sys.modules["mace.tools.train"]
    orig_epoch = train_mod.train_one_epoch
    orig_step = train_mod.take_step
    orig_train = mace.tools.train
    orig_save = CheckpointHandler.save

    def saving(self, *args, **kwargs):  # CheckpointHandler.save(state, epochs, keep_last)
        ckpt = kwargs["state"] if "state" in kwargs else args[0]
        state["best"] = copy.deepcopy(ckpt.model.state_dict())
        state["best_epoch"] = kwargs["epochs"] if "epochs" in kwargs else args[1]
        return orig_save(self, *args, **kwargs)

    def timed_step(*args, **kwargs):
        batch = kwargs.get("batch")
        state["steps"] += 1
        state["structures"] += int(batch.num_graphs) if batch is not None else 0
        return orig_step(*args, **kwargs)

    def timed_epoch(*args, **kwargs):
        clock.begin()
        epoch = kwargs.get("epoch", 0)
        snapshot(epoch, final=False)
        if clock.over_budget():
            raise BudgetReached
        swa = state.get("swa")
        if swa is not None and state["stage_two_epoch"] is None:
            if clock.seconds() >= stage_two_fraction * clock.budget_s:
                swa.start = epoch + 1
                state["handler"].io.swa_start = epoch + 1
                state["stage_two_epoch"] = epoch + 1
                state["stage_two_s"] = clock.seconds()
                logging.info(f"bench: stage two from epoch {epoch + 1} ({clock.seconds() / 60:.2f} min)")
        now = time.perf_counter()
        orig_epoch(*args, **kwargs)
        state["train_phase_s"] += time.perf_counter() - now
        state["epochs"] += 1

    def budget_train(*args, **kwargs):
        state["model"] = kwargs["model"]
        state["swa"] = kwargs.get("swa")
        state["handler"] = kwargs["checkpoint_handler"]
        try:
            orig_train(*args, **kwargs)
        except BudgetReached:
            logging.info(f"bench: wall-clock budget of {clock.budget_s / 60:.2f} min reached")
        snapshot(state["epochs"], final=True)
        raise TrainingFinished

    CheckpointHandler.save = saving
    train_mod.take_step = timed_step
    train_mod.train_one_epoch = timed_epoch
    mace.tools.train = budget_train


def best_model(state: dict):
    """A copy of the live model with the best weights so far (EMA), in eval mode."""
    import copy

    model = copy.deepcopy(state["model"])
    if state.get("best") is not None:
        model.load_state_dict(state["best"])
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_mace(path: str, device: str, dtype: str):
    import torch

    model = torch.load(path, map_location=device, weights_only=False)
    model = model.to(device=device, dtype=torch.float64 if dtype == "float64" else torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class MaceInputs:
    """ASE structures → MACE batches (MACE's own AtomicData + data loader)."""

    def __init__(self, model, device: str) -> None:
        from mace import tools

        self.model = model
        self.device = device
        self.z_table = tools.AtomicNumberTable([int(z) for z in model.atomic_numbers])
        self.cutoff = float(model.r_max)
        self.heads = getattr(model, "heads", None)

    def batch(self, frames):
        from mace import data
        from mace.tools import torch_geometric

        key_spec = data.KeySpecification(info_keys={}, arrays_keys={})
        ds = [
            data.AtomicData.from_config(
                data.config_from_atoms(a, key_specification=key_spec),
                z_table=self.z_table,
                cutoff=self.cutoff,
                heads=self.heads,
            )
            for a in frames
        ]
        loader = torch_geometric.dataloader.DataLoader(ds, batch_size=len(ds), shuffle=False, drop_last=False)
        return next(iter(loader)).to(self.device).to_dict()


def predict_file(model_path: str, path: str, device: str, task: str) -> list[dict]:
    return predict_model(load_mace(model_path, device, "float32"), path, device, task)


def predict_model(model, path: str, device: str, task: str) -> list[dict]:
    """Per-structure predictions of a MACE model object on a structure file."""
    import ase.io
    import numpy as np

    tensors = task in ("tensors", "water")
    inputs = MaceInputs(model, device)
    frames = ase.io.read(path, ":")
    preds = []
    for start in range(0, len(frames), 32):
        chunk = frames[start : start + 32]
        batch = inputs.batch(chunk)
        if tensors:
            out = model(batch, training=False, compute_force=False)
        else:
            out = model(batch, training=False, compute_force=True, compute_stress=task == "carbon")
        offsets = np.cumsum([0] + [len(a) for a in chunk])
        for k in range(len(chunk)):
            p = {}
            if tensors:
                p["dipole"] = out["dipole"][k].detach().cpu().numpy()
                p["polarizability"] = out["polarizability"][k].detach().cpu().numpy()
            else:
                p["energy"] = out["energy"][k].detach().cpu().numpy()
                p["forces"] = out["forces"][offsets[k] : offsets[k + 1]].detach().cpu().numpy()
                if task == "carbon":
                    p["stress"] = out["stress"][k].detach().cpu().numpy()
                if task == "dipoles":
                    p["dipole"] = out["dipole"][k].detach().cpu().numpy()
            preds.append(p)
    return preds


def cmd_train(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    import mace  # noqa: F401  (before e3nn: allow-lists e3nn's constants for torch.load)
    import torch
    from mace.cli import run_train

    split = read_json(args.splits)["tasks"][args.task]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, "run")
    size = DEFAULT_SIZE[args.task] if args.size == "default" else args.size
    argv = [
        "mace_run_train", "--name", "mace", "--work_dir", work,
        "--seed", str(args.seed), "--device", args.device,
    ] + COMMON_ARGS + task_args(args.task, split, size, args.weights)  # fmt: skip
    state = {
        "epochs": 0, "steps": 0, "structures": 0, "train_phase_s": 0.0,
        "best": None, "best_epoch": None, "stage_two_epoch": None, "stage_two_s": None,
    }  # fmt: skip
    tests = {} if args.no_test else split_tests(split)
    clock = SnapshotClock(parse_marks(args.marks, args.budget_min), args.budget_min)
    writer = SnapshotWriter(out, tests)

    def snapshot(epoch: int, final: bool) -> None:
        if state.get("best") is None or not (clock.due() or final):
            return
        stage = "two" if state["stage_two_epoch"] is not None and epoch >= state["stage_two_epoch"] else "one"

        def make_predict():
            model = best_model(state)
            return lambda f: predict_model(model, f, args.device, args.task)

        take_due_snapshots(
            clock,
            writer,
            epoch,
            make_predict,
            final=final,
            best_epoch=state["best_epoch"],
            stage=stage,
        )

    install_snapshots(clock, state, snapshot, STAGE_TWO_FRACTION)
    # run_train's post-training evaluation and export are skipped (TrainingFinished); the
    # snapshots are the benchmark's output and the final best model is saved below.
    sys.argv = argv
    start = time.perf_counter()
    try:
        run_train.main()
    except TrainingFinished:
        pass
    wall = time.perf_counter() - start
    model = best_model(state)
    model_path = os.path.join(out, "mace_best.model")
    torch.save(model.cpu(), model_path)
    result = {
        "code": CODE,
        "task": args.task,
        "size": size,
        "seed": args.seed,
        "budget_min": args.budget_min,
        "command": " ".join(argv) + "   # (mace.cli.run_train.main, in-process, budget-wrapped)",
        "config": {"argv": argv[1:]},
        "versions": package_versions(VERSION_PACKAGES),
        "machine": machine_info(args.device),
        "wall_s": wall,
        "epochs": state["epochs"],
        "optimizer_steps": state["steps"],
        "train_phase_s": state["train_phase_s"],
        "loop_s": clock.seconds(),
        "train_structures_per_s": state["structures"] / max(state["train_phase_s"], 1e-9),
        "stage_two": {
            "fraction_of_budget": STAGE_TWO_FRACTION if state.get("swa") is not None else None,
            "started_epoch": state["stage_two_epoch"],
            "started_s": state["stage_two_s"],
        },
        "n_params": sum(p.numel() for p in model.parameters()),
        "model_path": model_path,
        "snapshots": writer.entries,
        "snapshot_rule": "best-validation model so far in the current stage (MACE's checkpoint: EMA weights)",
    }
    if writer.entries and "test" in writer.entries[-1]["files"]:  # none with --no-test
        shutil.copy(writer.entries[-1]["files"]["test"], os.path.join(out, "test_predictions.npz"))
    write_json(os.path.join(out, "result.json"), result)


# ----------------------------------------------------------------------------- persistent worker


class Worker:
    def __init__(self, threads: int) -> None:
        set_threads(threads)
        import mace  # noqa: F401
        import torch

        self.torch = torch

    def info(self) -> dict:
        return {"code": CODE, "versions": package_versions(VERSION_PACKAGES)}

    def load(self, model_path: str, device: str = "cpu", dtype: str = "float32") -> dict:
        torch = self.torch
        torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)
        self.device, self.dtype_name = device, dtype
        self.model = load_mace(model_path, device, dtype)
        self.inputs = MaceInputs(self.model, device)
        return {"n_params": sum(p.numel() for p in self.model.parameters()), "cutoff": self.inputs.cutoff}

    def _model_call(self, batch):
        out = self.model(batch, training=False, compute_force=True)
        return out["energy"], out["forces"]

    def _e2e(self, frames):
        energy, forces = self._model_call(self.inputs.batch(frames))
        return energy.detach().cpu().numpy(), forces.detach().cpu().numpy()

    def setup(self, kind: str, n: int, data_path: str | None = None, warmup: int = 2) -> dict:
        frames = ethanol_frames(data_path, n) if kind == "molecules" else [diamond(n)]
        self.frames = frames
        self.batch = self.inputs.batch(frames)
        for _ in range(warmup):
            self._model_call(self.batch)
            self._e2e(frames)
        synchronize(self.device)
        return {
            "n_structures": len(frames),
            "n_atoms": int(sum(len(a) for a in frames)),
            "n_edges": int(self.batch["edge_index"].shape[1]),
        }

    def run(self, mode: str, n_calls: int) -> list[float]:
        if mode == "model":
            return time_calls(lambda: self._model_call(self.batch), n_calls, self.device)
        return time_calls(lambda: self._e2e(self.frames), n_calls, self.device)

    def md_setup(
        self, system: str, n: int, data_path: str | None = None, seed: int = 0, warmup: int = 5, **_: object
    ) -> dict:
        import numpy as np
        from ase import units
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from ase.md.verlet import VelocityVerlet
        from mace.calculators import MACECalculator

        atoms = ethanol_cluster(data_path, n) if system == "cluster" else diamond(n)
        calc = MACECalculator(models=self.model, device=self.device, default_dtype=self.dtype_name)
        model = calc.models[0]
        self.md_timer = CallTimer(model.forward, self.device)
        model.forward = self.md_timer
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
        self.md_dyn = VelocityVerlet(atoms, 0.5 * units.fs)
        self.md_dyn.run(warmup)
        return {"n_atoms": len(atoms)}

    def md_run(self, steps: int) -> dict:
        self.md_timer.reset()
        start = time.perf_counter()
        self.md_dyn.run(steps)
        total = time.perf_counter() - start
        return {
            "steps": steps,
            "total_s": total,
            "model_s": self.md_timer.total,
            "model_calls": self.md_timer.calls,
        }

    def scaling_point(self, n_atoms: int, repeats: int = 2, warmup: int = 1) -> dict:
        atoms = diamond(n_atoms)
        start = time.perf_counter()
        with peak_memory(self.device) as mem_graph:
            batch = self.inputs.batch([atoms])
        graph_s = time.perf_counter() - start
        times, mems = timed_calls_with_memory(lambda: self._model_call(batch), warmup, repeats, self.device)
        return {
            "n_atoms": len(atoms),
            "n_edges": int(batch["edge_index"].shape[1]),
            "graph_s": graph_s,
            "graph_peak_mib": mem_graph.get("peak_mib"),
            "warmup_calls": warmup,
            "model_s": times,
            "model_peak_mib": [m.get("peak_mib") for m in mems],
            "process_peak_mib": max((m.get("process_peak_mib") or 0) for m in mems),
        }


def main() -> None:
    exit_on_sigterm()  # a terminated run takes its training process with it
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--task", required=True, choices=list(DEFAULT_SIZE))
    t.add_argument("--splits", required=True)
    t.add_argument("--budget-min", type=float, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-test", action="store_true")
    t.add_argument("--marks", default=None, help="snapshot marks in training minutes, e.g. 1,2,5")
    t.add_argument("--size", default="default", choices=["default", *SIZES])
    t.add_argument(
        "--weights",
        default="recipe",
        choices=["recipe", "mlip"],
        help="loss weights: MACE's recipe (default) or mlip's accurate.yaml weighting "
        "(forces 10 : energy 1, energy ×100 in stage two)",
    )
    s = sub.add_parser("serve")
    s.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.cmd == "train":
        cmd_train(args)
    else:
        serve(Worker(args.threads))


if __name__ == "__main__":
    main()
