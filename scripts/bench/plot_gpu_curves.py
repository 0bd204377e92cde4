"""Plot the GPU learning curves of section 7 (``gpu.sh`` step ``curves``): forces RMSE against training
minutes, one panel per test set, one line per (arm, seed); an arm is a code with its size and variant,
e.g. ``mlip medium+w10rs8`` (the result JSON's ``code`` and ``size``). Other JSON files in the folder
(e.g. ``ood_diagnosis_600K.json``) are skipped.

    python scripts/bench/plot_gpu_curves.py benchmarks/results/gpu/acac_curves_h200 \
        -o benchmarks/plots/gpu_curves_acac.png
"""

from __future__ import annotations

import argparse
import glob
import json
import os

CODE_NAMES = {"mlip": "mlip", "mace": "MACE"}
COLORS = {"mlip": ["tab:blue", "tab:cyan", "tab:purple", "tab:green"], "mace": ["tab:red", "tab:orange"]}
TESTS = {"test": "held-out 300 K frames", "test_600K": "600 K set (out of distribution)"}


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder with the runs' result JSON files")
    p.add_argument("-o", "--output", required=True, help="PNG file")
    args = p.parse_args(argv)
    runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(args.folder, "*.json")))]
    runs = [run for run in runs if "snapshots" in run and "code" in run]
    arms = sorted({(run["code"], run["size"]) for run in runs})
    colors = {arm: COLORS[arm[0]][[a for a in arms if a[0] == arm[0]].index(arm)] for arm in arms}
    fig, axes = plt.subplots(1, len(TESTS), figsize=(11, 4.2), sharex=True)
    styles = {0: "-", 1: "--", 2: ":"}
    for ax, (test, title) in zip(axes, TESTS.items()):
        for run in sorted(runs, key=lambda r: (r["code"], r["size"], r["seed"])):
            label, color = f"{CODE_NAMES[run['code']]} {run['size']}", colors[(run["code"], run["size"])]
            x = [s["train_s"] / 60 for s in run["snapshots"]]
            y = [s["errors"][test]["forces"]["rmse"] for s in run["snapshots"]]
            ax.plot(x, y, styles.get(run["seed"], "-"), color=color, marker="o", ms=4,
                    label=f"{label}, seed {run['seed']}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training time on the GPU (min)")
        ax.set_ylabel("forces RMSE (meV/Å)")
        ax.set_title(f"acac, {title}", fontsize=10)
        ax.set_xticks([1, 2, 3, 4, 5, 6])
        ax.set_yticks([20, 30, 40, 60, 100])
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Side by side on one NVIDIA H200 (BENCHMARKS.md section 7)", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
