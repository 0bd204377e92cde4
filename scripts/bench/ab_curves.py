"""Backbone / recipe A/B by learning curves: test error versus training wall time, one run per arm
and seed, evaluated at wall-clock snapshots of that run (no restart per budget).

    python scripts/bench/ab_curves.py --task acac --arms before,cos,cos_ams,recipe,bi16,bond8,accurate \
        --seeds 0 --budget-min 10 --marks 1,2,3,5,7,10
    python scripts/bench/ab_curves.py --report            # tables from the stored runs only

Every arm is ``configs/accurate.yaml`` plus the arm's overrides (see ``ARMS``), trained with
``mlip train`` in a fresh process with ``training.snapshot_minutes`` at the marks; every snapshot
(the best-validation model at that time) is evaluated afterwards on the task's test sets, outside
the clock. Inference cost: energy + forces of one batch of 32 test structures, float32, median
µs/atom. One JSON per (task, arm, seed) in ``--results``, written when the run ends, so an
interrupted campaign resumes where it stopped; the Markdown table is rebuilt from all of them.

Tasks (splits seeded and fixed, written to ``--work-dir``):

* ``acac``: acetylacetone, 300 K set → 400 train / 50 valid / 50 test (held out, in distribution);
  the whole 600 K set as an out-of-distribution test; isolated-atom E0s.
* ``ethanol``: 950 train / 50 valid of ``data/ethanol/train.xyz``; test ``data/ethanol/test.xyz``.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import machine_info, read_json, write_json  # noqa: E402

PS = ["model.correlation=2", "model.bond_channels=0"]
OLD_RECIPE = ["training.scheduler=plateau", "training.amsgrad=false", "training.stage_two_start=null"]
ARMS: dict[str, tuple[str, list[str]]] = {
    "before": (
        "power spectrum, plateau schedule, Adam, no stage two (mlip before this work)",
        PS + OLD_RECIPE,
    ),
    "cos": (
        "power spectrum, cosine over the budget",
        PS + ["training.amsgrad=false", "training.stage_two_start=null"],
    ),
    "cos_ams": ("power spectrum, cosine, AMSGrad", PS + ["training.stage_two_start=null"]),
    "recipe": ("power spectrum, cosine, AMSGrad, stage two (the new recipe)", PS),
    "bi16": ("recipe + bispectrum on 16 channels", ["model.bond_channels=0"]),
    "bi32": ("recipe + bispectrum on 32 channels", ["model.bond_channels=0", "model.bispectrum_channels=32"]),
    "bi64": (
        "recipe + bispectrum on all 64 channels",
        ["model.bond_channels=0", "model.bispectrum_channels=64"],
    ),
    "bond8": ("recipe + bond projections, 8 channels", ["model.correlation=2"]),
    "bond16": ("recipe + bond projections, 16 channels", ["model.correlation=2", "model.bond_channels=16"]),
    "accurate": ("recipe + bispectrum (16) + bonds (8) = configs/accurate.yaml", []),
    "nos2": ("accurate.yaml without stage two", ["training.stage_two_start=null"]),
    "nos2_lr1e-2": ("no stage two, lr 0.01", ["training.stage_two_start=null", "training.lr=0.01"]),
    "nos2_bs4": ("no stage two, batch 4", ["training.stage_two_start=null", "training.batch_size=4"]),
    "nos2_bs16_lr1e-2": (
        "no stage two, batch 16, lr 0.01",
        ["training.stage_two_start=null", "training.batch_size=16", "training.lr=0.01"],
    ),
    "nos2_c32": (
        "no stage two, 32 channels",
        ["training.stage_two_start=null", "model.channels=32", "model.radial_hidden=32"],
    ),
    "nos2_l3": ("no stage two, 3 layers", ["training.stage_two_start=null", "model.num_layers=3"]),
    "nos2_bi32": (
        "no stage two, bispectrum on 32 channels",
        ["training.stage_two_start=null", "model.bispectrum_channels=32"],
    ),
    "c32_l3": (
        "no stage two, 32 channels, 3 layers",
        [
            "training.stage_two_start=null",
            "model.channels=32",
            "model.radial_hidden=32",
            "model.num_layers=3",
        ],
    ),
    "c32_bi32": (
        "no stage two, 32 channels, bispectrum on all 32",
        [
            "training.stage_two_start=null",
            "model.channels=32",
            "model.radial_hidden=32",
            "model.bispectrum_channels=32",
        ],
    ),
    "c32_ps": (
        "no stage two, 32 channels, power spectrum only (no bispectrum, no bonds)",
        [
            "training.stage_two_start=null",
            "model.channels=32",
            "model.radial_hidden=32",
            "model.correlation=2",
            "model.bond_channels=0",
        ],
    ),
    "c24": (
        "no stage two, 24 channels",
        ["training.stage_two_start=null", "model.channels=24", "model.radial_hidden=24"],
    ),
    "l3": ("accurate.yaml with 3 layers", ["model.num_layers=3"]),
    "c96": ("accurate.yaml with 96 channels", ["model.channels=96", "model.radial_hidden=96"]),
    "c32": ("accurate.yaml with 32 channels", ["model.channels=32", "model.radial_hidden=32"]),
    "lr1e-2": ("accurate.yaml, lr 0.01", ["training.lr=0.01"]),
    "lr2e-3": ("accurate.yaml, lr 0.002", ["training.lr=0.002"]),
    "bs4": ("accurate.yaml, batch 4", ["training.batch_size=4"]),
    "bs16": ("accurate.yaml, batch 16", ["training.batch_size=16"]),
    "f100": ("accurate.yaml, forces weight 100 (MACE's ratio)", ["targets.forces.weight=100.0"]),
    "rad32": ("accurate.yaml, radial MLP 32 wide", ["model.radial_hidden=32"]),
}


def prepare_task(task: str, work_dir: str) -> dict:
    """Write the task's split once; returns paths and the config overrides that select it."""
    import ase.io
    import numpy as np

    folder = os.path.join(work_dir, "data", task)
    os.makedirs(folder, exist_ok=True)
    if task == "acac":
        frames = ase.io.read(os.path.join(REPO, "data/acac/train_300K.xyz"), ":")
        order = np.random.default_rng(0).permutation(len(frames))
        parts = {"train": order[:400], "valid": order[400:450], "test_300K": order[450:]}
        files = {}
        for name, idx in parts.items():
            files[name] = os.path.join(folder, f"{name}.xyz")
            if not os.path.exists(files[name]):
                ase.io.write(files[name], [frames[i] for i in sorted(idx)])
        files["test_600K"] = os.path.join(REPO, "data/acac/train_600K.xyz")
        e0s = os.path.join(REPO, "data/acac/isolated_atoms.xyz")
        tests = {"300K (held out)": files["test_300K"], "600K (out of distribution)": files["test_600K"]}
    elif task == "ethanol":
        frames = ase.io.read(os.path.join(REPO, "data/ethanol/train.xyz"), ":")
        order = np.random.default_rng(0).permutation(len(frames))
        files = {}
        for name, idx in {"train": order[:950], "valid": order[950:]}.items():
            files[name] = os.path.join(folder, f"{name}.xyz")
            if not os.path.exists(files[name]):
                ase.io.write(files[name], [frames[i] for i in sorted(idx)])
        e0s = os.path.join(REPO, "data/ethanol/isolated_atoms.xyz")
        tests = {"MD test": os.path.join(REPO, "data/ethanol/test.xyz")}
    else:
        raise SystemExit(f"unknown task {task!r}")
    overrides = [
        f"data.train_file={files['train']}",
        f"data.valid_file={files['valid']}",
        "data.test_file=null",
        f"data.e0s={e0s}",
        "targets.energy.key=energy",
        "targets.forces.key=forces",
    ]
    return {"overrides": overrides, "tests": tests}


