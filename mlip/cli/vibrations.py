"""``mlip vibrations MODEL STRUCTURE -o modes.csv``: harmonic frequencies, IR intensities, Raman activities.

Frequencies (cm⁻¹) from the finite-difference Hessian of the model's forces (float64), IR intensities
(km/mol) from its Born charges when it has a ``dipole`` target and Raman activities (Å⁴/amu) from its
polarizability derivatives when it has a ``polarizability`` target (exact autograd derivatives; see
:func:`mlip.spectra.harmonic_modes`). The rigid-body modes (3 translations and 3 rotations, or 2 for a
linear molecule; 3 translations for a periodic cell: the modes closest to 0 cm⁻¹) are kept in the CSV
and flagged ``rigid_body = 1``; they are left out of the printed table and the plot. ``--relax`` first
relaxes the structure with ASE's BFGS (the harmonic analysis is meaningful at a minimum only).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from mlip.errors import MLIPError


def _pyplot():
    from mlip.cli.plot import _pyplot

    return _pyplot()


def plot_modes(result: dict, path: str, width: float = 10.0):
    """Lorentzian-broadened IR and/or Raman stick spectra of the vibrations (one panel each)."""
    from mlip.spectra import broadened

    plt = _pyplot()
    keep = ~result["rigid_body"]
    nu = result["frequencies"][keep]
    panels = [
        (key, label)
        for key, label in (
            ("ir_intensities", "IR intensity (km/mol)"),
            ("raman_activities", "Raman activity (Å⁴/amu)"),
        )
        if key in result
    ]
    if not panels:
        panels = [("ones", "mode (no dipole or polarizability target)")]
    top = max(float(nu.max()) if nu.size else 0.0, 0.0) + 200.0
    grid = np.linspace(0.0, top, 4000)
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.8 * len(panels)), sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        sticks = result[key][keep] if key in result else np.ones_like(nu)
        curve = broadened(nu, sticks, grid, width)
        ax.plot(grid, curve, lw=1.2)
        if sticks.size and sticks.max() > 0:
            scale = curve.max() / sticks.max()
            ax.vlines(nu, 0.0, sticks * scale, color="0.5", lw=0.8)
        ax.set_ylabel(f"{label}\n(Lorentzian {width:g} cm⁻¹)")
        ax.set_ylim(bottom=0.0)
    axes[-1, 0].set_xlabel("wavenumber (cm⁻¹)")
    axes[0, 0].set_title("harmonic spectrum")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def run_vibrations(
    model_path: str,
    structure: str,
    output: str,
    index: int = 0,
    relax: bool = False,
    fmax: float = 0.01,
    relax_steps: int = 1000,
    delta: float = 0.005,
    plot: str | None = None,
    width: float = 10.0,
    device: str = "auto",
) -> dict:
    """Write the harmonic modes of frame ``index`` of ``structure`` to ``output`` (CSV); returns them."""
    from mlip.calculators.ase_calculator import MLIPCalculator
    from mlip.cli.predict import check_writable
    from mlip.data.reading import read_atoms
    from mlip.spectra import harmonic_modes, rigid_body_modes

    if not os.path.isfile(model_path):
        raise MLIPError(f"{model_path}: model file not found")
    if not fmax > 0 or not delta > 0 or not width > 0 or relax_steps < 1:
        raise MLIPError("--fmax, --delta and --width must be > 0 and --relax-steps >= 1")
    structures = read_atoms(structure)
    if not -len(structures) <= index < len(structures):
        raise MLIPError(f"{structure}: --index {index} out of range ({len(structures)} structures)")
    check_writable(output)
    if plot is not None:
        check_writable(plot)
        _pyplot()  # fail before the work if matplotlib is missing
    atoms = structures[index]
    atoms.calc = None
    calc = MLIPCalculator(model_path, device=device, dtype="float64")
    if not calc.has_energy:
        raise MLIPError(f"{model_path}: the model has no energy target, so it has no Hessian")
    atoms.calc = calc
    if relax:
        from ase.optimize import BFGS

        opt = BFGS(atoms, logfile=None)
        converged = opt.run(fmax=fmax, steps=relax_steps)
        fnow = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        state = "converged" if converged else f"NOT converged in {relax_steps} steps"
        print(f"mlip: vibrations: BFGS relaxation {state} (max force {fnow:.2e} eV/Å)", flush=True)
    ir = "born_charges" in calc.derivative_names
    raman = "polarizability_derivatives" in calc.derivative_names
    result = harmonic_modes(calc, atoms, delta=delta, intensities=ir, raman=raman)
    result["rigid_body"] = rigid_body_modes(atoms, result["frequencies"])

    columns = ["mode", "frequency_cm-1", "rigid_body"]
    if ir:
        columns.append("ir_intensity_km_mol")
    if raman:
        columns.append("raman_activity_A4_amu")
    with open(output, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for k, nu in enumerate(result["frequencies"]):
            row = [k, f"{nu:.4f}", int(result["rigid_body"][k])]
            if ir:
                row.append(f"{result['ir_intensities'][k]:.6g}")
            if raman:
                row.append(f"{result['raman_activities'][k]:.6g}")
            writer.writerow(row)
    vib = ~result["rigid_body"]
    imaginary = int((result["frequencies"][vib] < 0).sum())
    print(
        f"mlip: vibrations: {int(vib.sum())} vibrational modes of {len(atoms)} atoms "
        f"({int((~vib).sum())} rigid-body modes flagged); wrote {output}",
        flush=True,
    )
    if imaginary:
        print(f"mlip: vibrations: {imaginary} imaginary frequencies (negative): relax first (--relax)")
    print(
        "   freq (cm⁻¹)" + ("   IR (km/mol)" if ir else "") + ("  Raman (Å⁴/amu)" if raman else ""),
        flush=True,
    )
    for k in np.flatnonzero(vib):
        line = f"  {result['frequencies'][k]:12.2f}"
        if ir:
            line += f"  {result['ir_intensities'][k]:12.4g}"
        if raman:
            line += f"  {result['raman_activities'][k]:14.4g}"
        print(line)
    if plot is not None:
        plot_modes(result, plot, width)
        print(f"mlip: vibrations: wrote {plot}")
    result["atoms"] = atoms
    return result
