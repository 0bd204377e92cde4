"""Side-by-side benchmarks of mlip, MACE and metatrain (SOAP-BPNN, PET) in one run.

    python scripts/bench/run.py curves --tasks ethanol,acac,carbon,tensors,water \
        --codes mlip,mace,metatrain,pet --seeds 0,1,2 --budget-min 60 --marks 1,2,5,10,20,30,60
    python scripts/bench/run.py pareto --task ethanol --seeds 0,1,2 --budget-min 30
    python scripts/bench/run.py all --peers-python /work/peers/bin/python          # benchmarks 2–5
    python scripts/bench/run.py inference --dtypes float32,float64 --large
    python scripts/bench/run.py report                                             # BENCHMARKS.md

Sub-benchmarks: ``curves`` (1, learning curves, see curves.py), ``inference`` (2), ``md`` (3),
``scaling`` (4), ``training`` (5), ``pareto`` (6, test error vs inference cost).
mlip runs in this Python; the peers run in the virtual environment given by ``--peers-python``
(see docs/benchmarks.md), through ``peer_mace.py`` / ``peer_metatrain.py`` in subprocesses. Timed
repeats are interleaved (round r runs every code once, in a rotating order) and ratios are taken
within a round, because the machine may be shared and noisy. Each benchmark writes a JSON of raw
figures and a Markdown table to ``--results`` (default benchmarks/results); models, logs and data
splits go to ``--work-dir`` (default /tmp/mlip-bench).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from common import exit_on_sigterm, machine_info, read_json, run_child, write_json  # noqa: E402

SCRIPTS = {
    "mlip": os.path.join(HERE, "worker_mlip.py"),
    "mace": os.path.join(HERE, "peer_mace.py"),
    "metatrain": os.path.join(HERE, "peer_metatrain.py"),
    "pet": os.path.join(HERE, "peer_metatrain.py"),  # metatrain's PET (``--code pet``)
}
LABELS = {"mlip": "mlip", "mace": "MACE", "metatrain": "metatrain SOAP-BPNN", "pet": "metatrain PET"}
DEFAULT_PEERS_PYTHON = "/work/peers/bin/python"

# quick (default) and full sizes; individual flags override
SIZES = {
    "quick": {
        "molecule_batches": [1, 32],
        "periodic_atoms": [64, 512, 4096],
        "md_systems": [("cluster", 11), ("box", 1000)],
        "scaling_atoms": [64, 216, 512, 1000, 2744, 8000, 21952],
        # MACE large (its recipe's size) at 4096 atoms was killed for memory on a 24 GiB machine
        "peer_scaling_max_atoms": 1000,
        "rounds": 5,
        "round_seconds": 1.0,
        "md_rounds": 3,
        "md_round_seconds": 3.0,
        "train_rounds": 2,
        "train_budget_min": 0.5,
    },
    "full": {
        "molecule_batches": [1, 8, 32, 128],
        "periodic_atoms": [64, 512, 4096, 10648],
        "md_systems": [("cluster", 11), ("box", 1000)],
        "scaling_atoms": [64, 216, 512, 1000, 2744, 8000, 21952, 46656, 97336],
        "peer_scaling_max_atoms": 21952,
        "rounds": 7,
        "round_seconds": 3.0,
        "md_rounds": 5,
        "md_round_seconds": 10.0,
        "train_rounds": 3,
        "train_budget_min": 2.0,
    },
}


# ----------------------------------------------------------------------------- workers


class Worker:
    """A persistent worker process (one per code) driven over JSON lines."""

    def __init__(
        self,
        code: str,
        python: str,
        threads: int,
        log_dir: str,
        extra_env: dict | None = None,
        repo: str | None = None,
    ) -> None:
        """``repo``: another checkout whose worker script and mlip to run (default: this one), to
        time two commits side by side."""
        repo = os.path.abspath(repo or REPO)
        os.makedirs(log_dir, exist_ok=True)
        self.code = code
        self.log_path = os.path.join(log_dir, f"{code}.log")
        self.log = open(self.log_path, "a")
        env = dict(
            os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **(extra_env or {})
        )
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")  # that checkout's mlip
        env.setdefault("PYTHONWARNINGS", "ignore")
        script = os.path.join(repo, os.path.relpath(SCRIPTS[code], REPO))
        self.proc = subprocess.Popen(
            [python, script, "serve", "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=repo,
            env=env,
        )

    def call(self, cmd: str, **args):
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.code} worker exited with code {self.proc.returncode} (log: {self.log_path})"
            )
        self.proc.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"{self.code} worker died (exit code {code}; log: {self.log_path})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"{self.code}: {cmd} failed:\n{reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("quit")
                self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self.log.close()


def python_for(code: str, args) -> str:
    return sys.executable if code == "mlip" else args.peers_python


def env_for(args) -> dict:
    """The same environment for every code; this checkout's mlip first on PYTHONPATH."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def rotate(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- training runs


