"""QC metrics on analytic lines of known FWHM, height and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import voigt_profile

from mrsflow import qc

DT, F0, N = 5e-4, 127.8, 2048
T = np.arange(N) * DT


def line(ppm, amp=3.0, lorentz=5.0, gauss=0.0, phase_deg=0.0):
    nu = (ppm - 4.65) * F0
    decay = np.exp(-np.pi * lorentz * T - (np.pi * gauss * T) ** 2 / (4 * math.log(2)))
    return amp * np.exp(1j * np.deg2rad(phase_deg)) * np.exp(2j * np.pi * nu * T) * decay


def voigt_fwhm(lorentz, gauss):
    """Numerical FWHM of the continuous Voigt profile (FWHMs ``lorentz``, ``gauss`` in Hz)."""
    sigma = gauss / (2 * math.sqrt(2 * math.log(2)))
    gamma = lorentz / 2
    peak = voigt_profile(0.0, sigma, gamma)
    half = brentq(lambda x: voigt_profile(x, sigma, gamma) - peak / 2, 1e-9, 10 * (lorentz + gauss))
    return 2 * half


@pytest.mark.parametrize(
    ("lorentz", "gauss"), [(5.0, 0.0), (9.0, 0.0), (2.0, 5.0), (0.0, 6.0), (3.0, 3.0), (1.0, 8.0)]
)
@pytest.mark.parametrize("ppm", [2.008, 2.0113])  # on and off the FFT grid
def test_linewidth_of_analytic_voigt_within_2_percent(lorentz, gauss, ppm):
    truth = voigt_fwhm(lorentz, gauss)
    fid = line(ppm, lorentz=lorentz, gauss=gauss, phase_deg=37.0)
    got = qc.linewidth_hz(fid, DT, F0, peak_ppm=(1.9, 2.1))
    assert got == pytest.approx(truth, rel=0.02)


def test_water_linewidth_window():
    fid = line(4.65, amp=8e4, lorentz=4.0, gauss=5.0, phase_deg=-120.0)
    got = qc.linewidth_hz(fid, DT, F0, peak_ppm=qc.WATER_PPM)
    assert got == pytest.approx(voigt_fwhm(4.0, 5.0), rel=0.02)


def test_autophase_recovers_applied_phase():
    for phase in (-170.0, -40.0, 0.0, 95.0):
        fid = line(2.008, lorentz=4.0, gauss=3.0, phase_deg=phase)
        phi = qc.autophase(fid, DT, F0, peak_ppm=qc.NAA_PPM)
        err = (np.rad2deg(phi) + phase + 180.0) % 360.0 - 180.0
        assert abs(err) < 0.5


def test_noise_sd_of_white_noise():
    rng = np.random.default_rng(3)
    sigma = 0.7
    est = [
        qc.noise_sd(sigma * rng.standard_normal(2 * N).view(np.complex128), DT, F0)
        for _ in range(20)
    ]
    assert np.mean(est) == pytest.approx(sigma * math.sqrt(N - 0.75), rel=0.03)


@pytest.mark.parametrize("lorentz", [4.0, 7.0])
def test_snr_of_known_height_and_noise_within_5_percent(lorentz):
    amp = 3.0
    r = math.exp(-math.pi * lorentz * DT)
    height = amp * (1 + r) / (2 * (1 - r))  # real DFT at the peak with the first point halved
    fid = line(2.008, amp=amp, lorentz=lorentz, phase_deg=60.0)
    assert qc.peak_height(fid, DT, F0) == pytest.approx(height, rel=0.005)
    rng = np.random.default_rng(11)
    for target in (12.0, 20.0):
        sigma_t = height / (target * math.sqrt(N - 0.75))
        vals = [
            qc.snr(fid + sigma_t * rng.standard_normal(2 * N).view(np.complex128), DT, F0)
            for _ in range(24)
        ]
        assert np.mean(vals) == pytest.approx(target, rel=0.05)


def test_snr_and_linewidth_ignore_a_constant_baseline_offset():
    fid = line(2.008, amp=3.0, lorentz=6.0, phase_deg=10.0)
    rng = np.random.default_rng(5)
    noise = 0.02 * rng.standard_normal(2 * N).view(np.complex128)
    offset = np.zeros(N, complex)
    offset[0] = 40.0  # a DC offset of 20 in the real spectrum (first point halved)
    a = qc.snr(fid + noise, DT, F0)
    b = qc.snr(fid + noise + offset, DT, F0)
    assert b == pytest.approx(a, rel=0.01)
    assert qc.linewidth_hz(fid + offset, DT, F0) == pytest.approx(6.0, rel=0.02)


def test_peak_position_and_axis():
    fid = line(2.0113, lorentz=5.0)
    assert qc.peak_ppm_position(fid, DT, F0) == pytest.approx(2.0113, abs=5e-4)
    assert qc.peak_ppm_position(fid, DT, F0, use="real") == pytest.approx(2.0113, abs=5e-4)
    ppm = qc.ppm_axis(N, DT, F0)
    assert ppm[N // 2] == pytest.approx(4.65)
    assert np.all(np.diff(ppm) > 0)


@pytest.mark.parametrize("bandwidth_hz", [2000.0, 1300.0, 1200.0, 1000.0])
def test_noise_and_snr_adapt_to_the_spectral_width(bandwidth_hz):
    """The default noise windows need ~1900 Hz at 3 T; below that the band's ends serve
    (Siemens' 1200 Hz used to stop with 'no noise window inside the spectral width'). The
    noise SD of white noise of known SD is recovered either way (spectrum SD = sigma
    sqrt(N) per component for an unnormalised FFT)."""
    dt = 1.0 / bandwidth_hz
    t = np.arange(N) * dt
    rng = np.random.default_rng(3)
    sigma = 0.05
    noise = sigma * (rng.normal(size=N) + 1j * rng.normal(size=N))
    naa = 3.0 * np.exp(2j * np.pi * (2.008 - 4.65) * F0 * t - np.pi * 5.0 * t)
    sd = qc.noise_sd(naa + noise, dt, F0)
    assert sd == pytest.approx(sigma * math.sqrt(N), rel=0.15)
    snr = qc.snr(naa + noise, dt, F0)
    expected = qc.peak_height(naa, dt, F0) / (sigma * math.sqrt(N))
    assert snr == pytest.approx(expected, rel=0.15)


def test_snr_of_all_zero_data_is_nan_not_a_crash():
    assert math.isnan(qc.snr(np.zeros(N, complex) + 0j, DT, F0))
