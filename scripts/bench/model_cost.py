"""Inference cost of several trained models side by side, for A/B arms (µs/atom).

    python scripts/bench/model_cost.py --data data/acac/train_600K.xyz \
        --model base=/tmp/mlip-bench/runs/acac__mlip-medium+w10__10min__s0/run/model.pt \
        --model rs8=/tmp/mlip-bench/runs/acac__mlip-medium+w10rs8__10min__s0/run/model.pt

Energy + forces (autograd) of one prepared batch of ``--batch`` structures from ``--data``, float32,
``--threads`` threads, each model in its own worker process (the same serve-mode worker as the
Pareto timing of ``run.py pareto``). Rounds are interleaved (the order rotates) and the reported
figure is the median over rounds of each round's median; the ratio to the first model is taken per
round first, so the machine's drift cancels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import Worker, rotate  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=PATH of an mlip model file")
    p.add_argument("--data", required=True, help="structures to evaluate (extxyz)")
    p.add_argument("--batch", type=int, default=32, help="structures per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-seconds", type=float, default=1.0, help="time per model per round")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model)
    workers, atoms = {}, {}
    try:
        for name, path in models.items():
            workers[name] = Worker("mlip", sys.executable, args.threads, "/tmp/mlip-model-cost-logs")
            workers[name].call("load", model_path=path, device="cpu", dtype="float32")
            atoms[name] = workers[name].call("setup", kind="molecules", n=args.batch, data_path=args.data)[
                "n_atoms"
            ]
        calls = {
            k: max(1, min(50, math.ceil(args.round_seconds / min(w.call("run", mode="model", n_calls=1)))))
            for k, w in workers.items()
        }
        per_round: dict[str, list[float]] = {k: [] for k in workers}
        for r in range(args.rounds):
            for k in rotate(list(workers), r):
                per_round[k].append(float(np.median(workers[k].call("run", mode="model", n_calls=calls[k]))))
    finally:
        for w in workers.values():
            w.close()
    first = next(iter(models))
    out = {}
    for k, times in per_round.items():
        ratios = np.array(times) / np.array(per_round[first])
        out[k] = {
            "model_path": models[k],
            "n_atoms": atoms[k],
            "us_per_atom": 1e6 * float(np.median(times)) / atoms[k],
            "ratio_to_first": float(np.median(ratios)),
            "ratio_range": [float(ratios.min()), float(ratios.max())],
        }
        print(
            f"{k}: {out[k]['us_per_atom']:.1f} µs/atom, ×{out[k]['ratio_to_first']:.3f} of {first} "
            f"(per round {ratios.min():.3f}–{ratios.max():.3f})"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"command": " ".join(sys.argv), "threads": args.threads, "models": out}, handle, indent=1
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
