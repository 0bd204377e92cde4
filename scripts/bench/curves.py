"""Learning-curve and Pareto campaigns: one training run per (task, code, size, budget, seed).

    python scripts/bench/run.py curves --tasks ethanol,acac,carbon,tensors,water \
        --codes mlip,mace,metatrain,pet --seeds 0,1,2 --budget-min 60 --marks 1,2,5,10,20,30,60
    python scripts/bench/run.py pareto --task ethanol --seeds 0,1,2 --budget-min 30
    python scripts/bench/run.py report

Each run trains one code on one task for a wall-clock budget and, at the marks, writes test-set
predictions of the model it would return if stopped then (its best-validation model so far; see
``common.SnapshotClock``). When a run ends the driver computes the errors of every snapshot on every
test set of the task, the same way for every code (:func:`metrics.errors`), and writes one JSON per
run to ``<results>/curves/``. Runs are strictly sequential; a run whose JSON exists (status "ok")
is skipped, so a killed campaign resumes where it stopped and a partial campaign is usable.

The Pareto campaign trains several model sizes per code with the same budget (reusing curve runs
with the same task, size, budget and seed), then times energy + forces of every final model in one
interleaved session (µs/atom, median over rounds) and writes ``<results>/pareto_<task>.json``.
"""

from __future__ import annotations

import glob
import math
import os
import subprocess
import sys
import time

import numpy as np
from common import load_predictions, machine_info, read_json, run_child, write_json
from metrics import errors

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# code → (worker script, extra worker arguments)
WORKERS = {
    "mlip": ("worker_mlip.py", []),
    "mace": ("peer_mace.py", []),
    "metatrain": ("peer_metatrain.py", ["--code", "metatrain"]),
    "pet": ("peer_metatrain.py", ["--code", "pet"]),
}
LABELS = {"mlip": "mlip", "mace": "MACE", "metatrain": "SOAP-BPNN", "pet": "PET"}
DEFAULT_SIZES = {"mlip": "medium", "mace": "default", "metatrain": "default", "pet": "default"}
PARETO_SIZES = {
    "mlip": ["small", "medium", "large"],
    "mace": ["small", "medium", "large"],
    "metatrain": ["small", "default", "large"],
    "pet": ["small", "default", "large"],
}
ENERGY_TASKS = ("ethanol", "acac", "carbon")
CODE_ORDER = ("mlip", "mace", "metatrain", "pet")
SIZE_ORDER = ("small", "medium", "default", "large")


def order_key(key: tuple) -> tuple:
    """Sort (code, size, ...) keys as mlip, MACE, SOAP-BPNN, PET; sizes small → large (a variant
    ``medium+w10`` right after its size)."""
    code, size = key[0], key[1]
    base, _, variant = size.partition("+")
    return (
        CODE_ORDER.index(code) if code in CODE_ORDER else len(CODE_ORDER),
        SIZE_ORDER.index(base) if base in SIZE_ORDER else len(SIZE_ORDER),
        variant,
        *key[2:],
    )


# ----------------------------------------------------------------------------- options


def parse_budgets(text: str, tasks: list[str], default: float = 60.0) -> dict[str, float]:
    """``"60"`` or ``"30,ethanol=60,carbon=20"`` → {task: minutes}; a bare number is the default."""
    per_task: dict[str, float] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            task, value = item.split("=", 1)
            per_task[task.strip()] = float(value)
        else:
            default = float(item)
    unknown = set(per_task) - set(tasks)
    if unknown:
        raise ValueError(f"budget given for tasks not in --tasks: {sorted(unknown)}")
    return {t: per_task.get(t, default) for t in tasks}


def parse_sizes(text: str | None, codes: list[str], defaults: dict[str, list[str]]) -> dict[str, list[str]]:
    """``"mlip=small+large,mace=medium"`` → {code: [sizes]}; codes not named keep ``defaults``."""
    out = {c: list(defaults[c]) for c in codes}
    for item in (text or "").split(","):
        if item.strip():
            code, sizes = item.split("=", 1)
            out[code.strip()] = [s for s in sizes.split("+") if s]
    return out


def resolve_size(code: str, task: str, size: str) -> str:
    """The concrete size name (MACE's "default" is the task recipe's size, e.g. large)."""
    if code == "mace" and size == "default":
        from peer_mace import DEFAULT_SIZE

        return DEFAULT_SIZE[task]
    return size


def size_label(code: str, size: str, args) -> str:
    """The size as runs and tables name it: ``medium``, or ``medium+VARIANT`` for a non-default
    set-up of that code (``--mlip-variant``, ``--mace-variant``: other loss weights or overrides get
    their own runs and rows)."""
    variant = getattr(args, f"{code}_variant", None)
    return f"{size}+{variant}" if variant else size


