"""How much of a test error is seed-to-seed variance? Each run's error next to its committee's.

    python scripts/bench/committee_errors.py --task tensors \
        --results benchmarks/results/tensor_arms_2min_amd --work-dir /tmp/mlip-bench-tarm \
        --runs tensors__mlip-medium+rs8lr1eum0__2min__s0,tensors__mlip-medium+rs8lr1eum0__2min__s1

For the final snapshot of each run (``<results>/curves/<run>.json`` or ``<results>/<run>.json`` →
its prediction file, kept in the run's work directory, as ood_diagnosis.py reads them) on one test
set: the test RMSE of every target for each run, their mean, and the RMSE of the committee (the
per-structure average of the runs' predictions). Runs that differ only in their seed make errors
that are partly independent; the committee averages that part away, so ``1 − committee / mean
single run`` is the share of the error that is seed-to-seed variance (what a committee, or a fit
that varies less between seeds, would remove). Reads only stored files; trains nothing.

For force targets it also asks whether the committee's spread flags its errors, as a user would use
it (``MLIPCommitteeCalculator``'s ``forces_std``, ``mlip predict --committee``): per structure, the
spread per force component ``sqrt(mean over atoms, components and members of (F_k − F̄)²)`` (the RMS
of ``forces_std`` / √3, on the scale of a force RMSE) against the committee's force RMSE, as a rank
correlation (Spearman) and as the share of the 10 % worst-predicted structures that are among the
10 % with the largest spread (0.1 by chance, 1 if the spread ranks the errors exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "benchmarks", "results")
sys.path.insert(0, HERE)

from common import final_snapshot, load_predictions  # noqa: E402
from metrics import errors  # noqa: E402

from data import TARGETS  # noqa: E402


def committee(predictions: list[list[dict]]) -> list[dict]:
    """Per-structure, per-target mean of several runs' predictions (same structures, same order)."""
    if len({len(p) for p in predictions}) != 1:
        raise ValueError("the runs predicted different numbers of test structures")
    return [
        {name: np.mean([run[i][name] for run in predictions], axis=0) for name in predictions[0][i]}
        for i in range(len(predictions[0]))
    ]


def committee_report(predictions: list[list[dict]], refs: list[dict], targets: list[str]) -> dict:
    """{target: {"runs": [RMSE per run], "mean_run": …, "committee": …, "share_removed": …}}."""
    per_run = [errors(p, refs, targets) for p in predictions]
    together = errors(committee(predictions), refs, targets)
    out = {}
    for name, e in together.items():
        runs = [r[name]["rmse"] for r in per_run]
        mean = float(np.mean(runs))
        out[name] = {
            "unit": e["unit"],
            "runs": runs,
            "mean_run": mean,
            "committee": e["rmse"],
            "share_removed": 1.0 - e["rmse"] / mean,
        }
    return out


def spread_signal(predictions: list[list[dict]], refs: list[dict], top: float = 0.1) -> dict:
    """How well the committee's per-structure force spread ranks its per-structure force error.

    Returns ``spearman`` (rank correlation), ``top_overlap`` (share of the ``top`` fraction of
    structures with the largest error that are also in the ``top`` fraction by spread) and
    ``rms_spread`` / ``rms_error`` (meV/Å, per force component) over the structures.
    """
    spread, error = [], []
    for i, ref in enumerate(refs):
        forces = np.stack([run[i]["forces"] for run in predictions])  # [K, N, 3] eV/Å
        mean = forces.mean(axis=0)
        spread.append(np.sqrt(((forces - mean) ** 2).mean()))
        error.append(np.sqrt(((mean - ref["forces"]) ** 2).mean()))
    spread, error = np.array(spread), np.array(error)
    ranks = [np.argsort(np.argsort(x)) for x in (spread, error)]
    n_top = max(1, round(top * len(refs)))
    worst = set(np.argsort(-error)[:n_top].tolist())
    flagged = set(np.argsort(-spread)[:n_top].tolist())
    return {
        "spearman": float(np.corrcoef(ranks[0], ranks[1])[0, 1]),
        "top_fraction": top,
        "top_overlap": len(worst & flagged) / n_top,
        "rms_spread": float(np.sqrt(np.mean(spread**2)) * 1e3),
        "rms_error": float(np.sqrt(np.mean(error**2)) * 1e3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=list(TARGETS))
    p.add_argument("--test", default="test", help="test set name (e.g. test_600K for acac)")
    p.add_argument("--runs", required=True, help="comma-separated run names (<results>/[curves/]*.json)")
    p.add_argument("--results", default=RESULTS, help="folder with curves/<run>.json")
    p.add_argument("--work-dir", default="/tmp/mlip-bench", help="where the task's split was written")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if len(runs) < 2:
        p.error("a committee needs at least two runs")
    with open(os.path.join(args.work_dir, "data", "splits.json")) as handle:
        split = json.load(handle)["tasks"][args.task]
    refs = load_predictions(split["tests"][args.test]["refs"])
    predictions = [load_predictions(final_snapshot(r, args.results)["files"][args.test]) for r in runs]
    report = committee_report(predictions, refs, TARGETS[args.task])
    for name, r in report.items():
        runs_text = " / ".join(f"{x:.3g}" for x in r["runs"])
        print(
            f"{name:22s} runs {runs_text} (mean {r['mean_run']:.3g}) → committee {r['committee']:.3g} "
            f"{r['unit']}: {100 * r['share_removed']:.0f} % removed"
        )
    signal = spread_signal(predictions, refs) if "forces" in report else None
    if signal:
        print(
            f"force spread as an error signal: Spearman {signal['spearman']:.2f}; of the 10 % worst "
            f"structures {100 * signal['top_overlap']:.0f} % are in the 10 % with the largest spread; "
            f"RMS spread {signal['rms_spread']:.3g} against RMS error {signal['rms_error']:.3g} meV/Å"
        )
    if args.json:
        with open(args.json, "w") as handle:
            record = {"task": args.task, "test": args.test, "runs": runs, "targets": report}
            record["force_spread_signal"] = signal
            json.dump(record, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
