"""mlip side of the benchmarks (runs in mlip's Python).

    python scripts/bench/worker_mlip.py train --task ethanol --splits S.json --budget-min 60 \
        --marks 1,2,5,10,20,30,60 --size medium --seed 0 --out DIR
    python scripts/bench/worker_mlip.py serve      # JSON-lines worker driven by scripts/bench/run.py

``train`` builds the run's config from configs/accurate.yaml (or configs/example.yaml) plus the
task (data, targets, loss weights equivalent to MACE's recipe), the size preset and ``-o``
overrides, runs ``mlip train`` on it for the wall-clock budget with ``training.snapshot_minutes``
= the marks (the trainer copies the best model so far at each mark), then writes the test-set
predictions of every snapshot (``DIR/snapshots/m<min>/<test>.npz``); ``DIR/result.json`` indexes
them.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)  # this checkout's mlip, not another installed copy

from common import (  # noqa: E402
    MACE_RECIPE_WEIGHTS,
    STAGE_TWO_FRACTION,
    CallTimer,
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
    run_child,
    serve,
    set_threads,
    split_tests,
    synchronize,
    time_calls,
    timed_calls_with_memory,
    write_json,
)

CODE = "mlip"
VERSION_PACKAGES = ["mlip", "torch", "ase", "torch_geometric", "matscipy", "numpy"]

# mlip's settings come from a config file (architecture, optimiser, schedule, EMA); the worker only
# sets the task (data, targets and their loss weights), the run (seed, budget, output) and the
# model size. configs/accurate.yaml is preferred when it exists, else configs/example.yaml.
BASE_CONFIGS = ("configs/accurate.yaml", "configs/example.yaml")

# Model-size presets (overrides of the base config) for the Pareto front; "medium" is the default.
SIZES: dict[str, list[str]] = {
    "small": ["model.channels=32", "model.lmax=2"],
    "medium": ["model.channels=64", "model.lmax=3"],
    "large": ["model.channels=128", "model.lmax=3"],
}
DEFAULT_SIZE = "medium"


def base_config_path() -> str:
    """The config file the benchmark's mlip settings come from."""
    for rel in BASE_CONFIGS:
        path = os.path.join(REPO, rel)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"none of {BASE_CONFIGS} found in {REPO}")


def _mean_inverse_n2(frames) -> float:
    """mean over structures of 1/N² (N = atoms per structure)."""
    return float(sum(1.0 / len(a) ** 2 for a in frames) / len(frames))


def _mean_volume_per_atom_sq(frames) -> float:
    """mean over structures of (V/N)² in Å⁶."""
    return float(sum((abs(a.get_volume()) / len(a)) ** 2 for a in frames) / len(frames))


def mace_equivalent_weights(task: str, train_file: str, stage: str = "stage_one") -> dict[str, float] | None:
    """mlip loss weights equivalent to MACE's recipe (common.MACE_RECIPE_WEIGHTS), per target.

    Energy per atom and force components enter both losses in the same way (same weights).
    Stress: mlip's term is (Δσ)² in (eV/Å³)², MACE's the per-atom virial (ΔW/N)² = (Δσ)² (V/N)²,
    so w_σ = w_W · mean((V/N)²). Tensors: MACE divides the dipole and the polarizability by N,
    mlip does not, so w = w_MACE · mean(1/N²); with energies and forces (the dipoles task) MACE
    also multiplies the dipole term by 100, so w_μ = 100 · w_MACE · mean(1/N²). ``None`` where MACE
    has no such stage.
    """
    import ase.io

    w = MACE_RECIPE_WEIGHTS[task][stage]
    if w is None:
        return None
    if task in ("ethanol", "acac"):
        return {"energy": w["energy"], "forces": w["forces"]}
    frames = ase.io.read(train_file, ":")
    if task == "carbon":
        v2 = _mean_volume_per_atom_sq(frames)
        return {"energy": w["energy"], "forces": w["forces"], "stress": w["virials"] * v2}
    inv_n2 = _mean_inverse_n2(frames)
    if task == "dipoles":
        return {"energy": w["energy"], "forces": w["forces"], "dipole": 100.0 * w["dipole"] * inv_n2}
    return {"dipole": w["dipole"] * inv_n2, "polarizability": w["polarizability"] * inv_n2}


