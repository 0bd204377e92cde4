"""Markdown tables of the benchmark JSONs, and assembly of BENCHMARKS.md.

``write_benchmarks_md`` regenerates the tables of BENCHMARKS.md from ``benchmarks/results`` (and
the figures under ``benchmarks/plots``) and keeps, from the existing file, (a) hand-written notes
between ``<!-- notes:NAME -->`` and ``<!-- /notes:NAME -->`` markers inside each benchmark section
(b) a hand-written summary between ``<!-- notes:summary -->`` markers in the header (above the
first section), and (c) every ``## `` section that is not one of the benchmark sections (e.g.
another issue's "## Data pipeline (issue 5)"), except the retired ones in ``RETIRED``.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np
from common import read_json

from data import TASKS

LABELS = {
    "mlip": "mlip",
    "mlip_skin": "mlip, neighbour-list skin",
    "mlip_malloc": "mlip, tuned malloc",
    "mace": "MACE",
    "metatrain": "metatrain SOAP-BPNN",
    "pet": "metatrain PET",
}
SECTIONS = {
    "curves": "## 1. Accuracy: learning curves at equal wall-clock time",
    "inference": "## 2. Inference throughput",
    "md": "## 3. MD step cost",
    "scaling": "## 4. Scaling",
    "training": "## 5. Training throughput",
    "pareto": "## 6. Accuracy versus inference cost (Pareto fronts)",
}
# sections of earlier versions that are dropped when BENCHMARKS.md is rebuilt
RETIRED = {"## 1. Accuracy at equal budget"}
TARGET_NAMES = {
    "energy": "energy",
    "forces": "forces",
    "stress": "stress",
    "dipole": "dipole",
    "polarizability": "polarizability (full 3×3)",
    "polarizability_iso": "  polarizability, isotropic",
    "polarizability_aniso": "  polarizability, sym. traceless",
}


NO_GPU = "no GPU (sections 1–6; the GPU figures are in section 7)"


def _g(x: float | None, digits: int = 3) -> str:
    """3 significant digits, no exponent for ordinary magnitudes (12 300, 45.6, 0.0123)."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** (digits - 1):
        return f"{round(x, digits - 1 - len(str(int(abs(x))))):,.0f}".replace(",", " ")
    if abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _ratio(r: dict | None) -> str:
    if not r:
        return "–"
    return f"{r['median']:.2g}× [{r['min']:.2g}–{r['max']:.2g}]"


def _codes(result: dict) -> list[str]:
    codes = result.get("settings", {}).get("codes") or ["mlip", "mace", "metatrain"]
    return list(codes)


# ----------------------------------------------------------------------------- per benchmark


def md_inference(res: dict) -> str:
    codes = _codes(res)
    peers = [c for c in codes if c != "mlip"]
    lines = [
        "Energy + forces (autograd) per call. *model*: the model call on a prepared batch/graph (neighbour "
        "list done beforehand); *e2e*: ASE structures in → numpy energies and forces out (neighbour list, "
        "batching, transfer and model). Throughput from the median over interleaved rounds; the ratio is "
        "t(peer) / t(mlip) per round, median [min–max] (> 1: mlip faster).",
        "",
    ]
    by_dtype: dict[str, list] = {}
    for case in res["cases"]:
        by_dtype.setdefault(case["dtype"], []).append(case)
    for dtype, cases in by_dtype.items():
        lines.append(f"**{dtype}**, device {res['machine']['device']}")
        lines.append("")
        head = "| system | mode | atoms (edges, mlip) | " + " | ".join(
            f"{LABELS[c]} structures/s · atoms/s" for c in codes
        )
        head += " | " + " | ".join(f"{LABELS[c]} / mlip time" for c in peers) + " |"
        lines.append(head)
        lines.append("|---|---|---|" + "---|" * (len(codes) + len(peers)))
        for case in cases:
            name = (
                f"{case['n']} ethanol"
                if case["kind"] == "molecules"
                else f"diamond {case['setup']['mlip']['n_atoms']} atoms"
            )
            s = case["setup"]["mlip"]
            cells = []
            for c in codes:
                t = case["throughput"].get(c)
                cells.append(f"{_g(t['structures_per_s'])} · {_g(t['atoms_per_s'])}" if t else "not run")
            rcells = [_ratio(case["ratio_vs_mlip"].get(c)) if c in case["throughput"] else "–" for c in peers]
            lines.append(
                f"| {name} | {case['mode']} | {s['n_atoms']} ({s['n_edges']}) | "
                + " | ".join(cells + rcells)
                + " |"
            )
        lines.append("")
    models = ", ".join(f"{k}: {v}" for k, v in res.get("models", {}).items())
    lines.append(f"Models: {models}.")
    return "\n".join(lines)


