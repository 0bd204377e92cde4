"""MACE side of the benchmarks (runs in the peers' virtual environment, e.g. /work/peers).

    PEERS=/work/peers/bin/python
    $PEERS scripts/bench/peer_mace.py train --task ethanol --splits S.json --budget-min 3 --out DIR
    $PEERS scripts/bench/peer_mace.py serve

``train`` runs MACE's own training CLI (``mace_run_train``, called in-process through
``mace.cli.run_train.main`` with the argv recorded in ``result.json``) under a wall-clock budget:
``mace.tools.train.train_one_epoch`` is wrapped so that, once the budget is spent, the next epoch
raises and ``mace.tools.train`` returns normally; ``run_train`` then reloads its best (EMA)
checkpoint, saves the model and evaluates it as usual. The budget clock starts at the first
training epoch (after MACE's data loading, statistics and the initial validation), as for mlip.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    BudgetReached,
    CallTimer,
    diamond,
    ethanol_cluster,
    ethanol_frames,
    machine_info,
    package_versions,
    peak_memory,
    read_json,
    save_predictions,
    serve,
    set_threads,
    synchronize,
    time_calls,
    timed_calls_with_memory,
    write_json,
)

CODE = "mace"
VERSION_PACKAGES = ["mace-torch", "e3nn", "torch", "ase", "matscipy", "numpy"]

# "Standard small" MACE: 32 channels, max_L 1 (hidden irreps 32x0e+32x1o), max_ell 3, correlation 3,
# 2 interactions, r_max 5 Å; otherwise mace_run_train defaults (amsgrad Adam, lr 0.01, plateau).
COMMON_ARGS = [
    "--num_interactions", "2",
    "--num_channels", "32",
    "--max_L", "1",
    "--max_ell", "3",
    "--correlation", "3",
    "--r_max", "5.0",
    "--batch_size", "8",
    "--valid_batch_size", "16",
    "--max_num_epochs", "100000",
    "--patience", "100000",
    "--eval_interval", "1",
    "--ema",
    "--ema_decay", "0.99",
    "--default_dtype", "float32",
    "--plot", "False",
    "--num_workers", "0",
]  # fmt: skip


def task_args(task: str, split: dict) -> list[str]:
    files = ["--train_file", split["train"], "--valid_file", split["valid"]]
    if task == "ethanol":
        return files + [
            "--model", "MACE",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces",
            "--E0s", "average",
            "--loss", "weighted", "--energy_weight", "1.0", "--forces_weight", "100.0",
            "--error_table", "PerAtomRMSE",
        ]  # fmt: skip
    if task == "carbon":
        return files + [
            "--model", "MACE",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--virials_key", "REF_virial",
            "--E0s", "average",
            "--loss", "virials", "--energy_weight", "1.0", "--forces_weight", "100.0",
            "--virials_weight", "1.0",
            "--error_table", "PerAtomRMSEstressvirials",
        ]  # fmt: skip
    if task == "tensors":
        # MACE-μα: dipole + polarizability (needs L=2 features for the λ=2 part of α)
        return files + [
            "--model", "AtomicDielectricMACE",
            "--dipole_key", "REF_dipole", "--polarizability_key", "REF_polarizability",
            "--E0s", "{1: 0.0, 6: 0.0, 8: 0.0}",  # required by run_train, unused by this model
            "--loss", "dipole_polar", "--dipole_weight", "1.0", "--polarizability_weight", "1.0",
            "--error_table", "DipolePolarRMSE",
            "--compute_forces", "False", "--compute_polarizability", "True",
            "--max_L", "2",  # hidden irreps 32x0e+32x1o+32x2e: the λ=2 part of α needs L=2 features
        ]  # fmt: skip
    raise ValueError(task)


def install_budget(budget_s: float, state: dict) -> None:
    import mace.tools

    train_mod = sys.modules["mace.tools.train"]
    orig_epoch = train_mod.train_one_epoch
    orig_step = train_mod.take_step
    orig_train = mace.tools.train

    def timed_step(*args, **kwargs):
        batch = kwargs.get("batch")
        state["steps"] += 1
        state["structures"] += int(batch.num_graphs) if batch is not None else 0
        return orig_step(*args, **kwargs)

    def timed_epoch(*args, **kwargs):
        now = time.perf_counter()
        if state["start"] is None:
            state["start"] = now
        elif now - state["start"] > budget_s:
            raise BudgetReached
        orig_epoch(*args, **kwargs)
        state["train_phase_s"] += time.perf_counter() - now
        state["epochs"] += 1

    def budget_train(*args, **kwargs):
        try:
            orig_train(*args, **kwargs)
        except BudgetReached:
            logging.info(f"bench: wall-clock budget of {budget_s / 60:.2f} min reached")
        state["loop_s"] = time.perf_counter() - (state["start"] or time.perf_counter())

    train_mod.take_step = timed_step
    train_mod.train_one_epoch = timed_epoch
    mace.tools.train = budget_train


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
    import ase.io
    import numpy as np

    model = load_mace(model_path, device, "float32")
    inputs = MaceInputs(model, device)
    frames = ase.io.read(path, ":")
    preds = []
    for start in range(0, len(frames), 32):
        chunk = frames[start : start + 32]
        batch = inputs.batch(chunk)
        if task == "tensors":
            out = model(batch, training=False, compute_force=False)
        else:
            out = model(batch, training=False, compute_force=True, compute_stress=task == "carbon")
        offsets = np.cumsum([0] + [len(a) for a in chunk])
        for k in range(len(chunk)):
            p = {}
            if task == "tensors":
                p["dipole"] = out["dipole"][k].detach().cpu().numpy()
                p["polarizability"] = out["polarizability"][k].detach().cpu().numpy()
            else:
                p["energy"] = out["energy"][k].detach().cpu().numpy()
                p["forces"] = out["forces"][offsets[k] : offsets[k + 1]].detach().cpu().numpy()
                if task == "carbon":
                    p["stress"] = out["stress"][k].detach().cpu().numpy()
            preds.append(p)
    return preds


def cmd_train(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    import mace  # noqa: F401  (before e3nn: allow-lists e3nn's constants for torch.load)
    from mace.cli import run_train

    split = read_json(args.splits)["tasks"][args.task]
    os.makedirs(args.out, exist_ok=True)
    work = os.path.abspath(os.path.join(args.out, "run"))
    argv = (
        [
            "mace_run_train",
            "--name",
            "mace",
            "--work_dir",
            work,
            "--seed",
            str(args.seed),
            "--device",
            args.device,
        ]
        + COMMON_ARGS
        + task_args(args.task, split)
    )
    state = {"start": None, "epochs": 0, "steps": 0, "structures": 0, "train_phase_s": 0.0, "loop_s": None}
    install_budget(60.0 * args.budget_min, state)
    # After training, skip run_train's error tables on the training/validation sets and the
    # TorchScript export (both after the budget; the driver evaluates the test set itself).
    run_train.create_error_table = lambda **_: "(skipped by the benchmark)"

    def _no_compile(*_args, **_kwargs):
        raise RuntimeError("TorchScript export skipped by the benchmark")

    run_train.jit = types.SimpleNamespace(compile=_no_compile)
    sys.argv = argv
    start = time.perf_counter()
    run_train.main()
    wall = time.perf_counter() - start
    model_path = os.path.join(work, "mace.model")
    result = {
        "code": CODE,
        "task": args.task,
        "budget_min": args.budget_min,
        "command": " ".join(argv) + "   # (mace.cli.run_train.main, in-process, budget-wrapped)",
        "config": {"argv": argv[1:]},
        "versions": package_versions(VERSION_PACKAGES),
        "machine": machine_info(args.device),
        "wall_s": wall,
        "epochs": state["epochs"],
        "optimizer_steps": state["steps"],
        "train_phase_s": state["train_phase_s"],
        "loop_s": state["loop_s"],
        "train_structures_per_s": state["structures"] / max(state["train_phase_s"], 1e-9),
        "model_path": model_path,
    }
    if not args.no_test:
        preds = predict_file(model_path, split["test"], args.device, args.task)
        save_predictions(os.path.join(args.out, "test_predictions.npz"), preds)
    model = load_mace(model_path, "cpu", "float32")
    result["n_params"] = sum(p.numel() for p in model.parameters())
    write_json(os.path.join(args.out, "result.json"), result)


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--task", required=True, choices=["ethanol", "carbon", "tensors"])
    t.add_argument("--splits", required=True)
    t.add_argument("--budget-min", type=float, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-test", action="store_true")
    s = sub.add_parser("serve")
    s.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.cmd == "train":
        cmd_train(args)
    else:
        serve(Worker(args.threads))


if __name__ == "__main__":
    main()