def run_name(task: str, code: str, size: str, budget: float, seed: int) -> str:
    return f"{task}__{code}-{size}__{budget:g}min__s{seed}"


# ----------------------------------------------------------------------------- one run


def worker_command(
    code: str, task: str, size: str, budget: float, marks: list[float], seed: int, out: str, args
):
    """Command line of the worker that trains ``code`` on ``task``."""
    script, extra = WORKERS[code]
    python = sys.executable if code == "mlip" else args.peers_python
    cmd = [
        python, os.path.join(HERE, script), "train",
        "--task", task,
        "--splits", os.path.join(args.work_dir, "data", "splits.json"),
        "--budget-min", f"{budget:g}",
        "--marks", ",".join(f"{m:g}" for m in marks),
        "--size", size,
        "--seed", str(seed),
        "--out", out,
        "--device", args.device,
        "--threads", str(args.threads),
    ] + extra  # fmt: skip
    if code == "mlip":
        cmd += ["--weights", args.mlip_weights]
        for o in args.mlip_override or []:
            cmd += ["-o", o]
    if code == "mace" and getattr(args, "mace_weights", "recipe") != "recipe":
        cmd += ["--weights", args.mace_weights]
    return cmd


def worker_env(args) -> dict:
    """The same environment for every code: threads, and this checkout first on PYTHONPATH for mlip."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def evaluate_snapshots(result: dict, split: dict) -> list[dict]:
    """Errors of every snapshot on every test set of the task (:func:`metrics.errors`)."""
    tests = split.get("tests") or {"test": {"file": split["test"], "refs": split["refs"]}}
    refs = {name: load_predictions(t["refs"]) for name, t in tests.items()}
    out = []
    for snap in result.get("snapshots", []):
        entry = {k: v for k, v in snap.items() if k != "files"}
        entry["errors"] = {
            name: errors(load_predictions(path), refs[name], split["targets"])
            for name, path in snap["files"].items()
        }
        out.append(entry)
    return out


def curve_run(code: str, task: str, size: str, budget: float, marks: list[float], seed: int, args) -> dict:
    """Train, evaluate the snapshots, write and return the run's JSON (skipped if it exists)."""
    label = size_label(code, size, args)
    name = run_name(task, code, label, budget, seed)
    path = os.path.join(args.results, "curves", f"{name}.json")
    if os.path.exists(path):
        old = read_json(path)
        if old.get("status") == "ok":
            log(f"{name}: done before, skipped")
            return old
    split = read_json(os.path.join(args.work_dir, "data", "splits.json"))["tasks"][task]
    out = os.path.join(args.work_dir, "runs", name)
    os.makedirs(out, exist_ok=True)
    cmd = worker_command(code, task, size, budget, marks, seed, out, args)
    log(f"{name}: training ({budget:g} min budget, marks {marks})")
    start = time.perf_counter()
    with open(os.path.join(out, "driver.log"), "w") as handle:
        proc = run_child(cmd, cwd=REPO, env=worker_env(args), stdout=handle, stderr=subprocess.STDOUT)
    record = {
        "code": code,
        "task": task,
        "size": label,
        "seed": seed,
        "budget_min": budget,
        "marks_min": marks,
        "split": {k: v for k, v in split.items() if k not in ("train", "valid", "test", "refs", "tests")},
        "worker_command": " ".join(cmd),
        "driver_command": args.command,
        "process_wall_s": time.perf_counter() - start,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(args.device),
        "smoke": split.get("source", "").find("SMOKE") >= 0,
    }
    result_path = os.path.join(out, "result.json")
    if proc.returncode != 0 or not os.path.exists(result_path):
        tail = open(os.path.join(out, "driver.log")).read()[-3000:]
        record.update(status="failed", error=tail)
        log(f"{name}: FAILED (log: {out}/driver.log)")
    else:
        result = read_json(result_path)
        record.update(status="ok", worker=result, snapshots=evaluate_snapshots(result, split))
        last = record["snapshots"][-1]["errors"]["test"] if record["snapshots"] else {}
        log(f"{name}: {result['epochs']} epochs; final test RMSE " + ", ".join(
            f"{n} {e['rmse']:.3g} (ME {e['mean_error']:+.2g})" for n, e in last.items() if "_" not in n
        ))  # fmt: skip
    write_json(path, record)
    return record


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- campaigns


def check_variants(args) -> None:
    """A non-default set-up must be named, or its runs would overwrite the default set-up's."""
    if getattr(args, "mace_weights", "recipe") != "recipe" and not getattr(args, "mace_variant", None):
        raise SystemExit("run.py: --mace-weights mlip needs --mace-variant NAME (e.g. w10)")
    custom_mlip = getattr(args, "mlip_weights", "mace") != "mace" or getattr(args, "mlip_override", None)
    if custom_mlip and not getattr(args, "mlip_variant", None):
        raise SystemExit("run.py: --mlip-weights config / --mlip-override need --mlip-variant NAME")


