"""mlip.spectra: an oscillating dipole gives its peak; rotating the trajectory changes nothing; a
harmonic diatomic with charges ±q gives its known frequency and IR intensity."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mlip.errors import MLIPError
from mlip.spectra import (
    IR_INTENSITY_KM_MOL,
    SPEED_OF_LIGHT_CM_S,
    harmonic_modes,
    hessian,
    ir_spectrum_from_dipoles,
    normal_modes,
)


def synthetic_dipoles(seed: int = 0, n: int = 4000, dt_fs: float = 0.5) -> np.ndarray:
    """Two bands (1000 and 2500 cm⁻¹) along random directions, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * dt_fs * 1e-15
    mu = np.zeros((n, 3))
    for wavenumber, amp in ((1000.0, 1.0), (2500.0, 0.3)):
        direction = rng.normal(size=3)
        phase = rng.uniform(0, 2 * np.pi)
        mu += amp * np.cos(2 * np.pi * wavenumber * SPEED_OF_LIGHT_CM_S * t + phase)[:, None] * direction
    return mu + 1e-4 * rng.normal(size=mu.shape) + np.array([0.5, -1.0, 2.0])


def test_oscillating_dipole_gives_peaks_at_its_frequencies():
    nu, intensity = ir_spectrum_from_dipoles(synthetic_dipoles(), 0.5)
    assert nu[0] == 0.0 and nu[-1] == pytest.approx(1e15 / (2 * 0.5 * SPEED_OF_LIGHT_CM_S), rel=1e-12)
    low, high = nu < 1800.0, nu > 1800.0  # (I ∝ ν²|μ̂|²: either band may be the highest)
    assert abs(nu[low][np.argmax(intensity[low])] - 1000.0) < 10.0
    assert abs(nu[high][np.argmax(intensity[high])] - 2500.0) < 10.0
    # nothing elsewhere: away from both bands the spectrum is tiny
    away = (np.abs(nu - 1000) > 150) & (np.abs(nu - 2500) > 150)
    assert np.abs(intensity[away]).max() < 1e-2 * intensity.max()


def test_spectrum_unchanged_when_the_trajectory_is_rotated():
    mu = synthetic_dipoles(1, n=1000)
    q, r = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    nu, ref = ir_spectrum_from_dipoles(mu, 0.5)
    for rot in (q, -q):
        _, rotated = ir_spectrum_from_dipoles(mu @ rot.T, 0.5)
        np.testing.assert_allclose(rotated, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    with pytest.raises(MLIPError, match="shape"):
        ir_spectrum_from_dipoles(mu[:, :2], 0.5)


class ChargedSpring(Calculator):
    """Two atoms, E = k/2 (|r₂ − r₁| − r₀)², dipole q (r₂ − r₁): Born charges −q·I and +q·I."""

    implemented_properties = ["energy", "forces", "born_charges"]

    def __init__(self, k: float, r0: float, q: float) -> None:
        super().__init__()
        self.k, self.r0, self.q = k, r0, q

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions[1] - self.atoms.positions[0]
        r = np.linalg.norm(d)
        f = -self.k * (r - self.r0) * d / r
        self.results = {
            "energy": 0.5 * self.k * (r - self.r0) ** 2,
            "forces": np.array([-f, f]),
            "born_charges": np.array([-self.q * np.eye(3), self.q * np.eye(3)]),
        }


def test_normal_modes_of_an_external_hessian_match_harmonic_modes():
    k, r0, q = 30.0, 1.1, 0.4
    atoms = Atoms("CO", positions=[[0, 0, 0], [0.2, -0.4, 1.0]])
    atoms.positions[1] *= r0 / np.linalg.norm(atoms.positions[1])
    calc = ChargedSpring(k, r0, q)
    out = harmonic_modes(calc, atoms)
    nu, modes = normal_modes(hessian(calc, atoms), atoms.get_masses())
    np.testing.assert_allclose(nu, out["frequencies"])
    np.testing.assert_allclose(np.abs(modes[-1]), np.abs(out["modes"][-1]))
    with pytest.raises(MLIPError, match=r"\[6, 6\]"):
        normal_modes(np.zeros((5, 5)), atoms.get_masses())


def test_harmonic_diatomic_frequency_and_intensity():
    k, r0, q = 30.0, 1.1, 0.4  # eV/Å², Å, e
    atoms = Atoms("CO", positions=[[0, 0, 0], [0.3, 0.5, r0 / np.sqrt(2)]])
    atoms.positions[1] = atoms.positions[1] / np.linalg.norm(atoms.positions[1]) * r0
    out = harmonic_modes(ChargedSpring(k, r0, q), atoms)
    m1, m2 = atoms.get_masses()
    mu_red = m1 * m2 / (m1 + m2)
    # ω = √(k/μ) in cm⁻¹, independently: eV/Å²/amu → s⁻² and 2πc
    expected = np.sqrt(k * 1.602176634e-19 / 1e-20 / (mu_red * 1.66053906660e-27)) / (
        2 * np.pi * SPEED_OF_LIGHT_CM_S
    )
    assert out["frequencies"][-1] == pytest.approx(expected, rel=1e-4)
    assert np.abs(out["frequencies"][:-1]).max() < 30.0  # translations and rotations
    assert out["ir_intensities"][-1] == pytest.approx(IR_INTENSITY_KM_MOL * q**2 / mu_red, rel=1e-4)
    assert IR_INTENSITY_KM_MOL == pytest.approx(974.9, rel=1e-3)
    # the stretch moves the atoms along the bond, against each other
    mode = out["modes"][-1]
    bond = atoms.positions[1] - atoms.positions[0]
    assert abs(np.dot(mode[1] - mode[0], bond)) == pytest.approx(np.linalg.norm(mode[1] - mode[0]) * r0)


def test_smoothing_gives_a_gaussian_of_the_asked_width_and_keeps_areas():
    from mlip.spectra import smoothed

    nu = np.arange(2000) * 2.0  # cm⁻¹, uniform from 0
    spikes = np.zeros_like(nu)
    spikes[500] = 3.0  # 1000 cm⁻¹
    spikes[3] = 1.0  # 6 cm⁻¹: next to ν = 0, where the even spectrum is mirrored
    out = smoothed(nu, spikes, fwhm=40.0)
    band = out[300:700]
    above_half = nu[300:700][band >= band.max() / 2]
    assert nu[300 + np.argmax(band)] == 1000.0
    assert above_half[-1] - above_half[0] == pytest.approx(40.0, abs=2 * 2.0)  # FWHM, grid resolution
    assert band.sum() == pytest.approx(3.0, rel=1e-6)  # the band's area is kept
    # near ν = 0 the mirrored spectrum: the area over ν ≥ 0 is that of the even band's positive half
    assert out[:100].sum() + out[1:100].sum() == pytest.approx(2.0, rel=1e-3)
    np.testing.assert_array_equal(smoothed(nu, spikes, 0.0), spikes)
    with pytest.raises(MLIPError, match="uniform wavenumber grid"):
        smoothed(nu[::-1], spikes, 10.0)
    with pytest.raises(MLIPError, match=">= 0"):
        smoothed(nu, spikes, -1.0)