def md_md(res: dict) -> str:
    lines = [
        f"{res['integrator']}; timings per step, median over interleaved rounds for ms/step, totals over all "
        "rounds for the split. *model* = time inside the model call (forward + autograd forces; for "
        "metatrain "
        "the TorchScript forward plus its `backward`), *outside* = everything else in the step (neighbour "
        "list, conversions, ASE integrator, Python).",
        "",
        "| system | code | atoms | ms/step | model ms/step | outside ms/step | outside share "
        "| time / mlip time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sysres in res["systems"]:
        for c, s in sysres["summary"].items():
            note = f" ({s['notes']})" if s.get("notes") else ""
            ratio = _ratio(sysres["ratio_vs_mlip"].get(c)) if c != "mlip" else "1"
            lines.append(
                f"| {sysres['system']} ({sysres['dtype']}) | {LABELS.get(c, c)}{note} "
                f"| {sysres['n_atoms'][c]} | {_g(s['ms_per_step'])} | {_g(s['model_ms_per_step'])} "
                f"| {_g(s['outside_model_ms_per_step'])} | "
                f"{s['outside_share_percent']:.0f}% | {ratio} |"
            )
    lines.append("")
    return "\n".join(lines)


def md_scaling(res: dict) -> str:
    order = ["mlip", "mlip_malloc", "mace", "metatrain"]
    codes = [c for c in order if any(p["code"] == c for p in res["points"])]
    lines = [
        f"{res['structure']}, {res['dtype']}, each size in a fresh process; time = best of 2 calls after "
        "a warm-up call (two for metatrain's TorchScript model, whose first calls profile and optimise "
        "the graph); memory = the largest peak extra resident memory of a model call (warm-up included) "
        "over the process's memory before it (CPU: kernel peak RSS, reset before each call).",
        "",
        "| atoms | edges | "
        + " | ".join(f"{LABELS[c]} s · µs/atom · peak MiB · KiB/atom" for c in codes)
        + " |",
        "|---|---|" + "---|" * len(codes),
    ]
    sizes = sorted({p["n_atoms"] for p in res["points"]})
    for n in sizes:
        edges = next(
            (p.get("n_edges") for p in res["points"] if p["n_atoms"] == n and p.get("n_edges")), None
        )
        cells = []
        for c in codes:
            p = next((q for q in res["points"] if q["code"] == c and q["n_atoms"] == n), None)
            if p is None:
                cells.append("–")
            elif "error" in p:
                cells.append("failed (see JSON)")
            else:
                cells.append(
                    f"{_g(p['best_s'])} · {_g(p['us_per_atom'])} · {_g(p['peak_mib'])} "
                    f"· {_g(p['kib_per_atom'])}"
                )
        lines.append(f"| {n} | {edges or '–'} | " + " | ".join(cells) + " |")
    lines.append("")
    for c in codes:
        stop = res["stopped"].get(c, "all requested sizes ran")
        lines.append(f"- {LABELS[c]}: largest run {res['largest_run'].get(c, '–')} atoms; {stop}.")
    if "malloc_series_env" in res:
        env = " ".join(f"{k}={v}" for k, v in res["malloc_series_env"].items())
        lines.append(
            f'- "tuned malloc": the same mlip run with `{env}` (glibc then serves large tensors from its '
            "heap instead of a fresh mmap per allocation, avoiding page faults on every large temporary; "
            "applies to any "
            "PyTorch code on CPU, not an mlip change)."
        )
    lines.append(f"- Memory limit for the size prediction: {res['memory_limit_gib']:.1f} GiB.")
    return "\n".join(lines)


def md_training(res: dict) -> str:
    codes = _codes(res)
    lines = [
        f"{res['task']}; {len({r['round'] for r in res['runs']})} interleaved rounds of "
        f"{res['budget_min_per_run']} min per code; structures/s = structures in the optimizer steps / time "
        "of the training phase of the epochs (validation excluded; data loading inside the loop included: "
        "metatrain computes neighbour lists in its collate function, mlip and MACE precompute them).",
        "",
        "| code | structures/s (median) | per round | steps per run | mlip / code |",
        "|---|---|---|---|---|",
    ]
    for c in codes:
        runs = [r for r in res["runs"] if r["code"] == c]
        per = ", ".join(f"{r['train_structures_per_s']:.3g}" for r in runs)
        steps = ", ".join(str(r["optimizer_steps"]) for r in runs)
        ratio = _ratio(res["ratio_mlip_over_peer"].get(c)) if c != "mlip" else "1"
        lines.append(f"| {LABELS.get(c, c)} | {res['structures_per_s'][c]:.3g} | {per} | {steps} | {ratio} |")
    lines.append("")
    return "\n".join(lines)


WRITERS = {
    "inference": md_inference,
    "md": md_md,
    "scaling": md_scaling,
    "training": md_training,
}


def write_markdown(name: str, result: dict, path: str) -> None:
    text = (
        f"# {SECTIONS[name][3:]}\n\n{WRITERS[name](result)}\n\n"
        f"Command: `{result['command']}` ({result['date']}, {result['elapsed_s'] / 60:.1f} min)\n"
    )
    with open(path, "w") as handle:
        handle.write(text)


# ----------------------------------------------------------------------------- BENCHMARKS.md


def _split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    parts = re.split(r"(?m)^(## .*)$", text)
    head = parts[0]
    sections = [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts), 2)]
    return head, sections


