"""Harmonic frequencies and IR intensities of an mlip model against DFT (PySCF), same post-processing.

    python scripts/validate_spectra_dft.py START.xyz --model MODEL.pt -o benchmarks/results/spectra_dft \\
        [--index 0] [--cache /tmp/dft_cache.npz] [--xc b3lyp] [--basis def2-svp]

Without ``--model`` only the DFT part runs (into ``--cache``).

DFT side, the set-up of the training labels (``label_pyscf.py``: ``dft.RKS``, default grids,
``conv_tol 1e-10``, finite field as ``h_core + E·r``):

1. geometry optimisation with geomeTRIC (``pyscf.geomopt``), Gaussian-"tight" thresholds;
2. analytic Hessian (``mf.Hessian().kernel()``);
3. Born charges ``Z[i,a,b] = ∂μ_a/∂r_ib = ∂F_ib/∂E_a`` by finite field: SCF and nuclear gradient in a
   field ±E along each axis (E = ``--field``, a.u.), central differences. PySCF's gradient does not
   know the field term of the core Hamiltonian, so its derivative (``−2 Σ D_μν <∂μ|E·r|ν>``, from
   ``int1e_irp``) and the nuclear term (``−Z_A E``) are added here. Checked by the acoustic sum rule
   (``Σ_i Z_i = 0``) and by one dipole derivative from displaced geometries.

Model side: ``mlip vibrations``' recipe (BFGS to ``--fmax``, finite-difference Hessian, autograd Born
charges and polarizability derivatives) from the same start structure. Both Hessians go through
``mlip.spectra.normal_modes`` with ASE's masses and both Born charges through
``mlip.spectra.ir_intensities``, so the post-processing is identical.

Comparison (``spectra_dft.json`` and ``spectra_dft.md`` in the output folder): frequency errors over
the vibrational modes (rigid-body modes left out) matched (a) in ascending order and (b) by maximum
overlap of the mass-weighted eigenvectors after a Kabsch alignment of the two minima (assignment
maximising the sum of squared overlaps); Spearman rank correlation of the IR intensities over
matched modes; the five strongest DFT IR bands and the model's matched bands. The DFT results are
cached in ``--cache`` (npz) so a rerun only redoes the model side.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ase.io
import numpy as np
from ase.data import atomic_masses
from ase.units import Bohr, Hartree

from mlip.spectra import IR_INTENSITY_KM_MOL, ir_intensities, normal_modes, rigid_body_modes

HESS_AU_TO_EV_A2 = Hartree / Bohr**2


# ----------------------------------------------------------------------------------------------- DFT
def make_mol(symbols, positions_angstrom, basis):
    from pyscf import gto

    return gto.M(atom=list(zip(symbols, positions_angstrom)), basis=basis, unit="Angstrom", verbose=0)


def make_mf(mol, xc, field=None):
    """As label_pyscf.py: RKS, conv_tol 1e-10, a uniform field E (a.u.) as ``h_core + E·r`` (the
    potential energy of an electron, charge −1, in the field E)."""
    from pyscf import dft, scf

    mf = scf.RHF(mol) if xc == "hf" else dft.RKS(mol, xc=xc)
    mf.conv_tol = 1e-10
    mf.verbose = 0
    if field is not None:
        h = mf.get_hcore() + np.einsum("x,xij->ij", field, mol.intor("int1e_r"))
        mf.get_hcore = lambda *args: h
    return mf


def field_gradient(mol, mf, field):
    """Nuclear gradient (Ha/bohr) of the SCF energy plus the field's energy ``−Σ_A Z_A E·R_A``.

    PySCF's analytic gradient takes the core-Hamiltonian derivative from the field-free integrals; the
    field term's derivative is added: ``∂/∂R_Ax Σ D_μν E_a <μ|r_a|ν> = −2 E_a Σ_{μ∈A,ν} D_μν
    <∂_x μ|r_a|ν>`` (basis functions move with their atom; ``int1e_irp[a,x][ν,μ] = <ν|r_a ∂_x μ>``).
    """
    g = mf.nuc_grad_method().kernel()
    dm = mf.make_rdm1()
    irp = mol.intor("int1e_irp", comp=9).reshape(3, 3, mol.nao, mol.nao)  # [a, x, ν, μ]
    offsets = mol.aoslice_by_atom()
    for atom in range(mol.natm):
        p0, p1 = offsets[atom, 2:]
        # Σ_{μ∈A,ν} D_μν <∂_x μ|r_a|ν> = Σ D[μ,ν] irp[a,x][ν,μ]
        term = np.einsum("mn,axnm->ax", dm[p0:p1], irp[:, :, :, p0:p1])
        g[atom] += -2.0 * np.einsum("a,ax->x", field, term)
        g[atom] += -mol.atom_charge(atom) * np.asarray(field)
    return g


def dft_optimise(symbols, positions, xc, basis, log):
    from pyscf.geomopt.geometric_solver import optimize

    mol = make_mol(symbols, positions, basis)
    mf = make_mf(mol, xc)
    conv = {  # Gaussian "tight" (Ha, Ha/bohr, Å), energy tighter
        "convergence_energy": 1e-7,
        "convergence_grms": 1e-5,
        "convergence_gmax": 1.5e-5,
        "convergence_drms": 4e-5,
        "convergence_dmax": 6e-5,
    }
    t0 = time.time()
    mol_eq = optimize(mf, maxsteps=200, **conv)
    log(f"DFT optimisation: {time.time() - t0:.0f} s")
    return mol_eq.atom_coords(unit="Angstrom")


def dft_hessian(mol, xc, log):
    t0 = time.time()
    mf = make_mf(mol, xc)
    energy = mf.kernel()
    grad = mf.nuc_grad_method().kernel()
    log(f"DFT at the minimum: E = {energy:.8f} Ha, max |gradient| = {np.abs(grad).max():.2e} Ha/bohr")
    hess = mf.Hessian().kernel()  # [N, N, 3, 3], Ha/bohr²
    n = mol.natm
    h = hess.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n) * HESS_AU_TO_EV_A2
    log(f"DFT Hessian: {time.time() - t0:.0f} s")
    return energy, grad, 0.5 * (h + h.T), mf.make_rdm1(), mf.dip_moment(unit="AU", verbose=0)


def dft_born_charges(mol, xc, dm0, field, log):
    """``Z[i, a, b] = ∂F_ib/∂E_a`` (e) by central differences in the field."""
    t0 = time.time()
    n = mol.natm
    z = np.zeros((n, 3, 3))
    for a in range(3):
        forces = []
        for sign in (1.0, -1.0):
            vec = np.zeros(3)
            vec[a] = sign * field
            mf = make_mf(mol, xc, vec)
            mf.kernel(dm0)
            if not mf.converged:
                raise RuntimeError(f"SCF in the field {vec} did not converge")
            forces.append(-field_gradient(mol, mf, vec))
        z[:, a, :] = (forces[0] - forces[1]) / (2 * field)
    log(f"DFT Born charges (6 SCF + gradients in a field): {time.time() - t0:.0f} s")
    return z


def dft_dipole_derivative(mol, xc, dm0, atom, direction, step_bohr=0.005):
    """``∂μ_a/∂R_{atom,direction}`` for a = x, y, z from the dipoles (nuclei included) of two displaced
    geometries: the independent check of the Born charges' sign and size."""
    from pyscf import gto

    coords = mol.atom_coords()  # bohr
    mus = []
    for sign in (1.0, -1.0):
        c = coords.copy()
        c[atom, direction] += sign * step_bohr
        m = gto.M(
            atom=[(mol.atom_symbol(i), c[i]) for i in range(mol.natm)],
            basis=mol.basis,
            unit="Bohr",
            verbose=0,
        )
        mf = make_mf(m, xc)
        mf.kernel(dm0)
        mus.append(mf.dip_moment(unit="AU", verbose=0))
    return (mus[0] - mus[1]) / (2 * step_bohr)


