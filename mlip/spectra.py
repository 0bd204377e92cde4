"""Vibrational spectra from a model: IR and Raman from MD trajectories, harmonic modes, IR and Raman.

* :func:`ir_spectrum_from_dipoles`: the IR line shape from the autocorrelation of the dipole's time
  derivative along MD (``mlip md`` records ``MLIP_dipole`` per frame), windowed and Fourier
  transformed. Anharmonic and temperature dependent, in arbitrary units (classical, no quantum
  correction). Invariant under rotating the trajectory (it uses ``Σ_a μ̇_a(0) μ̇_a(t)``).
* :func:`raman_spectrum_from_polarizabilities`: isotropic and anisotropic Raman line shapes from the
  autocorrelations of the time derivatives of the polarizability's isotropic part (trace/3) and of
  its anisotropic (symmetric traceless) part along MD (``MLIP_polarizability``), same conventions.
* Quantum corrections. The IR spectrum returned, ``ω² C_cl(ω)`` (the transform of ``⟨μ̇μ̇⟩``), is
  already the absorption line shape ``α(ω) n(ω)`` of the harmonic quantum-correction scheme:
  ``ω (1 − e^{−βħω}) · [βħω / (1 − e^{−βħω})] C_cl(ω) = βħ ω² C_cl(ω)`` (Ramírez et al., J. Chem.
  Phys. 121, 3973 (2004)), so it takes no further factor (asking for one is an error). For Raman,
  ``quantum_correction="harmonic"`` turns the derivative spectrum ``D(ω) = ω² C_cl^{αα}(ω)`` into the
  quantum Stokes line shape ``[βħω / (1 − e^{−βħω})] C_cl^{αα}(ω) ∝ D(ω) / (ω (1 − e^{−βħω}))`` (the
  Bose factor n + 1 over ω; no laser-frequency factor), which weights low frequencies up.
* :func:`harmonic_modes`: harmonic frequencies (cm⁻¹) from the finite-difference Hessian of the
  calculator's forces, IR intensities (km/mol) from its Born charges
  (``get_property("born_charges")``; exact autograd derivatives for an mlip model with a dipole)
  and Raman activities (Å⁴/amu) from its polarizability derivatives
  (``get_property("polarizability_derivatives")``), see :func:`raman_activities`.
  :func:`normal_modes` does its Hessian → frequencies and modes step for a Hessian from elsewhere.
* :func:`rigid_body_modes`, :func:`broadened`: which modes are translations/rotations, and
  Lorentzian-broadened stick spectra.
* :func:`smoothed`: an MD spectrum convolved with a Gaussian of a given FWHM (cm⁻¹), e.g. to average
  out the noise of a short trajectory; the band areas are kept.

No mlip imports but :mod:`mlip.errors`: any ASE calculator with ``forces`` (and ``born_charges`` /
``polarizability_derivatives`` for intensities) works.
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
# ħ·2πc/k_B: K per cm⁻¹ (hc/k_B = 1.4388 cm·K)
_HC_OVER_KB_CM_K = 6.62607015e-34 * SPEED_OF_LIGHT_CM_S / 1.380649e-23
QUANTUM_CORRECTIONS = (None, "none", "harmonic")


def _derivative_acf_spectrum(
    series: np.ndarray,
    timestep_fs: float,
    max_lag_fs: float | None,
    window: str,
    zero_pad: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine transform of the windowed ``Σ_k ⟨ẋ_k(t) ẋ_k(t+τ)⟩_t`` of a ``[T, K]`` series."""
    n = series.shape[0]
    xdot = np.gradient(series, timestep_fs, axis=0)
    xdot = xdot - xdot.mean(axis=0)
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(xdot, nfft, axis=0)
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


