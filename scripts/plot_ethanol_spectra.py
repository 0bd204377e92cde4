"""The README's ethanol IR and Raman figures: MD spectra of an mlip model against harmonic sticks.

    python scripts/plot_ethanol_spectra.py --ir ir.csv --raman raman.csv --modes modes.csv \\
        --dft benchmarks/results/spectra_dft/dft_modes.csv -o docs/images

``--ir`` / ``--raman``: CSVs of ``mlip spectrum`` (IR: ``intensity``; Raman: ``total``); ``--modes``: CSV
of ``mlip vibrations`` (the model's harmonic frequencies, IR intensities, Raman activities);
``--dft``: the DFT harmonic frequencies and IR intensities written by
``scripts/validate_spectra_dft.py`` (optional). Every curve and stick set is scaled to its own
maximum in the plotted range (the MD band areas and the stick heights are in different units); the
DFT sticks point down. Writes ``ethanol_ir.png`` and ``ethanol_raman.png``.
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np


def read_csv(path: str) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def sticks(ax, nu, height, color, label, lw=1.6):
    ax.vlines(nu, 0.0, height, color=color, lw=lw, label=label)


def figure(path, md, md_label, model_nu, model_int, model_label, dft=None, title="", ylabel="", xmax=4000.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    nu, y = md
    keep = (nu >= 100) & (nu <= xmax)
    ax.fill_between(nu[keep], 0, y[keep] / y[keep].max(), color="tab:blue", alpha=0.25, lw=0)
    ax.plot(nu[keep], y[keep] / y[keep].max(), color="tab:blue", lw=1.0, label=md_label)
    sticks(ax, model_nu, 0.9 * model_int / model_int.max(), "tab:orange", model_label)
    if dft is not None:
        d_nu, d_int, d_label = dft
        sticks(ax, d_nu, -0.9 * d_int / d_int.max(), "tab:green", d_label)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_ylim(-1.0, 1.08)
    else:
        ax.set_ylim(0.0, 1.08)
    ax.set_xlim(100, xmax)
    ax.set_xlabel("wavenumber (cm⁻¹)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.33, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} kB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ir", required=True, help="mlip spectrum --kind ir CSV")
    p.add_argument("--raman", required=True, help="mlip spectrum --kind raman CSV")
    p.add_argument("--modes", required=True, help="mlip vibrations CSV")
    p.add_argument("--dft", default=None, help="DFT modes CSV (frequency_cm-1, ir_intensity_km_mol)")
    p.add_argument("--md-label", default="mlip MD, 300 K", help="legend of the MD curves")
    p.add_argument("-o", "--output", default="docs/images", help="folder of the PNGs")
    args = p.parse_args()

    modes = read_csv(args.modes)
    vib = modes["rigid_body"] == 0
    nu_m = modes["frequency_cm-1"][vib]
    ir = read_csv(args.ir)
    raman = read_csv(args.raman)
    dft = None
    if args.dft:
        d = read_csv(args.dft)
        dft = (
            d["frequency_cm-1"],
            d["ir_intensity_km_mol"],
            "DFT harmonic, B3LYP/def2-SVP (PySCF), mirrored",
        )
    os.makedirs(args.output, exist_ok=True)
    figure(
        os.path.join(args.output, "ethanol_ir.png"),
        (ir["wavenumber_cm-1"], ir["intensity"]),
        f"{args.md_label}: ⟨μ̇(0)·μ̇(t)⟩ spectrum",
        nu_m,
        modes["ir_intensity_km_mol"][vib],
        "mlip harmonic (Born charges)",
        dft,
        title="Ethanol IR: mlip model (154 B3LYP structures) vs DFT",
        ylabel="IR intensity (scaled)",
    )
    figure(
        os.path.join(args.output, "ethanol_raman.png"),
        (raman["wavenumber_cm-1"], raman["total"]),
        f"{args.md_label}: Raman (iso + 7/45 aniso)",
        nu_m,
        modes["raman_activity_A4_amu"][vib],
        "mlip harmonic activities (45a'² + 7γ'²)",
        None,
        title="Ethanol Raman: mlip MD vs the model's harmonic activities",
        ylabel="Raman intensity (scaled)",
    )


if __name__ == "__main__":
    main()
