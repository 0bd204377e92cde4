"""Helpers shared by the benchmark driver and the per-code workers.

This module is imported both by mlip's Python and by the peers' virtual environment (MACE,
metatrain), so it depends only on the standard library, numpy, ASE and torch.

Workers talk to the driver over a JSON-lines protocol: the driver writes one JSON object per line
``{"cmd": name, "args": {...}}`` to the worker's stdin and reads one JSON line back
``{"ok": true, "result": ...}`` (or ``{"ok": false, "error": traceback}``). Everything the codes
print goes to stderr (stdout is redirected there at start-up), so stray prints never corrupt the
protocol.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- processes


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``pkill``, ``timeout``) raise SystemExit in this process.

    A benchmark driver or worker waits on a training process through :func:`run_child`, which ends
    the child's whole process group on any exception; by default SIGTERM ends the waiting process
    without one, and the child trains on as an orphan, sharing the CPU with whatever is timed next.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_child(cmd: list[str], grace_s: float = 10.0, **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` for a worker or training process whose own children must not outlive it.

    The child starts in a new session, i.e. its own process group. If the wait is interrupted (SIGTERM
    through :func:`exit_on_sigterm`, Ctrl-C, any exception), the whole group gets SIGTERM, then SIGKILL
    after ``grace_s`` seconds. ``subprocess.run`` would SIGKILL the child alone, so a driver → worker →
    ``mlip train`` chain left the trainer running as an orphan.
    """
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    try:
        return subprocess.CompletedProcess(cmd, proc.wait())
    except BaseException:
        _end_group(proc, grace_s)
        raise


def _end_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL to what is left of it after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader's children, if they outlived it
    except ProcessLookupError:
        pass
    proc.wait()


# ----------------------------------------------------------------------------- threads