def run_dft(symbols, positions, args, log) -> dict:
    if args.cache and os.path.exists(args.cache):
        log(f"DFT results from {args.cache}")
        data = np.load(args.cache)
        return {k: data[k] for k in data.files}
    pos_eq = dft_optimise(symbols, positions, args.xc, args.basis, log)
    mol = make_mol(symbols, pos_eq, args.basis)
    energy, grad, hess, dm0, mu0 = dft_hessian(mol, args.xc, log)
    z = dft_born_charges(mol, args.xc, dm0, args.field, log)
    # check: Born charges of one atom along one direction from displaced geometries' dipoles
    check_atom, check_dir = args.check_atom, 0
    dmu = dft_dipole_derivative(mol, args.xc, dm0, check_atom, check_dir)
    out = {
        "positions": pos_eq,
        "energy_Ha": np.array(energy),
        "gradient": grad,
        "hessian": hess,
        "born_charges": z,
        "dipole_au": mu0,
        "check_atom_dir": np.array([check_atom, check_dir]),
        "check_dipole_derivative": dmu,
    }
    if args.cache:
        np.savez(args.cache, **out)
    return out


# --------------------------------------------------------------------------------------------- model
def run_model(model, atoms, fmax, log) -> dict:
    from ase.optimize import BFGS

    from mlip import MLIPCalculator
    from mlip.spectra import harmonic_modes

    calc = MLIPCalculator(model, dtype="float64")
    atoms = atoms.copy()
    atoms.calc = calc
    t0 = time.time()
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=1000)
    fmax_reached = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    out = harmonic_modes(calc, atoms, raman=True)
    out["positions"] = atoms.positions.copy()
    out["born_charges"] = np.asarray(calc.get_property("born_charges", atoms)).reshape(-1, 3, 3)
    out["fmax"] = fmax_reached
    log(f"model: relaxed to max |F| = {fmax_reached:.1e} eV/Å, harmonic modes in {time.time() - t0:.0f} s")
    return out


