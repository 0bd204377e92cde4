"""``mlip spectrum TRAJ.xyz [TRAJ2.xyz ...] -o spectrum.csv``: IR or Raman spectrum of MD trajectories.

Reads the frames ``mlip md`` writes: the dipole (``MLIP_dipole``, ``--kind ir``) or the polarizability
(``MLIP_polarizability``, 9 numbers, ``--kind raman``) per frame (``--key`` for another label), the
time between frames from their ``time_fs`` (or ``--timestep``). The spectra are those of
:func:`mlip.spectra.ir_spectrum_from_dipoles` and :func:`mlip.spectra.raman_spectrum_from_polarizabilities`
(Hann window, zero padding, optional harmonic quantum correction); several trajectories (same time
step) are averaged, with correlation times up to half the shortest by default. The CSV has
``wavenumber_cm-1`` and ``intensity`` (IR) or ``isotropic, anisotropic, polarized, depolarized,
total`` (Raman), arbitrary units, up to ``--max-wavenumber``.
"""

from __future__ import annotations

import csv

import numpy as np

from mlip.errors import MLIPError

DEFAULT_KEYS = {"ir": "MLIP_dipole", "raman": "MLIP_polarizability"}
RAMAN_COLUMNS = ("isotropic", "anisotropic", "polarized", "depolarized", "total")


def read_series(path: str, key: str, kind: str) -> tuple[np.ndarray, float | None]:
    """``(values [T, 3] or [T, 9], time between frames in fs or None)`` from a trajectory file."""
    from mlip.data.reading import _raw_label, available_keys, read_atoms

    frames = read_atoms(path)
    width = 3 if kind == "ir" else 9
    rows = []
    for i, atoms in enumerate(frames):
        value = _raw_label(atoms, key)
        if value is None:
            have = ", ".join(k for k in available_keys(atoms) if k.startswith("MLIP_")) or "none"
            raise MLIPError(f"{path}: frame {i} has no {key!r} (MLIP_ keys there: {have}); use --key")
        value = np.asarray(value, dtype=np.float64).reshape(-1)
        if value.size != width:
            raise MLIPError(f"{path}: frame {i}: {key} has {value.size} numbers, expected {width} for {kind}")
        rows.append(value)
    if len(rows) < 4:
        raise MLIPError(f"{path}: need at least 4 frames for a spectrum, got {len(rows)}")
    timestep = None
    if all("time_fs" in atoms.info for atoms in frames):
        times = np.array([float(atoms.info["time_fs"]) for atoms in frames])
        steps = np.diff(times)
        if steps.min() <= 0 or np.ptp(steps) > 1e-6 * max(abs(steps.mean()), 1e-12):
            raise MLIPError(f"{path}: frames are not evenly spaced in time_fs; give --timestep")
        timestep = float(steps.mean())
    return np.array(rows), timestep


def compute_spectrum(
    trajectories: list[str],
    kind: str = "ir",
    timestep: float | None = None,
    key: str | None = None,
    max_lag: float | None = None,
    window: str = "hann",
    zero_pad: int = 4,
    quantum_correction: str | None = None,
    temperature: float | None = None,
    smooth: float = 0.0,
) -> dict[str, np.ndarray]:
    """The (averaged) spectrum of the trajectories: ``wavenumbers`` and one or five intensity columns,
    each convolved with a Gaussian of FWHM ``smooth`` cm⁻¹ if it is > 0."""
    from mlip.spectra import ir_spectrum_from_dipoles, raman_spectrum_from_polarizabilities, smoothed

    if kind not in DEFAULT_KEYS:
        raise MLIPError(f"--kind must be ir or raman, got {kind!r}")
    if not trajectories:
        raise MLIPError("give at least one trajectory file")
    if timestep is not None and not timestep > 0:
        raise MLIPError(f"--timestep must be > 0, got {timestep}")
    if not smooth >= 0:
        raise MLIPError(f"--smooth must be >= 0 cm⁻¹, got {smooth}")
    key = key or DEFAULT_KEYS[kind]
    series = []
    for path in trajectories:
        values, dt = read_series(path, key, kind)
        dt = timestep if timestep is not None else dt
        if dt is None:
            raise MLIPError(f"{path}: frames have no time_fs; give --timestep (fs between frames)")
        series.append((values, dt))
    dts = [dt for _, dt in series]
    if np.ptp(dts) > 1e-6 * dts[0]:
        raise MLIPError(f"trajectories have different time steps ({', '.join(f'{d:g}' for d in dts)} fs)")
    if max_lag is None:
        max_lag = min(len(v) for v, _ in series) // 2 * dts[0]
    total: dict[str, np.ndarray] = {}
    for values, dt in series:
        common = dict(max_lag_fs=max_lag, window=window, zero_pad=zero_pad)
        common.update(quantum_correction=quantum_correction, temperature=temperature)
        if kind == "ir":
            nu, intensity = ir_spectrum_from_dipoles(values, dt, **common)
            out = {"wavenumbers": nu, "intensity": intensity}
        else:
            out = raman_spectrum_from_polarizabilities(values, dt, **common)
        total["wavenumbers"] = out.pop("wavenumbers")  # the same grid for every trajectory
        for name, value in out.items():
            total[name] = total.get(name, 0.0) + value / len(series)
    if smooth > 0:
        nu = total["wavenumbers"]
        total = {name: v if name == "wavenumbers" else smoothed(nu, v, smooth) for name, v in total.items()}
    return total