def prepare_splits(args) -> dict:
    """The data splits that the command-line options ask for (written once under ``--work-dir``)."""
    from data import prepare

    return prepare(
        REPO,
        args.work_dir,
        args.n_train,
        args.n_valid,
        args.split_seed,
        args.smoke,
        args.acac_train,
        args.acac_add,
    )


def train_run(code: str, task: str, budget: float, out: str, args, no_test: bool = False) -> dict:
    """One training job of ``code`` on ``task`` (subprocess); returns its result.json."""
    prepare_splits(args)
    splits_path = os.path.join(args.work_dir, "data", "splits.json")
    cmd = [
        python_for(code, args),
        SCRIPTS[code],
        "train",
        "--task", task,
        "--splits", splits_path,
        "--budget-min", str(budget),
        "--out", out,
        "--device", args.device,
        "--threads", str(args.threads),
        "--seed", str(args.seed),
    ]  # fmt: skip
    if code == "pet":
        cmd += ["--code", "pet"]
    if no_test:
        cmd.append("--no-test")
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    with open(os.path.join(out, "driver.log"), "w") as handle:
        proc = run_child(cmd, cwd=REPO, env=env_for(args), stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{code} training on {task} failed (log: {out}/driver.log)")
    result = read_json(os.path.join(out, "result.json"))
    result["process_wall_s"] = time.perf_counter() - start
    result["driver_command"] = " ".join(cmd)
    return result


def model_for(code: str, task: str, args) -> tuple[str, str]:
    """The ``task`` model of ``code``: a learning-curve run (benchmark 1) of the code's default size
    if one exists on this machine (longest budget, lowest seed), else a short one trained now."""
    from curves import DEFAULT_SIZES, load_runs, resolve_size

    size = resolve_size(code, task, DEFAULT_SIZES.get(code, "default"))
    runs = [
        r
        for r in load_runs(args.results)
        if r["code"] == code and r["task"] == task and r["size"] == size
        and os.path.exists(r["worker"]["model_path"])
    ]  # fmt: skip
    if runs:
        r = sorted(runs, key=lambda r: (-r["budget_min"], r["seed"]))[0]
        return r["worker"][
            "model_path"
        ], f"benchmark-1 run ({r['budget_min']:g} min budget, seed {r['seed']})"
    out = os.path.join(args.work_dir, "models", f"{code}_{task}")
    path = os.path.join(out, "result.json")
    if not os.path.exists(path):
        log(f"no benchmark-1 model for {code}/{task}: training one for 0.25 min (default size)")
        train_run(code, task, 0.25, out, args, no_test=True)
    res = read_json(path)
    return res["model_path"], "briefly trained (0.25 min), default size"


# ----------------------------------------------------------------------------- 2. inference


def _calls_for(seconds_per_call: float, target: float, max_calls: int = 50) -> int:
    return int(min(max_calls, max(1, math.ceil(target / max(seconds_per_call, 1e-6)))))


def interleaved(workers: dict, method: str, rounds: int, target_s: float, **kw) -> dict:
    """Calibrate calls per round for each code, then run ``rounds`` interleaved rounds.

    Returns code → list of per-round median seconds per call.
    """
    n_calls = {}
    for code, w in workers.items():
        t = min(w.call(method, n_calls=1, **kw))
        n_calls[code] = _calls_for(t, target_s)
    per_round: dict[str, list[float]] = {code: [] for code in workers}
    codes = list(workers)
    for r in range(rounds):
        for code in rotate(codes, r):
            times = workers[code].call(method, n_calls=n_calls[code], **kw)
            per_round[code].append(float(np.median(times)))
    return {"per_round_s": per_round, "calls_per_round": n_calls}


def ratios(per_round: dict[str, list[float]], ref: str = "mlip") -> dict:
    """Per-round ratio t_code / t_ref (> 1: mlip faster); median, min, max over rounds."""
    out = {}
    for code, times in per_round.items():
        if code == ref or ref not in per_round:
            continue
        r = [t / tr for t, tr in zip(times, per_round[ref])]
        out[code] = {
            "median": float(np.median(r)),
            "min": float(min(r)),
            "max": float(max(r)),
            "per_round": r,
        }
    return out


def bench_inference(args) -> dict:
    cases = [("molecules", n) for n in args.molecule_batches] + [("periodic", n) for n in args.periodic_atoms]
    results = []
    log_dir = os.path.join(args.work_dir, "logs", "inference")
    for dtype in args.dtypes:
        workers = {c: Worker(c, python_for(c, args), args.threads, log_dir) for c in args.codes}
        try:
            info = {c: w.call("info") for c, w in workers.items()}
            loaded_task = None
            sources = {}
            for kind, n in cases:
                task = "ethanol" if kind == "molecules" else "carbon"
                if task != loaded_task:
                    for c, w in workers.items():
                        path, sources[f"{c}/{task}"] = model_for(c, task, args)
                        w.call("load", model_path=path, device=args.device, dtype=dtype)
                    loaded_task = task
                setup = {}
                active = {}
                for c, w in workers.items():
                    if kind == "periodic" and c != "mlip" and n > args.peer_max_atoms:
                        continue
                    setup[c] = w.call(
                        "setup", kind=kind, n=n, data_path=os.path.join(REPO, "data/ethanol/test.xyz")
                    )
                    active[c] = w
                modes = ["model", "e2e"] if (kind == "molecules" or n <= 512) else ["model"]
                rounds = args.rounds if (kind == "molecules" or n <= 512) else max(2, args.rounds - 2)
                for mode in modes:
                    log(f"inference {dtype} {kind} n={n} mode={mode}: {rounds} rounds")
                    res = interleaved(active, "run", rounds, args.round_seconds, mode=mode)
                    entry = {
                        "dtype": dtype,
                        "kind": kind,
                        "n": n,
                        "mode": mode,
                        "task_model": task,
                        "setup": setup,
                        **res,
                        "ratio_vs_mlip": ratios(res["per_round_s"]),
                    }
                    entry["throughput"] = {
                        c: {
                            "s_per_call": float(np.median(res["per_round_s"][c])),
                            "structures_per_s": setup[c]["n_structures"]
                            / float(np.median(res["per_round_s"][c])),
                            "atoms_per_s": setup[c]["n_atoms"] / float(np.median(res["per_round_s"][c])),
                        }
                        for c in active
                    }
                    results.append(entry)
                    summary = ", ".join(
                        f"{c} {v['atoms_per_s']:.3g} atoms/s" for c, v in entry["throughput"].items()
                    )
                    log(f"  {summary}")
        finally:
            for w in workers.values():
                w.close()
    return {
        "benchmark": "inference",
        "models": sources,
        "versions": {c: i["versions"] for c, i in info.items()},
        "peer_max_atoms": args.peer_max_atoms,
        "cases": results,
    }


# ----------------------------------------------------------------------------- 3. MD


MD_SKIN = 1.0  # Å, for the "mlip + skin" row (MLIPCalculator(skin=...))


def bench_md(args) -> dict:
    size = SIZES[args.size]
    log_dir = os.path.join(args.work_dir, "logs", "md")
    results = []
    sources = {}
    info = {}
    # (row label, code, md_setup extras): mlip as shipped (fresh neighbour list every step) and with
    # neighbour-list reuse; MACECalculator (fresh list); metatomic's calculator (its default skin)
    variants = []
    for c in args.codes:
        variants.append((c, c, {}))
        if c == "mlip":
            variants.append(("mlip_skin", "mlip", {"skin": MD_SKIN}))
    for system, n in size["md_systems"]:
        task = "ethanol" if system == "cluster" else "carbon"
        workers = {
            label: Worker(code, python_for(code, args), args.threads, log_dir) for label, code, _ in variants
        }
        try:
            info = {label: w.call("info") for label, w in workers.items()}
            setup = {}
            for label, code, extra in variants:
                w = workers[label]
                path, sources[f"{code}/{task}"] = model_for(code, task, args)
                w.call("load", model_path=path, device=args.device, dtype=args.md_dtype)
                setup[label] = w.call(
                    "md_setup",
                    system=system,
                    n=n,
                    data_path=os.path.join(REPO, "data/ethanol/test.xyz"),
                    **extra,
                )
            # calibrate steps per round
            steps = {}
            for label, w in workers.items():
                r = w.call("md_run", steps=2)
                steps[label] = _calls_for(r["total_s"] / 2, args.md_round_seconds, max_calls=200)
            per_round = {label: [] for label in workers}
            raw = {label: [] for label in workers}
            for r in range(args.md_rounds):
                for label in rotate(list(workers), r):
                    res = workers[label].call("md_run", steps=steps[label])
                    raw[label].append(res)
                    per_round[label].append(res["total_s"] / res["steps"])
            entry = {
                "system": system,
                "n_atoms": {label: s["n_atoms"] for label, s in setup.items()},
                "task_model": task,
                "dtype": args.md_dtype,
                "steps_per_round": steps,
                "raw": raw,
                "per_round_s": per_round,
                "ratio_vs_mlip": ratios(per_round),
                "summary": {},
            }
            for label in workers:
                total = sum(x["total_s"] for x in raw[label])
                model = sum(x["model_s"] for x in raw[label])
                nsteps = sum(x["steps"] for x in raw[label])
                skin = setup[label].get("neighbor_skin")
                builds = [x.get("neighbour_list_builds") for x in raw[label]]
                entry["summary"][label] = {
                    "ms_per_step": 1e3 * float(np.median(per_round[label])),
                    "model_ms_per_step": 1e3 * model / nsteps,
                    "outside_model_ms_per_step": 1e3 * (total - model) / nsteps,
                    "outside_share_percent": 100.0 * (total - model) / total,
                    "model_calls_per_step": sum(x["model_calls"] for x in raw[label]) / nsteps,
                    "neighbour_list_builds_per_step": (sum(builds) / nsteps) if None not in builds else None,
                    "notes": f"neighbour-list skin {skin} Å" if skin else "fresh neighbour list every step",
                }
            results.append(entry)
            log(
                f"md {system}: "
                + ", ".join(
                    f"{c} {v['ms_per_step']:.3g} ms/step ({v['outside_share_percent']:.0f}% outside)"
                    for c, v in entry["summary"].items()
                )
            )
        finally:
            for w in workers.values():
                w.close()
    return {
        "benchmark": "md",
        "integrator": "ASE VelocityVerlet, 0.5 fs, Maxwell-Boltzmann 300 K (seeded)",
        "systems_built": "cluster: 11 randomly oriented ethanols on a 4.5 Å grid (99 atoms, no cell); "
        "box: rattled cubic diamond 5×5×5 (1000 atoms, periodic)",
        "models": sources,
        "versions": {c: i["versions"] for c, i in info.items()},
        "systems": results,
    }


# ----------------------------------------------------------------------------- 4. scaling


def _available_gib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    return 8.0


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**34)}