def task_targets(task: str) -> dict:
    """mlip targets of a task (label keys, kinds, units); weights are set by :func:`task_config`."""
    energy = {"energy": {"key": "REF_energy"}, "forces": {"key": "REF_forces"}}
    if task in ("ethanol", "acac"):
        return energy
    if task == "carbon":
        return {**energy, "stress": {"key": "stress", "virial_key": "REF_virial"}}
    dipole = {"key": "REF_dipole", "type": "vector"}
    polar = {"key": "REF_polarizability", "type": "rank2"}
    if task in ("tensors", "dipoles"):  # water: units of the source (undocumented), no conversion
        dipole["unit"], polar["unit"] = "e*angstrom", "angstrom3"
    if task == "dipoles":
        return {**energy, "dipole": dipole}
    return {"dipole": dipole, "polarizability": polar}


def task_config(
    task: str,
    split: dict,
    budget_min: float,
    marks_min: list[float],
    out: str,
    device: str,
    seed: int,
    size: str = DEFAULT_SIZE,
    weights: str = "mace",
    overrides: list[str] | None = None,
) -> tuple[dict, list[str]]:
    """Raw mlip config of a benchmark run, and the size/user overrides applied last.

    Everything but the task, the run and the size comes from the base config. ``weights``:
    ``mace`` (default) sets loss weights, stage-two weights and the stage-two start equivalent to
    MACE's recipe, so that both codes minimise the same loss; ``config`` keeps the base config's
    weights and stage two (targets it does not name get weight 1).
    """
    import yaml

    from mlip.training.config import apply_overrides

    with open(base_config_path()) as handle:
        raw = yaml.safe_load(handle)
    raw["output_dir"] = out
    raw["seed"] = seed
    raw["device"] = device
    raw["dtype"] = "float32"
    raw["resume"] = False
    data = raw.setdefault("data", {})
    for key in ("test_file", "max_structures", "valid_fraction", "preprocessed_dir"):
        data.pop(key, None)
    data["train_file"], data["valid_file"] = split["train"], split["valid"]
    # isolated-atom E0s where the data give them; otherwise a least-squares fit (unused by the
    # tensor-only tasks)
    data["e0s"] = split.get("isolated_atoms") or "fit"
    old_targets = raw.get("targets") or {}
    targets = task_targets(task)
    training = raw.setdefault("training", {})
    if weights == "mace":
        for name, w in mace_equivalent_weights(task, split["train"]).items():
            targets[name]["weight"] = w
        two = mace_equivalent_weights(task, split["train"], "stage_two")
        training["stage_two_start"] = STAGE_TWO_FRACTION if two else None
        training["stage_two_weights"] = two or {}
        if "energy" in targets and any("type" in t for t in targets.values()):
            # energy and tensor targets in one loss (dipoles): mlip divides each tensor block's
            # squared error by its own training spread ("scale"), energy and forces by one shared
            # scale, so the energy : forces balance stays MACE's but the forces : tensor balance would
            # not. The plain loss in label units is MACE's exactly.
            training["loss_normalisation"] = "none"
    else:
        for name, t in targets.items():
            t["weight"] = float((old_targets.get(name) or {}).get("weight", 1.0))
        kept = {k: v for k, v in (training.get("stage_two_weights") or {}).items() if k in targets}
        training["stage_two_weights"] = kept
        if not kept:
            training["stage_two_start"] = None
    raw["targets"] = targets
    training["max_epochs"] = 10**7
    training["early_stopping_patience"] = None
    training["max_time_minutes"] = budget_min
    training["snapshot_minutes"] = sorted(
        {float(m) for m in marks_min if m <= budget_min} | {float(budget_min)}
    )
    raw.setdefault("logging", {})["progress_bar"] = False
    raw["logging"]["wandb"] = False
    applied = list(SIZES[size]) + list(overrides or [])
    return apply_overrides(raw, applied), applied


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


def snapshot_predictions(run_dir: str, out: str, tests: dict, device: str) -> list[dict]:
    """Test-set predictions of every snapshot the trainer wrote (``snapshots/snapshots.csv``).

    mlip's trainer copies the best model so far (EMA weights) to ``snapshots/model_<m>min.pt`` at
    the end of the first epoch past each mark, with the wall time since training began (its
    validation included); the predictions are made here, after training, so they cost no
    training time.
    """
    index = os.path.join(run_dir, "snapshots", "snapshots.csv")
    if not tests or not os.path.exists(index):
        return []
    writer = SnapshotWriter(out, tests)
    for row in csv.DictReader(open(index)):
        model = os.path.join(run_dir, "snapshots", row["file"])
        writer.write(
            [60.0 * float(row["mark_min"])],
            float(row["wall_time_s"]),
            int(row["epoch"]),
            lambda f, m=model: predict_file(m, f, device),
            stage={"1": "one", "2": "two"}.get(row.get("stage", "1"), row.get("stage")),
        )
    return writer.entries