def _notes(body: str, name: str) -> str | None:
    m = re.search(rf"<!-- notes:{name} -->.*?<!-- /notes:{name} -->", body, flags=re.S)
    return m.group(0) if m else None


def _versions(results: dict) -> list[str]:
    seen: dict[str, str] = {}
    for res in results.values():
        for block in (res.get("versions") or {}).values():
            for k, v in block.items():
                if v:
                    seen.setdefault(k, v)
        for run in res.get("runs", []):
            for k, v in (run.get("versions") or {}).items():
                if v:
                    seen.setdefault(k, v)
    return [f"{k} {v}" for k, v in sorted(seen.items())]


def _cpus_by_section(results: dict, campaign: dict) -> str:
    """The CPU model(s) the figures come from and the sections each holds, e.g. "AMD EPYC (sections
    2, 3, 4, 5), Intel Xeon (sections 1, 6)": runs of different sittings may land on different hosts."""
    cpus: dict[str, set[str]] = {k: set(v) for k, v in campaign.get("cpu_sections", {}).items()}
    for name, result in results.items():
        cpus.setdefault(result["machine"].get("cpu_model", "?"), set()).add(SECTIONS[name][3])
    if len(cpus) == 1:
        return next(iter(cpus))
    return ", ".join(f"{cpu} (sections {', '.join(sorted(where))})" for cpu, where in sorted(cpus.items()))