def plot_spectrum(spectrum: dict, kind: str, path: str, title: str = ""):
    from mlip.cli.plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    nu = spectrum["wavenumbers"]
    if kind == "ir":
        ax.plot(nu, spectrum["intensity"], lw=1.2, label="IR")
    else:
        for name in ("polarized", "depolarized", "isotropic", "anisotropic"):
            ax.plot(nu, spectrum[name], lw=1.0, label=name)
        ax.legend()
    ax.set_xlabel("wavenumber (cm⁻¹)")
    ax.set_ylabel(f"{'IR' if kind == 'ir' else 'Raman'} intensity (arb. units)")
    ax.set_xlim(0, nu.max() if nu.size else 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def run_spectrum(
    trajectories: list[str],
    output: str,
    kind: str = "ir",
    timestep: float | None = None,
    key: str | None = None,
    plot: str | None = None,
    max_lag: float | None = None,
    window: str = "hann",
    zero_pad: int = 4,
    quantum_correction: str | None = None,
    temperature: float | None = None,
    max_wavenumber: float = 5000.0,
    smooth: float = 0.0,
) -> dict[str, np.ndarray]:
    """Compute the spectrum, write the CSV (and the PNG); returns the spectrum (up to max_wavenumber)."""
    from mlip.cli.predict import check_writable

    check_writable(output)
    if plot is not None:
        check_writable(plot)
        from mlip.cli.plot import _pyplot

        _pyplot()  # fail before the work if matplotlib is missing
    if not max_wavenumber > 0:
        raise MLIPError(f"--max-wavenumber must be > 0, got {max_wavenumber}")
    if quantum_correction == "none":
        quantum_correction = None
    spectrum = compute_spectrum(
        trajectories, kind, timestep, key, max_lag, window, zero_pad, quantum_correction, temperature, smooth
    )
    keep = spectrum["wavenumbers"] <= max_wavenumber
    spectrum = {name: value[keep] for name, value in spectrum.items()}
    columns = ["intensity"] if kind == "ir" else list(RAMAN_COLUMNS)
    with open(output, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["wavenumber_cm-1", *columns])
        for k, nu in enumerate(spectrum["wavenumbers"]):
            writer.writerow([f"{nu:.4f}", *(f"{spectrum[c][k]:.8g}" for c in columns)])
    main = spectrum["intensity" if kind == "ir" else "total"]
    peak = spectrum["wavenumbers"][int(np.argmax(main))] if main.size else float("nan")
    print(
        f"mlip: spectrum: {kind} of {len(trajectories)} trajectories, {len(main)} points up to "
        f"{max_wavenumber:g} cm⁻¹ (highest at {peak:.1f} cm⁻¹); wrote {output}",
        flush=True,
    )
    if plot is not None:
        plot_spectrum(spectrum, kind, plot)
        print(f"mlip: spectrum: wrote {plot}")
    return spectrum