def _check_common(timestep_fs, window, quantum_correction, temperature) -> None:
    if not timestep_fs > 0:
        raise MLIPError(f"timestep_fs must be > 0, got {timestep_fs!r}")
    if window not in ("hann", "none"):
        raise MLIPError(f"window must be hann or none, got {window!r}")
    if quantum_correction not in QUANTUM_CORRECTIONS:
        raise MLIPError(f"quantum_correction must be None or 'harmonic', got {quantum_correction!r}")
    if quantum_correction == "harmonic" and not (temperature is not None and temperature > 0):
        raise MLIPError("the harmonic quantum correction needs a temperature > 0 (K)")


def quantum_correction_factor(wavenumbers: np.ndarray, temperature: float) -> np.ndarray:
    """Harmonic quantum-correction factor ``x / (1 − e^{−x})``, ``x = βħω = hcν̃/(k_B T)`` (1 at ν̃ = 0).

    Multiplying a classical (symmetric) correlation spectrum by it gives the harmonic quantum
    spectrum (Ramírez, López-Ciudad, Kumar, Marx, J. Chem. Phys. 121, 3973 (2004)).
    """
    x = _HC_OVER_KB_CM_K * np.asarray(wavenumbers, dtype=np.float64) / temperature
    out = np.ones_like(x)
    nz = np.abs(x) > 1e-12
    out[nz] = x[nz] / -np.expm1(-x[nz])
    return out