def set_threads(n: int) -> None:
    """Same intra-op thread count for every code (call before heavy imports where possible)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (interop threads can be set only once)
        pass


# ----------------------------------------------------------------------------- versions / machine


def package_versions(names: list[str]) -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(device: str = "cpu") -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    info["device"] = device
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return info


# ----------------------------------------------------------------------------- timing and memory


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(device: str):
    """Measures the peak memory of the block: ``{"peak_mib": ..., "baseline_mib": ...}``.

    CPU: peak resident set size (VmHWM, reset at entry) minus the RSS at entry, i.e. the extra
    memory the block needed at its peak. CUDA: ``torch.cuda.max_memory_allocated`` over the block
    minus the memory allocated at entry.
    """
    result: dict[str, float | None] = {}
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        try:
            yield result
        finally:
            torch.cuda.synchronize()
            result["baseline_mib"] = base / 2**20
            result["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            result["kind"] = "cuda max_memory_allocated - allocated at entry"
    else:
        supported = reset_peak_rss()
        base = _proc_status_kib("VmRSS")
        try:
            yield result
        finally:
            peak = _proc_status_kib("VmHWM")
            result["baseline_mib"] = base / 1024 if base else None
            result["peak_mib"] = (peak - base) / 1024 if (supported and peak and base) else None
            result["process_peak_mib"] = peak / 1024 if peak else None
            result["kind"] = "CPU peak RSS (VmHWM) - RSS at entry"


def time_calls(fn: Callable[[], Any], n: int, device: str) -> list[float]:
    """Wall-clock seconds of ``n`` calls of ``fn`` (device synchronised around each)."""
    out = []
    for _ in range(n):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - start)
    return out


def timed_calls_with_memory(fn: Callable[[], Any], warmup: int, repeats: int, device: str):
    """``warmup`` + ``repeats`` calls of ``fn``, each under :func:`peak_memory`.

    Returns (seconds of the ``repeats`` timed calls, memory dicts of *all* calls): the first call's
    peak counts too, since an allocator that keeps freed memory (e.g. a tuned glibc malloc) would
    hide the peak of later calls.
    """
    times, mems = [], []
    for k in range(warmup + repeats):
        with peak_memory(device) as mem:
            synchronize(device)
            start = time.perf_counter()
            out = fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            del out
        mems.append(dict(mem))
        if k >= warmup:
            times.append(elapsed)
    return times, mems


class CallTimer:
    """Wraps a callable and accumulates the time spent inside it (device synchronised)."""

    def __init__(self, fn: Callable, device: str) -> None:
        self.fn = fn
        self.device = device
        self.total = 0.0
        self.calls = 0

    def __call__(self, *args, **kwargs):
        synchronize(self.device)
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        synchronize(self.device)
        self.total += time.perf_counter() - start
        self.calls += 1
        return out

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0

    def __getattr__(self, name: str):  # behave like the wrapped object otherwise
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)


# ----------------------------------------------------------------------------- structures


def diamond(n_atoms_target: int, a: float = 3.567, rattle: float = 0.05, seed: int = 0):
    """A rattled cubic diamond supercell with about ``n_atoms_target`` atoms (8 n³)."""
    from ase.build import bulk

    n = max(1, round((n_atoms_target / 8) ** (1 / 3)))
    atoms = bulk("C", "diamond", a=a, cubic=True).repeat((n, n, n))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def ethanol_frames(path: str, n: int, start: int = 0):
    """``n`` ethanol structures from ``path`` (cycled if the file is shorter), labels dropped."""
    import ase.io

    frames = ase.io.read(path, ":")
    out = []
    for k in range(n):
        atoms = frames[(start + k) % len(frames)].copy()
        atoms.calc = None
        atoms.info = {}
        for key in list(atoms.arrays):
            if key not in ("numbers", "positions"):
                del atoms.arrays[key]
        out.append(atoms)
    return out


def ethanol_cluster(path: str, n_molecules: int, spacing: float = 4.5, seed: int = 0):
    """A non-periodic cluster of ``n_molecules`` randomly oriented ethanols on a cubic grid."""
    from scipy.spatial.transform import Rotation

    frames = ethanol_frames(path, n_molecules)
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_molecules ** (1 / 3)))
    cluster = None
    for k, mol in enumerate(frames):
        pos = mol.positions - mol.positions.mean(axis=0)
        rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
        grid = np.array([k % side, (k // side) % side, k // (side * side)], dtype=float)
        mol.positions = pos @ rot.T + spacing * grid
        cluster = mol if cluster is None else cluster + mol
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    return cluster


# ----------------------------------------------------------------------------- JSON protocol


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj))


def serve(handler: Any) -> None:
    """Answer JSON-line commands on stdin with ``handler.<cmd>(**args)`` until ``quit``/EOF."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "quit":
            protocol.write(dumps({"ok": True, "result": None}) + "\n")
            break
        try:
            result = getattr(handler, cmd)(**msg.get("args", {}))
            reply = {"ok": True, "result": result}
        except Exception:  # report to the driver, keep serving
            reply = {"ok": False, "error": traceback.format_exc()}
        protocol.write(dumps(reply) + "\n")
        protocol.flush()


def write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(_jsonable(obj), handle, indent=1)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path) as handle:
        return json.load(handle)


class BudgetReached(Exception):
    """Raised inside a peer's training loop when its wall-clock budget is spent."""


def save_predictions(path: str, preds: list[dict[str, np.ndarray]]) -> None:
    """Per-structure predictions → ``.npz`` (keys ``<i>/<name>``)."""
    flat = {}
    for i, p in enumerate(preds):
        for name, value in p.items():
            flat[f"{i}/{name}"] = np.asarray(value, dtype=np.float64)
    np.savez_compressed(path, n=np.array(len(preds)), **flat)


def final_snapshot(run: str, results: str) -> dict:
    """The last snapshot entry of a learning-curve run (its ``mark_min``, ``files`` per test set, …),
    from the run's JSON in ``<results>/curves/`` or, in the flat folders of benchmarks/results, in
    ``<results>/``."""
    path = os.path.join(results, "curves", f"{run}.json")
    if not os.path.exists(path):
        path = os.path.join(results, f"{run}.json")
    return read_json(path)["worker"]["snapshots"][-1]