def bench_scaling(args) -> dict:
    log_dir = os.path.join(args.work_dir, "logs", "scaling")
    limit = args.mem_limit_gib or 0.6 * _available_gib()
    points = []
    sources = {}
    largest = {}
    stopped = {}
    series = list(args.codes)
    if "mlip" in series and not args.no_malloc_series:
        series.insert(1, "mlip_malloc")  # same code, glibc keeps large blocks (no mmap per tensor)
    for n in args.scaling_atoms:
        for c in series:
            code = "mlip" if c == "mlip_malloc" else c
            if c in stopped:
                continue
            if code != "mlip" and n > args.peer_max_atoms:
                stopped[c] = f"not run above {args.peer_max_atoms} atoms (--peer-max-atoms; time, memory)"
                continue
            prev = [p for p in points if p["code"] == c and "error" not in p]
            if prev:
                last = prev[-1]
                growth = (last["peak_mib"] or 0.0) * (n / last["n_atoms"] - 1.0)
                predicted = ((last["process_peak_mib"] or 0.0) + growth) / 1024
                if predicted > limit:
                    stopped[c] = f"{n} atoms predicted to need {predicted:.1f} GiB > limit {limit:.1f} GiB"
                    log(f"scaling {c}: stop ({stopped[c]})")
                    continue
            path, sources[code] = model_for(code, "carbon", args)
            log(f"scaling {c} n≈{n}")
            w = Worker(code, python_for(code, args), args.threads, log_dir, MALLOC_ENV if c != code else None)
            try:
                w.call("load", model_path=path, device=args.device, dtype=args.scaling_dtype)
                res = w.call("scaling_point", n_atoms=n, repeats=2)
                res["code"] = c
                res["best_s"] = min(res["model_s"])
                res["us_per_atom"] = 1e6 * res["best_s"] / res["n_atoms"]
                peaks = [x for x in res["model_peak_mib"] if x is not None]
                res["peak_mib"] = max(peaks) if peaks else None
                res["kib_per_atom"] = 1024 * res["peak_mib"] / res["n_atoms"] if res["peak_mib"] else None
                points.append(res)
                largest[c] = res["n_atoms"]
                log(f"  {res['n_atoms']} atoms: {res['best_s']:.3g} s, peak {res['peak_mib']} MiB")
            except RuntimeError as err:
                points.append({"code": c, "n_atoms": n, "error": str(err)[-2000:]})
                stopped[c] = f"failed at {n} atoms (out of memory?)"
                log(f"  FAILED at {n}: {str(err)[-300:]}")
            finally:
                w.close()
    return {
        "benchmark": "scaling",
        "structure": "rattled cubic diamond supercells (8 k³ atoms), energy + forces, one structure",
        "malloc_series_env": MALLOC_ENV,
        "dtype": args.scaling_dtype,
        "memory_limit_gib": limit,
        "models": sources,
        "points": points,
        "largest_run": largest,
        "stopped": stopped,
    }


