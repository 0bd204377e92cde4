"""metatrain side of the benchmarks: SOAP-BPNN and PET (runs in the peers' virtual environment).

    PEERS=/work/peers/bin/python
    $PEERS scripts/bench/peer_metatrain.py train --code metatrain --task ethanol --splits S.json \
        --budget-min 60 --marks 1,2,5 --out DIR          # --code pet for PET
    $PEERS scripts/bench/peer_metatrain.py serve

``train`` runs ``mtt train options.yaml`` in-process (``metatrain.__main__.main``) with the
architecture's default hypers under a wall-clock budget (``install_budget``):

* the training loop's ``CombinedDataLoader`` raises at the start of the first epoch after the
  budget is spent; ``Trainer.train`` is wrapped to return normally, and ``mtt`` then saves the
  best-validation model and exports it as usual;
* at each mark the best-validation model so far is exported and its test-set predictions are
  written (``DIR/snapshots/m<min>/<test>.npz``), with the clock paused;
* the architecture's learning-rate schedule (linear warm-up, then cosine decay to 0 over
  ``num_epochs``) is kept, with progress measured as training time / budget instead of
  step / total steps, so the decay completes when the budget ends.

The budget clock starts at the first training batch (after reading the data, the composition
baseline and the scaler fits), as for the other codes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    BudgetReached,
    CallTimer,
    SnapshotClock,
    SnapshotWriter,
    diamond,
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

CODE = "metatrain"
VERSION_PACKAGES = [
    "metatrain",
    "metatensor-torch",
    "metatomic-torch",
    "metatomic-ase",
    "torch-spex",
    "sphericart-torch",
    "vesin",
    "torch",
    "ase",
    "numpy",
]


# metatrain architectures run by the benchmark (benchmark code name → metatrain name)
ARCHITECTURES = {"metatrain": "soap_bpnn", "pet": "pet"}

# Model-size variants for the Pareto front: "default" = the architecture's default hypers
# (metatrain/<arch>/documentation.py); small/large change only the sizes named here.
SIZES: dict[str, dict[str, dict]] = {
    "soap_bpnn": {
        "small": {"soap": {"max_angular": 4, "max_radial": 5}, "bpnn": {"num_neurons_per_layer": 16}},
        "default": {},
        "large": {"bpnn": {"num_neurons_per_layer": 128}},
    },
    "pet": {
        "small": {"d_pet": 64, "d_head": 64, "d_node": 128, "d_feedforward": 128},
        "default": {},
        "large": {"d_pet": 256, "d_head": 256, "d_node": 512, "d_feedforward": 512},
    },
}


def options_for(
    task: str, split: dict, device: str, seed: int, arch: str = "soap_bpnn", size: str = "default"
) -> dict:
    """``mtt train`` options: the architecture's default hypers, the task's targets, the size variant.

    Energies are in eV with forces (and virials for carbon) as gradients; the dipole and the
    polarizability are Cartesian rank-1 / rank-2 per-structure targets. The energy baseline is
    metatrain's default least-squares composition fit (see docs/benchmarks.md).
    """

    def dataset(path: str) -> dict:
        systems = {"read_from": path, "length_unit": "angstrom"}
        if task in ("ethanol", "acac"):
            targets = {"energy": {"key": "REF_energy", "unit": "eV", "forces": {"key": "REF_forces"}}}
        elif task == "carbon":
            targets = {
                "energy": {
                    "key": "REF_energy",
                    "unit": "eV",
                    "forces": {"key": "REF_forces"},
                    "virial": {"key": "REF_virial"},
                }
            }
        else:
            targets = {
                "mtt::dipole": {"key": "REF_dipole", "type": {"cartesian": {"rank": 1}}, "per_atom": False},
                "mtt::polarizability": {
                    "key": "REF_polarizability",
                    "type": {"cartesian": {"rank": 2}},
                    "per_atom": False,
                },
            }
        return {"systems": systems, "targets": targets}

    architecture: dict = {
        "name": arch,
        "training": {
            "num_epochs": 100000,  # the budget stops the run; the LR schedule runs on the clock
            "checkpoint_interval": 100000,
            "log_interval": 1,
            "num_workers": 0,
        },
    }
    if SIZES[arch][size]:
        architecture["model"] = SIZES[arch][size]
    return {
        "seed": seed,
        "device": device,
        "base_precision": 32,
        "final_eval": False,
        "architecture": architecture,
        "training_set": dataset(split["train"]),
        "validation_set": dataset(split["valid"]),
        "test_set": 0.0,
    }


def install_budget(clock: SnapshotClock, state: dict, snapshot, arch: str = "soap_bpnn") -> None:
    """Wrap metatrain's training loop: wall-clock budget, time-based LR schedule, snapshots.

    * The training ``CombinedDataLoader`` checks at the start of each epoch (after the previous
      epoch's validation and best-model update): due marks get a snapshot, and once the budget is
      spent it raises, which ``Trainer.train`` (wrapped) turns into a normal return; ``mtt`` then
      saves the best-validation model and exports it as usual.
    * The architecture's learning-rate schedule (linear warm-up over ``warmup_fraction``, then
      cosine decay to 0 over ``num_epochs``) is kept with progress = training time / budget
      instead of step / total steps, so the decay completes when the budget ends.
    """
    import importlib

    import torch
    from metatrain.utils.data.combine_dataloaders import CombinedDataLoader

    trainer_mod = importlib.import_module(f"metatrain.{arch}.trainer")
    orig_next = CombinedDataLoader.__next__

    def budget_next(self):
        if not self.shuffle:  # validation loader
            return orig_next(self)
        if self.current_index == 0:
            clock.begin()
            snapshot(final=False)
            if clock.over_budget():
                raise BudgetReached
            state["epoch_start"] = time.perf_counter()
        try:
            batch = orig_next(self)
        except StopIteration:
            state["train_phase_s"] += time.perf_counter() - state["epoch_start"]
            state["epochs"] += 1
            raise
        state["steps"] += 1
        try:  # (blob, system_sizes, ...): one size entry per structure
            state["structures"] += len(batch[1])
        except (TypeError, IndexError):
            pass
        return batch

    CombinedDataLoader.__next__ = budget_next

    def time_scheduler(optimizer, train_hypers, steps_per_epoch):
        warmup = train_hypers["warmup_fraction"]

        def lr_lambda(step: int) -> float:
            if clock.start is None:
                return 0.0 if warmup > 0 else 1.0
            progress = min(clock.seconds() / clock.budget_s, 1.0)
            if progress < warmup:
                return max(progress / warmup, 1e-3)
            return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_lambda)

    trainer_mod.get_scheduler = time_scheduler

    orig_train = trainer_mod.Trainer.train

    def budget_train(self, *args, **kwargs):
        state["trainer"] = self
        state["model"] = kwargs.get("model", args[0] if args else None)
        try:
            orig_train(self, *args, **kwargs)
        except BudgetReached:
            logging.info(f"bench: wall-clock budget of {clock.budget_s / 60:.2f} min reached")
            self.epoch = max(state["epochs"] - 1, 0)
        snapshot(final=True)

    trainer_mod.Trainer.train = budget_train


def best_atomistic_model(state: dict, path: str):
    """The best-validation model so far, exported for inference; the live model is untouched.

    As ``mtt train`` does at the end: the trainer writes a checkpoint (which carries metatrain's
    ``best_model_state_dict``), ``load_model`` rebuilds the best model from it, ``export()``.
    """
    from metatrain.utils.io import load_model

    state["trainer"].save_checkpoint(state["model"], path)
    return load_model(path).export()


def load_calculator(model_path, device: str, dtype: str = "float32", skin: float = 2.0):
    """ASE calculator of an exported model: a file path, or an ``AtomisticModel`` object."""
    try:  # registers the TorchScript ops the exported SOAP-BPNN needs
        import sphericart.torch  # noqa: F401
    except ImportError:
        pass
    from metatomic_ase import MetatomicCalculator

    extensions = None
    if isinstance(model_path, str):
        extensions = os.path.join(os.path.dirname(os.path.abspath(model_path)), "extensions")
    return MetatomicCalculator(
        model_path,
        extensions_directory=extensions if extensions and os.path.isdir(extensions) else None,
        device=device,
        check_consistency=False,
        neighbor_skin=skin,
    )


def predict_file(model_path: str, path: str, device: str, task: str) -> list[dict]:
    return predict_calc(load_calculator(model_path, device), path, task)


def predict_calc(calc, path: str, task: str) -> list[dict]:
    """Per-structure predictions through a ``MetatomicCalculator`` on a structure file."""
    import ase.io
    import numpy as np
    import torch
    from metatomic.torch import ModelOutput

    frames = ase.io.read(path, ":")
    preds = []
    if task in ("tensors", "water"):
        for atoms in frames:
            out = calc.run_model(
                atoms,
                {
                    "mtt::dipole": ModelOutput(per_atom=False),
                    "mtt::polarizability": ModelOutput(per_atom=False),
                },
            )
            dip = out["mtt::dipole"].block().values.detach().cpu().double().numpy().reshape(3)
            pol = out["mtt::polarizability"].block().values.detach().cpu().double().numpy().reshape(3, 3)
            preds.append({"dipole": dip, "polarizability": pol})
        return preds
    for start in range(0, len(frames), 32):
        chunk = frames[start : start + 32]
        res = calc.compute_energy(chunk, compute_forces_and_stresses=True)
        for k in range(len(chunk)):
            p = {
                "energy": np.asarray(res["energy"][k]),
                "forces": np.asarray(res["forces"][k]),
            }
            if task == "carbon":
                p["stress"] = np.asarray(res["stress"][k]).reshape(3, 3)
            preds.append(p)
    del torch
    return preds


def cmd_train(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    import yaml
    from metatrain.__main__ import main as mtt_main

    arch = ARCHITECTURES[args.code]
    split = read_json(args.splits)["tasks"][args.task]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    options = options_for(args.task, split, args.device, args.seed, arch, args.size)
    options_path = os.path.join(out, "options.yaml")
    with open(options_path, "w") as handle:
        yaml.safe_dump(options, handle, sort_keys=False)
    state = {"epochs": 0, "steps": 0, "structures": 0, "train_phase_s": 0.0, "epoch_start": 0.0}
    tests = {} if args.no_test else split_tests(split)
    clock = SnapshotClock(parse_marks(args.marks, args.budget_min), args.budget_min)
    writer = SnapshotWriter(out, tests)

    def snapshot(final: bool) -> None:
        trainer = state.get("trainer")
        if trainer is None or trainer.best_model_state_dict is None or not (clock.due() or final):
            return

        def make_predict():
            model = best_atomistic_model(state, os.path.join(out, "snapshot.ckpt"))
            calc = load_calculator(model, args.device)
            return lambda f: predict_calc(calc, f, args.task)

        take_due_snapshots(
            clock,
            writer,
            state["epochs"],
            make_predict,
            final=final,
            best_epoch=trainer.best_epoch,
        )

    install_budget(clock, state, snapshot, arch)
    model_path = os.path.join(out, "model.pt")
    argv = ["mtt", "train", options_path, "-o", model_path, "-e", os.path.join(out, "extensions")]
    sys.argv = argv
    cwd = os.getcwd()
    os.chdir(out)
    start = time.perf_counter()
    try:
        mtt_main()
    except SystemExit as err:
        if err.code not in (0, None):
            raise
    finally:
        os.chdir(cwd)
    wall = time.perf_counter() - start
    result = {
        "code": args.code,
        "task": args.task,
        "size": args.size,
        "seed": args.seed,
        "budget_min": args.budget_min,
        "command": " ".join(argv) + "   # (metatrain.__main__.main, in-process, budget-wrapped)",
        "config": {"options": options, "architecture": f"{arch} (defaults otherwise)"},
        "versions": package_versions(VERSION_PACKAGES),
        "machine": machine_info(args.device),
        "wall_s": wall,
        "epochs": state["epochs"],
        "optimizer_steps": state["steps"],
        "train_phase_s": state["train_phase_s"],
        "loop_s": clock.seconds(),
        "train_structures_per_s": state["structures"] / max(state["train_phase_s"], 1e-9),
        "model_path": model_path,
        "snapshots": writer.entries,
        "snapshot_rule": "best-validation model so far (metatrain's best_model_state_dict)",
    }
    if writer.entries and "test" in writer.entries[-1]["files"]:  # none with --no-test
        shutil.copy(writer.entries[-1]["files"]["test"], os.path.join(out, "test_predictions.npz"))
    calc = load_calculator(model_path, "cpu")
    result["n_params"] = sum(p.numel() for p in calc._model.parameters())
    write_json(os.path.join(out, "result.json"), result)


# ----------------------------------------------------------------------------- persistent worker


class Worker:
    def __init__(self, threads: int) -> None:
        set_threads(threads)
        import torch

        self.torch = torch

    def info(self) -> dict:
        return {"code": CODE, "versions": package_versions(VERSION_PACKAGES)}

    def load(self, model_path: str, device: str = "cpu", dtype: str = "float32") -> dict:
        from metatomic.torch import ModelEvaluationOptions, ModelOutput
        from metatomic_ase._neighbors import AllNeighborsCalculator

        torch = self.torch
        self.device = device
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        self.model_path = model_path
        self.calc = load_calculator(model_path, device, dtype)
        self.model = self.calc._model.to(dtype=self.dtype)
        # fresh neighbour lists on every call (no Verlet skin) for the throughput benchmarks
        self.nl = AllNeighborsCalculator(self.model.requested_neighbor_lists(), skin=0.0)
        self.options = ModelEvaluationOptions(
            length_unit="angstrom",
            outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=False)},
        )
        return {"n_params": sum(p.numel() for p in self.model.parameters())}

    def _systems(self, frames):
        from metatomic.torch import System

        torch = self.torch
        systems = []
        for atoms in frames:
            types = torch.from_numpy(atoms.numbers).to(dtype=torch.int32, device=self.device)
            pos = torch.tensor(atoms.positions, dtype=self.dtype, device=self.device)
            cell = torch.zeros((3, 3), dtype=self.dtype, device=self.device)
            pbc = torch.tensor(atoms.pbc, dtype=torch.bool, device=self.device)
            if atoms.pbc.any():
                cell[pbc] = torch.tensor(atoms.cell[atoms.pbc], dtype=self.dtype, device=self.device)
            systems.append(System(types, pos.requires_grad_(True), cell, pbc))
        return self.nl.compute(systems=systems)

    def _model_call(self, systems):
        torch = self.torch
        out = self.model(systems, self.options, check_consistency=False)
        energy = out["energy"].block().values
        grads = torch.autograd.grad(energy.sum(), [s.positions for s in systems])
        return energy, [-g for g in grads]

    def _e2e(self, frames):
        energy, forces = self._model_call(self._systems(frames))
        return energy.detach().cpu().numpy(), [f.cpu().numpy() for f in forces]

    def setup(self, kind: str, n: int, data_path: str | None = None, warmup: int = 2) -> dict:
        frames = ethanol_frames(data_path, n) if kind == "molecules" else [diamond(n)]
        self.frames = frames
        self.systems = self._systems(frames)
        for _ in range(warmup):
            self._model_call(self.systems)
            self._e2e(frames)
        synchronize(self.device)
        n_edges = 0
        for s in self.systems:
            for opt in s.known_neighbor_lists():
                n_edges += len(s.get_neighbor_list(opt).samples) * (1 if opt.full_list else 2)
        return {"n_structures": len(frames), "n_atoms": int(sum(len(a) for a in frames)), "n_edges": n_edges}

    def run(self, mode: str, n_calls: int) -> list[float]:
        if mode == "model":
            return time_calls(lambda: self._model_call(self.systems), n_calls, self.device)
        return time_calls(lambda: self._e2e(self.frames), n_calls, self.device)

    def md_setup(
        self, system: str, n: int, data_path: str | None = None, seed: int = 0, warmup: int = 5, **_: object
    ) -> dict:
        import numpy as np
        from ase import units
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from ase.md.verlet import VelocityVerlet

        torch = self.torch
        atoms = ethanol_cluster(data_path, n) if system == "cluster" else diamond(n)
        dtype = "float64" if self.dtype == torch.float64 else "float32"
        calc = load_calculator(self.model_path, self.device, dtype)  # default Verlet skin (2 Å)
        calc._model = calc._model.to(dtype=self.dtype)
        self.md_forward = CallTimer(calc._model, self.device)
        calc._model = self.md_forward
        self.md_backward = CallTimer(torch.autograd.backward, self.device)
        torch.autograd.backward = self.md_backward
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
        self.md_dyn = VelocityVerlet(atoms, 0.5 * units.fs)
        self.md_dyn.run(warmup)
        return {"n_atoms": len(atoms), "neighbor_skin": 2.0}

    def md_run(self, steps: int) -> dict:
        self.md_forward.reset()
        self.md_backward.reset()
        start = time.perf_counter()
        self.md_dyn.run(steps)
        total = time.perf_counter() - start
        return {
            "steps": steps,
            "total_s": total,
            "model_s": self.md_forward.total + self.md_backward.total,
            "model_calls": self.md_forward.calls,
        }

    def scaling_point(self, n_atoms: int, repeats: int = 2, warmup: int = 2) -> dict:
        atoms = diamond(n_atoms)
        start = time.perf_counter()
        with peak_memory(self.device) as mem_graph:
            systems = self._systems([atoms])
        graph_s = time.perf_counter() - start
        times, mems = timed_calls_with_memory(
            lambda: self._model_call(systems), warmup, repeats, self.device
        )  # TorchScript: the first calls profile and optimise
        return {
            "n_atoms": len(atoms),
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
    t.add_argument("--task", required=True, choices=["ethanol", "acac", "carbon", "tensors", "water"])
    t.add_argument("--splits", required=True)
    t.add_argument("--budget-min", type=float, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-test", action="store_true")
    t.add_argument("--marks", default=None, help="snapshot marks in training minutes, e.g. 1,2,5")
    t.add_argument("--size", default="default", choices=["small", "default", "large"])
    t.add_argument("--code", default="metatrain", choices=list(ARCHITECTURES), help="metatrain = SOAP-BPNN")
    s = sub.add_parser("serve")
    s.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.cmd == "train":
        cmd_train(args)
    else:
        serve(Worker(args.threads))


if __name__ == "__main__":
    main()
