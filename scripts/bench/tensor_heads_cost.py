"""Extra cost of the tensor heads: energy + forces + every tensor target against energy + forces alone,
same model, same batch (issue 10: "tensor heads at ≤ 10 % extra cost").

    python scripts/bench/tensor_heads_cost.py --model runs/tensors/model.pt --threads 2

Without ``--model`` a model of ``configs/tensors.yaml`` (energy, forces, dipole, polarizability) is
trained for one epoch into a temporary folder: the cost does not depend on the weights' values.
Systems: one ethanol, 32 ethanols in one batch (B3LYP test frames), and a water box
(the first frame of data/water_bulk, periodic). For each system both variants run in interleaved rounds
(the order alternates), each round the median of several calls; the figure is the median over rounds
of the per-round ratio (ratios within a round: these machines are shared and noisy). The "energy +
forces" variant is the same model with its tensor heads switched off (``model.tensor_heads = None``),
which is what a model without tensor targets of the same backbone costs. Where the model's heads have a
fused evaluation (mlip.model.tensor_heads, "Fused evaluation"), the block-by-block evaluation it
replaced is timed in the same rounds as a third variant ("blocks"), so before and after come from one
sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)


def train_default_model(out: str) -> str:
    cmd = [sys.executable, "-m", "mlip", "train", os.path.join(REPO, "configs", "tensors.yaml")]
    cmd += ["-o", f"output_dir={out}", "-o", "training.max_epochs=1", "-o", "logging.progress_bar=false"]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(out, "model.pt")


def systems(model, dtype):
    import ase.io
    from torch_geometric.data import Batch

    from mlip.data.graph import atoms_to_graph

    ethanol = ase.io.read(os.path.join(REPO, "data", "tensors", "ethanol_b3lyp_test.xyz"), ":32")
    water = ase.io.read(os.path.join(REPO, "data", "water_bulk", "water_bulk.xyz"), 0)

    def batch(frames):
        return Batch.from_data_list([atoms_to_graph(a, model.cutoff, dtype=dtype) for a in frames])

    return {
        "1 ethanol (9 atoms)": batch(ethanol[:1]),
        "32 ethanols (288 atoms)": batch(ethanol),
        f"water box ({len(water)} atoms, periodic)": batch([water]),
    }


def time_calls(model, data, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(data, compute_forces=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extra_cost(per_round: dict[str, list[float]], key: str) -> tuple[float, list[float]]:
    """Median and range over rounds of ``key``'s time over energy + forces alone, minus one."""
    ratios = [f / b for f, b in zip(per_round[key], per_round["energy+forces"])]
    return statistics.median(ratios) - 1.0, [min(ratios) - 1.0, max(ratios) - 1.0]


def main(argv: list[str] | None = None) -> int:
    import torch

    from mlip.model.potential import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="an mlip model with tensor targets (default: see above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=1.0, help="per variant and round")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    path = args.model or train_default_model(tempfile.mkdtemp(prefix="mlip-tensor-cost-"))
    model = load_model(path, dtype=dtype).eval()
    heads = model.tensor_heads
    if heads is None:
        print(f"{path} has no tensor targets", file=sys.stderr)
        return 1
    names = [s.name for s in model.target_specs if s.is_tensor]
    results = {}
    for name, data in systems(model, dtype).items():
        full_name = "energy+forces+" + "+".join(names)
        variants = {"energy+forces": (None, True), full_name: (heads, True)}
        if getattr(heads, "_plan", None) is not None:
            variants["blocks"] = (heads, False)
        for module, fused in variants.values():  # warm-up (first calls allocate)
            model.tensor_heads = module
            heads.fused = fused
            time_calls(model, data, 3)
        model.tensor_heads, heads.fused = heads, True
        calls = max(3, int(args.seconds / max(time_calls(model, data, 3), 1e-4)))
        per_round = {k: [] for k in variants}
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for key in order:
                model.tensor_heads, heads.fused = variants[key]
                per_round[key].append(time_calls(model, data, calls))
        model.tensor_heads, heads.fused = heads, True

        cost, spread = extra_cost(per_round, full_name)
        results[name] = {
            "ms_energy_forces": 1e3 * statistics.median(per_round["energy+forces"]),
            "ms_with_tensors": 1e3 * statistics.median(per_round[full_name]),
            "extra_cost": cost,
            "extra_cost_range": spread,
        }
        r = results[name]
        line = (
            f"{name}: energy+forces {r['ms_energy_forces']:.2f} ms, with {'+'.join(names)} "
            f"{r['ms_with_tensors']:.2f} ms: +{100 * cost:.0f} % "
            f"[{100 * spread[0]:.0f}–{100 * spread[1]:.0f} %]"
        )
        if "blocks" in variants:
            cost_b, spread_b = extra_cost(per_round, "blocks")
            r["ms_with_tensors_blocks"] = 1e3 * statistics.median(per_round["blocks"])
            r["extra_cost_blocks"], r["extra_cost_blocks_range"] = cost_b, spread_b
            line += (
                f"; block by block {r['ms_with_tensors_blocks']:.2f} ms: +{100 * cost_b:.0f} % "
                f"[{100 * spread_b[0]:.0f}–{100 * spread_b[1]:.0f} %]"
            )
        print(line, flush=True)
    if args.json:
        meta = {"model": path, "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__}
        with open(args.json, "w") as handle:
            json.dump({"settings": meta, "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
