"""Benchmark of the large-dataset pipeline: preprocessing rate, streamed loading vs model step,
peak memory (RSS), and the in-memory path for comparison.

    python scripts/bench_data_pipeline.py --structures 100000 --workdir /tmp/mlip-bench-data

Phases (each in its own process, so that each reports its own peak RSS):

1. ``generate``: a synthetic extxyz of N structures: rattled copies (σ = 0.05 Å) of the 1000
   ethanol molecules of ``data/ethanol/train.xyz``, with energies and forces *recomputed* by a
   small randomly initialised mlip model (``mlip.calculators.batched.predict_batches``), so the
   labels are consistent with the rattled geometries. Written in chunks (never all in memory).
2. ``preprocess``: ``mlip preprocess`` of that file (structures/s, peak RSS, store size).
3. ``verify``: opening the store with full SHA-256 verification (what ``mlip train`` does).
4. ``load``: iterating the training DataLoader over the store without a model
   (structures/s; ``num_workers`` 0 and 2).
5. ``train-store``: training steps from the store (the ``mlip train`` data path): time waiting
   for the next batch vs time of the model step (forward, forces, backward, optimiser), peak RSS.
6. ``train-memory`` (skip with ``--skip-in-memory``): the same steps after reading the extxyz
   into memory (the default path): read time, step time, peak RSS.

Prints one JSON line per phase and a Markdown summary (``--markdown FILE`` writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The architecture of configs/example.yaml.
MODEL = {
    "channels": 32,
    "num_layers": 2,
    "lmax": 2,
    "num_radial": 8,
    "radial_hidden": 32,
    "readout_hidden": 32,
}


def _config(args) -> dict:
    work = Path(args.workdir)
    return {
        "output_dir": str(work / "run"),
        "seed": 0,
        "device": "cpu",
        "dtype": "float32",
        "data": {
            "train_file": str(work / "synthetic.xyz"),
            "valid_fraction": 0.01,
            "cutoff": 5.0,
            "e0s": str(ROOT / "data" / "ethanol" / "isolated_atoms.xyz"),
            "preprocessed_dir": str(work / "store"),
        },
        "targets": {"energy": {"key": "energy", "weight": 1.0}, "forces": {"key": "forces", "weight": 10.0}},
        "model": MODEL,
        "training": {"batch_size": args.batch_size, "lr": 0.005},
        "logging": {"progress_bar": False},
    }


def _emit(record: dict) -> None:
    print("BENCH " + json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------- phases
def phase_generate(args) -> None:
    import ase.io
    import numpy as np
    import torch
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlip.calculators.batched import predict_batches
    from mlip.data.dataset import parse_e0s
    from mlip.model.potential import MLIPModel

    torch.manual_seed(0)
    e0s = parse_e0s(str(ROOT / "data" / "ethanol" / "isolated_atoms.xyz"), "bench")
    model = (
        MLIPModel(
            species=[1, 6, 8],
            cutoff=5.0,
            e0s=e0s,
            scale=0.5,
            shift=0.0,
            targets=[
                {"name": "energy", "kind": "energy", "key": "energy"},
                {"name": "forces", "kind": "forces", "key": "forces", "per_atom": True},
            ],
            backbone={"channels": 8, "num_layers": 1, "lmax": 1, "num_radial": 4, "radial_hidden": 8},
            readout_hidden=8,
        )
        .double()
        .eval()
    )
    base = ase.io.read(ROOT / "data" / "ethanol" / "train.xyz", ":")
    rng = np.random.default_rng(0)
    out = Path(args.workdir) / "synthetic.xyz"
    tmp = out.with_suffix(".xyz.part")
    start = time.perf_counter()
    label_time = 0.0
    with open(tmp, "w") as handle:
        for first in range(0, args.structures, args.chunk):
            frames = []
            for i in range(first, min(first + args.chunk, args.structures)):
                atoms = base[i % len(base)].copy()
                atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
                frames.append(atoms)
            t0 = time.perf_counter()
            for _, pred, idx in predict_batches(model, frames, batch_size=256):
                energy = pred["energy"].cpu().numpy()
                forces = pred["forces"].cpu().numpy()
                counts = [len(frames[i]) for i in idx]
                offsets = np.concatenate([[0], np.cumsum(counts)])
                for k, i in enumerate(idx):
                    frames[i].calc = SinglePointCalculator(
                        frames[i], energy=float(energy[k]), forces=forces[offsets[k] : offsets[k + 1]]
                    )
            label_time += time.perf_counter() - t0
            ase.io.write(handle, frames, format="extxyz")
    os.replace(tmp, out)
    _emit(
        {
            "phase": "generate",
            "structures": args.structures,
            "seconds": time.perf_counter() - start,
            "label_seconds": label_time,
            "file_mb": out.stat().st_size / 1e6,
        }
    )


def phase_preprocess(args) -> None:
    from mlip.cli.preprocess import run_preprocess

    start = time.perf_counter()
    manifest = run_preprocess(str(Path(args.workdir) / "config.yaml"), [], quiet=True)
    seconds = time.perf_counter() - start
    parts = manifest["parts"]
    n = sum(p["count"] for p in parts.values())
    size = sum(s["bytes"] for p in parts.values() for s in p["shards"])
    _emit(
        {
            "phase": "preprocess",
            "structures": n,
            "seconds": seconds,
            "structures_per_s": n / seconds,
            "store_mb": size / 1e6,
            "shards": sum(len(p["shards"]) for p in parts.values()),
            "statistics_seconds": manifest["timing"]["total_s"] - manifest["timing"]["write_s"],
        }
    )


def phase_verify(args) -> None:
    from mlip.data.store import PreprocessedStore

    start = time.perf_counter()
    PreprocessedStore(Path(args.workdir) / "store", verify="checksum")
    _emit({"phase": "verify", "seconds": time.perf_counter() - start})


def _loader(args, data, workers: int):
    import torch
    from torch_geometric.loader import DataLoader

    return DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=workers,
    )


def phase_load(args) -> None:
    import torch

    from mlip.training.config import load_config
    from mlip.training.trainer import prepare_data

    cfg = load_config(str(Path(args.workdir) / "config.yaml"))
    data = prepare_data(cfg, torch.float32, verify="size")
    for workers in (0, 2):
        loader = iter(_loader(args, data.train, workers))
        next(loader)  # worker start-up not counted
        start = time.perf_counter()
        n = 0
        for _ in range(args.load_batches):
            n += next(loader).num_graphs
        seconds = time.perf_counter() - start
        _emit(
            {
                "phase": "load",
                "num_workers": workers,
                "structures": n,
                "seconds": seconds,
                "structures_per_s": n / seconds,
            }
        )


def _train_steps(args, cfg, data, label: str, extra: dict) -> None:
    import torch

    from mlip.training.loss import weighted_loss
    from mlip.training.trainer import build_model

    torch.manual_seed(0)
    model = build_model(cfg, data.stats, data.specs)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.training.lr)
    specs = data.specs
    for workers in (0, 1):
        loader = iter(_loader(args, data.train, workers))
        wait = step = 0.0
        n = 0
        for k in range(args.steps + 5):
            t0 = time.perf_counter()
            batch = next(loader)
            t1 = time.perf_counter()
            pred = model(batch, compute_forces=True, training=True)
            loss, _ = weighted_loss(specs, pred, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t2 = time.perf_counter()
            if k >= 5:  # warm-up (worker start, allocator) not counted
                wait += t1 - t0
                step += t2 - t1
                n += batch.num_graphs
        _emit(
            {
                "phase": label,
                "num_workers": workers,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "data_wait_ms_per_step": 1e3 * wait / args.steps,
                "model_step_ms": 1e3 * step / args.steps,
                "data_fraction": wait / (wait + step),
                "structures_per_s": n / (wait + step),
                **extra,
            }
        )


def phase_train_store(args) -> None:
    import torch

    from mlip.training.config import load_config
    from mlip.training.trainer import prepare_data

    cfg = load_config(str(Path(args.workdir) / "config.yaml"))
    start = time.perf_counter()
    data = prepare_data(cfg, torch.float32, verify="size")
    _train_steps(
        args,
        cfg,
        data,
        "train-store",
        {"prepare_seconds": time.perf_counter() - start, "train_structures": len(data.train)},
    )


def phase_train_memory(args) -> None:
    import torch

    from mlip.training.config import load_config
    from mlip.training.trainer import prepare_data

    cfg = load_config(str(Path(args.workdir) / "config.yaml"), ["data.preprocessed_dir=null"])
    start = time.perf_counter()
    data = prepare_data(cfg, torch.float32)
    _train_steps(
        args,
        cfg,
        data,
        "train-memory",
        {"prepare_seconds": time.perf_counter() - start, "train_structures": len(data.train)},
    )


PHASES = {
    "generate": phase_generate,
    "preprocess": phase_preprocess,
    "verify": phase_verify,
    "load": phase_load,
    "train-store": phase_train_store,
    "train-memory": phase_train_memory,
}


# ---------------------------------------------------------------------------------- driver
def _run_phase(name: str, args) -> list[dict]:
    """Run one phase in a child process; its records plus its own peak RSS (os.wait4)."""
    command = [
        sys.executable,
        __file__,
        "--phase",
        name,
        "--structures",
        str(args.structures),
        "--workdir",
        args.workdir,
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--load-batches",
        str(args.load_batches),
        "--chunk",
        str(args.chunk),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed (exit {proc.returncode})")
    records = [json.loads(line[6:]) for line in output.splitlines() if line.startswith("BENCH ")]
    peak_mb = usage.ru_maxrss / 1024  # Linux: kB
    for r in records:
        r["peak_rss_mb"] = peak_mb
        r["phase_wall_s"] = time.perf_counter() - start
        print(json.dumps(r), flush=True)
    return records


def _markdown(records: list[dict], args, total: float) -> str:
    by = {}
    for r in records:
        by.setdefault(r["phase"], []).append(r)
    lines = []
    g = by.get("generate", [{}])[0]
    p = by["preprocess"][0]
    v = by["verify"][0]
    file_mb = g.get("file_mb", float("nan"))
    lines.append(
        f"Synthetic data: {args.structures} structures ({file_mb:.0f} MB extxyz), rattled (σ = 0.05 Å) "
        "copies of the 1000 molecules of `data/ethanol/train.xyz`, energies and forces recomputed by a "
        "small randomly initialised mlip model "
        f"(`predict_batches`; {g.get('label_seconds', float('nan')):.0f} s of labelling)."
    )
    lines.append("")
    lines.append("| quantity | value |")
    lines.append("| --- | --- |")
    lines.append(
        f"| preprocessing rate (`mlip preprocess`, read + validate + neighbour lists + write) | "
        f"**{p['structures_per_s']:.0f} structures/s** ({p['seconds']:.0f} s for {p['structures']}, "
        f"of which {p['statistics_seconds']:.1f} s streamed statistics) |"
    )
    lines.append(f"| preprocessing peak RSS | {p['peak_rss_mb']:.0f} MB |")
    lines.append(f"| store on disk | {p['store_mb']:.0f} MB in {p['shards']} shards (uncompressed) |")
    lines.append(f"| opening the store with SHA-256 verification | {v['seconds']:.1f} s |")
    for r in by.get("load", []):
        lines.append(
            f"| streamed loading alone, `num_workers={r['num_workers']}` | "
            f"{r['structures_per_s']:.0f} structures/s (batches of {args.batch_size}) |"
        )
    for label, name in (("train-store", "streamed from the store"), ("train-memory", "in memory (extxyz)")):
        for r in by.get(label, []):
            lines.append(
                f"| training step, {name}, `num_workers={r['num_workers']}` | data wait "
                f"{r['data_wait_ms_per_step']:.1f} ms + model step {r['model_step_ms']:.1f} ms per batch of "
                f"{args.batch_size} (loading = {100 * r['data_fraction']:.1f} % of the step) |"
            )
        if by.get(label):
            r = by[label][0]
            lines.append(
                f"| peak RSS, training {name} ({r['train_structures']} training structures) | "
                f"{r['peak_rss_mb']:.0f} MB (set-up {r['prepare_seconds']:.0f} s) |"
            )
    lines.append("")
    lines.append(f"Total benchmark time {total / 60:.1f} min.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", type=int, default=100_000)
    parser.add_argument("--workdir", default="/tmp/mlip-bench-data")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per setting")
    parser.add_argument("--load-batches", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=5000, help="structures generated/labelled at a time")
    parser.add_argument("--skip-in-memory", action="store_true", help="skip the in-memory comparison")
    parser.add_argument("--reuse", action="store_true", help="keep an existing synthetic.xyz")
    parser.add_argument("--markdown", help="also write the Markdown summary to this file")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        import torch

        torch.set_num_threads(1)  # comparable phases on a shared machine; loading workers add processes
        PHASES[args.phase](args)
        return
    import yaml

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(_config(args), sort_keys=False))
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}", flush=True)
    start = time.perf_counter()
    records = []
    phases = ["generate", "preprocess", "verify", "load", "train-store", "train-memory"]
    if args.reuse and (work / "synthetic.xyz").exists():
        phases.remove("generate")
    if args.skip_in_memory:
        phases.remove("train-memory")
    for name in phases:
        records += _run_phase(name, args)
    text = _markdown(records, args, time.perf_counter() - start)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