def evaluate_snapshots(run_dir: str, tests: dict[str, str], threads: int) -> dict:
    """Test errors of every snapshot (float32, as trained) and the inference cost of the last one."""
    import ase.io
    import numpy as np
    import torch

    from mlip.calculators.batched import predict_batches
    from mlip.data.reading import extract_label
    from mlip.model.potential import load_model
    from mlip.training.metrics import MetricsAccumulator

    torch.set_num_threads(threads)
    rows = []
    index = os.path.join(run_dir, "snapshots", "snapshots.csv")
    with open(index) as handle:
        lines = [line.strip().split(",") for line in handle.read().splitlines()[1:] if line.strip()]
    frames = {name: ase.io.read(path, ":") for name, path in tests.items()}
    model = None
    for mark, wall, epoch, stage, file in lines:
        model = load_model(os.path.join(run_dir, "snapshots", file))
        specs = [s for s in model.target_specs if s.name in ("energy", "forces")]
        row = {"mark_min": float(mark), "wall_time_s": float(wall), "epoch": int(epoch), "stage": int(stage)}
        for name, structures in frames.items():
            labels = [
                {s.name: extract_label(a, s, f"{name}[{i}]") for s in specs} for i, a in enumerate(structures)
            ]
            acc = MetricsAccumulator(specs)
            errors = []
            for batch, pred, _ in predict_batches(model, structures, 64, "cpu", name, labels=labels):
                acc.update(pred, batch)
                n = (batch.ptr[1:] - batch.ptr[:-1]).double()
                errors.append(((pred["energy"] - batch["energy"]).double() / n).numpy())
            metrics = acc.compute()
            row[name] = {
                "energy_rmse_mev_atom": 1e3 * metrics["energy_rmse"],
                "energy_mae_mev_atom": 1e3 * metrics["energy_mae"],
                "energy_mean_error_mev_atom": 1e3 * float(np.mean(np.concatenate(errors))),
                "forces_rmse_mev_a": 1e3 * metrics["forces_rmse"],
                "forces_mae_mev_a": 1e3 * metrics["forces_mae"],
            }
        rows.append(row)
    cost = inference_cost(model, next(iter(frames.values()))[:32]) if model is not None else None
    params = sum(p.numel() for p in model.parameters()) if model is not None else None
    return {"snapshots": rows, "inference_us_per_atom": cost, "parameters": params}