# ---------------------------------------------------------------------------------------- comparison
def kabsch(mobile, target, weights):
    """Rotation ``R`` minimising ``Σ w |R (x − x̄) − (y − ȳ)|²`` (weighted centres); returns R, RMSD."""
    w = weights / weights.sum()
    xc = mobile - w @ mobile
    yc = target - w @ target
    h = (xc * w[:, None]).T @ yc
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    rmsd = float(np.sqrt(((xc @ rot.T - yc) ** 2).sum(axis=1).mean()))
    return rot, rmsd


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def dihedral(pos, i, j, k, l) -> float:
    b0, b1, b2 = pos[i] - pos[j], pos[k] - pos[j], pos[l] - pos[k]
    b1n = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1n) * b1n
    w = b2 - np.dot(b2, b1n) * b1n
    return float(np.degrees(np.arctan2(np.dot(np.cross(b1n, v), w), np.dot(v, w))))


def compare(symbols, masses, dft, model, log) -> dict:
    from scipy.optimize import linear_sum_assignment

    n = len(symbols)
    probe = ase.Atoms(symbols, positions=dft["positions"])
    nu_d, modes_d = normal_modes(dft["hessian"], masses)
    ir_d = ir_intensities(dft["born_charges"], modes_d)
    vib_d = ~rigid_body_modes(probe, nu_d)
    nu_m, modes_m = model["frequencies"], model["modes"]
    ir_m, raman_m = model["ir_intensities"], model["raman_activities"]
    vib_m = ~rigid_body_modes(ase.Atoms(symbols, positions=model["positions"]), nu_m)
    fd, fm = nu_d[vib_d], nu_m[vib_m]
    id_, im = ir_d[vib_d], ir_m[vib_m]
    # mass-weighted eigenvectors, the DFT ones rotated onto the model's minimum
    rot, rmsd = kabsch(dft["positions"], model["positions"], masses)
    sqrt_m = np.sqrt(masses)[None, :, None]
    ed = (modes_d[vib_d] @ rot.T * sqrt_m).reshape(-1, 3 * n)
    em = (modes_m[vib_m] * sqrt_m).reshape(-1, 3 * n)
    ed /= np.linalg.norm(ed, axis=1, keepdims=True)
    em /= np.linalg.norm(em, axis=1, keepdims=True)
    overlap = np.abs(ed @ em.T)  # [dft mode, model mode]
    rows, cols = linear_sum_assignment(-(overlap**2))
    match = cols[np.argsort(rows)]  # DFT mode k ↔ model mode match[k]

    def stats(err):
        return {
            "mae_cm-1": float(np.abs(err).mean()),
            "max_cm-1": float(np.abs(err).max()),
            "mean_signed_cm-1": float(err.mean()),
        }

    by_order = stats(fm - fd)
    by_overlap = stats(fm[match] - fd)
    strongest = np.argsort(-id_)[:5]
    rank_m = np.empty(len(im), dtype=int)
    rank_m[np.argsort(-im)] = np.arange(1, len(im) + 1)
    top = [
        {
            "dft_rank": r + 1,
            "dft_cm-1": float(fd[k]),
            "dft_km_mol": float(id_[k]),
            "model_cm-1": float(fm[match[k]]),
            "model_km_mol": float(im[match[k]]),
            "model_rank": int(rank_m[match[k]]),
            "overlap": float(overlap[k, match[k]]),
        }
        for r, k in enumerate(strongest)
    ]
    z = dft["born_charges"]
    atom, direction = (int(v) for v in dft["check_atom_dir"])
    result = {
        "n_vibrational_modes": int(vib_d.sum()),
        "kabsch_rmsd_A": rmsd,
        "dihedral_HOCC_deg": {},
        "frequencies_by_order": by_order,
        "frequencies_by_overlap": by_overlap,
        "overlap_matched": {
            "mean": float(overlap[np.arange(len(fd)), match].mean()),
            "min": float(overlap[np.arange(len(fd)), match].min()),
            "modes_matched_out_of_order": int((match != np.arange(len(fd))).sum()),
        },
        "ir_spearman_by_order": spearman(id_, im),
        "ir_spearman_by_overlap": spearman(id_, im[match]),
        "ir_total_km_mol": {"dft": float(id_.sum()), "model": float(im.sum())},
        "strongest_dft_ir_bands": top,
        "born_charge_checks": {
            "sum_rule_max_abs_e": float(np.abs(z.sum(axis=0)).max()),
            "fd_dipole_derivative_atom": atom,
            "fd_dipole_derivative_direction": "xyz"[direction],
            "fd_dipole_derivative": dft["check_dipole_derivative"].tolist(),
            "finite_field_born": z[atom, :, direction].tolist(),
            "max_abs_difference": float(np.abs(z[atom, :, direction] - dft["check_dipole_derivative"]).max()),
            "model_sum_rule_max_abs_e": float(np.abs(model["born_charges"].sum(axis=0)).max()),
            "born_charges_mae_e_at_own_minima": float(
                np.abs(model["born_charges"] - np.einsum("ab,ibc,dc->iad", rot, z, rot)).mean()
            ),
        },
        "modes": [
            {
                "dft_cm-1": float(fd[k]),
                "dft_ir_km_mol": float(id_[k]),
                "model_cm-1_by_order": float(fm[k]),
                "model_ir_km_mol_by_order": float(im[k]),
                "model_cm-1_by_overlap": float(fm[match[k]]),
                "model_ir_km_mol_by_overlap": float(im[match[k]]),
                "model_raman_A4_amu_by_overlap": float(raman_m[vib_m][match[k]]),
                "overlap": float(overlap[k, match[k]]),
            }
            for k in range(len(fd))
        ],
        "rigid_body_max_abs_cm-1": {
            "dft": float(np.abs(nu_d[~vib_d]).max()),
            "model": float(np.abs(nu_m[~vib_m]).max()),
        },
    }
    # conformer check: H–O–C–C dihedral (ethanol: trans ≈ 180°, gauche ≈ ±60°)
    if sorted(symbols) == sorted(["C", "C", "O", "H", "H", "H", "H", "H", "H"]):
        for name, pos in (("dft", dft["positions"]), ("model", model["positions"])):
            o = symbols.index("O")
            dist = np.linalg.norm(pos - pos[o], axis=1)
            c1 = min((i for i, s in enumerate(symbols) if s == "C"), key=lambda i: dist[i])
            c2 = next(i for i, s in enumerate(symbols) if s == "C" and i != c1)
            ho = min((i for i, s in enumerate(symbols) if s == "H"), key=lambda i: dist[i])
            result["dihedral_HOCC_deg"][name] = dihedral(pos, ho, o, c1, c2)
    return result