# ----------------------------------------------------------------------------- 5. training throughput


def bench_training(args) -> dict:
    runs = []
    per_round: dict[str, list[float]] = {c: [] for c in args.codes}
    for r in range(args.train_rounds):
        for c in rotate(args.codes, r):
            out = os.path.join(args.work_dir, "training", f"{c}_round{r}")
            log(f"training throughput: {c} round {r + 1} ({args.train_budget_min} min)")
            res = train_run(c, "ethanol", args.train_budget_min, out, args, no_test=True)
            keep = {
                k: res[k]
                for k in ("epochs", "optimizer_steps", "train_phase_s", "train_structures_per_s", "wall_s")
            }
            runs.append({"code": c, "round": r, **keep})
            per_round[c].append(res["train_structures_per_s"])
            log(f"  {res['train_structures_per_s']:.1f} structures/s")
    # ratio mlip / peer of structures per second (> 1: mlip faster)
    rat = {}
    for c, vals in per_round.items():
        if c == "mlip" or "mlip" not in per_round:
            continue
        r = [m / v for m, v in zip(per_round["mlip"], vals)]
        rat[c] = {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r)), "per_round": r}
    return {
        "benchmark": "training",
        "task": "ethanol (benchmark-1 split, 500 training structures), batch size 8, float32",
        "budget_min_per_run": args.train_budget_min,
        "runs": runs,
        "structures_per_s": {c: float(np.median(v)) for c, v in per_round.items()},
        "ratio_mlip_over_peer": rat,
    }


