"""Vibrational spectra from a model: IR from an MD dipole trajectory, harmonic modes and IR intensities.

* :func:`ir_spectrum_from_dipoles`: the IR line shape from the autocorrelation of the dipole's time
  derivative along MD (``mlip md`` records ``MLIP_dipole`` per frame), windowed and Fourier
  transformed. Anharmonic and temperature dependent, in arbitrary units (classical, no quantum
  correction). Invariant under rotating the trajectory (it uses ``Σ_a μ̇_a(0) μ̇_a(t)``).
* :func:`harmonic_modes`: harmonic frequencies (cm⁻¹) from the finite-difference Hessian of the
  calculator's forces, and IR intensities (km/mol) from its Born charges
  (``get_property("born_charges")``; exact autograd derivatives for an mlip model with a dipole).

No mlip imports: any ASE calculator with ``forces`` (and ``born_charges`` for intensities) works.
"""

from __future__ import annotations

import numpy as np

from mlip.errors import MLIPError

SPEED_OF_LIGHT_CM_S = 2.99792458e10
# sqrt(eV / (Å² amu)) in rad/s, over 2πc: cm⁻¹ per sqrt(eigenvalue of the mass-weighted Hessian)
_EV, _AMU, _ANGSTROM = 1.602176634e-19, 1.66053906660e-27, 1e-10
HESSIAN_TO_WAVENUMBER = np.sqrt(_EV / (_ANGSTROM**2 * _AMU)) / (2 * np.pi * SPEED_OF_LIGHT_CM_S)
# |dμ/dQ|² in e²/amu → IR intensity in km/mol: N_A π / (3 c²) · (4πε₀)⁻¹ in SI (≈ 974.86)
_NA, _C, _E, _EPS0 = 6.02214076e23, 2.99792458e8, 1.602176634e-19, 8.8541878128e-12
IR_INTENSITY_KM_MOL = _NA * np.pi / (3 * _C**2) / (4 * np.pi * _EPS0) * _E**2 / _AMU / 1e3


def ir_spectrum_from_dipoles(
    dipoles: np.ndarray,
    timestep_fs: float,
    max_lag_fs: float | None = None,
    window: str = "hann",
    zero_pad: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """IR spectrum from a dipole time series.

    Args:
        dipoles: ``[T, 3]`` dipole per frame (any unit), frames ``timestep_fs`` apart.
        timestep_fs: time between frames, fs (the MD time step × ``--record-every``).
        max_lag_fs: longest correlation time kept (default: half the trajectory).
        window: ``hann`` (default) or ``none``: applied to the correlation function, it tapers the
            lags to zero so the spectrum has no truncation ripples.
        zero_pad: the transform length is this many times the kept lags (a finer frequency grid).

    Returns:
        ``(wavenumbers in cm⁻¹, intensity)``: the cosine transform of the windowed autocorrelation
        ``C(τ) = ⟨μ̇(t)·μ̇(t+τ)⟩_t`` of the time derivative (central differences); arbitrary units,
        ``I(ν) ∝ ν² |μ̂(ν)|²``.
    """
    mu = np.asarray(dipoles, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[1] != 3 or mu.shape[0] < 4:
        raise MLIPError(f"dipoles must have shape [T >= 4, 3], got {mu.shape}")
    if not timestep_fs > 0:
        raise MLIPError(f"timestep_fs must be > 0, got {timestep_fs!r}")
    if window not in ("hann", "none"):
        raise MLIPError(f"window must be hann or none, got {window!r}")
    n = mu.shape[0]
    mudot = np.gradient(mu, timestep_fs, axis=0)
    mudot = mudot - mudot.mean(axis=0)
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(mudot, nfft, axis=0)
    acf = np.fft.irfft((f * f.conj()).real.sum(axis=1), nfft)[:n] / (n - np.arange(n))  # unbiased
    m = n // 2 if max_lag_fs is None else int(min(n, max(2, round(max_lag_fs / timestep_fs))))
    acf = acf[:m]
    if window == "hann":
        acf = acf * np.cos(0.5 * np.pi * np.arange(m) / m) ** 2  # the decaying half of a Hann window
    length = max(2 * m, zero_pad * 2 * m)
    even = np.zeros(length)
    even[:m] = acf
    even[length - m + 1 :] = acf[1:][::-1]  # even extension: a cosine transform
    intensity = np.fft.rfft(even).real * timestep_fs
    wavenumbers = np.fft.rfftfreq(length, d=timestep_fs * 1e-15) / SPEED_OF_LIGHT_CM_S
    return wavenumbers, intensity


def hessian(calc, atoms, delta: float = 0.005) -> np.ndarray:
    """``[3N, 3N]`` Hessian (eV/Å²) by central differences of the forces, symmetrised."""
    atoms = atoms.copy()
    atoms.calc = calc
    n = len(atoms)
    h = np.zeros((3 * n, 3 * n))
    for i in range(n):
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.calc = minus.calc = calc
            plus.positions[i, a] += delta
            minus.positions[i, a] -= delta
            fp, fm = plus.get_forces().reshape(-1), minus.get_forces().reshape(-1)
            h[3 * i + a] = -(fp - fm) / (2 * delta)
    return 0.5 * (h + h.T)


def harmonic_modes(calc, atoms, delta: float = 0.005, intensities: bool = True) -> dict[str, np.ndarray]:
    """Harmonic normal modes of ``atoms`` (at a minimum: relax first) with ``calc``.

    Returns a dict with ``frequencies`` ``[3N]`` (cm⁻¹, ascending; imaginary frequencies as negative
    numbers; for a molecule the first 6, or 5 if linear, are translations and rotations, ≈ 0),
    ``modes`` ``[3N, N, 3]`` (Cartesian displacements per unit mass-weighted normal coordinate,
    1/√amu) and, if ``intensities``, ``ir_intensities`` ``[3N]`` (km/mol, from the Born charges
    ``Z`` in e: ``974.9 |Σ_i Z_i · mode_i|²``; the dipole must be in e·Å).
    """
    masses = atoms.get_masses()
    n = len(atoms)
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    dynamical = hessian(calc, atoms, delta) * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    values, vectors = np.linalg.eigh(dynamical)
    frequencies = np.sign(values) * np.sqrt(np.abs(values)) * HESSIAN_TO_WAVENUMBER
    modes = (vectors * inv_sqrt_m[:, None]).T.reshape(3 * n, n, 3)
    out = {"frequencies": frequencies, "modes": modes}
    if intensities:
        probe = atoms.copy()
        probe.calc = calc
        born = np.asarray(calc.get_property("born_charges", probe)).reshape(n, 3, 3)
        dmu_dq = np.einsum("iab,kib->ka", born, modes)  # e/√amu
        out["ir_intensities"] = IR_INTENSITY_KM_MOL * (dmu_dq**2).sum(axis=1)
    return out