def write_benchmarks_md(results_dir: str, path: str) -> None:
    results = {}
    for name in SECTIONS:
        p = os.path.join(results_dir, f"{name}.json")
        if os.path.exists(p):
            results[name] = read_json(p)
    campaign = campaign_sections(results_dir, os.path.dirname(os.path.abspath(path)))
    old = open(path).read() if os.path.exists(path) else ""
    old_head, old_sections = _split_sections(old)
    old_by_title = dict(old_sections)
    machine = next(iter(results.values()))["machine"] if results else campaign.get("machine", {})
    dates = sorted({r["date"] for r in results.values()} | set(campaign.get("dates", [])))
    out = [
        "# Benchmarks: mlip vs MACE vs metatrain (SOAP-BPNN, PET)",
        "",
        f"Date: {', '.join(dates) or '–'}. Machine: {_cpus_by_section(results, campaign)}, "
        f"{machine.get('affinity', '?')} cores available to the run, shared with other jobs (timings are "
        "noisy: repeats are interleaved across "
        f"codes and ratios are taken within a round), {machine.get('mem_total_gib', '?')} GiB RAM; "
        f"{'GPUs: ' + ', '.join(machine['gpus']) if machine.get('gpus') else NO_GPU}. "
        f"torch threads = {machine.get('torch_threads', '?')} for every code.",
        "",
        "Versions: " + ", ".join(_versions({**results, **campaign.get("version_sources", {})})) + ".",
        "",
        "How to run (peers' virtual environment: see docs/benchmarks.md):",
        "",
        "```bash",
        "python scripts/bench/run.py curves --seeds 0,1,2 --budget-min 60   # 1: learning curves (long)",
        "python scripts/bench/run.py pareto --task ethanol --budget-min 30  # 6: sizes × codes, timing",
        "python scripts/bench/run.py all --peers-python /work/peers/bin/python   # 2–5, quick sizes",
        "python scripts/bench/run.py report                                      # rebuild this file",
        "```",
        "",
        "Raw figures: `benchmarks/results/<benchmark>.json` (learning curves: one JSON per run in "
        "`benchmarks/results/curves/`); tables: `benchmarks/results/<benchmark>.md`; figures: "
        "`benchmarks/plots/`. Settings of every code and their sources: docs/benchmarks.md.",
        "",
    ]
    summary = _notes(old_head, "summary")
    if summary:
        out += [summary, ""]
    for name, title in SECTIONS.items():
        out.append(title)
        out.append("")
        old_body = old_by_title.get(title, "")
        notes = _notes(old_body, name)
        if name in campaign:
            out.append(campaign[name])
        elif name in results:
            res = results[name]
            out.append(WRITERS[name](res))
            out.append("")
            out.append(f"Command: `{res['command']}` ({res['date']}, took {res['elapsed_s'] / 60:.1f} min).")
        else:
            out.append("Not run yet.")
        out.append("")
        out.append(notes or f"<!-- notes:{name} -->\n<!-- /notes:{name} -->")
        out.append("")
    for title, body in old_sections:
        if title not in SECTIONS.values() and title not in RETIRED:
            out.append(title)
            out.append("")
            out.append(body.strip("\n"))  # one blank line after the title, however often rebuilt
            out.append("")
    with open(path, "w") as handle:
        handle.write("\n".join(out).rstrip("\n") + "\n")


# ----------------------------------------------------------------------------- 1. and 6. (campaigns)

CURVE_TARGETS = (
    "energy",
    "forces",
    "stress",
    "dipole",
    "polarizability",
    "polarizability_iso",
    "polarizability_aniso",
)


def _spread(st: dict) -> str:
    """ "mean [min–max]" over seeds (just the value for one seed)."""
    if st.get("mean") is None:
        return "–"
    if st["n"] == 1:
        return _g(st["mean"])
    return f"{_g(st['mean'])} [{_g(st['min'])}–{_g(st['max'])}]"


