"""Count the tensor operations the tensor heads add to one call (issue 10): ``aten::`` calls recorded
by the torch profiler for energy + forces + every tensor target, minus energy + forces alone, for the
fused and the block-by-block evaluation (mlip.model.tensor_heads, "Fused evaluation").

    python scripts/bench/tensor_heads_ops.py --model runs/tensors/model.pt

System: one ethanol (the first B3LYP test frame, as in tensor_heads_cost.py), float32.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))


def aten_calls(model, data) -> collections.Counter:
    from torch.profiler import ProfilerActivity, profile

    model(data, compute_forces=True)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(data, compute_forces=True)
    return collections.Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})


def main(argv: list[str] | None = None) -> int:
    import torch
    from tensor_heads_cost import systems

    from mlip.model.potential import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an mlip model with tensor targets")
    args = p.parse_args(argv)
    model = load_model(args.model, dtype=torch.float32).eval()
    heads = model.tensor_heads
    data = next(iter(systems(model, torch.float32).values()))  # one ethanol
    model.tensor_heads = None
    base = aten_calls(model, data)
    model.tensor_heads = heads
    for fused in (True, False):
        heads.fused = fused
        extra = aten_calls(model, data) - base
        print(
            f"{'fused' if fused else 'block by block'}: {sum(extra.values())} aten calls added by the heads"
        )
    heads.fused = True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