def ir_spectrum_from_dipoles(
    dipoles: np.ndarray,
    timestep_fs: float,
    max_lag_fs: float | None = None,
    window: str = "hann",
    zero_pad: int = 4,
    quantum_correction: str | None = None,
    temperature: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """IR spectrum from a dipole time series.

    Args:
        dipoles: ``[T, 3]`` dipole per frame (any unit), frames ``timestep_fs`` apart.
        timestep_fs: time between frames, fs (the MD time step × ``--record-every``).
        max_lag_fs: longest correlation time kept (default: half the trajectory).
        window: ``hann`` (default) or ``none``: applied to the correlation function, it tapers the
            lags to zero so the spectrum has no truncation ripples.
        zero_pad: the transform length is this many times the kept lags (a finer frequency grid).
        quantum_correction: must be ``None``: the derivative spectrum is already the harmonic
            quantum-corrected absorption (module docstring); ``"harmonic"`` is an error that says so.

    Returns:
        ``(wavenumbers in cm⁻¹, intensity)``: the cosine transform of the windowed autocorrelation
        ``C(τ) = ⟨μ̇(t)·μ̇(t+τ)⟩_t`` of the time derivative (central differences); arbitrary units,
        ``I(ν) ∝ ν² |μ̂(ν)|²``.
    """
    mu = np.asarray(dipoles, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[1] != 3 or mu.shape[0] < 4:
        raise MLIPError(f"dipoles must have shape [T >= 4, 3], got {mu.shape}")
    _check_common(timestep_fs, window, quantum_correction, temperature)
    if quantum_correction == "harmonic":
        raise MLIPError(
            "IR: the dipole-derivative spectrum is already the absorption with the harmonic quantum "
            "correction (βħω² C_cl(ω)); leave out the quantum correction"
        )
    return _derivative_acf_spectrum(mu, timestep_fs, max_lag_fs, window, zero_pad)


def polarizability_parts(alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[T, 3, 3]`` (or ``[T, 9]``) → isotropic ``a = tr α / 3`` ``[T]`` and anisotropic part
    ``β = (α + αᵀ)/2 − a·I`` ``[T, 3, 3]`` (symmetric, traceless)."""
    alpha = np.asarray(alphas, dtype=np.float64)
    if alpha.ndim == 2 and alpha.shape[1] == 9:
        alpha = alpha.reshape(-1, 3, 3)
    if alpha.ndim != 3 or alpha.shape[1:] != (3, 3):
        raise MLIPError(f"polarizabilities must have shape [T, 3, 3] or [T, 9], got {alpha.shape}")
    sym = 0.5 * (alpha + alpha.transpose(0, 2, 1))
    iso = np.trace(sym, axis1=1, axis2=2) / 3.0
    return iso, sym - iso[:, None, None] * np.eye(3)


def raman_spectrum_from_polarizabilities(
    alphas: np.ndarray,
    timestep_fs: float,
    max_lag_fs: float | None = None,
    window: str = "hann",
    zero_pad: int = 4,
    quantum_correction: str | None = None,
    temperature: float | None = None,
) -> dict[str, np.ndarray]:
    """Raman spectra from a polarizability time series (same conventions as the IR function).

    With ``a(t) = tr α / 3`` and ``β(t)`` the symmetric traceless part (:func:`polarizability_parts`):

    * ``isotropic``: cosine transform of the windowed ``⟨ȧ(t) ȧ(t+τ)⟩_t``;
    * ``anisotropic``: that of ``(3/2) ⟨Σ_ab β̇_ab(t) β̇_ab(t+τ)⟩_t`` (the ``γ²`` invariant's
      correlation, ``γ² = (3/2) β:β``);
    * ``polarized`` = ``isotropic + (4/45) anisotropic`` (parallel polarizations, ⟨α_xx α_xx⟩) and
      ``depolarized`` = ``anisotropic / 15`` (crossed, ⟨α_xy α_xy⟩), the orientational averages of a
      liquid or gas (D. A. Long, *The Raman Effect*, Wiley 2002, ch. 5); ``total`` = polarized +
      depolarized = ``isotropic + (7/45) anisotropic``, which matches the harmonic activity
      ``45 a'² + 7 γ'²`` up to the factor 45.

    Classical line shapes in arbitrary units (no laser-frequency or Bose–Einstein factor), invariant
    under rotating the trajectory. ``quantum_correction="harmonic"``: every intensity becomes the
    quantum Stokes line shape ``D(ω) · QCF(ω) / (ω/ω₀)²`` with ``QCF`` of :func:`quantum_correction_factor`
    at ``temperature`` and ``ω₀ = 1000 cm⁻¹`` (keeps the numbers O(1); 0 at ω = 0), see the module
    docstring.

    Returns:
        a dict of ``wavenumbers`` (cm⁻¹) and the five intensities above, each ``[F]``.
    """
    iso, aniso = polarizability_parts(alphas)
    if iso.shape[0] < 4:
        raise MLIPError(f"polarizabilities: need at least 4 frames, got {iso.shape[0]}")
    _check_common(timestep_fs, window, quantum_correction, temperature)
    nu, s_iso = _derivative_acf_spectrum(iso[:, None], timestep_fs, max_lag_fs, window, zero_pad)
    _, s_aniso = _derivative_acf_spectrum(aniso.reshape(-1, 9), timestep_fs, max_lag_fs, window, zero_pad)
    s_aniso = 1.5 * s_aniso
    if quantum_correction == "harmonic":
        stokes = np.zeros_like(nu)  # QCF(ω) / (ω/ω₀)²: derivative spectrum → Stokes line shape
        stokes[1:] = quantum_correction_factor(nu[1:], temperature) / (nu[1:] / 1000.0) ** 2
        s_iso, s_aniso = s_iso * stokes, s_aniso * stokes
    polarized, depolarized = s_iso + 4.0 / 45.0 * s_aniso, s_aniso / 15.0
    return {
        "wavenumbers": nu,
        "isotropic": s_iso,
        "anisotropic": s_aniso,
        "polarized": polarized,
        "depolarized": depolarized,
        "total": polarized + depolarized,
    }


def smoothed(wavenumbers: np.ndarray, intensity: np.ndarray, fwhm: float) -> np.ndarray:
    """``intensity`` ``[F]`` on the uniform grid ``wavenumbers`` (cm⁻¹, starting at 0, as the MD
    spectra return it) convolved with a normalised Gaussian of full width at half maximum ``fwhm``
    (cm⁻¹). The spectrum is even in ν, so it is mirrored about ν = 0 at the lower edge; band areas and
    positions are kept. ``fwhm = 0`` returns the input."""
    from scipy.ndimage import gaussian_filter1d

    nu = np.asarray(wavenumbers, dtype=np.float64)
    values = np.asarray(intensity, dtype=np.float64)
    if not fwhm >= 0:
        raise MLIPError(f"the smoothing width must be >= 0 cm⁻¹, got {fwhm!r}")
    if fwhm == 0 or nu.size < 2:
        return values.copy()
    step = nu[1] - nu[0]
    if not (step > 0 and abs(nu[0]) < 1e-9 * step and np.allclose(np.diff(nu), step)):
        raise MLIPError("smoothing needs a uniform wavenumber grid starting at 0 cm⁻¹")
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / step  # in grid points
    return gaussian_filter1d(values, sigma, mode="mirror", truncate=5.0)


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


def ir_intensities(born_charges: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """IR intensities (km/mol) of ``modes`` ``[M, N, 3]`` (1/√amu) from Born charges ``[N, 3, 3]`` (e):
    ``974.9 |dμ/dQ|²`` with ``dμ_a/dQ = Σ_ib Z_iab · mode_ib``."""
    dmu_dq = np.einsum("iab,kib->ka", np.asarray(born_charges, dtype=np.float64), modes)  # e/√amu
    return IR_INTENSITY_KM_MOL * (dmu_dq**2).sum(axis=1)


def raman_invariants(dalpha_dq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a', γ'²)`` of ``[M, 3, 3]`` polarizability derivatives along normal modes (symmetrised).

    ``a' = (α'_xx + α'_yy + α'_zz)/3`` and ``γ'² = ½[(α'_xx − α'_yy)² + (α'_yy − α'_zz)² +
    (α'_zz − α'_xx)² + 6(α'_xy² + α'_yz² + α'_zx²)]`` (= (3/2) β':β' for the traceless part β').
    """
    d = np.asarray(dalpha_dq, dtype=np.float64)
    d = 0.5 * (d + d.transpose(0, 2, 1))
    xx, yy, zz = d[:, 0, 0], d[:, 1, 1], d[:, 2, 2]
    a = (xx + yy + zz) / 3.0
    gamma2 = 0.5 * ((xx - yy) ** 2 + (yy - zz) ** 2 + (zz - xx) ** 2) + 3.0 * (
        d[:, 0, 1] ** 2 + d[:, 1, 2] ** 2 + d[:, 2, 0] ** 2
    )
    return a, gamma2


def raman_activities(polarizability_derivatives: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Raman activities ``S = 45 a'² + 7 γ'²`` (Å⁴/amu for α in Å³) of ``modes`` ``[M, N, 3]`` (1/√amu).

    ``polarizability_derivatives``: ``[N, 3, 3, 3]`` = ``∂α_ab/∂r_{i,c}`` (Å²);
    ``dα_ab/dQ = Σ_ic P_iabc · mode_ic``, and ``a'``, ``γ'²`` its invariants (:func:`raman_invariants`).
    The usual Raman activity of quantum-chemistry codes (Gaussian, ORCA): Porezag & Pederson,
    Phys. Rev. B 54, 7830 (1996), eq. 4; D. A. Long, *The Raman Effect* (Wiley, 2002).
    """
    p = np.asarray(polarizability_derivatives, dtype=np.float64)
    dalpha_dq = np.einsum("iabc,kic->kab", p, modes)
    a, gamma2 = raman_invariants(dalpha_dq)
    return 45.0 * a**2 + 7.0 * gamma2


def rigid_body_modes(atoms, frequencies: np.ndarray) -> np.ndarray:
    """Boolean ``[3N]`` mask of the translations and rotations among ``frequencies`` (ascending,
    from :func:`harmonic_modes`): the 6 (5 for a linear molecule, 3 for a periodic cell) closest to
    zero. With a converged relaxation these are ≈ 0 cm⁻¹ and the rest are the vibrations."""
    n = len(atoms)
    if any(atoms.pbc):
        count = 3
    elif n == 1:
        count = 3
    else:
        centred = atoms.positions - atoms.get_center_of_mass()
        _, s, _ = np.linalg.svd(centred, full_matrices=False)
        count = 5 if n == 2 or s[1] < 1e-3 * max(s[0], 1e-12) else 6
    count = min(count, 3 * n)
    mask = np.zeros(len(frequencies), dtype=bool)
    mask[np.argsort(np.abs(frequencies))[:count]] = True
    return mask


def broadened(
    frequencies: np.ndarray, intensities: np.ndarray, grid: np.ndarray, width: float = 10.0
) -> np.ndarray:
    """Lorentzian-broadened stick spectrum on ``grid``: ``Σ_k I_k L(ν − ν_k)`` with area-normalised
    Lorentzians of full width at half maximum ``width`` (cm⁻¹); units: intensity per cm⁻¹."""
    if not width > 0:
        raise MLIPError(f"width must be > 0, got {width!r}")
    g = 0.5 * width
    diff = np.asarray(grid, dtype=np.float64)[:, None] - np.asarray(frequencies)[None, :]
    return (g / np.pi / (diff**2 + g**2)) @ np.asarray(intensities, dtype=np.float64)


def normal_modes(hessian_matrix: np.ndarray, masses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies ``[3N]`` (cm⁻¹, ascending; imaginary ones negative) and modes ``[3N, N, 3]``
    (Cartesian displacements per unit mass-weighted normal coordinate, 1/√amu) of a ``[3N, 3N]``
    Hessian (eV/Å²) with ``masses`` ``[N]`` (amu): what :func:`harmonic_modes` does with the model's
    Hessian, usable with one from elsewhere (e.g. a DFT code) for identical post-processing."""
    masses = np.asarray(masses, dtype=np.float64)
    n = len(masses)
    h = np.asarray(hessian_matrix, dtype=np.float64)
    if h.shape != (3 * n, 3 * n):
        raise MLIPError(f"a Hessian of {n} atoms must be [{3 * n}, {3 * n}], got {list(h.shape)}")
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    dynamical = h * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    values, vectors = np.linalg.eigh(dynamical)
    frequencies = np.sign(values) * np.sqrt(np.abs(values)) * HESSIAN_TO_WAVENUMBER
    modes = (vectors * inv_sqrt_m[:, None]).T.reshape(3 * n, n, 3)
    return frequencies, modes


def harmonic_modes(
    calc, atoms, delta: float = 0.005, intensities: bool = True, raman: bool = False
) -> dict[str, np.ndarray]:
    """Harmonic normal modes of ``atoms`` (at a minimum: relax first) with ``calc``.

    Returns a dict with ``frequencies`` ``[3N]`` (cm⁻¹, ascending; imaginary frequencies as negative
    numbers; for a molecule 6, or 5 if linear, are translations and rotations, ≈ 0: see
    :func:`rigid_body_modes`), ``modes`` ``[3N, N, 3]`` (Cartesian displacements per unit
    mass-weighted normal coordinate, 1/√amu), if ``intensities`` ``ir_intensities`` ``[3N]`` (km/mol,
    from the Born charges ``Z`` in e: ``974.9 |Σ_i Z_i · mode_i|²``; the dipole must be in e·Å) and,
    if ``raman``, ``raman_activities`` ``[3N]`` (Å⁴/amu, :func:`raman_activities`; α in Å³).
    """
    n = len(atoms)
    frequencies, modes = normal_modes(hessian(calc, atoms, delta), atoms.get_masses())
    out = {"frequencies": frequencies, "modes": modes}
    probe = atoms.copy()
    probe.calc = calc
    if intensities:
        born = np.asarray(calc.get_property("born_charges", probe)).reshape(n, 3, 3)
        out["ir_intensities"] = ir_intensities(born, modes)
    if raman:
        derivs = np.asarray(calc.get_property("polarizability_derivatives", probe)).reshape(n, 3, 3, 3)
        out["raman_activities"] = raman_activities(derivs, modes)
    return out