def _run_label(code: str, size: str, budget: float | None = None) -> str:
    """``mlip (medium)``; with a budget (a code and size run at several budgets) ``mlip (medium, 10 min)``."""
    return f"{LABELS.get(code, code)} ({size}{'' if budget is None else f', {budget:g} min'})"


def _budget_or_none(key: tuple, keys) -> float | None:  # noqa: ANN001 - any iterable of keys
    """The budget of ``key = (code, size, budget)`` if that code and size ran at several budgets."""
    budgets = {k[2] for k in keys if k[:2] == key[:2]}
    return key[2] if len(budgets) > 1 else None


def _final_errors(runs: list[dict], task: str, test: str, target: str) -> dict:
    """(code, size) → lists of final-snapshot MAE, RMSE, mean error and offset flags over seeds."""
    out: dict = {}
    for r in runs:
        if r["task"] != task or not r["snapshots"]:
            continue
        e = r["snapshots"][-1]["errors"].get(test, {}).get(target)
        if e is None:
            continue
        d = out.setdefault(
            (r["code"], r["size"], r["budget_min"]), {"mae": [], "rmse": [], "me": [], "flag": []}
        )
        d["mae"].append(e["mae"])
        d["rmse"].append(e["rmse"])
        d["me"].append(e["mean_error"])
        d["flag"].append(bool(e.get("offset_flag")))
    return out