# ----------------------------------------------------------------------------- main


BENCHES = {
    "inference": bench_inference,
    "md": bench_md,
    "scaling": bench_scaling,
    "training": bench_training,
}


def run_one(name: str, args) -> None:
    from report import write_markdown

    start = time.perf_counter()
    load_before = list(os.getloadavg())
    result = BENCHES[name](args)
    result["loadavg_before_after"] = [load_before, list(os.getloadavg())]
    result["date"] = datetime.date.today().isoformat()
    result["elapsed_s"] = time.perf_counter() - start
    result["machine"] = machine_info(args.device)
    result["command"] = " ".join(["python", os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("func",)}
    os.makedirs(args.results, exist_ok=True)
    write_json(os.path.join(args.results, f"{name}.json"), result)
    write_markdown(name, result, os.path.join(args.results, f"{name}.md"))
    log(f"{name}: done in {result['elapsed_s'] / 60:.1f} min → {args.results}/{name}.json, .md")


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()  # a terminated run takes its training process with it
    from data import ACAC_TRAIN, TASKS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=["curves", "pareto", *BENCHES, "all", "report"])
    p.add_argument(
        "--size", choices=list(SIZES), default="quick", help="default sizes (quick ≲ 40 min on 2 cores)"
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (all codes)")
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads for every code")
    p.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON, help="Python of the peers' venv")
    p.add_argument(
        "--codes",
        default=None,
        help="comma-separated subset (curves/pareto: mlip,mace,metatrain,pet; else without pet)",
    )
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results"))
    p.add_argument("--work-dir", default="/tmp/mlip-bench", help="models, logs, data splits")
    p.add_argument("--benchmarks-md", default=os.path.join(REPO, "BENCHMARKS.md"))
    p.add_argument("--seed", type=int, default=0, help="training seed of benchmarks 2–5's short runs")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the data splits (all benchmarks)")
    p.add_argument(
        "--smoke", type=int, default=None, help="N: every data file cut to N structures (tool tests)"
    )
    g = p.add_argument_group("1. learning curves / 6. Pareto")
    g.add_argument(
        "--budget-min",
        default=None,
        help="training budget in minutes: 60, or per task 60,carbon=30 (curves 60, pareto 30 by default)",
    )
    g.add_argument(
        "--tasks",
        default="ethanol,acac,carbon,tensors,water",
        help="curves: tasks (also dipoles: energy, forces and dipole of the tensors' structures)",
    )
    g.add_argument("--task", dest="pareto_task", default="ethanol", help="pareto: the task (energy + forces)")
    g.add_argument("--seeds", default="0,1,2", help="training seeds, one run each (the split stays the same)")
    g.add_argument("--marks", default="1,2,3,5,7,10,15,20,30,45,60", help="snapshot marks, training minutes")
    g.add_argument(
        "--sizes",
        default=None,
        help="model sizes per code, e.g. mlip=medium,mace=default (pareto: mlip=small+medium+large,...)",
    )
    g.add_argument(
        "--mlip-weights",
        default="mace",
        choices=["mace", "config"],
        help="mlip's loss weights: equivalent to MACE's recipe (default) or the base config's",
    )
    g.add_argument(
        "--mlip-override", action="append", default=[], metavar="KEY=VALUE", help="extra mlip config override"
    )
    g.add_argument(
        "--mlip-variant",
        default=None,
        metavar="NAME",
        help="label of a non-default mlip set-up (--mlip-weights config, --mlip-override): its runs are "
        "named and tabulated as SIZE+NAME, e.g. medium+w10",
    )
    g.add_argument(
        "--mace-weights",
        default="recipe",
        choices=["recipe", "mlip"],
        help="MACE's loss weights: its recipe (default) or mlip's accurate.yaml weighting (ethanol, acac)",
    )
    g.add_argument(
        "--mace-variant",
        default=None,
        metavar="NAME",
        help="label of a non-default MACE set-up (--mace-weights mlip): runs and rows named SIZE+NAME",
    )
    g.add_argument("--pareto-batch", type=int, default=32, help="pareto timing: molecules per batch")
    g.add_argument("--pareto-atoms", type=int, default=512, help="pareto timing (carbon): diamond cell atoms")
    g.add_argument("--n-train", type=int, default=950, help="ethanol training structures")
    g.add_argument("--n-valid", type=int, default=50, help="ethanol validation structures")
    g.add_argument(
        "--acac-train",
        type=int,
        default=ACAC_TRAIN,
        help=f"acetylacetone: keep the first N of the {ACAC_TRAIN} training structures "
        "(same validation and test sets)",
    )
    g.add_argument(
        "--acac-add",
        default="",
        metavar="I,J,...",
        help="acetylacetone: also train on these of the other training structures (positions "
        "--acac-train..399, e.g. from mlip select: an active-learning arm)",
    )
    g = p.add_argument_group("2. inference")
    g.add_argument("--dtypes", default="float32", help="float32 and/or float64, comma-separated")
    g.add_argument("--molecule-batches", default=None, help="ethanol batch sizes, e.g. 1,32")
    g.add_argument("--periodic-atoms", default=None, help="diamond sizes, e.g. 64,512,4096")
    g.add_argument("--large", action="store_true", help="add a 10 648-atom cell (2) and 10⁵ atoms (4)")
    g.add_argument("--peer-max-atoms", type=int, default=None, help="largest cell for peers in 2 and 4")
    g.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case")
    g.add_argument("--round-seconds", type=float, default=None, help="target time per code and round")
    g = p.add_argument_group("3. MD")
    g.add_argument("--md-dtype", default="float32")
    g.add_argument("--md-rounds", type=int, default=None)
    g.add_argument("--md-round-seconds", type=float, default=None)
    g = p.add_argument_group("4. scaling")
    g.add_argument("--scaling-atoms", default=None, help="sizes, e.g. 64,1000,8000")
    g.add_argument("--scaling-dtype", default="float32")
    g.add_argument(
        "--mem-limit-gib",
        type=float,
        default=None,
        help="skip sizes predicted above (default 60%% of available)",
    )
    g.add_argument(
        "--no-malloc-series", action="store_true", help="skip the extra mlip series with a tuned glibc malloc"
    )
    g = p.add_argument_group("5. training throughput")
    g.add_argument("--train-rounds", type=int, default=None)
    g.add_argument("--train-budget-min", type=float, default=None)
    args = p.parse_args(argv)

    size = SIZES[args.size]
    campaign = args.benchmark in ("curves", "pareto")
    args.codes = args.codes or ("mlip,mace,metatrain,pet" if campaign else "mlip,mace,metatrain")
    args.codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    if not 1 <= args.acac_train <= ACAC_TRAIN:
        p.error(
            f"--acac-train {args.acac_train}: acetylacetone has {ACAC_TRAIN} training structures "
            f"(1..{ACAC_TRAIN})"
        )
    args.acac_add = [int(i) for i in args.acac_add.split(",") if i.strip()]
    bad = [i for i in args.acac_add if not args.acac_train <= i < ACAC_TRAIN]
    if bad or len(set(args.acac_add)) != len(args.acac_add):
        p.error(
            f"--acac-add: distinct positions in {args.acac_train}..{ACAC_TRAIN - 1} (got {bad or 'repeats'})"
        )
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    args.seeds = ints(args.seeds)
    args.marks = sorted(float(x) for x in args.marks.split(",") if x.strip())
    args.budget_spec = args.budget_min or ("30" if args.benchmark == "pareto" else "60")
    args.command = " ".join(["python", os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    args.molecule_batches = ints(args.molecule_batches) if args.molecule_batches else size["molecule_batches"]
    args.periodic_atoms = ints(args.periodic_atoms) if args.periodic_atoms else list(size["periodic_atoms"])
    args.scaling_atoms = ints(args.scaling_atoms) if args.scaling_atoms else list(size["scaling_atoms"])
    if args.large:
        args.periodic_atoms = sorted(set(args.periodic_atoms) | {10648})
        args.scaling_atoms = sorted(set(args.scaling_atoms) | {46656, 97336})
    args.peer_max_atoms = args.peer_max_atoms or size["peer_scaling_max_atoms"]
    for key in (
        "rounds",
        "round_seconds",
        "md_rounds",
        "md_round_seconds",
        "train_rounds",
        "train_budget_min",
    ):
        if getattr(args, key) is None:
            setattr(args, key, size[key])
    args.results = os.path.abspath(args.results)
    args.work_dir = os.path.abspath(args.work_dir)
    if any(c != "mlip" for c in args.codes) and args.benchmark != "report":
        if not os.path.exists(args.peers_python):
            p.error(
                f"--peers-python {args.peers_python} not found (see docs/benchmarks.md), or use --codes mlip"
            )
    unknown = set(args.codes) - set(SCRIPTS)
    if unknown:
        p.error(f"unknown codes {sorted(unknown)}; known: {sorted(SCRIPTS)}")

    if args.benchmark == "report":
        from report import write_benchmarks_md

        write_benchmarks_md(args.results, args.benchmarks_md)
        log(f"wrote {args.benchmarks_md}")
        return 0
    if campaign:
        import curves

        prepare_splits(args)
        os.makedirs(os.path.join(args.results, "curves"), exist_ok=True)
        if args.benchmark == "curves":
            curves.run_curves(args)
        else:
            curves.run_pareto(args)
        return 0
    names = list(BENCHES) if args.benchmark == "all" else [args.benchmark]
    for name in names:
        run_one(name, args)
    if args.benchmark == "all":
        from report import write_benchmarks_md

        write_benchmarks_md(args.results, args.benchmarks_md)
        log(f"wrote {args.benchmarks_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