def load_predictions(path: str) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    out: list[dict[str, np.ndarray]] = [{} for _ in range(int(data["n"]))]
    for key in data.files:
        if key == "n":
            continue
        i, name = key.split("/", 1)
        out[int(i)][name] = data[key]
    return out


# ----------------------------------------------------------------------------- learning-curve snapshots


class SnapshotClock:
    """Training clock with wall-clock marks, paused while snapshots are evaluated.

    The clock starts at the first training epoch (after each code's data loading and statistics)
    and counts everything the code does from then on (training steps, its own validation,
    checkpointing) except the benchmark's snapshot evaluations, which run inside
    :meth:`paused`. Every code calls :meth:`due` at the start of each epoch, i.e. after the
    previous epoch and its validation; a mark is due once the clock has passed it, so a snapshot
    for mark *m* is the model after the first epoch that ends past *m* minutes.

    All times in seconds; ``marks_min`` and ``budget_min`` in minutes.
    """

    def __init__(self, marks_min: list[float], budget_min: float) -> None:
        self.budget_s = 60.0 * budget_min
        self.marks_s = sorted({60.0 * m for m in marks_min if m <= budget_min} | {self.budget_s})
        self.done: list[float] = []
        self.start: float | None = None
        self.paused_s = 0.0

    def begin(self) -> None:
        """Start the clock (idempotent)."""
        if self.start is None:
            self.start = time.perf_counter()

    def seconds(self) -> float:
        """Training seconds so far (0 before the first epoch)."""
        if self.start is None:
            return 0.0
        return time.perf_counter() - self.start - self.paused_s

    def due(self) -> list[float]:
        """Marks (s) passed by the clock that have no snapshot yet."""
        now = self.seconds()
        return [m for m in self.marks_s if m <= now and m not in self.done]

    def remaining(self) -> list[float]:
        """Marks without a snapshot (for the final snapshot when training ends early)."""
        return [m for m in self.marks_s if m not in self.done]

    def over_budget(self) -> bool:
        return self.start is not None and self.seconds() >= self.budget_s

    @contextmanager
    def paused(self):
        """Time inside this block does not count as training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - start


class SnapshotWriter:
    """Writes the test-set predictions of one snapshot per mark and keeps their index.

    ``predict(test_file) → list of per-structure prediction dicts`` is supplied by each code.
    Files: ``<out>/snapshots/m<minutes>/<test name>.npz``; the index (one entry per mark:
    mark, training seconds, epoch, files) becomes ``result.json["snapshots"]``.
    """

    def __init__(self, out: str, tests: dict[str, dict]) -> None:
        self.out = out
        self.tests = tests
        self.entries: list[dict] = []

    def write(self, marks_s: list[float], train_s: float, epoch: int, predict: Callable, **extra) -> None:
        """One evaluation of the current model, stored for every mark in ``marks_s``."""
        if not marks_s:
            return
        start = time.perf_counter()
        preds = {name: predict(t["file"]) for name, t in self.tests.items()}
        eval_s = time.perf_counter() - start
        for mark in marks_s:
            d = os.path.join(self.out, "snapshots", f"m{mark / 60:g}")
            os.makedirs(d, exist_ok=True)
            files = {}
            for name, p in preds.items():
                files[name] = os.path.join(d, f"{name}.npz")
                save_predictions(files[name], p)
            self.entries.append(
                {
                    "mark_min": mark / 60,
                    "train_s": train_s,
                    "epoch": epoch,
                    "snapshot_eval_s": eval_s,
                    "files": files,
                    **extra,
                }
            )


def take_due_snapshots(
    clock: SnapshotClock, writer: SnapshotWriter, epoch: int, make_predict: Callable, final=False, **kw
) -> None:
    """Snapshot for every due mark (every remaining mark if ``final``), with the clock paused.

    ``make_predict()`` prepares the model to evaluate (copy of the best weights, export, ...) and
    returns ``predict(test_file)``; both run with the clock paused.
    """
    marks = clock.remaining() if final else clock.due()
    if not marks:
        return
    train_s = clock.seconds()
    with clock.paused():
        writer.write(marks, train_s, epoch, make_predict(), **kw)
    clock.done.extend(marks)


def split_tests(split: dict) -> dict[str, dict]:
    """Test sets of a task from the splits JSON (older split files: one ``test``)."""
    return split.get("tests") or {"test": {"file": split["test"], "refs": split["refs"]}}


def e0s_of(split: dict) -> dict[int, float] | None:
    """Isolated-atom energies {Z: eV} of a task, if the data provide them (JSON keys are str)."""
    e0s = split.get("e0s")
    return {int(z): float(e) for z, e in e0s.items()} if e0s else None


def parse_marks(text: str | None, budget_min: float) -> list[float]:
    """``"1,2,5"`` → [1.0, 2.0, 5.0] (minutes); default: the budget only."""
    if not text:
        return [budget_min]
    return [float(x) for x in text.split(",") if x.strip()]


# ----------------------------------------------------------------------------- loss weights

# The loss weights of MACE's documented recipes, per task (stage one, and stage two where MACE has
# one). MACE's loss is  w_E · mean((ΔE/N)²) + w_F · mean(ΔF²) + w_V · mean((ΔW/N)²)  with
# energies per atom (eV/atom), force components (eV/Å), virials per atom (eV/atom), and for
# tensors  w_μ · mean((Δμ/N)²) + w_α · mean((Δα/N)²). mlip's loss has the same form except that
# stress (eV/Å³) replaces the per-atom virial and tensors are not divided by N; worker_mlip.py
# converts the weights so that both codes minimise the same function (see docs/benchmarks.md; under
# mlip's default loss normalisation this holds for energy, forces and stress, which share one scale,
# while each tensor block is divided by its own spread; the dipoles task turns the normalisation off).
# Sources: ethanol/acac/carbon – mace/tools/arg_parser.py defaults of mace-torch 0.3.16 (the
# README's recipe keeps them); tensors – MACE docs, guide/polarizability.rst; water – the command
# published with the data, data/water_bulk/README.md; dipoles (EnergyDipolesMACE, energy + forces +
# dipole) – the arg_parser.py defaults of mace-torch 0.3.16 (MACE's loss multiplies its dipole term
# w_μ · mean((Δμ/N)²) by a further 100: WeightedEnergyForcesDipoleLoss in mace/modules/loss.py).
MACE_RECIPE_WEIGHTS: dict[str, dict] = {
    "ethanol": {
        "stage_one": {"energy": 1.0, "forces": 100.0},
        "stage_two": {"energy": 1000.0, "forces": 100.0},
    },
    "acac": {"stage_one": {"energy": 1.0, "forces": 100.0}, "stage_two": {"energy": 1000.0, "forces": 100.0}},
    "carbon": {
        "stage_one": {"energy": 1.0, "forces": 100.0, "virials": 1.0},
        "stage_two": {"energy": 1000.0, "forces": 100.0, "virials": 10.0},
    },
    "tensors": {"stage_one": {"dipole": 1000.0, "polarizability": 2000.0}, "stage_two": None},
    "water": {"stage_one": {"dipole": 1.0, "polarizability": 1.0}, "stage_two": None},
    "dipoles": {
        "stage_one": {"energy": 1.0, "forces": 100.0, "dipole": 1.0},
        "stage_two": {"energy": 1000.0, "forces": 100.0, "dipole": 1.0},
    },
}

# The weighting mlip's configs/accurate.yaml recommends (forces 10 : energy 1, energy ×100 in stage
# two), for MACE runs that use the same weighting as mlip (``peer_mace.py train --weights mlip``;
# MACE allows any weights, so a comparison can hold them equal between codes).
MLIP_ACCURATE_WEIGHTS: dict[str, dict] = {
    "stage_one": {"energy": 1.0, "forces": 10.0},
    "stage_two": {"energy": 100.0, "forces": 10.0},
}

# Stage two (MACE's "swa") starts at this fraction of the wall-clock budget (MACE's default
# --start_swa is 75 % of --max_num_epochs; with a time budget the fraction applies to time).
STAGE_TWO_FRACTION = 0.75