def md_curves(runs: list[dict], plots: dict[str, str], md_dir: str, failed: list[dict]) -> str:
    """Section 1: per task a figure, RMSE at the marks (mean [min–max] over seeds), final errors."""
    from curves import curve_table, order_key, seed_stats
    from plots import WATER_UNIT

    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "Every code trains once per seed for the task's wall-clock budget (2 CPU threads unless stated "
        "otherwise); at each mark the model it would return if stopped then — its **best-validation model "
        "so far** (mlip and MACE: EMA weights; MACE and mlip restart the best-model tracking when their "
        "stage two starts) — is evaluated on the test sets, with the training clock paused. The clock "
        "starts at the first training epoch and includes each code's own validation. A mark's snapshot is "
        "the model after the first epoch that ends past the mark; the x position of a point is the mean "
        "actual training time. Stage two (MACE's \"swa\", mlip's equivalent) starts at 75 % of the budget, "
        "metatrain's cosine learning-rate decay is stretched over the budget: curves show the states of one "
        "long run, not the best model trainable in each shorter budget. "
        f"Seeds: {', '.join(map(str, seeds))}; cells: mean [min–max] over seeds. **ME** = mean signed error "
        "(prediction − reference): ⚠ marks |ME| > 0.5 · RMSE, a constant offset that dominates the error "
        "(a set-up error, to be fixed, not a result). Settings and loss weights of every code, with sources: "
        "docs/benchmarks.md.",
        "",
    ]
    if any(r.get("smoke") for r in runs):
        lines += ["**SMOKE DATA** (tool test on a few structures): not results.", ""]
    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    for task in tasks:
        truns = [r for r in runs if r["task"] == task]
        split = truns[0]["split"]
        tests = []
        for r in truns:
            for snap in r["snapshots"]:
                for t in snap["errors"]:
                    if t not in tests:
                        tests.append(t)
        lines.append(f"### {task}")
        lines.append("")
        lines.append(f"Data: {split['source']}.")
        if task == "water":
            lines.append(
                "Units: those of the source file (undocumented upstream; see data/PROVENANCE.md), ×10⁻³."
            )
        lines.append("")
        if task in plots:
            lines += [f"![learning curves, {task}]({os.path.relpath(plots[task], md_dir)})", ""]
        for test in tests:
            marks = sorted({s["mark_min"] for r in truns for s in r["snapshots"]})
            lines.append(f"**{task}, test set `{test}`**: test RMSE at training-time marks (min)")
            lines.append("")
            lines.append(
                "| target | code (size) | "
                + " | ".join(f"{m:g}" for m in marks)
                + " | final MAE | final ME |"
            )
            lines.append("|---|---|" + "---|" * (len(marks) + 2))
            for target in CURVE_TARGETS:
                table = curve_table(truns, task, test, target)
                if not table:
                    continue
                finals = _final_errors(truns, task, test, target)
                unit = next(
                    s["errors"][test][target]["unit"]
                    for r in truns
                    for s in r["snapshots"]
                    if target in s["errors"].get(test, {})
                )
                if task == "water":  # the source's undocumented units, as the plots label them
                    unit = WATER_UNIT
                for key in sorted(table, key=order_key):
                    code, size, _ = key
                    label = _run_label(code, size, _budget_or_none(key, table))
                    cells = [_spread(table[key][m]) if m in table[key] else "–" for m in marks]
                    f = finals.get(key, {})
                    me = seed_stats(f.get("me", []))
                    rmse = seed_stats(f.get("rmse", []))
                    flag = " ⚠" if any(f.get("flag", [])) or (
                        me["mean"] is not None and abs(me["mean"]) > 0.5 * (rmse["mean"] or 0)
                    ) else ""  # fmt: skip
                    lines.append(
                        f"| {TARGET_NAMES.get(target, target).strip()} ({unit}) | {label} | "
                        + " | ".join(cells)
                        + f" | {_spread(seed_stats(f.get('mae', [])))} | {_spread(me)}{flag} |"
                    )
            lines.append("")
        lines.append(f"**{task}, runs** (mean over seeds)")
        lines.append("")
        lines.append(
            "| code (size) | budget (min) | parameters | epochs | training structures/s | stage two from |"
        )
        lines.append("|---|---|---|---|---|---|")
        groups: dict = {}
        for r in truns:
            groups.setdefault((r["code"], r["size"], r["budget_min"]), []).append(r["worker"])
        for (code, size, budget), ws in sorted(groups.items(), key=lambda kv: order_key(kv[0])):
            st2 = [w.get("stage_two", {}).get("started_s") for w in ws]
            st2 = [x for x in st2 if x is not None]
            frac = ws[0].get("stage_two", {}).get("fraction_of_budget")
            stage = (
                f"{np.mean(st2) / 60:.1f} min"
                if st2
                else (f"{frac:.0%} of budget (not reached)" if frac else "none")
            )
            lines.append(
                f"| {_run_label(code, size)} | {budget:g} | {ws[0].get('n_params') or '–':,} | "
                f"{np.mean([w['epochs'] for w in ws]):.0f} | "
                f"{np.mean([w['train_structures_per_s'] for w in ws]):.3g} | {stage} |"
            )
        lines.append("")
    if failed:
        lines.append("Failed runs (see their JSON in `benchmarks/results/curves/` and the worker log):")
        lines.append("")
        for r in failed:
            lines.append(f"- {r['task']} / {r['code']} ({r['size']}) / seed {r['seed']}")
        lines.append("")
    cmds = sorted({r["driver_command"] for r in runs})
    lines.append("Commands: " + "; ".join(f"`{c}`" for c in cmds) + ".")
    return "\n".join(lines)


