"""PNG figures of the learning-curve and Pareto campaigns (matplotlib, written by ``run.py report``).

* ``curves_<task>.png``: test RMSE versus training time (log–log), one panel per test set and
  target, one colour per code (sizes and variants of a code: its colour in other line styles and
  markers): the line is the mean over seeds, the band the min–max.
* ``pareto_<task>.png``: final test RMSE (forces, energy) versus inference cost (µs/atom for
  energy + forces), one point per model size (mean over seeds, bars min–max), lines join the
  sizes of a code.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from curves import LABELS, curve_table, order_key, pareto_points  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

COLOURS = {"mlip": "tab:blue", "mace": "tab:red", "metatrain": "tab:green", "pet": "tab:purple"}
MAIN_TARGETS = ("energy", "forces", "stress", "dipole", "polarizability")
UNITS = {
    "energy": "meV/atom",
    "forces": "meV/Å",
    "stress": "meV/Å³",
    "dipole": "me·Å",
    "polarizability": "mÅ³",
}
WATER_UNIT = "10⁻³ × source unit"  # water_bulk.xyz does not state its units
WATER_UNITS = {"dipole": WATER_UNIT, "polarizability": WATER_UNIT}


def _log_axes(ax) -> None:
    """Log x and y with plain labels at 1, 2, 3, 5, 7 × 10ⁿ, fewer where an axis spans more than a
    decade (1, 2, 5) or two (1, 3), so that labels do not run into each other; no minor labels."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        decades = math.log10(hi / lo)
        subs = (
            (1.0, 2.0, 3.0, 5.0, 7.0) if decades <= 1.2 else (1.0, 2.0, 5.0) if decades <= 2.0 else (1.0, 3.0)
        )
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(plain)
        # a narrow range may hold a single major tick: label the minor ones too
        axis.set_minor_formatter(plain if hi / lo < 3 else NullFormatter())


def _panels(runs: list[dict], task: str) -> list[tuple[str, str]]:
    """(test set, target) pairs present in the runs of a task."""
    seen: list[tuple[str, str]] = []
    for r in runs:
        if r["task"] != task:
            continue
        for snap in r["snapshots"]:
            for test, errs in snap["errors"].items():
                for target in MAIN_TARGETS:
                    if target in errs and (test, target) not in seen:
                        seen.append((test, target))
    order = {t: i for i, t in enumerate(MAIN_TARGETS)}
    return sorted(seen, key=lambda p: (p[0] != "test", p[0], order[p[1]]))


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<")
LINES = ("-", "--", ":", "-.")  # with 9 markers: 36 distinct (marker, line) pairs per code


def _style(code: str, entry: tuple[str, float], entries_per_code: dict[str, set]) -> tuple[str, object]:
    """(marker, line style) of a (size/variant, budget) within its code (the code's first: ``o-``)."""
    names = sorted(entries_per_code[code], key=lambda e: (order_key((code, e[0])), e[1]))
    i = names.index(entry)
    return MARKERS[i % len(MARKERS)], LINES[i % len(LINES)]


def _label(code: str, size: str, budget: float, several_sizes: bool, several_budgets: bool) -> str:
    label = f"{LABELS.get(code, code)} ({size})" if several_sizes else LABELS.get(code, code)
    return label + (f", {budget:g}-min run" if several_budgets else "")


def plot_curves(runs: list[dict], task: str, path: str):
    """Learning curves of one task; returns the figure (also saved to ``path``)."""
    panels = _panels(runs, task)
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    for ax, (test, target) in zip(axes.flat, panels):
        table = curve_table(runs, task, test, target)
        sizes_per_code: dict[str, set] = {}
        entries_per_code: dict[str, set] = {}
        for code, size, budget in table:
            sizes_per_code.setdefault(code, set()).add(size)
            entries_per_code.setdefault(code, set()).add((size, budget))
        for (code, size, budget), marks in sorted(table.items(), key=lambda kv: order_key(kv[0])):
            xs = [m["train_min"] for m in marks.values()]
            mean = [m["mean"] for m in marks.values()]
            lo = [m["min"] for m in marks.values()]
            hi = [m["max"] for m in marks.values()]
            n = max(m["n"] for m in marks.values())
            colour = COLOURS.get(code)
            several_budgets = len({b for _, b in entries_per_code[code]}) > 1
            label = _label(code, size, budget, len(sizes_per_code[code]) > 1, several_budgets)
            label += f", {n} seed{'s' * (n > 1)}"
            marker, line = _style(code, (size, budget), entries_per_code)
            ax.plot(xs, mean, marker=marker, linestyle=line, color=colour, label=label, ms=3.5)
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, lw=0)
        unit = WATER_UNITS.get(target) if task == "water" else UNITS[target]
        where = {"test": "test"}.get(test, test.replace("test_", "test, "))
        ax.set_title(f"{task} ({where}): {target}")
        _log_axes(ax)
        ax.set_xlabel("training time (min)")
        ax.set_ylabel(f"RMSE ({unit})")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    spare = list(axes.flat)[len(panels) :]
    for ax in spare:
        ax.set_visible(False)
    if spare:  # one legend for every panel, in the first unused panel's place
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(handles, labels, fontsize=7, loc="center")
    else:
        axes.flat[0].legend(handles, labels, fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def plot_pareto(runs: list[dict], pareto: dict, path: str):
    """Test error versus inference cost of every (code, size); returns the figure."""
    task, budget = pareto["task"], pareto["budget_min"]
    cost = {k: v["us_per_atom"] for k, v in pareto["timing"]["points"].items()}
    targets = [t for t in ("forces", "energy", "stress") if pareto_points(runs, task, budget, t)]
    fig, axes = plt.subplots(1, len(targets), figsize=(5.0 * len(targets), 4.0), squeeze=False)
    for ax, target in zip(axes.flat, targets):
        pts = pareto_points(runs, task, budget, target)
        codes = sorted({c for c, _ in pts}, key=lambda c: order_key((c, "")))
        for code in codes:
            items = sorted(
                ((cost[f"{c}/{s}"], v, s) for (c, s), v in pts.items() if c == code and f"{c}/{s}" in cost),
                key=lambda t: t[0],
            )
            if not items:
                continue
            xs = [x for x, _, _ in items]
            ys = [v["mean"] for _, v, _ in items]
            err = [[v["mean"] - v["min"] for _, v, _ in items], [v["max"] - v["mean"] for _, v, _ in items]]
            ax.errorbar(
                xs, ys, yerr=err, fmt="o-", color=COLOURS.get(code), label=LABELS.get(code, code), capsize=3
            )
            for x, v, s in items:
                ax.annotate(s, (x, v["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        _log_axes(ax)
        ax.set_xlabel("inference cost, energy + forces (µs/atom)")
        ax.set_ylabel(f"test RMSE ({UNITS[target]})")
        ax.set_title(f"{task}: {target} after {budget:g} min of training")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
