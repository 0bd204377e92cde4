"""A/B of mlip's two neighbour-sum paths: padded per-atom matrix products vs per-edge scatter.

    python scripts/bench/backbone_ab.py [--threads 2] [--rounds 5] [--results benchmarks/results]

``mlip.model.backbone`` sums the neighbour densities on a padded ``[N, K, ·]`` layout with one
batched matrix product per l (:class:`~mlip.model.backbone.PaddedEdges`) and falls back to
forming the ``[E, (lmax+1)², C]`` messages and scattering them with ``index_add`` (the algorithm of
earlier versions) where padding would waste too much. This script times both paths on the same
model and inputs (the scatter path forced by making ``PaddedEdges.build`` return None), interleaved,
for inference (energy + forces) and a training step (forces loss, double backward), checks that
they agree, and measures the peak memory of one call in a fresh process per path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import diamond, ethanol_frames, machine_info, peak_memory, set_threads, write_json  # noqa: E402


def _model(species, seed=0):
    import torch

    from mlip.model.potential import MLIPModel

    torch.manual_seed(seed)
    # the architecture of configs/example.yaml (benchmark 1)
    return MLIPModel(
        species,
        cutoff=5.0,
        backbone=dict(
            channels=32, num_layers=2, lmax=2, num_radial=8, radial_hidden=32, avg_num_neighbours=20.0
        ),
        readout_hidden=32,
    )


def _graph(frames, dtype):
    from torch_geometric.data import Batch

    from mlip.data.graph import atoms_to_graph

    return Batch.from_data_list([atoms_to_graph(a, 5.0, dtype=dtype) for a in frames])


def _cases():
    eth = os.path.join(REPO, "data/ethanol/test.xyz")
    return [
        ("1 ethanol", [1, 6, 8], lambda: ethanol_frames(eth, 1)),
        ("32 ethanol", [1, 6, 8], lambda: ethanol_frames(eth, 32)),
        ("diamond 64", [6], lambda: [diamond(64)]),
        ("diamond 512", [6], lambda: [diamond(512)]),
        ("diamond 4096", [6], lambda: [diamond(4096)]),
    ]


class scatter_path:
    """Context manager forcing the per-edge scatter path."""

    def __enter__(self):
        import mlip.model.backbone as bb

        self.bb = bb
        self.orig = bb.PaddedEdges.build
        bb.PaddedEdges.build = staticmethod(lambda *a, **k: None)

    def __exit__(self, *exc):
        self.bb.PaddedEdges.build = self.orig


def memory_child(case: str, path: str) -> None:
    import torch

    name, species, frames = next(c for c in _cases() if c[0] == case)
    model = _model(species)
    for p in model.parameters():
        p.requires_grad_(False)
    graph = _graph(frames(), torch.float32)
    ctx = scatter_path() if path == "scatter" else None
    if ctx:
        ctx.__enter__()
    with peak_memory("cpu") as mem:
        model(graph, compute_forces=True)
    print(json.dumps({"peak_mib": mem["peak_mib"]}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results"))
    p.add_argument("--memory-child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    set_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    import numpy as np
    import torch

    start = time.perf_counter()
    rows = []
    for name, species, frames in _cases():
        model = _model(species)
        for mode in ("inference", "training") if "4096" not in name else ("inference",):
            if mode == "training" and "512" in name:
                continue
            graph = _graph(frames() if mode == "inference" else frames(), torch.float32)
            for prm in model.parameters():
                prm.requires_grad_(mode == "training")

            def call(model=model, graph=graph, mode=mode):
                out = model(graph, compute_forces=True, training=mode == "training")
                if mode == "training":
                    loss = (out["forces"] ** 2).mean() + (out["energy"] ** 2).mean()
                    loss.backward()
                return out

            with torch.enable_grad():
                ref = call()["forces"].detach()
                with scatter_path():
                    other = call()["forces"].detach()
            agree = float((ref - other).abs().max() / ref.abs().max())
            n = max(1, min(50, int(1.0 / max(1e-4, _time(call)))))
            times = {"padded": [], "scatter": []}
            for r in range(args.rounds):
                for path in ("padded", "scatter") if r % 2 == 0 else ("scatter", "padded"):
                    if path == "scatter":
                        with scatter_path():
                            times[path].append(_median_time(call, n))
                    else:
                        times[path].append(_median_time(call, n))
            ratio = [s / q for s, q in zip(times["scatter"], times["padded"])]
            row = {
                "case": name,
                "mode": mode,
                "n_atoms": int(graph.num_nodes),
                "n_edges": int(graph.edge_index.shape[1]),
                "padded_ms": 1e3 * float(np.median(times["padded"])),
                "scatter_ms": 1e3 * float(np.median(times["scatter"])),
                "speedup_median": float(np.median(ratio)),
                "speedup_min": float(min(ratio)),
                "speedup_max": float(max(ratio)),
                "max_rel_force_difference": agree,
                "per_round_s": times,
            }
            if mode == "inference" and "diamond" in name:
                for path in ("padded", "scatter"):
                    out = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--threads",
                            str(args.threads),
                            "--memory-child",
                            name,
                            path,
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    row[f"{path}_peak_mib"] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
            rows.append(row)
            print(
                f"{name:14s} {mode:9s} padded {row['padded_ms']:9.1f} ms  scatter {row['scatter_ms']:9.1f} ms"
                f"  ×{row['speedup_median']:.2f}  (forces agree to {agree:.1e})",
                flush=True,
            )
    result = {
        "benchmark": "backbone_ab",
        "date": datetime.date.today().isoformat(),
        "machine": machine_info("cpu"),
        "model": "configs/example.yaml architecture (32 channels, 2 layers, lmax 2, cutoff 5 Å), random init",
        "dtype": "float32",
        "command": " ".join(["python", os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "elapsed_s": time.perf_counter() - start,
        "rows": rows,
    }
    os.makedirs(args.results, exist_ok=True)
    write_json(os.path.join(args.results, "backbone_ab.json"), result)
    lines = [
        "# mlip backbone: padded neighbour sum vs per-edge scatter",
        "",
        f"{result['model']}, float32, {args.threads} threads; median of {args.rounds} interleaved rounds; "
        "speed-up = t(scatter) / t(padded) per round, median [min–max]; peak memory of one inference call "
        "(fresh process per path).",
        "",
        "| case | mode | atoms (edges) | padded ms | scatter ms | speed-up | peak MiB padded / scatter |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['padded_peak_mib']:.0f} / {r['scatter_peak_mib']:.0f}" if r.get("padded_peak_mib") else "–"
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['n_atoms']} ({r['n_edges']}) | {r['padded_ms']:.3g} | "
            f"{r['scatter_ms']:.3g} | {r['speedup_median']:.2f}× "
            f"[{r['speedup_min']:.2f}–{r['speedup_max']:.2f}] | {mem} |"
        )
    lines += ["", f"Command: `{result['command']}` ({result['date']})", ""]
    with open(os.path.join(args.results, "backbone_ab.md"), "w") as handle:
        handle.write("\n".join(lines))
    return 0


def _time(call) -> float:
    call()
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def _median_time(call, n: int) -> float:
    import numpy as np

    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return float(np.median(out))


if __name__ == "__main__":
    sys.exit(main())
