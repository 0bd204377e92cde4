"""mlip side of the benchmarks (runs in mlip's Python).

    python scripts/bench/worker_mlip.py train --task ethanol --splits S.json --budget-min 3 --out DIR
    python scripts/bench/worker_mlip.py serve      # JSON-lines worker driven by scripts/bench/run.py

``train`` writes a YAML config, runs ``mlip train`` on it (``training.max_time_minutes`` = budget),
predicts the task's test set with the best model and writes ``DIR/result.json`` and
``DIR/test_predictions.npz``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
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

CODE = "mlip"
VERSION_PACKAGES = ["mlip", "torch", "ase", "torch_geometric", "matscipy", "numpy"]

# Architecture of the example config (configs/example.yaml): 32 channels, 2 layers, lmax 2.
MODEL = {
    "channels": 32,
    "num_layers": 2,
    "lmax": 2,
    "num_radial": 8,
    "radial_hidden": 32,
    "readout_hidden": 32,
    "num_vectors": 4,
    "tensor_hidden": 32,
}


def task_config(task: str, split: dict, budget_min: float, out: str, device: str, seed: int) -> dict:
    targets = {
        "ethanol": {
            "energy": {"key": "REF_energy", "weight": 1.0},
            "forces": {"key": "REF_forces", "weight": 10.0},
        },
        "carbon": {
            "energy": {"key": "REF_energy", "weight": 1.0},
            "forces": {"key": "REF_forces", "weight": 10.0},
            "stress": {"key": "stress", "virial_key": "REF_virial", "weight": 100.0},
        },
        "tensors": {
            "dipole": {"key": "REF_dipole", "type": "vector", "unit": "e*angstrom", "weight": 10.0},
            "polarizability": {
                "key": "REF_polarizability",
                "type": "rank2",
                "unit": "angstrom3",
                "weight": 1.0,
            },
        },
    }[task]
    return {
        "output_dir": out,
        "seed": seed,
        "device": device,
        "dtype": "float32",
        "data": {
            "train_file": split["train"],
            "valid_file": split["valid"],
            "cutoff": 5.0,
            "e0s": "fit",
        },
        "targets": targets,
        "model": dict(MODEL),
        "training": {
            "batch_size": 8,
            "valid_batch_size": 32,
            "max_epochs": 100000,
            "lr": 0.005,
            "scheduler": "plateau",
            "scheduler_patience": 3,
            "ema_decay": 0.99,
            "clip_grad_norm": 10.0,
            "early_stopping_patience": None,
            "max_time_minutes": budget_min,
        },
        "logging": {"progress_bar": False},
    }


def predict_file(model_path: str, path: str, device: str, dtype: str = "float32") -> list[dict]:
    import ase.io
    import numpy as np
    import torch

    from mlip.calculators.batched import predict_batches
    from mlip.model.potential import load_model

    model = load_model(model_path, device, torch.float64 if dtype == "float64" else torch.float32)
    frames = ase.io.read(path, ":")
    preds: list[dict] = [{} for _ in frames]
    for batch, out, idx in predict_batches(model, frames, batch_size=32, device=device):
        counts = (batch.ptr[1:] - batch.ptr[:-1]).tolist()
        offsets = np.cumsum([0] + counts)
        for k, i in enumerate(idx):
            p = preds[i]
            if "energy" in out:
                p["energy"] = out["energy"][k].cpu().numpy()
                p["forces"] = out["forces"][offsets[k] : offsets[k + 1]].cpu().numpy()
            if "stress" in out:
                p["stress"] = out["stress"][k].cpu().numpy()
            for name in ("dipole", "polarizability"):
                if name in out:
                    p[name] = out[name][k].cpu().numpy()
    return preds


def cmd_train(args: argparse.Namespace) -> None:
    import yaml

    splits = read_json(args.splits)["tasks"]
    split = splits[args.task]
    os.makedirs(args.out, exist_ok=True)
    run_dir = os.path.join(args.out, "run")
    cfg = task_config(args.task, split, args.budget_min, run_dir, args.device, args.seed)
    cfg_path = os.path.join(args.out, "config.yaml")
    with open(cfg_path, "w") as handle:
        yaml.safe_dump(cfg, handle, sort_keys=False)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = [sys.executable, "-m", "mlip", "train", cfg_path]
    start = time.perf_counter()
    with open(os.path.join(args.out, "train.log"), "w") as log:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mlip train failed (see {args.out}/train.log)")
    rows = list(csv.DictReader(open(os.path.join(run_dir, "metrics.csv"))))
    train_time = sum(float(r["epoch_time_s"]) for r in rows)
    epochs = len(rows)
    n_train = split["n_train"]
    steps = epochs * -(-n_train // 8)
    result = {
        "code": CODE,
        "task": args.task,
        "budget_min": args.budget_min,
        "command": " ".join(command),
        "config": cfg,
        "versions": package_versions(VERSION_PACKAGES),
        "machine": machine_info(args.device),
        "wall_s": wall,
        "epochs": epochs,
        "optimizer_steps": steps,
        "train_phase_s": train_time,
        "train_structures_per_s": epochs * n_train / max(train_time, 1e-9),
        "n_params": None,
    }
    model_path = os.path.join(run_dir, "model.pt")
    if not args.no_test:
        import torch

        set_threads(args.threads)
        preds = predict_file(model_path, split["test"], args.device)
        save_predictions(os.path.join(args.out, "test_predictions.npz"), preds)
        from mlip.model.potential import load_model

        result["n_params"] = sum(p.numel() for p in load_model(model_path).parameters())
        del torch
    result["model_path"] = model_path
    write_json(os.path.join(args.out, "result.json"), result)


# ----------------------------------------------------------------------------- persistent worker


class Worker:
    def __init__(self, threads: int) -> None:
        set_threads(threads)
        import torch

        self.torch = torch
        self.model = None
        self.case: dict = {}

    def info(self) -> dict:
        return {"code": CODE, "versions": package_versions(VERSION_PACKAGES)}

    # -- models
    def load(self, model_path: str, device: str = "cpu", dtype: str = "float32") -> dict:
        from mlip.model.potential import load_model

        torch = self.torch
        self.device = device
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        self.model = load_model(model_path, device, self.dtype)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cutoff = self.model.cutoff
        return {"n_params": sum(p.numel() for p in self.model.parameters()), "cutoff": self.cutoff}

    def _graph(self, frames):
        from torch_geometric.data import Batch

        from mlip.data.graph import atoms_to_graph
        from mlip.data.reading import normalise_pbc

        graphs = [atoms_to_graph(normalise_pbc(a), self.cutoff, dtype=self.dtype) for a in frames]
        return Batch.from_data_list(graphs).to(self.device)

    def _model_call(self, graph):
        out = self.model(graph, compute_forces=True)
        return out["energy"], out["forces"]

    def _e2e(self, frames):
        graph = self._graph(frames)
        energy, forces = self._model_call(graph)
        return energy.detach().cpu().numpy(), forces.detach().cpu().numpy()

    # -- inference
    def setup(self, kind: str, n: int, data_path: str | None = None, warmup: int = 2) -> dict:
        frames = ethanol_frames(data_path, n) if kind == "molecules" else [diamond(n)]
        self.frames = frames
        self.graph = self._graph(frames)
        for _ in range(warmup):
            self._model_call(self.graph)
            self._e2e(frames)
        synchronize(self.device)
        return {
            "n_structures": len(frames),
            "n_atoms": int(sum(len(a) for a in frames)),
            "n_edges": int(self.graph.edge_index.shape[1]),
        }

    def run(self, mode: str, n_calls: int) -> list[float]:
        if mode == "model":
            return time_calls(lambda: self._model_call(self.graph), n_calls, self.device)
        return time_calls(lambda: self._e2e(self.frames), n_calls, self.device)

    # -- MD
    def md_setup(
        self,
        system: str,
        n: int,
        data_path: str | None = None,
        seed: int = 0,
        warmup: int = 5,
        skin: float = 0.0,
    ) -> dict:
        import numpy as np
        from ase import units
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from ase.md.verlet import VelocityVerlet

        from mlip.calculators.ase_calculator import MLIPCalculator

        atoms = ethanol_cluster(data_path, n) if system == "cluster" else diamond(n)
        dtype = "float64" if self.dtype == self.torch.float64 else "float32"
        calc = MLIPCalculator(self.model, device=self.device, dtype=dtype, skin=skin)
        self.md_calc = calc
        self.md_timer = CallTimer(calc.model.forward, self.device)
        calc.model.forward = self.md_timer
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
        self.md_dyn = VelocityVerlet(atoms, 0.5 * units.fs)
        self.md_atoms = atoms
        self.md_dyn.run(warmup)
        return {"n_atoms": len(atoms), "neighbor_skin": skin or None}

    def md_run(self, steps: int) -> dict:
        self.md_timer.reset()
        builds = self.md_calc.neighbour_list_builds
        start = time.perf_counter()
        self.md_dyn.run(steps)
        total = time.perf_counter() - start
        return {
            "steps": steps,
            "total_s": total,
            "model_s": self.md_timer.total,
            "model_calls": self.md_timer.calls,
            "neighbour_list_builds": self.md_calc.neighbour_list_builds - builds,
        }

    # -- scaling
    def scaling_point(self, n_atoms: int, repeats: int = 2, warmup: int = 1) -> dict:
        torch = self.torch
        atoms = diamond(n_atoms)
        start = time.perf_counter()
        with peak_memory(self.device) as mem_graph:
            graph = self._graph([atoms])
        graph_s = time.perf_counter() - start
        times, mems = timed_calls_with_memory(lambda: self._model_call(graph), warmup, repeats, self.device)
        del torch
        return {
            "n_atoms": len(atoms),
            "n_edges": int(graph.edge_index.shape[1]),
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
