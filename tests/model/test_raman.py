"""mlip.spectra Raman: a synthetic α(t) gives its isotropic and anisotropic bands in the right channel,
rotating the trajectory changes nothing, a harmonic diatomic gives the analytic Raman activity."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mlip.errors import MLIPError
from mlip.spectra import (
    SPEED_OF_LIGHT_CM_S,
    harmonic_modes,
    ir_spectrum_from_dipoles,
    quantum_correction_factor,
    raman_activities,
    raman_invariants,
    raman_spectrum_from_polarizabilities,
    rigid_body_modes,
)


def synthetic_alphas(seed: int = 0, n: int = 3000, dt_fs: float = 0.5) -> np.ndarray:
    """α(t) = α₀ + iso part at 800 cm⁻¹ (∝ I) + anisotropic part at 1600 cm⁻¹ (symmetric traceless)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * dt_fs * 1e-15
    base = rng.normal(size=(3, 3))
    alpha = np.repeat((base + base.T + 10 * np.eye(3))[None], n, axis=0)
    alpha += 0.5 * np.cos(2 * np.pi * 800.0 * SPEED_OF_LIGHT_CM_S * t + 0.3)[:, None, None] * np.eye(3)
    b = rng.normal(size=(3, 3))
    b = b + b.T
    b -= np.trace(b) / 3 * np.eye(3)
    alpha += np.cos(2 * np.pi * 1600.0 * SPEED_OF_LIGHT_CM_S * t + 1.1)[:, None, None] * b
    return alpha + 1e-5 * rng.normal(size=alpha.shape)


def test_iso_and_aniso_bands_appear_in_their_own_channel():
    out = raman_spectrum_from_polarizabilities(synthetic_alphas(), 0.5)
    nu, iso, aniso = out["wavenumbers"], out["isotropic"], out["anisotropic"]
    assert abs(nu[np.argmax(iso)] - 800.0) < 10.0
    assert abs(nu[np.argmax(aniso)] - 1600.0) < 10.0
    # no leakage: the isotropic channel is tiny at 1600 cm⁻¹ and the anisotropic one at 800
    near = lambda x: np.abs(nu - x) < 50  # noqa: E731
    assert np.abs(iso[near(1600)]).max() < 1e-3 * iso.max()
    assert np.abs(aniso[near(800)]).max() < 1e-3 * aniso.max()
    np.testing.assert_allclose(out["polarized"], iso + 4 / 45 * aniso)
    np.testing.assert_allclose(out["depolarized"], aniso / 15)
    np.testing.assert_allclose(out["total"], iso + 7 / 45 * aniso, rtol=1e-12, atol=1e-14 * aniso.max())
    # [T, 9] input is the same as [T, 3, 3]
    flat = raman_spectrum_from_polarizabilities(synthetic_alphas().reshape(-1, 9), 0.5)
    np.testing.assert_allclose(flat["anisotropic"], aniso)
    with pytest.raises(MLIPError, match="shape"):
        raman_spectrum_from_polarizabilities(np.zeros((10, 3)), 0.5)


def test_raman_spectrum_unchanged_when_the_trajectory_is_rotated():
    alpha = synthetic_alphas(1, n=800)
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    ref = raman_spectrum_from_polarizabilities(alpha, 0.5)
    for rot in (q, -q):
        out = raman_spectrum_from_polarizabilities(rot @ alpha @ rot.T, 0.5)
        for key in ("isotropic", "anisotropic"):
            np.testing.assert_allclose(out[key], ref[key], rtol=1e-9, atol=1e-12 * np.abs(ref[key]).max())