def inference_cost(model, structures, repeats: int = 20) -> float:
    """Median µs/atom of energy + forces for one batch (float32, graph built beforehand)."""
    import numpy as np
    import torch
    from torch_geometric.data import Batch

    from mlip.data.graph import atoms_to_graph

    model = model.float()
    for p in model.parameters():
        p.requires_grad_(False)
    batch = Batch.from_data_list([atoms_to_graph(a, model.cutoff, dtype=torch.float32) for a in structures])
    n_atoms = int(batch.num_nodes)
    for _ in range(3):
        model(batch, compute_forces=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch, compute_forces=True)
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times)) / n_atoms


def run_arm(task: str, arm: str, seed: int, args, prepared: dict) -> dict:
    out = os.path.join(args.work_dir, "runs", f"{task}_{arm}_s{seed}")
    marks = ",".join(f"{m:g}" for m in args.marks)
    cmd = [
        sys.executable, "-m", "mlip", "train", args.config,
        *sum((["-o", o] for o in prepared["overrides"]), []),
        *sum((["-o", o] for o in ARMS[arm][1]), []),
        "-o", f"output_dir={out}", "-o", f"seed={seed}", "-o", "device=cpu",
        "-o", f"training.max_time_minutes={args.budget_min}",
        "-o", f"training.snapshot_minutes=[{marks}]",
        "-o", "logging.progress_bar=false",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if os.path.exists(out):
        subprocess.run(["rm", "-rf", out], check=True)
    os.makedirs(out)
    load_before = os.getloadavg()
    start = time.perf_counter()
    with open(os.path.join(out, "train.log"), "w") as log:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - start
    result = {
        "task": task,
        "arm": arm,
        "description": ARMS[arm][0],
        "overrides": ARMS[arm][1],
        "seed": seed,
        "budget_min": args.budget_min,
        "config": os.path.relpath(args.config, REPO),
        "process_wall_s": wall,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "command": " ".join(cmd),
        **evaluate_snapshots(out, prepared["tests"], args.threads),
    }
    with open(os.path.join(out, "metrics.csv")) as handle:
        rows = handle.read().splitlines()
    result["epochs"] = len(rows) - 1
    return result


def report(results_dir: str) -> str:
    runs = [read_json(p) for p in sorted(glob.glob(os.path.join(results_dir, "*.json")))]
    runs = [r for r in runs if "snapshots" in r]
    lines = [
        "# Backbone and recipe A/B: learning curves",
        "",
        "Test RMSE at wall-clock marks of one training run per arm and seed (the best-validation model at "
        "that time), 2 threads, float32; energy meV/atom, forces meV/Å; mean over seeds, [min–max] when "
        "there are several. Inference: energy + forces of 32 test structures, µs/atom.",
        "",
    ]
    import numpy as np

    for task in sorted({r["task"] for r in runs}):
        task_runs = [r for r in runs if r["task"] == task]
        tests = [k for k in task_runs[0]["snapshots"][0] if isinstance(task_runs[0]["snapshots"][0][k], dict)]
        marks = sorted({s["mark_min"] for r in task_runs for s in r["snapshots"]})
        lines += [f"## {task}", ""]
        for test in tests:
            lines += [
                f"**{test}** — forces RMSE (energy RMSE) at each mark (min)",
                "",
                "| arm | seeds | params | µs/atom | epochs | " + " | ".join(f"{m:g}" for m in marks) + " |",
                "|---|---|---|---|---|" + "---|" * len(marks),
            ]
            for arm in ARMS:
                arm_runs = [r for r in task_runs if r["arm"] == arm]
                if not arm_runs:
                    continue
                cells = []
                for m in marks:
                    f, e = [], []
                    for r in arm_runs:
                        snap = next((s for s in r["snapshots"] if s["mark_min"] == m), None)
                        if snap is not None:
                            f.append(snap[test]["forces_rmse_mev_a"])
                            e.append(snap[test]["energy_rmse_mev_atom"])
                    if not f:
                        cells.append("–")
                    elif len(f) == 1:
                        cells.append(f"{f[0]:.1f} ({e[0]:.2f})")
                    else:
                        cells.append(f"{np.mean(f):.1f} [{min(f):.1f}–{max(f):.1f}] ({np.mean(e):.2f})")
                seeds = ",".join(str(r["seed"]) for r in arm_runs)
                cost = np.mean([r["inference_us_per_atom"] for r in arm_runs])
                epochs = np.mean([r["epochs"] for r in arm_runs])
                lines.append(
                    f"| {arm}: {ARMS[arm][0]} | {seeds} | {arm_runs[0]['parameters']:,} | {cost:.0f} | "
                    f"{epochs:.0f} | " + " | ".join(cells) + " |"
                )
            lines.append("")
        cmd = task_runs[0]["command"]
        lines += [f"Example training command: `{cmd}`", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="acac", choices=["acac", "ethanol"])
    p.add_argument("--arms", default="before,recipe,accurate")
    p.add_argument("--seeds", default="0")
    p.add_argument("--budget-min", type=float, default=10.0)
    p.add_argument("--marks", default="1,2,3,5,7,10")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "accurate.yaml"))
    p.add_argument("--work-dir", default="/tmp/mlip-ab")
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "backbone_ab_curves"))
    p.add_argument("--report", action="store_true", help="only rebuild the Markdown table")
    p.add_argument("--force", action="store_true", help="rerun arms whose JSON exists")
    args = p.parse_args()
    args.marks = [float(m) for m in args.marks.split(",")]
    os.makedirs(args.results, exist_ok=True)
    if not args.report:
        prepared = prepare_task(args.task, args.work_dir)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arm in args.arms.split(","):
                path = os.path.join(args.results, f"{args.task}_{arm}_s{seed}.json")
                if os.path.exists(path) and not args.force:
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {args.task} {arm} seed {seed}", flush=True)
                result = run_arm(args.task, arm, seed, args, prepared)
                result["date"] = datetime.date.today().isoformat()
                result["machine"] = machine_info("cpu")
                write_json(path, result)
                last = result["snapshots"][-1]
                print("   ", {k: v for k, v in last.items() if isinstance(v, dict)}, flush=True)
    text = report(args.results)
    with open(os.path.join(args.results, "README.md"), "w") as handle:
        handle.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