def md_pareto(pareto: dict, runs: list[dict], plot: str | None, md_dir: str) -> str:
    """Section 6 for one task: error vs µs/atom per (code, size), equal-error throughput ratio."""
    from curves import equal_error_ratio, order_key, pareto_points

    task, budget = pareto["task"], pareto["budget_min"]
    points = pareto["timing"]["points"]
    lines = [
        f"**{task}**, every size trained for {budget:g} min (same budget and seeds for every code); error = "
        "final-snapshot test RMSE, mean [min–max] over seeds; cost: " + pareto["timing"]["what"] + ".",
        "",
    ]
    if plot:
        lines += [f"![Pareto front, {task}]({os.path.relpath(plot, md_dir)})", ""]
    forces = pareto_points(runs, task, budget, "forces")
    energy = pareto_points(runs, task, budget, "energy")
    lines.append("| code (size) | parameters | µs/atom | forces RMSE (meV/Å) | energy RMSE (meV/atom) |")
    lines.append("|---|---|---|---|---|")
    for key in sorted(forces, key=order_key):
        cost = points.get(f"{key[0]}/{key[1]}", {}).get("us_per_atom")
        lines.append(
            f"| {_run_label(*key)} | {forces[key].get('n_params') or '–':,} | {_g(cost)} | "
            f"{_spread(forces[key])} | {_spread(energy.get(key, {}))} |"
        )
    lines.append("")
    for target, pts in (("forces", forces), ("energy", energy)):
        mlip = [
            (v["mean"], points[f"mlip/{s}"]["us_per_atom"])
            for (c, s), v in pts.items()
            if c == "mlip" and f"mlip/{s}" in points
        ]
        mace = [
            (v["mean"], points[f"mace/{s}"]["us_per_atom"])
            for (c, s), v in pts.items()
            if c == "mace" and f"mace/{s}" in points
        ]
        if not mlip or not mace:
            continue
        lines.append(
            f"At equal test {target} RMSE, throughput mlip / MACE (MACE's Pareto front interpolated "
            "linearly in log error – log cost at mlip's error; no extrapolation):"
        )
        lines.append("")
        for row in equal_error_ratio(sorted(mlip), mace):
            if row["throughput_ratio"] is None:
                lines.append(f"- mlip at {_g(row['error'])}: outside MACE's error range (no ratio).")
            else:
                lines.append(
                    f"- mlip at {_g(row['error'])}: {_g(row['mlip_us_per_atom'])} µs/atom vs MACE "
                    f"{_g(row['mace_us_per_atom_at_equal_error'])} µs/atom "
                    f"→ **{row['throughput_ratio']:.2g}×**"
                )
        lines.append("")
    lines.append(f"Command: `{pareto['command']}` ({pareto['date']}).")
    return "\n".join(lines)


def campaign_sections(results_dir: str, md_dir: str) -> dict:
    """Markdown of sections 1 and 6 and their figures (benchmarks/plots), from the run JSONs."""
    from curves import failed_runs, load_runs

    runs = load_runs(results_dir)
    failed = failed_runs(results_dir)
    out: dict = {}
    if not runs:
        return out
    from plots import plot_curves, plot_pareto

    plot_dir = os.path.join(os.path.dirname(os.path.abspath(results_dir)), "plots")
    plots = {}
    for task in sorted({r["task"] for r in runs}):
        path = os.path.join(plot_dir, f"curves_{task}.png")
        if plot_curves(runs, task, path) is not None:
            plots[task] = path
    out["curves"] = md_curves(runs, plots, md_dir, failed)
    with open(os.path.join(results_dir, "curves.md"), "w") as handle:
        handle.write(f"# {SECTIONS['curves'][3:]}\n\n{md_curves(runs, plots, results_dir, failed)}\n")
    cpus: dict[str, set[str]] = {}  # CPU model → the sections (1, 6) whose figures ran on it
    for run in runs:
        cpus.setdefault(run["machine"].get("cpu_model", "?"), set()).add("1")
    parts = []
    for path in sorted(glob.glob(os.path.join(results_dir, "pareto_*.json"))):
        pareto = read_json(path)
        cpus.setdefault(pareto["machine"].get("cpu_model", "?"), set()).add("6")
        png = os.path.join(plot_dir, f"pareto_{pareto['task']}.png")
        plot_pareto(runs, pareto, png)
        parts.append(md_pareto(pareto, runs, png, md_dir))
    if parts:
        out["pareto"] = "\n\n".join(parts)
    out["machine"] = runs[0]["machine"]
    out["cpu_sections"] = cpus
    out["dates"] = sorted({r["date"] for r in runs})
    out["version_sources"] = {
        "curves": {"versions": {f"{r['code']}{i}": r["worker"]["versions"] for i, r in enumerate(runs)}}
    }
    return out