def run_curves(args) -> None:
    """Seed-major order: every task and code for seed 0 first, so a partial campaign compares codes."""
    check_variants(args)
    budgets = parse_budgets(args.budget_spec, args.tasks)
    sizes = parse_sizes(args.sizes, args.codes, {c: [DEFAULT_SIZES[c]] for c in args.codes})
    for seed in args.seeds:
        for task in args.tasks:
            budget = budgets[task]
            marks = [m for m in args.marks if m <= budget]
            for code in args.codes:
                for size in sizes[code]:
                    curve_run(code, task, resolve_size(code, task, size), budget, marks, seed, args)


def run_pareto(args) -> None:
    """Train every size of every code on ``args.pareto_task`` with one budget, then time them."""
    check_variants(args)
    task = args.pareto_task
    if task not in ENERGY_TASKS:
        raise ValueError(f"the Pareto front needs an energy task ({', '.join(ENERGY_TASKS)}), got {task}")
    budget = parse_budgets(args.budget_spec, [task], default=30.0)[task]
    sizes = parse_sizes(args.sizes, args.codes, PARETO_SIZES)
    marks = [m for m in args.marks if m <= budget]
    for seed in args.seeds:
        for size_rank in range(max(len(v) for v in sizes.values())):
            for code in args.codes:
                if size_rank < len(sizes[code]):
                    size = resolve_size(code, task, sizes[code][size_rank])
                    curve_run(code, task, size, budget, marks, seed, args)
    time_pareto(task, budget, sizes, args)


def _model_paths(task: str, budget: float, sizes: dict[str, list[str]], args) -> dict[tuple[str, str], str]:
    """(code, size) → final model of the lowest seed that has one (for timing)."""
    out = {}
    for code, names in sizes.items():
        for size in names:
            size = size_label(code, resolve_size(code, task, size), args)
            for seed in sorted(args.seeds):
                rec = os.path.join(args.results, "curves", f"{run_name(task, code, size, budget, seed)}.json")
                if os.path.exists(rec):
                    r = read_json(rec)
                    if r.get("status") == "ok" and os.path.exists(r["worker"]["model_path"]):
                        out[(code, size)] = r["worker"]["model_path"]
                        break
    return out


def time_pareto(task: str, budget: float, sizes: dict[str, list[str]], args) -> dict:
    """Energy + forces cost of every (code, size) model, interleaved rounds, µs/atom."""
    from run import Worker, interleaved, python_for

    models = _model_paths(task, budget, sizes, args)
    split = read_json(os.path.join(args.work_dir, "data", "splits.json"))["tasks"][task]
    kind, n = ("periodic", args.pareto_atoms) if task == "carbon" else ("molecules", args.pareto_batch)
    workers, setup = {}, {}
    log_dir = os.path.join(args.work_dir, "logs", "pareto")
    try:
        for (code, size), path in models.items():
            key = f"{code}/{size}"
            # the mlip worker imports this checkout's mlip (it puts the repository first on sys.path)
            w = Worker(WORKER_CODE[code], python_for(WORKER_CODE[code], args), args.threads, log_dir)
            workers[key] = w
            w.call("load", model_path=path, device=args.device, dtype="float32")
            setup[key] = w.call("setup", kind=kind, n=n, data_path=split["test"])
        log(f"pareto timing: {len(workers)} models, {args.rounds} interleaved rounds")
        per_round = interleaved(workers, "run", args.rounds, args.round_seconds, mode="model")["per_round_s"]
    finally:
        for w in workers.values():
            w.close()
    points = {}
    for k in per_round:
        atoms = setup[k]["n_atoms"]
        points[k] = {
            "model_path": models[tuple(k.split("/"))],
            "n_atoms": atoms,
            "per_round_s": per_round[k],
            "us_per_atom": 1e6 * float(np.median(per_round[k])) / atoms,
        }
    res = {
        "benchmark": "pareto",
        "task": task,
        "budget_min": budget,
        "timing": {
            "what": f"energy + forces (autograd), model call on a prepared batch ({kind}, n={n}), float32, "
            f"{args.threads} threads; median over {args.rounds} interleaved rounds of the per-round median",
            "points": points,
        },
        "command": args.command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(args.device),
    }
    write_json(os.path.join(args.results, f"pareto_{task}.json"), res)
    return res


# the serve-mode worker script of each code (PET models are metatomic models like SOAP-BPNN's)
WORKER_CODE = {"mlip": "mlip", "mace": "mace", "metatrain": "metatrain", "pet": "metatrain"}


# ----------------------------------------------------------------------------- aggregation


