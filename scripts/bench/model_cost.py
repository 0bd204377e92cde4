"""Inference cost of several trained models side by side, for A/B arms (µs/atom).

    python scripts/bench/model_cost.py --data data/acac/train_600K.xyz \
        --model base=/tmp/mlip-bench/runs/acac__mlip-medium+w10__10min__s0/run/model.pt \
        --model rs8=/tmp/mlip-bench/runs/acac__mlip-medium+w10rs8__10min__s0/run/model.pt

``--mace NAME=PATH`` adds a MACE model (run by ``--peers-python``) to the same interleaved rounds, and
``--committee NAME=A+B+C`` reports a committee of already named models: its time per round is the
sum of its members' times in that round (a committee calls each member once), so a committee and a
single MACE model are compared in one run:

    python scripts/bench/model_cost.py --data data/acac/train_600K.xyz \
        --model s0=RUN0/model.pt --model s1=RUN1/model.pt --model s2=RUN2/model.pt \
        --mace mace=MACE_RUN/mace_best.model --committee c3=s0+s1+s2

``--source NAME=DIR`` runs that model with the mlip of another checkout (e.g. ``git worktree add
/tmp/old REV``), so the same model file can be timed under two commits in one interleaved run:

    python scripts/bench/model_cost.py --data data/acac/train_600K.xyz \
        --model old=RUN/model.pt --source old=/tmp/old --model new=RUN/model.pt

Energy + forces (autograd) of one prepared batch of ``--batch`` structures from ``--data``, float32,
``--threads`` threads, each model in its own worker process (the same serve-mode worker as the
Pareto timing of ``run.py pareto``). Rounds are interleaved (the order rotates) and the reported
figure is the median over rounds of each round's median; the ratio to the first model is taken per
round first, so the machine's drift cancels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import DEFAULT_PEERS_PYTHON, Worker, interleaved, ratios  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=PATH of an mlip model file")
    p.add_argument("--mace", action="append", default=[], help="NAME=PATH of a MACE model file")
    p.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON, help="Python that runs MACE")
    p.add_argument(
        "--committee", action="append", default=[], help="NAME=A+B+...: a committee of named models"
    )
    p.add_argument(
        "--source", action="append", default=[], help="NAME=DIR: run model NAME with the mlip of checkout DIR"
    )
    p.add_argument("--data", required=True, help="structures to evaluate (extxyz)")
    p.add_argument("--batch", type=int, default=32, help="structures per call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-seconds", type=float, default=1.0, help="time per model per round")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model)
    mace = dict(spec.split("=", 1) for spec in args.mace)
    sources = dict(spec.split("=", 1) for spec in args.source)
    committees = {name: members.split("+") for name, members in (c.split("=", 1) for c in args.committee)}
    unknown = sorted(set(sources) - set(models))
    if unknown:
        p.error(f"--source names no --model: {', '.join(unknown)}")
    clash = sorted(set(models) & set(mace) | (set(committees) & (set(models) | set(mace))))
    if clash:
        p.error(f"a name is given twice: {', '.join(clash)}")
    for name, members in committees.items():
        missing = sorted(set(members) - set(models) - set(mace))
        if missing:
            p.error(f"--committee {name} names no model: {', '.join(missing)}")
    paths = {**models, **mace}
    workers, atoms = {}, {}
    try:
        for name, path in paths.items():
            if name in mace:
                workers[name] = Worker("mace", args.peers_python, args.threads, "/tmp/mlip-model-cost-logs")
            else:
                workers[name] = Worker(
                    "mlip", sys.executable, args.threads, "/tmp/mlip-model-cost-logs", repo=sources.get(name)
                )
            workers[name].call("load", model_path=path, device="cpu", dtype="float32")
            atoms[name] = workers[name].call("setup", kind="molecules", n=args.batch, data_path=args.data)[
                "n_atoms"
            ]
        per_round = interleaved(workers, "run", args.rounds, args.round_seconds, mode="model")["per_round_s"]
    finally:
        for w in workers.values():
            w.close()
    for name, members in committees.items():
        if len({atoms[m] for m in members}) != 1:
            p.error(f"--committee {name}: its members were timed on different atom counts")
        per_round[name] = committee_per_round(per_round, members)
        atoms[name] = atoms[members[0]]
    codes = {**{name: "mlip" for name in models}, **{name: "mace" for name in mace}}
    for name, members in committees.items():
        codes[name] = "+".join(sorted({codes[m] for m in members}))  # e.g. "mace" for a MACE committee
    first = next(iter(models))
    relative = ratios(per_round, ref=first)
    out = {}
    for k, times in per_round.items():
        ratio = relative.get(k, {"median": 1.0, "min": 1.0, "max": 1.0})
        out[k] = {
            "code": codes[k],
            "model_path": paths.get(k),
            "committee": committees.get(k),
            "mlip_source": os.path.abspath(sources[k]) if k in sources else None,
            "n_atoms": atoms[k],
            "us_per_atom": 1e6 * float(np.median(times)) / atoms[k],
            "ratio_to_first": ratio["median"],
            "ratio_range": [ratio["min"], ratio["max"]],
        }
        print(
            f"{k}: {out[k]['us_per_atom']:.1f} µs/atom, ×{ratio['median']:.3f} of {first} "
            f"(per round {ratio['min']:.3f}–{ratio['max']:.3f})"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"command": " ".join(sys.argv), "threads": args.threads, "models": out}, handle, indent=1
            )
    return 0


def committee_per_round(per_round: dict[str, list[float]], members: list[str]) -> list[float]:
    """A committee's seconds per call in each round: the sum of its members' times in that round
    (every member is called once per committee call, one after the other)."""
    return [float(sum(times)) for times in zip(*(per_round[m] for m in members), strict=True)]


if __name__ == "__main__":
    raise SystemExit(main())
