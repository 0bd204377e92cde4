"""Cost of one mlip training step (forward, forces, loss, backward, clipping, optimiser, EMA) by
batch size, on the CPU or a GPU: milliseconds per step, structures per second and the number of
tensor operations dispatched per step (what makes small-molecule training launch-bound on a GPU).

    python scripts/bench/train_step_cost.py --config configs/accurate.yaml --device cuda \
        --batch-sizes 8,16,32 -o data.train_file=data/acac/train_300K.xyz ...

Every ``-o`` is passed to the config as in ``mlip train``. Prints one line per batch size and, with
``--json``, writes the figures there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))


def count_dispatched_ops(fn) -> int:
    """Number of ATen operations ``fn()`` dispatches (forward, autograd and optimiser alike)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.calls += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.calls


def main(argv: list[str] | None = None) -> int:
    import torch

    from mlip.training.config import load_config
    from mlip.training.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/accurate.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="8,16,32")
    p.add_argument("--steps", type=int, default=20, help="timed steps per batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            overrides = [*args.override, f"output_dir={out}/run", f"device={args.device}"]
            overrides.append(f"training.batch_size={batch_size}")
            trainer = Trainer(load_config(args.config, overrides))
            trainer._setup()
            trainer.clock_start = time.perf_counter()  # as Trainer.run does (the time-cosine lr reads it)
            names = {s.name for s in trainer.specs}
            loader = trainer._train_loader(0)
            batches = [b.to(trainer.device) for b, _ in zip(loader, range(args.steps))]
            if len(batches) < args.steps:
                batches = (batches * args.steps)[: args.steps]

            def step(batch, trainer=trainer, names=names) -> None:  # what Trainer._train_epoch does
                _, loss = trainer._predict_with_loss(batch, names)
                trainer._apply_gradients(loss)

            def sync(device=trainer.device) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            for batch in batches[:5]:
                step(batch)
            sync()
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            sync()
            ms = 1000 * (time.perf_counter() - start) / len(batches)
            ops = count_dispatched_ops(lambda b=batches[0]: step(b))
            row = {
                "batch_size": batch_size,
                "ms_per_step": round(ms, 2),
                "structures_per_s": round(1000 * batch_size / ms, 1),
                "ops_per_step": ops,
                "atoms_per_batch": int(batches[0].num_nodes),
            }
            rows.append(row)
            print(
                f"batch {batch_size}: {ms:.1f} ms/step, {row['structures_per_s']} structures/s, "
                f"{ops} ops/step ({row['atoms_per_batch']} atoms)",
                flush=True,
            )
    device = torch.device(args.device)
    arguments = sys.argv[1:] if argv is None else argv
    result = {
        "command": "python scripts/bench/train_step_cost.py " + " ".join(arguments),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": args.threads,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
