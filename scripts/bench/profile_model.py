"""Where an energy + forces call of a trained mlip model spends its time: the top ATen operations by
self CPU time (torch.profiler), to find what a speed change should target.

    python scripts/bench/profile_model.py --model RUN/model.pt --data data/acac/train_600K.xyz

One prepared batch of ``--batch`` structures from ``--data`` (the batch of ``model_cost.py``),
float32, ``--threads`` threads; prints the mean time per call and the profiler's table over
``--calls`` calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an mlip model file")
    p.add_argument("--data", required=True, help="structures to evaluate (extxyz)")
    p.add_argument("--batch", type=int, default=32, help="structures per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=5, help="profiled calls")
    p.add_argument("--rows", type=int, default=20, help="operations listed")
    args = p.parse_args()

    from torch.profiler import ProfilerActivity, profile
    from worker_mlip import Worker

    worker = Worker(args.threads)
    worker.load(args.model)
    shape = worker.setup("molecules", args.batch, args.data, warmup=3)
    start = time.perf_counter()
    for _ in range(args.calls):
        worker._model_call(worker.graph)
    per_call = (time.perf_counter() - start) / args.calls
    print(f"{shape['n_atoms']} atoms, {shape['n_edges']} edges: {1e3 * per_call:.1f} ms per call")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.calls):
            worker._model_call(worker.graph)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