def test_harmonic_quantum_correction():
    assert quantum_correction_factor(np.array([0.0]), 300.0)[0] == 1.0
    # x = hcν/kT = 1 at ν = kT/hc: x/(1 − e⁻ˣ)
    nu1 = 300.0 / 1.438776877
    assert quantum_correction_factor(np.array([nu1]), 300.0)[0] == pytest.approx(
        1 / (1 - np.exp(-1)), rel=1e-6
    )
    t = np.arange(400) * 0.5e-15
    mu = np.cos(2 * np.pi * 1000 * SPEED_OF_LIGHT_CM_S * t)[:, None] * np.ones(3)
    # IR: the derivative spectrum already is the harmonic quantum-corrected absorption
    with pytest.raises(MLIPError, match="already the absorption"):
        ir_spectrum_from_dipoles(mu, 0.5, quantum_correction="harmonic", temperature=300.0)
    with pytest.raises(MLIPError, match="temperature"):
        ir_spectrum_from_dipoles(mu, 0.5, quantum_correction="harmonic")
    # Raman: derivative spectrum D(ω) → Stokes line shape QCF(ω) · D(ω) / (ω / 1000 cm⁻¹)²
    alpha = np.eye(3) * (1.0 + 0.1 * np.cos(2 * np.pi * 800 * SPEED_OF_LIGHT_CM_S * t))[:, None, None]
    classical = raman_spectrum_from_polarizabilities(alpha, 0.5)
    quantum = raman_spectrum_from_polarizabilities(
        alpha, 0.5, quantum_correction="harmonic", temperature=300.0
    )
    nu = classical["wavenumbers"]
    expected = classical["isotropic"][1:] * quantum_correction_factor(nu[1:], 300.0) / (nu[1:] / 1000.0) ** 2
    np.testing.assert_allclose(quantum["isotropic"][1:], expected, rtol=1e-12)
    assert quantum["isotropic"][0] == 0.0


def test_raman_invariants_are_rotation_invariant_and_match_the_definition():
    rng = np.random.default_rng(2)
    d = rng.normal(size=(4, 3, 3))
    d = d + d.transpose(0, 2, 1)
    a, g2 = raman_invariants(d)
    np.testing.assert_allclose(a, np.trace(d, axis1=1, axis2=2) / 3)
    beta = d - a[:, None, None] * np.eye(3)
    np.testing.assert_allclose(g2, 1.5 * np.einsum("kab,kab->k", beta, beta))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    a2, g22 = raman_invariants(q @ d @ q.T)
    np.testing.assert_allclose(a2, a)
    np.testing.assert_allclose(g22, g2)


class PolarizableSpring(Calculator):
    """Two atoms, E = k/2 (r − r₀)², α = a(r)·I + b(r)(ûûᵀ − I/3) with a, b linear in r."""

    implemented_properties = ["energy", "forces", "polarizability_derivatives"]

    def __init__(self, k, r0, a1, b0, b1) -> None:
        super().__init__()
        self.k, self.r0, self.a1, self.b0, self.b1 = k, r0, a1, b0, b1

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions[1] - self.atoms.positions[0]
        r = np.linalg.norm(d)
        u = d / r
        f = -self.k * (r - self.r0) * u
        eye = np.eye(3)
        b = self.b0 + self.b1 * (r - self.r0)
        du = (eye - np.outer(u, u)) / r  # du_a/dd_c
        # ∂α_ab/∂d_c
        p = self.a1 * eye[:, :, None] * u[None, None, :]
        p += self.b1 * (np.outer(u, u) - eye / 3)[:, :, None] * u[None, None, :]
        p += b * (du[:, None, :] * u[None, :, None] + u[:, None, None] * du[None, :, :])
        self.results = {
            "energy": 0.5 * self.k * (r - self.r0) ** 2,
            "forces": np.array([-f, f]),
            "polarizability_derivatives": np.array([-p, p]),
        }


def test_raman_activity_of_a_diatomic_equals_the_analytic_value():
    k, r0, a1, b0, b1 = 30.0, 1.1, 0.7, 0.4, 1.3  # eV/Å², Å, Å², Å³, Å²
    atoms = Atoms("CO", positions=[[0, 0, 0], [0.3, 0.5, 0.8]])
    atoms.positions[1] *= r0 / np.linalg.norm(atoms.positions[1])
    out = harmonic_modes(PolarizableSpring(k, r0, a1, b0, b1), atoms, intensities=False, raman=True)
    m1, m2 = atoms.get_masses()
    mu_red = m1 * m2 / (m1 + m2)
    # dα/dQ = (a₁ I + b₁(ûû − I/3))/√μ: a' = a₁/√μ, γ'² = b₁²/μ, S = (45 a₁² + 7 b₁²)/μ
    assert out["raman_activities"][-1] == pytest.approx((45 * a1**2 + 7 * b1**2) / mu_red, rel=1e-6)
    assert "ir_intensities" not in out
    rigid = rigid_body_modes(atoms, out["frequencies"])
    assert rigid.sum() == 5 and not rigid[-1]  # linear: 3 translations + 2 rotations
    # the activities are those of raman_activities on the same modes
    p = PolarizableSpring(k, r0, a1, b0, b1)
    probe = atoms.copy()
    probe.calc = p
    direct = raman_activities(p.get_property("polarizability_derivatives", probe), out["modes"])
    np.testing.assert_allclose(direct, out["raman_activities"])