def load_runs(results: str) -> list[dict]:
    """All run JSONs with status ok under ``<results>/curves``.

    Seeds of one row (task, code, size label, budget) must share one architecture and one host CPU:
    a shipped config that changed between sittings would otherwise be averaged with its old self
    under one label, and a wall-clock budget buys twice the epochs on a host twice as fast.
    """
    runs = []
    rows: dict[tuple, tuple[str, dict]] = {}  # row → (its first file, that run's set-up)
    for path in sorted(glob.glob(os.path.join(results, "curves", "*.json"))):
        r = read_json(path)
        if r.get("status") != "ok":
            continue
        model = (r.get("worker", {}).get("config") or {}).get("model")
        key = (r["task"], r["code"], r["size"], r["budget_min"])
        setup = {"model settings": model, "host CPU": r.get("machine", {}).get("cpu_model")}
        first = rows.setdefault(key, (os.path.basename(path), setup))
        for what in setup:
            if first[1][what] != setup[what] and (what == "host CPU" or isinstance(model, dict)):
                raise SystemExit(
                    f"run.py: {os.path.basename(path)} and {first[0]} share the row label "
                    f"{r['code']} ({r['size']}) but not the {what}; keep one in another results folder "
                    "or rerun it under its own --mlip-variant"
                )
        runs.append(r)
    return runs


def failed_runs(results: str) -> list[dict]:
    return [
        r
        for r in (read_json(p) for p in sorted(glob.glob(os.path.join(results, "curves", "*.json"))))
        if r.get("status") != "ok"
    ]


def seed_stats(values: list[float]) -> dict:
    """Mean and spread (min–max) over seeds."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v)), "n": len(v)}


def curve_table(runs: list[dict], task: str, test: str, target: str, metric: str = "rmse") -> dict:
    """{(code, size, budget): {mark: {"mean", "min", "max", "n", "train_min"}}} over seeds."""
    groups: dict[tuple, dict[float, list]] = {}
    for r in runs:
        if r["task"] != task:
            continue
        key = (r["code"], r["size"], r["budget_min"])
        for snap in r["snapshots"]:
            e = snap["errors"].get(test, {}).get(target)
            if e is None:
                continue
            groups.setdefault(key, {}).setdefault(snap["mark_min"], []).append(
                (e[metric], snap["train_s"] / 60)
            )
    out = {}
    for key, marks in groups.items():
        out[key] = {}
        for mark, vals in sorted(marks.items()):
            st = seed_stats([v for v, _ in vals])
            st["train_min"] = float(np.mean([t for _, t in vals]))
            out[key][mark] = st
    return out


def interpolate_loglog(xs: list[float], ys: list[float], x: float) -> float | None:
    """y(x) on the piecewise-linear log–log curve through (xs, ys); None outside its range."""
    pts = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if min(x0, x1) <= x <= max(x0, x1) and x0 != x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    for x0, y0 in pts:
        if x0 == x:
            return y0
    return None


def lower_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto-optimal (error, cost) points: no other point is both more accurate and cheaper."""
    front = []
    for e, c in sorted(points, key=lambda p: (p[1], p[0])):  # by cost
        if not front or e < front[-1][0]:
            front.append((e, c))
    return front


def equal_error_ratio(mlip: list[tuple[float, float]], mace: list[tuple[float, float]]) -> list[dict]:
    """Throughput ratio mlip / MACE at equal test error, for every mlip point inside MACE's range.

    Points are (test error, µs/atom). MACE's Pareto front is interpolated linearly in log(error)
    – log(cost) at mlip's error; ratio = MACE cost at that error / mlip cost (> 1: mlip faster).
    No extrapolation: mlip points outside MACE's error range get ``None``.
    """
    front = lower_front(mace)
    out = []
    for err, cost in mlip:
        mace_cost = (
            interpolate_loglog([e for e, _ in front], [c for _, c in front], err) if len(front) > 1 else None
        )
        out.append(
            {
                "error": err,
                "mlip_us_per_atom": cost,
                "mace_us_per_atom_at_equal_error": mace_cost,
                "throughput_ratio": mace_cost / cost if mace_cost else None,
            }
        )
    return out


def pareto_points(runs: list[dict], task: str, budget: float, target: str) -> dict[tuple[str, str], dict]:
    """(code, size) → final-snapshot test error over seeds (mean, min, max) for the Pareto budget."""
    vals: dict[tuple[str, str], list[float]] = {}
    params: dict[tuple[str, str], int] = {}
    for r in runs:
        if r["task"] != task or r["budget_min"] != budget or not r["snapshots"]:
            continue
        e = r["snapshots"][-1]["errors"]["test"].get(target)
        if e is not None:
            vals.setdefault((r["code"], r["size"]), []).append(e["rmse"])
            params[(r["code"], r["size"])] = r["worker"].get("n_params")
    return {k: {**seed_stats(v), "n_params": params.get(k)} for k, v in vals.items()}
