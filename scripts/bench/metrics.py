"""Test-set errors computed the same way for every code, from its saved predictions."""

from __future__ import annotations

import numpy as np

# target → (unit shown in the tables, factor from model units)
UNITS = {
    "energy": ("meV/atom", 1e3),
    "forces": ("meV/Å", 1e3),
    "stress": ("meV/Å³", 1e3),
    "dipole": ("me·Å", 1e3),
    "polarizability": ("mÅ³", 1e3),
    "polarizability_iso": ("mÅ³", 1e3),
    "polarizability_aniso": ("mÅ³", 1e3),
}


def _iso_aniso(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    iso = np.trace(a) / 3.0
    sym = 0.5 * (a + a.T)
    return np.array([iso]), (sym - iso * np.eye(3)).reshape(-1)


def errors(preds: list[dict], refs: list[dict], targets: list[str]) -> dict:
    """MAE, RMSE, mean signed error and relative RMSE (RMSE / std of the labels, %) per target.

    The mean signed error (prediction − reference, averaged over all values) exposes a constant
    offset, e.g. a wrong energy reference: ``offset_flag`` is set when |mean error| > 0.5 · RMSE,
    i.e. when a constant shift makes up most of the error (see :func:`offset_flag`).

    energy per atom; forces, stress (3×3), dipole (3) and polarizability (3×3) per component;
    the polarizability also as its isotropic part (trace/3) and its symmetric traceless part.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} test structures")
    diffs: dict[str, list] = {}
    labels: dict[str, list] = {}

    def add(name: str, p, r) -> None:
        diffs.setdefault(name, []).append(np.asarray(p, float).reshape(-1) - np.asarray(r, float).reshape(-1))
        labels.setdefault(name, []).append(np.asarray(r, float).reshape(-1))

    for p, r in zip(preds, refs):
        n = float(r["n_atoms"])
        for t in targets:
            if t not in p:
                continue
            if t == "energy":
                add(t, p[t] / n, r[t] / n)
            elif t == "polarizability":
                add(t, p[t], r[t])
                pi, pa = _iso_aniso(np.asarray(p[t]).reshape(3, 3))
                ri, ra = _iso_aniso(np.asarray(r[t]).reshape(3, 3))
                add(t + "_iso", pi, ri)
                add(t + "_aniso", pa, ra)
            else:
                add(t, p[t], r[t])
    out = {}
    for name, d in diffs.items():
        d = np.concatenate(d)
        y = np.concatenate(labels[name])
        unit, factor = UNITS[name]
        rmse = float(np.sqrt(np.mean(d**2)))
        std = float(np.std(y))
        out[name] = {
            "unit": unit,
            "mae": float(np.mean(np.abs(d))) * factor,
            "rmse": rmse * factor,
            "mean_error": float(np.mean(d)) * factor,
            "rel_rmse_percent": 100.0 * rmse / std if std > 0 else None,
            "n_values": int(d.size),
        }
        out[name]["offset_flag"] = offset_flag(out[name])
    return out


OFFSET_FRACTION = 0.5


def offset_flag(err: dict) -> bool:
    """True when |mean signed error| > 0.5 · RMSE (a constant offset dominates the error)."""
    return abs(err.get("mean_error", 0.0)) > OFFSET_FRACTION * err["rmse"]