def markdown(result, meta) -> str:
    bo, bv = result["frequencies_by_order"], result["frequencies_by_overlap"]
    lines = [
        f"# Harmonic spectrum of {meta['formula']}: mlip model vs {meta['dft']}",
        "",
        f"Model: `{meta['model']}`; start structure `{meta['start']}` (frame {meta['index']}). "
        f"{result['n_vibrational_modes']} vibrational modes; minima aligned with Kabsch "
        f"(RMSD {result['kabsch_rmsd_A']:.3f} Å).",
        "",
        "| matching | frequency MAE (cm⁻¹) | max error (cm⁻¹) | mean signed (cm⁻¹) | IR Spearman ρ |",
        "|---|---|---|---|---|",
        f"| ascending order | {bo['mae_cm-1']:.1f} | {bo['max_cm-1']:.1f} | {bo['mean_signed_cm-1']:+.1f} | "
        f"{result['ir_spearman_by_order']:.2f} |",
        f"| eigenvector overlap | {bv['mae_cm-1']:.1f} | {bv['max_cm-1']:.1f} | "
        f"{bv['mean_signed_cm-1']:+.1f} | {result['ir_spearman_by_overlap']:.2f} |",
        "",
        f"Matched overlaps: mean {result['overlap_matched']['mean']:.2f}, min "
        f"{result['overlap_matched']['min']:.2f}; "
        f"{result['overlap_matched']['modes_matched_out_of_order']} modes matched out of order.",
        "",
        "Five strongest DFT IR bands and the model's matched modes (overlap matching):",
        "",
        "| DFT rank | DFT ν (cm⁻¹) | DFT I (km/mol) | model ν (cm⁻¹) | model I (km/mol) | model rank "
        "| overlap |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in result["strongest_dft_ir_bands"]:
        lines.append(
            f"| {t['dft_rank']} | {t['dft_cm-1']:.0f} | {t['dft_km_mol']:.1f} | {t['model_cm-1']:.0f} | "
            f"{t['model_km_mol']:.1f} | {t['model_rank']} | {t['overlap']:.2f} |"
        )
    lines += [
        "",
        "All modes (DFT ascending; model matched by overlap):",
        "",
        "| DFT ν | DFT I | model ν | model I | model Raman (Å⁴/amu) | overlap |",
        "|---|---|---|---|---|---|",
    ]
    for m in result["modes"]:
        lines.append(
            f"| {m['dft_cm-1']:.0f} | {m['dft_ir_km_mol']:.1f} | {m['model_cm-1_by_overlap']:.0f} | "
            f"{m['model_ir_km_mol_by_overlap']:.1f} | {m['model_raman_A4_amu_by_overlap']:.1f} | "
            f"{m['overlap']:.2f} |"
        )
    c = result["born_charge_checks"]
    lines += [
        "",
        f"DFT Born charges (finite field): |Σ_i Z_i| ≤ {c['sum_rule_max_abs_e']:.3f} e; "
        f"∂μ/∂{c['fd_dipole_derivative_direction']} of atom {c['fd_dipole_derivative_atom']} from "
        f"displaced dipoles differs by ≤ {c['max_abs_difference']:.4f} e.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("structure", help="start structure (both optimisations start here)")
    p.add_argument("--model", default=None, help="mlip model.pt with energy, dipole, polarizability")
    p.add_argument("-o", "--output", default=None, help="output folder (JSON, Markdown, DFT modes CSV)")
    p.add_argument("--index", type=int, default=0, help="frame of STRUCTURE (default 0)")
    p.add_argument("--cache", default=None, help="npz with the DFT results (read if present, else written)")
    p.add_argument("--xc", default="b3lyp")
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--field", type=float, default=1e-3, help="finite field, a.u. (default 1e-3)")
    p.add_argument("--fmax", type=float, default=0.005, help="model relaxation, eV/Å (default 0.005)")
    p.add_argument("--check-atom", type=int, default=2, help="atom of the dipole-derivative check")
    args = p.parse_args()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    atoms = ase.io.read(args.structure, index=args.index)
    symbols = atoms.get_chemical_symbols()
    masses = atomic_masses[atoms.numbers]  # ASE's masses on both sides
    t0 = time.time()
    dft = run_dft(symbols, atoms.positions, args, log)
    if args.model is None or args.output is None:
        log("no --model or no --output: DFT part only")
        return
    model = run_model(args.model, atoms, args.fmax, log)
    result = compare(symbols, masses, dft, model, log)
    meta = {
        "formula": atoms.get_chemical_formula(),
        "model": args.model,
        "start": args.structure,
        "index": args.index,
        "dft": f"{args.xc.upper()}/{args.basis} (PySCF)",
        "field_au": args.field,
        "model_fmax_eV_A": model["fmax"],
        "ir_intensity_constant": IR_INTENSITY_KM_MOL,
        "dft_energy_Ha": float(dft["energy_Ha"]),
        "dft_max_gradient_Ha_bohr": float(np.abs(dft["gradient"]).max()),
        "seconds": time.time() - t0,
    }
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "spectra_dft.json"), "w") as fh:
        json.dump({"meta": meta, **result}, fh, indent=1)
    with open(os.path.join(args.output, "spectra_dft.md"), "w") as fh:
        fh.write(markdown(result, meta))
    np.savetxt(
        os.path.join(args.output, "dft_modes.csv"),
        np.array([[m["dft_cm-1"], m["dft_ir_km_mol"]] for m in result["modes"]]),
        delimiter=",",
        header="frequency_cm-1,ir_intensity_km_mol",
        comments="",
        fmt="%.4f",
    )
    print(markdown(result, meta))


if __name__ == "__main__":
    main()