def cmd_train(args: argparse.Namespace) -> None:
    import yaml

    split = read_json(args.splits)["tasks"][args.task]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    run_dir = os.path.join(out, "run")
    marks = parse_marks(args.marks, args.budget_min)
    raw, applied = task_config(
        args.task,
        split,
        args.budget_min,
        marks,
        run_dir,
        args.device,
        args.seed,
        args.size,
        args.weights,
        args.override,
    )
    cfg_path = os.path.join(out, "config.yaml")
    with open(cfg_path, "w") as handle:
        yaml.safe_dump(raw, handle, sort_keys=False)
    # this checkout's mlip (PYTHONPATH), the same thread settings as every code
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "mlip", "train", cfg_path]
    start = time.perf_counter()
    with open(os.path.join(out, "train.log"), "w") as log:
        proc = run_child(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mlip train failed (see {out}/train.log)")
    set_threads(args.threads)
    import mlip
    from mlip.model.potential import load_model

    rows = list(csv.DictReader(open(os.path.join(run_dir, "metrics.csv"))))
    train_time = sum(float(r["epoch_time_s"]) for r in rows)
    n_train = split["n_train"]
    model_path = os.path.join(run_dir, "model.pt")
    tests = {} if args.no_test else split_tests(split)
    snapshots = snapshot_predictions(run_dir, out, tests, args.device)
    stage_two = [r for r in rows if r.get("stage") == "2"]
    result = {
        "code": CODE,
        "task": args.task,
        "size": args.size,
        "seed": args.seed,
        "budget_min": args.budget_min,
        "command": " ".join(command) + f"   # config written by {' '.join(sys.argv[:2])}",
        "config": raw,
        "base_config": os.path.relpath(base_config_path(), REPO),
        "weights": args.weights,
        "overrides": applied,
        "mlip_imported_from": os.path.dirname(mlip.__file__),
        "versions": package_versions(VERSION_PACKAGES),
        "machine": machine_info(args.device),
        "wall_s": wall,
        "epochs": len(rows),
        "optimizer_steps": len(rows) * -(-n_train // int(raw["training"].get("batch_size", 8))),
        "train_phase_s": train_time,
        "loop_s": float(rows[-1]["wall_time_s"]) if rows and "wall_time_s" in rows[-1] else None,
        "train_structures_per_s": len(rows) * n_train / max(train_time, 1e-9),
        "stage_two": {
            "fraction_of_budget": raw["training"].get("stage_two_start"),
            "started_epoch": int(stage_two[0]["epoch"]) if stage_two else None,
            "started_s": float(stage_two[0]["wall_time_s"]) - float(stage_two[0]["epoch_time_s"])
            if stage_two
            else None,
        },
        "n_params": sum(p.numel() for p in load_model(model_path).parameters()),
        "model_path": model_path,
        "snapshots": snapshots,
        "snapshot_rule": "best-validation model so far (mlip's snapshots/model_<m>min.pt: EMA weights; "
        "the best-model tracking restarts at stage two)",
    }
    # the last snapshot also as the single-prediction file of benchmarks 1–5 (none with --no-test)
    if snapshots and "test" in snapshots[-1]["files"]:
        shutil.copy(snapshots[-1]["files"]["test"], os.path.join(out, "test_predictions.npz"))
    write_json(os.path.join(out, "result.json"), result)


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
    exit_on_sigterm()  # a terminated run takes its training process with it
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--task", required=True, choices=list(MACE_RECIPE_WEIGHTS))
    t.add_argument("--splits", required=True)
    t.add_argument("--budget-min", type=float, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-test", action="store_true")
    t.add_argument("--marks", default=None, help="snapshot marks in training minutes, e.g. 1,2,5")
    t.add_argument("--size", default=DEFAULT_SIZE, choices=list(SIZES))
    t.add_argument("-o", "--override", action="append", default=[], help="mlip config override KEY=VALUE")
    t.add_argument(
        "--weights",
        default="mace",
        choices=["mace", "config"],
        help="loss weights: MACE-equivalent or the config's",
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
