"""The unsuppressed water reference: its amplitude (area, the water scaling's reference) and
linewidth from a Voigt line fitted to it."""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from mrsflow.errors import InputError
from mrsflow.fit.builtin import _CQ, _fit_bins, _single_thread_blas
from mrsflow.fit.contract import voigt_fwhm


def fit_water(
    water_fid: np.ndarray,
    dwell_s: float,
    f0_mhz: float,
    *,
    ppm_range=(4.0, 5.3),
    centre_ppm: float = 4.65,
) -> dict:
    """Voigt fit of the water reference -> dict(amplitude, linewidth_hz, shift_hz, phase_deg,
    gamma_hz, sigma_hz, success). ``amplitude`` = |fid(t=0)| of the water line."""
    with _single_thread_blas():
        return _fit_water(water_fid, dwell_s, f0_mhz, ppm_range, centre_ppm)


def _fit_water(water_fid, dwell_s, f0_mhz, ppm_range, centre_ppm) -> dict:
    w = np.asarray(water_fid, dtype=complex).ravel()
    n = w.size
    t = np.arange(n) * dwell_s
    idx, nu, _ = _fit_bins(n, dwell_s, f0_mhz, centre_ppm, ppm_range)
    yfull = np.fft.fft(w)[idx]
    scale = float(np.max(np.abs(yfull)))
    if not scale > 0:
        raise InputError("water reference is zero in its fit range")
    y = yfull / scale
    k0 = int(np.argmax(np.abs(y)))
    df = 1.0 / (n * dwell_s)
    fwhm0 = max(df * np.count_nonzero(np.abs(y) >= 0.5 * np.abs(y[k0])), 2.0 * df)

    def line(p):
        e = np.exp(2j * math.pi * p[2] * t - math.pi * p[3] * t - _CQ * p[4] * t * t)
        return e

    def model(p):
        return (p[0] + 1j * p[1]) * np.fft.fft(line(p))[idx]

    def resid(p):
        r = model(p) - y
        return np.concatenate([r.real, r.imag])

    def jac(p):
        e = line(p)
        c = p[0] + 1j * p[1]
        f0v = np.fft.fft(e)[idx]
        ft = np.fft.fft(t * e)[idx]
        ft2 = np.fft.fft(t * t * e)[idx]
        cols = np.column_stack(
            [f0v, 1j * f0v, c * 2j * math.pi * ft, -c * math.pi * ft, -c * _CQ * ft2]
        )
        return np.concatenate([cols.real, cols.imag], axis=0)

    p0 = np.array([0.0, 0.0, nu[k0], 0.5 * fwhm0, (0.6 * fwhm0) ** 2])
    basis0 = np.fft.fft(line(p0))[idx]
    c0 = np.vdot(basis0, y) / np.vdot(basis0, basis0)
    p0[0], p0[1] = c0.real, c0.imag
    lb = [-np.inf, -np.inf, nu[0], 0.0, 0.0]
    ub = [np.inf, np.inf, nu[-1], 200.0, 200.0**2]
    sol = optimize.least_squares(
        resid,
        p0,
        jac=jac,
        bounds=(lb, ub),
        method="trf",
        x_scale="jac",
        ftol=1e-12,
        xtol=1e-12,
        gtol=1e-12,
        max_nfev=200,
    )
    p = sol.x
    c = (p[0] + 1j * p[1]) * scale
    gauss = math.sqrt(max(p[4], 0.0))
    return {
        "amplitude": float(abs(c)),
        "linewidth_hz": voigt_fwhm(p[3], gauss),
        "shift_hz": float(p[2] - (4.65 - centre_ppm) * f0_mhz),
        "phase_deg": float(math.degrees(math.atan2(c.imag, c.real))),
        "gamma_hz": float(p[3]),
        "sigma_hz": gauss,
        "success": bool(sol.success),
    }
