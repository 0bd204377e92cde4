"""Markdown tables of the benchmark JSONs, and assembly of BENCHMARKS.md.

``write_benchmarks_md`` regenerates the tables of BENCHMARKS.md from ``benchmarks/results`` and
keeps, from the existing file, (a) hand-written notes between ``<!-- notes:NAME -->`` and
``<!-- /notes:NAME -->`` markers inside each benchmark section and (b) every ``## `` section that is
not one of the five benchmark sections (e.g. another issue's "## Data pipeline (issue 5)").
"""

from __future__ import annotations

import os
import re

from common import read_json

LABELS = {
    "mlip": "mlip",
    "mlip_skin": "mlip, neighbour-list skin",
    "mlip_malloc": "mlip, tuned malloc",
    "mace": "MACE",
    "metatrain": "metatrain SOAP-BPNN",
}
SECTIONS = {
    "accuracy": "## 1. Accuracy at equal budget",
    "inference": "## 2. Inference throughput",
    "md": "## 3. MD step cost",
    "scaling": "## 4. Scaling",
    "training": "## 5. Training throughput",
}
TARGET_NAMES = {
    "energy": "energy",
    "forces": "forces",
    "stress": "stress",
    "dipole": "dipole",
    "polarizability": "polarizability (full 3×3)",
    "polarizability_iso": "  polarizability, isotropic",
    "polarizability_aniso": "  polarizability, sym. traceless",
}


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


def md_accuracy(res: dict) -> str:
    codes = _codes(res)
    lines = [
        f"Budget: **{res['budget_min']} min of training per code and task** (wall clock, "
        f"{res['machine']['torch_threads']} threads; the clock starts at the first training epoch and the "
        "epoch running when it expires is finished, including its validation). Test errors of the "
        "best-validation model; float32 throughout. MAE / RMSE, and RMSE relative to the standard "
        "deviation of the test labels in brackets.",
        "",
    ]
    for task, split in res["splits"].items():
        runs = {r["code"]: r for r in res["runs"] if r["task"] == task}
        lines.append(
            f"**{task}** ({split['source']}; {split['n_train']} train / {split['n_valid']} valid / "
            f"{split['n_test']} test)"
        )
        lines.append("")
        lines.append("| | " + " | ".join(LABELS.get(c, c) for c in codes) + " |")
        lines.append("|---|" + "---|" * len(codes))
        names = []
        for c in codes:
            for n in runs.get(c, {}).get("test_errors", {}):
                if n not in names:
                    names.append(n)
        for n in names:
            unit = next(r["test_errors"][n]["unit"] for r in runs.values() if n in r.get("test_errors", {}))
            cells = []
            for c in codes:
                e = runs.get(c, {}).get("test_errors", {}).get(n)
                if e is None:
                    cells.append("failed" if "error" in runs.get(c, {}) else "not supported")
                else:
                    rel = f" ({e['rel_rmse_percent']:.1f}%)" if e.get("rel_rmse_percent") is not None else ""
                    cells.append(f"{_g(e['mae'])} / {_g(e['rmse'])}{rel}")
            lines.append(f"| {TARGET_NAMES.get(n, n)} MAE / RMSE ({unit}) | " + " | ".join(cells) + " |")
        for label, key, fmt in (
            ("parameters", "n_params", lambda v: f"{v:,}"),
            ("epochs in budget", "epochs", str),
            ("optimizer steps", "optimizer_steps", str),
            ("training throughput (structures/s)", "train_structures_per_s", lambda v: f"{v:.3g}"),
        ):
            cells = [fmt(runs[c][key]) if c in runs and runs[c].get(key) is not None else "–" for c in codes]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


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
    "accuracy": md_accuracy,
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


def write_benchmarks_md(results_dir: str, path: str) -> None:
    results = {}
    for name in SECTIONS:
        p = os.path.join(results_dir, f"{name}.json")
        if os.path.exists(p):
            results[name] = read_json(p)
    old = open(path).read() if os.path.exists(path) else ""
    _, old_sections = _split_sections(old)
    old_by_title = dict(old_sections)
    machine = next(iter(results.values()))["machine"] if results else {}
    dates = sorted({r["date"] for r in results.values()})
    out = [
        "# Benchmarks: mlip vs MACE vs metatrain (SOAP-BPNN)",
        "",
        f"Date: {', '.join(dates) or '–'}. Machine: {machine.get('cpu_model', '?')}, "
        f"{machine.get('affinity', '?')} cores available to the run, shared with other jobs (timings are "
        "noisy: repeats are interleaved across "
        f"codes and ratios are taken within a round), {machine.get('mem_total_gib', '?')} GiB RAM; "
        f"{'GPUs: ' + ', '.join(machine['gpus']) if machine.get('gpus') else 'no GPU in this session'}. "
        f"torch threads = {machine.get('torch_threads', '?')} for every code.",
        "",
        "Versions: " + ", ".join(_versions(results)) + ".",
        "",
        "How to run (peers' virtual environment: see docs/benchmarks.md):",
        "",
        "```bash",
        "python scripts/bench/run.py all --peers-python /work/peers/bin/python   # whole suite, quick sizes",
        "python scripts/bench/run.py report                                      # rebuild this file",
        "```",
        "",
        "Raw figures: `benchmarks/results/<benchmark>.json`; tables: `benchmarks/results/<benchmark>.md`.",
        "",
    ]
    for name, title in SECTIONS.items():
        out.append(title)
        out.append("")
        old_body = old_by_title.get(title, "")
        notes = _notes(old_body, name)
        if name in results:
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
        if title not in SECTIONS.values():
            out.append(title)
            out.append(body.rstrip("\n"))
            out.append("")
    with open(path, "w") as handle:
        handle.write("\n".join(out).rstrip("\n") + "\n")
