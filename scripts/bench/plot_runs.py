"""A learning-curve figure from chosen run JSON files, in the style of section 1's figures.

``run.py report`` plots every run of ``benchmarks/results/curves/``; runs kept in other folders (runs
on another host, A/B arms) are plotted with this, from any set of files:

    python scripts/bench/plot_runs.py --task tensors -o benchmarks/plots/convergence_tensors_amd.png \\
        benchmarks/results/convergence_60min_amd/curves/tensors__*.json \\
        benchmarks/results/tensor_arms_2min_amd/tensors__mlip-medium+rs8lr1__*.json

Seeds of one (code, size, budget) are averaged (line: mean, band: min–max), as in section 1.
"""

from __future__ import annotations

import argparse

from common import read_json
from plots import plot_curves


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="run JSON files (curves.py's output)")
    p.add_argument("--task", required=True, help="task to plot (e.g. ethanol, tensors, dipoles)")
    p.add_argument("-o", "--output", required=True, help="PNG file")
    args = p.parse_args(argv)
    runs = []
    for path in args.files:
        run = read_json(path)
        if run.get("status", "ok") == "ok" and run.get("task") == args.task:
            runs.append(run)
    if not runs:
        raise SystemExit(f"plot_runs.py: no finished '{args.task}' runs among the {len(args.files)} files")
    if plot_curves(runs, args.task, args.output) is None:
        raise SystemExit(f"plot_runs.py: the '{args.task}' runs hold no test errors to plot")
    print(f"plot_runs.py: {len(runs)} runs → {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
