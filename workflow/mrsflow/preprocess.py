"""Builtin preprocessing of single-voxel 1H-MRS in NIfTI-MRS: MC reconstruction, alignment,
outlier rejection, averaging, eddy-current correction, residual-water removal, referencing.

Pure array functions do the work; :func:`run_preprocess` is a thin file wrapper.  FIDs follow
the project convention (a line at ``delta`` ppm is ``exp(+2 pi i nu t)``,
``nu = (delta - 4.65) f0``); NIfTI-MRS files are read and written through :mod:`mrsflow.nmrs`,
which converts from and to the conjugate convention the files store.

Pipeline (``mode='mc'``, metabolite-cycled, non-water-suppressed; input (1,1,1,N,2,P) with
``DIM_METCYCLE`` (fastest in the raw row order) and ``DIM_DYN``; raw row ``r = m + 2 p``)

1. Per-transient frequency/phase alignment of every row to the water, which dominates every
   row (:func:`align_transients`, water window 4.2-5.1 ppm, first 200 ms, two passes).
2. Outlier rejection (:func:`detect_outliers`); a pair is rejected when either row is.
3. MC reconstruction of the kept pairs: water = mean of the pair, metabolites = half the
   difference ``(row[m=u] - row[m=1-u]) / 2``; averaging over pairs.
4. Frequency referencing (water peak to 4.65 ppm) and Klose eddy-current correction
   (:func:`klose_ecc`; the water's phase ``phi_w(t)`` is subtracted point by point from the
   metabolite and the water FIDs, which also zero-phases both).
5. Residual-water removal with the MC water itself (:func:`remove_water_template`, the
   default ``mc_water_removal='template'``): the water left in the half difference is, to
   first order, ``(e0 + i 2 pi df t) W(t)`` (state asymmetry, and the tiny relative
   phase/frequency of the two states' averages that the per-transient water registration
   leaves because the opposite-signed metabolites bias it); its three parameters are
   fitted to ``D / W`` and the term subtracted.  ``'hlsvd'`` / ``'template+hlsvd'`` use or
   add HLSVD (below); ``hlsvd: False`` switches residual-water removal off.
6. Metabolite sign: ``u`` (the METCYCLE index whose rows have upright upfield metabolites,
   i.e. ``cycle = +1``: downfield inverted) is chosen so that the summed real part (minus a
   straight line through each window's end points) of the NAA, Cr and Cho regions of the
   ECC-corrected, water-removed metabolite spectrum is positive.  With the
   model ``row = W + c (U - D)`` (``c`` = +1 downfield inverted, -1 upfield inverted) the
   processed metabolite FID is ``U - D``: upfield metabolites upright, downfield ones
   (> 4.65 ppm) inverted.

``mode='classic'`` (water-suppressed rows, separate water reference ``water_nii``): the WS
rows are aligned by spectral registration (Near et al. 2015, MRM 73:44) in 1.85-4.0 ppm
when more than one row exists (a single scanner-averaged row is left as is and this is
recorded), outliers rejected, averaged; the water reference is aligned/averaged the same
way (water window), referenced to 4.65 ppm; Klose ECC of the metabolites with the water's
phase; HLSVD residual-water removal; then the metabolite spectrum is referenced so that NAA
is at 2.008 ppm and zero-order phased on NAA (:func:`mrsflow.qc.autophase`), because the WS
and water scans have independent zero-order phases.

Alignment (:func:`align_transients`) is Near's time-domain least-squares model extended by a
free complex scale (variable projection): for transient ``x`` and reference ``y`` (both
optionally band-limited to a ppm window and truncated to ``tmax``), minimising
``||c x exp(2 pi i f t) - y||^2`` over complex ``c`` leaves ``max_f |Z(f)|`` with
``Z(f) = sum_t conj(x(t)) y(t) exp(-2 pi i f t)`` - a Fourier transform of ``conj(x) y``.  It is
evaluated on a zero-padded FFT grid (global search within ``max_shift_hz``, no local-minimum
trap for large jumps) and refined by Newton steps on the exact sum; the phase correction is
``arg Z(f*)``.  The transient's offsets relative to the reference reported everywhere are
``freq_hz = -f*`` and ``phase_deg = -arg Z(f*)`` (so they are directly comparable with the
offsets that were applied to it).  Quality metrics per transient: relative amplitude
``|Z| / ||y||^2`` and shape mismatch ``1 - |Z|^2 / (||x||^2 ||y||^2)``.  Pass 1 uses the
coordinate-wise median transient as reference, pass 2 the mean of the pass-1-aligned
transients that pass-1 rejection kept.

Outlier rule (:func:`detect_outliers`): robust z-scores ``z = (v - median) / (1.4826 MAD)``
of (a) log amplitude (two-sided), (b) mismatch (upper), (c) frequency and (d) phase
deviations from a running median over ``median_kernel`` transients (sudden jumps = motion);
a transient is an outlier when for any metric ``|z|`` exceeds its threshold (``z_thresh``
= 3.5 for (a, b); ``z_thresh_jump`` = 5 for (c, d), whose low-SNR estimates are heavy
tailed) AND the deviation exceeds
that metric's practical floor (``floor_log_amp``, ``floor_mismatch``, ``floor_freq_hz``,
``floor_phase_deg``): with very precise estimates (MC water) the MAD is tiny and a z-score
alone would flag noise.

HLSVD (:func:`hlsvd`, :func:`remove_water_hlsvd`): Kung's state-space method / HSVD
(Barkhuijsen et al. 1987, JMR 73:553; Pijnappel et al. 1992, JMR 97:122 for the Lanczos
HLSVD variant) on the first ``hlsvd_points`` (512) points of the unfiltered full-band FID
(Hankel 256 x 257, ``hlsvd_components`` = 30 dominant singular vectors, amplitudes by least
squares); the decaying components with frequency inside ``hlsvd_ppm`` (default 4.45-4.95
ppm, clear of Cr 3.91, Ins 4.05, GPC/PCh 4.3 and NAA 4.38) and FWHM < 200 Hz are evaluated
on the full time axis and subtracted.  No band filtering/decimation: both a zero-phase
(FFT-mask) filter and a causal FIR make the first tens of ms non-exponential, and a model
fitted to them did not reproduce the early water when evaluated on the original axis (the
earlier implementation left metabolite-sized residual water whose tails moved Ins/GPC/Tau
by several per cent, erratically with the window).  Signals inside the window (Asc 4.5,
GSH 4.56, NAAG 4.6, Glc 4.63 ppm) are removed with the water, as with any window method.

Klose correction (:func:`klose_ecc`) uses the water phase where the water is > 20 noise SDs
and continues it beyond with a fitted ``a + 2 pi df t + b exp(-t / tau)`` model, so it also
removes any residual water frequency offset: after it the water is exactly at 4.65 ppm and
real (zero phase) at every point.

Transients TSV columns: ``kind`` (mc | ws | water_ref), ``row`` (0-based raw row), ``pair``
(DIM_DYN index; = row in classic), ``metcycle_index``, ``cycle`` (+1: upfield upright /
downfield inverted; classic: +1), ``freq_hz`` / ``phase_deg`` (offset relative to the
alignment reference), ``amplitude``, ``mismatch``, ``metric`` (largest |robust z| of the
four criteria), ``outlier`` (flagged by the criteria) and ``rejected`` (excluded from the
average; in MC both rows of a pair with an outlier).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
from scipy.ndimage import median_filter

from mrsflow import __version__, nmrs, qc, qcpage, sanity
from mrsflow.errors import InputError

try:  # optional: small BLAS problems run much faster single-threaded on a busy machine
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None

CENTRE_PPM = 4.65
NAA_REF_PPM = 2.008
PROGRAM = "mrsflow.preprocess"

DEFAULTS: dict = {
    "align": True,
    "align_ppm_mc": (4.2, 5.1),
    "align_ppm_classic": (1.85, 4.0),
    "align_ppm_water": (4.2, 5.1),
    "align_tmax_s": 0.2,
    "max_shift_hz": 40.0,
    "reject": True,
    "z_thresh": 3.5,
    "z_thresh_jump": 5.0,
    "floor_log_amp": 0.05,
    "floor_mismatch": 0.01,
    "floor_freq_hz": 3.0,
    "floor_phase_deg": 30.0,
    "median_kernel": 9,
    "ecc": True,
    "ecc_min_snr": 20.0,
    "hlsvd": True,
    "hlsvd_ppm": (4.45, 4.95),
    "hlsvd_components": 30,
    "hlsvd_points": 512,
    "mc_water_removal": "template",
    "mc_template_tmax_s": 0.1,
    "naa_ref_ppm": NAA_REF_PPM,
    "naa_reference": True,  # classic: reference and phase on NAA (off for MM scans)
    "sign_ppm": ((1.9, 2.1), (2.95, 3.1), (3.15, 3.3)),
    "timestamp": None,
    "plot": True,
    **sanity.DEFAULTS,  # physical sanity checks (mrsflow.sanity)
}


# =============================================================================================
# small helpers
# =============================================================================================
def _single_thread_blas(func):
    """Run ``func`` with BLAS limited to one thread when threadpoolctl is available: the
    matrices here are tiny and a multi-threaded OpenBLAS on a loaded 2-core machine can be
    100x slower than one thread."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = (
            _threadpool_limits(limits=1, user_api="blas")
            if _threadpool_limits is not None
            else contextlib.nullcontext()
        )
        with ctx:
            return func(*args, **kwargs)

    return wrapper


def time_axis(n: int, dwell_s: float) -> np.ndarray:
    return np.arange(n) * dwell_s


def shift_hz(fid: np.ndarray, hz, dwell_s: float) -> np.ndarray:
    """Multiply by ``exp(2 pi i hz t)``: moves every line by +hz (``hz`` may be per row)."""
    fid = np.asarray(fid)
    t = time_axis(fid.shape[-1], dwell_s)
    hz = np.asarray(hz, dtype=float)
    return fid * np.exp(2j * np.pi * hz[..., None] * t) if hz.ndim else fid * np.exp(
        2j * np.pi * float(hz) * t
    )


def band_filter(
    fids: np.ndarray, dwell_s: float, f0_mhz: float, ppm: tuple[float, float], taper_ppm=0.05
) -> np.ndarray:
    """Keep the spectral band ``ppm`` (raised-cosine edges of ``taper_ppm``), 2x padded FFT."""
    fids = np.atleast_2d(fids)
    n = fids.shape[-1]
    nfft = 2 * n
    p = CENTRE_PPM + np.fft.fftfreq(nfft, dwell_s) / f0_mhz
    lo, hi = sorted(ppm)
    mask = np.zeros(nfft)
    inner = (p >= lo + taper_ppm) & (p <= hi - taper_ppm)
    mask[inner] = 1.0
    for edge, sign in ((lo, 1.0), (hi, -1.0)):
        x = sign * (p - edge) / taper_ppm  # 0 at the edge, 1 at the inner end of the taper
        sel = (x >= 0) & (x < 1)
        mask[sel] = np.sin(0.5 * np.pi * x[sel]) ** 2
    return np.fft.ifft(np.fft.fft(fids, nfft, axis=-1) * mask, axis=-1)[..., :n]


def robust_z(v: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """``(v - median) / (1.4826 MAD)`` (statistics from ``ref`` if given); returns z, med, s."""
    base = v if ref is None else ref
    med = float(np.median(base))
    s = 1.4826 * float(np.median(np.abs(base - med)))
    s = max(s, 1e-12 * max(1.0, abs(med)))
    return (v - med) / s, med, s


def wrap_deg(x):
    return (np.asarray(x, dtype=float) + 180.0) % 360.0 - 180.0


# =============================================================================================
# alignment
# =============================================================================================
@dataclass
class Alignment:
    """Per-transient alignment result (offsets relative to the reference, see module doc)."""

    freq_hz: np.ndarray
    phase_deg: np.ndarray
    amplitude: np.ndarray
    mismatch: np.ndarray
    reference: np.ndarray
    info: dict = field(default_factory=dict)

    def correct(self, fids: np.ndarray, dwell_s: float) -> np.ndarray:
        """Apply the corrections (remove the offsets) to full-length FIDs."""
        t = time_axis(fids.shape[-1], dwell_s)
        arg = 2 * np.pi * self.freq_hz[:, None] * t[None, :] + np.deg2rad(self.phase_deg)[:, None]
        return fids * np.exp(-1j * arg)


def _register(x: np.ndarray, y: np.ndarray, dwell_s: float, max_shift_hz: float):
    """Variable-projection spectral registration of rows ``x`` (K, T) to ``y`` (T,)."""
    k, n = x.shape
    t = time_axis(n, dwell_s)
    z = np.conj(x) * y[None, :]
    nfft = 1 << int(math.ceil(math.log2(max(16 * n, 4096))))
    zf = np.fft.fft(z, nfft, axis=1)
    fgrid = np.fft.fftfreq(nfft, dwell_s)
    allowed = np.abs(fgrid) <= max_shift_hz
    mag = np.abs(zf)
    mag[:, ~allowed] = -1.0
    j = np.argmax(mag, axis=1)
    # parabolic interpolation on |Z|
    jm, jp = (j - 1) % nfft, (j + 1) % nfft
    a, b, c = mag[np.arange(k), jm], mag[np.arange(k), j], mag[np.arange(k), jp]
    den = a - 2 * b + c
    off = np.where((den < 0) & (a >= 0) & (c >= 0), 0.5 * (a - c) / np.where(den == 0, 1, den), 0.0)
    f = fgrid[j] + off / (nfft * dwell_s)
    # Newton refinement of g(f) = |Z(f)|^2 on the exact sum
    w1 = -2j * np.pi * t
    for _ in range(4):
        e = np.exp(-2j * np.pi * f[:, None] * t[None, :])
        ze = z * e
        z0 = ze.sum(axis=1)
        z1 = (ze * w1).sum(axis=1)
        z2 = (ze * w1 * w1).sum(axis=1)
        g1 = 2 * np.real(np.conj(z0) * z1)
        g2 = 2 * (np.abs(z1) ** 2 + np.real(np.conj(z0) * z2))
        step = np.where(g2 < 0, -g1 / np.where(g2 == 0, -1, g2), 0.0)
        step = np.clip(step, -0.5, 0.5)
        f = f + step
    zc = (z * np.exp(-2j * np.pi * f[:, None] * t[None, :])).sum(axis=1)
    yy = float(np.vdot(y, y).real)
    xx = np.einsum("ij,ij->i", x.conj(), x).real
    amp = np.abs(zc) / yy
    mism = 1.0 - np.abs(zc) ** 2 / np.maximum(xx * yy, 1e-300)
    return -f, -np.rad2deg(np.angle(zc)), amp, mism


def align_transients(
    fids: np.ndarray,
    dwell_s: float,
    f0_mhz: float,
    *,
    ppm: tuple[float, float] | None,
    tmax_s: float = 0.2,
    max_shift_hz: float = 40.0,
    reject_params: dict | None = None,
) -> Alignment:
    """Two-pass alignment of rows ``fids`` (K, N); see the module docstring.

    Pass 1: reference = coordinate-wise complex median of the band-limited rows.  Pass 2:
    reference = mean of the pass-1-aligned rows that :func:`detect_outliers` kept.
    """
    fids = np.atleast_2d(np.asarray(fids, dtype=np.complex128))
    npts = max(16, min(fids.shape[1], int(round(tmax_s / dwell_s))))
    xf = band_filter(fids, dwell_s, f0_mhz, ppm) if ppm is not None else fids
    x = xf[:, :npts]
    ref = np.median(x.real, axis=0) + 1j * np.median(x.imag, axis=0)
    fr, ph, amp, mm = _register(x, ref, dwell_s, max_shift_hz)
    keep = ~detect_outliers(fr, ph, amp, mm, reject_params or {})[0]
    if keep.sum() < 1:
        keep[:] = True
    t = time_axis(npts, dwell_s)
    aligned = x * np.exp(-1j * (2 * np.pi * fr[:, None] * t + np.deg2rad(ph)[:, None]))
    ref2 = aligned[keep].mean(axis=0)
    fr, ph, amp, mm = _register(x, ref2, dwell_s, max_shift_hz)
    return Alignment(
        freq_hz=fr,
        phase_deg=wrap_deg(ph),
        amplitude=amp,
        mismatch=mm,
        reference=ref2,
        info={"ppm": ppm, "tmax_s": tmax_s, "npoints_used": npts, "max_shift_hz": max_shift_hz},
    )


def detect_outliers(
    freq_hz: np.ndarray,
    phase_deg: np.ndarray,
    amplitude: np.ndarray,
    mismatch: np.ndarray,
    params: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Outlier flags, the max |robust z| per transient, and the per-metric z-scores."""
    p = {**DEFAULTS, **(params or {})}
    thr = float(p["z_thresh"])
    thr_j = float(p["z_thresh_jump"])
    kern = int(p["median_kernel"])
    kern = max(1, kern if kern % 2 else kern + 1)
    la = np.log(np.maximum(amplitude, 1e-300))
    z_amp, med_la, _ = robust_z(la)
    z_mm, med_mm, _ = robust_z(mismatch)
    dfreq = freq_hz - median_filter(freq_hz, size=kern, mode="nearest")
    dphase = wrap_deg(phase_deg - median_filter(wrap_deg(phase_deg), size=kern, mode="nearest"))
    z_f, med_f, _ = robust_z(dfreq)
    z_p, med_p, _ = robust_z(dphase)
    flags = {
        "log_amplitude": (np.abs(z_amp) > thr) & (np.abs(la - med_la) > p["floor_log_amp"]),
        "mismatch": (z_mm > thr) & ((mismatch - med_mm) > p["floor_mismatch"]),
        "freq": (np.abs(z_f) > thr_j) & (np.abs(dfreq - med_f) > p["floor_freq_hz"]),
        "phase": (np.abs(z_p) > thr_j) & (np.abs(dphase - med_p) > p["floor_phase_deg"]),
    }
    out = np.zeros(freq_hz.shape, dtype=bool)
    for v in flags.values():
        out |= v
    zmax = np.max(np.abs(np.vstack([z_amp, np.maximum(z_mm, 0), z_f, z_p])), axis=0)
    zs = {"log_amplitude": z_amp, "mismatch": z_mm, "freq": z_f, "phase": z_p, "flags": flags}
    return out, zmax, zs


# =============================================================================================
# eddy currents, residual water, referencing
# =============================================================================================
def klose_ecc(
    fid: np.ndarray, water: np.ndarray, dwell_s: float, *, min_snr: float = 20.0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Klose (1990, MRM 14:26) eddy-current correction: ``fid * exp(-i phi_w(t))``.

    ``phi_w`` is the unwrapped phase of the water FID where ``|water| > min_snr * sigma``
    (``sigma`` from the last 10 % of the water FID, zero-filled points left out) from t = 0
    on.  Beyond the last reliable
    point, where the water phase is noise, ``phi_w`` is continued with the model
    ``a + 2 pi df t + b exp(-t / tau)`` (residual water frequency offset plus a
    single-exponential eddy-current phase; ``a, df, b`` by least squares weighted with
    ``|water|^2`` over the reliable stretch, ``tau`` by a grid search over 2-200 ms), shifted
    to join the measured phase continuously.  Returns (corrected FID, phase used, info).
    """
    water = np.asarray(water, dtype=np.complex128)
    n = water.size
    nz = np.flatnonzero(water)  # a zero-filled reference (match_length): its measured part
    valid = int(nz[-1]) + 1 if nz.size else n
    tail = water[max(0, valid - max(16, valid // 10)) : valid]
    sigma = float(np.sqrt(np.mean(np.abs(tail - tail.mean()) ** 2) / 2.0))
    mag = np.abs(water)
    bad = np.flatnonzero(mag <= min_snr * max(sigma, 1e-300))
    n_rel = int(bad[0]) if bad.size else n
    n_rel = max(n_rel, 8)
    phi = np.unwrap(np.angle(water))
    model_info: dict = {}
    if n_rel < n:
        t = np.arange(n) * dwell_s
        tr, yr = t[:n_rel], phi[:n_rel]
        w = mag[:n_rel]  # sqrt of the |water|^2 weights
        best = None
        for tau in np.geomspace(2e-3, 0.2, 40):
            a_mat = np.column_stack([np.ones(n_rel), tr, np.exp(-tr / tau)])
            coef, *_ = np.linalg.lstsq(a_mat * w[:, None], yr * w, rcond=None)
            res = float(np.sum((w * (a_mat @ coef - yr)) ** 2))
            if best is None or res < best[0]:
                best = (res, tau, coef)
        _, tau, coef = best
        model = coef[0] + coef[1] * t + coef[2] * np.exp(-t / tau)
        m = max(2, min(50, n_rel // 8))
        join = float(np.mean(phi[n_rel - m : n_rel] - model[n_rel - m : n_rel]))
        phi[n_rel:] = model[n_rel:] + join
        model_info = {
            "continuation_df_hz": float(coef[1] / (2 * np.pi)),
            "continuation_tau_ms": float(tau * 1e3),
            "continuation_ec_rad": float(coef[2]),
        }
    info = {"reliable_points": n_rel, "water_noise_sd": sigma, "phase_at_t0_rad": float(phi[0]),
            **model_info}
    return np.asarray(fid) * np.exp(-1j * phi), phi, info


def hlsvd(
    fid: np.ndarray,
    dwell_s: float,
    *,
    n_components: int = 30,
    n_points: int | None = None,
) -> dict:
    """State-space (HSVD / Kung) decomposition into damped complex exponentials.

    Hankel matrix ``H[i, j] = x[i + j]`` of the first ``n_points`` points (``L = n/2`` rows),
    its ``n_components`` dominant left singular vectors ``U``, poles = eigenvalues of the
    least-squares solution of ``U[:-1] Z = U[1:]`` (shift invariance), amplitudes by linear
    least squares on the same points.  Returns ``{"freq_hz", "damping_hz" (1/s), "amplitude"
    (complex, at t = 0), "poles"}``; the model is ``sum_k amplitude_k poles_k ** n``.
    """
    x = np.asarray(fid, dtype=np.complex128)
    n_points = int(x.size if n_points is None else min(n_points, x.size))
    x = x[:n_points]
    rows = n_points // 2
    h = scipy.linalg.hankel(x[:rows], x[rows - 1 :])
    k = int(min(n_components, rows - 1))
    u, _, _ = scipy.linalg.svd(h, full_matrices=False, check_finite=False)
    u = u[:, :k]
    zmat, *_ = np.linalg.lstsq(u[:-1], u[1:], rcond=None)
    poles = np.linalg.eigvals(zmat)
    vand = poles[None, :] ** np.arange(n_points)[:, None]
    amps, *_ = np.linalg.lstsq(vand, x, rcond=None)
    return {
        "freq_hz": np.angle(poles) / (2 * np.pi * dwell_s),
        "damping_hz": -np.log(np.maximum(np.abs(poles), 1e-300)) / dwell_s,
        "amplitude": amps,
        "poles": poles,
    }


@_single_thread_blas
def hlsvd_model(comp: dict, sel: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The sum of the :func:`hlsvd` components selected by ``sel`` (boolean mask) on the
    time axis ``t`` (s): ``sum_k a_k exp((-d_k + 2 pi i f_k) t)``."""
    a, d, f = comp["amplitude"][sel], comp["damping_hz"][sel], comp["freq_hz"][sel]
    return (a[None, :] * np.exp((-d[None, :] + 2j * np.pi * f[None, :]) * t[:, None])).sum(axis=1)


def remove_water_hlsvd(
    fid: np.ndarray,
    dwell_s: float,
    f0_mhz: float,
    *,
    ppm: tuple[float, float] = (4.45, 4.95),
    n_components: int = 30,
    n_points: int | None = 512,
    max_fwhm_hz: float = 200.0,
) -> tuple[np.ndarray, dict]:
    """Subtract the HLSVD model of the signals inside ``ppm`` (residual water) from the FID.

    :func:`hlsvd` decomposes the first ``n_points`` points of the unfiltered, full-band FID
    (Hankel ``n/2 x (n/2 + 1)``, ``n_components`` dominant singular vectors: the water, by
    far the largest signal, is modelled first, then the largest metabolite lines).  The
    decaying components whose frequency lies inside ``ppm`` and whose FWHM (damping / pi)
    is below ``max_fwhm_hz`` are evaluated on the full original time axis and subtracted.

    No band isolation is done on purpose: a zero-phase (FFT-mask) band filter smears the
    abrupt start of the FID over the filter's impulse response (tens of ms), and a causal
    FIR filter makes the signal exponential again only after its start-up transient, so a
    model fitted to either does not reproduce the first tens of ms of the (non-exponential,
    Voigt) water when evaluated on the original axis; both left residual water of metabolite
    size whose tails biased Ins/GPC/Tau by several per cent and changed erratically with the
    window.  The default window 4.45-4.95 ppm stays clear of Cr 3.91, Ins 4.05, GPC/PCh 4.3
    and NAA 4.38 ppm; metabolite signals inside it (Asc 4.5, GSH 4.56, NAAG 4.6, Glc 4.63
    ppm) are removed with the water, as with any window-based water removal.  Limits, on
    noiseless twin spectra fitted with the builtin fitter: the result no longer depends on
    the exact window (4.4-5.0, 4.45-4.9, 4.45-4.95 and 4.5-4.85 ppm agree), but Tau, Glc and
    Asc are biased by up to ~4 % and tCr by ~1 % (classic WS, 2 % residual water): with ~30
    components the metabolite lines next to the window (NAA 4.38, Asc 4.5) are partly
    lumped into components that fall inside it, and the Voigt water is approximated by a
    few exponentials.  For metabolite-cycled data :func:`remove_water_template` is exact to
    ~1e-5 of the water and the default.
    """
    x = np.asarray(fid, dtype=np.complex128)
    n = x.size
    lo, hi = sorted(ppm)
    m = n if n_points is None else max(32, min(n, int(n_points)))
    comp = hlsvd(x, dwell_s, n_components=n_components, n_points=m)
    freq = comp["freq_hz"]
    damp = comp["damping_hz"]
    cppm = CENTRE_PPM + freq / f0_mhz
    sel = (cppm >= lo) & (cppm <= hi) & (damp > 0) & (damp / np.pi <= max_fwhm_hz)
    model = hlsvd_model(comp, sel, time_axis(n, dwell_s))
    info = {
        "method": "HLSVD (Kung state space) of the full-band FID",
        "n_components": int(len(comp["poles"])),
        "n_points": int(m),
        "n_removed": int(sel.sum()),
        "removed_ppm": np.sort(cppm[sel]).tolist(),
    }
    return x - model, info


def remove_water_template(
    metab: np.ndarray,
    water: np.ndarray,
    dwell_s: float,
    *,
    tmax_s: float = 0.1,
    min_snr: float = 20.0,
) -> tuple[np.ndarray, dict]:
    """Remove the residual water of an MC metabolite difference using the MC water itself.

    In MC both cycle states carry the same water ``W(t)`` (the pair mean, known to a
    precision far beyond the metabolites).  What water is left in the half difference comes
    from (i) an amplitude asymmetry between the states (``(a/2) W``) and (ii) a small
    relative phase ``dphi`` and frequency ``df`` between the two states' averages: the
    per-transient water registration is biased by the opposite-signed metabolites of the
    two states (by ~1e-4 rad / ~1e-3 Hz; water is ~1e4 times the metabolites, so this
    leaves a water line of metabolite size, mostly dispersive).  To first order (the
    offsets are tiny) the residual water is exactly

        ``r(t) = (e0 + i 2 pi df t) W(t)``,  ``e0 = a/2 + i dphi``  (3 real parameters)

    whatever the water lineshape (eddy currents, Voigt).  The parameters are estimated
    after deconvolving by the water, ``y(t) = D(t) / W(t)``, by least squares of
    ``Re/Im y`` on ``t <= tmax_s`` (limited to where ``|W| > min_snr`` noise SDs) with a
    Hann taper ``sin^2(pi t / T)``.  The deconvolution turns every metabolite line of
    ``D`` into a (slightly growing, T2_water < T2_metab) undamped oscillation at its offset
    from water, and the taper's fast-decaying side lobes make the constant/linear terms
    insensitive to lines more than ~2/T away from water; the plain least-squares fit of
    ``D`` against ``W`` in a spectral window (or a registration with water-shaped weights)
    instead has the water linewidth as resolution and absorbs the metabolites near water
    (NAA 4.38, Asc 4.5, GSH 4.56, NAAG 4.6, Glc 4.63 ppm), several times the leak itself.
    The fitted ``r(t)`` is subtracted on the full time axis.
    """
    d = np.asarray(metab, dtype=np.complex128)
    w = np.asarray(water, dtype=np.complex128)
    n = d.size
    tail = d[-max(16, n // 10) :]
    sigma = float(np.sqrt(np.mean(np.abs(tail - tail.mean()) ** 2) / 2.0))
    mag = np.abs(w)
    npt = max(16, min(n, int(round(tmax_s / dwell_s))))
    weak = np.flatnonzero(mag[:npt] <= min_snr * max(sigma, 1e-300))
    if weak.size:
        npt = max(16, int(weak[0]))
    t = time_axis(n, dwell_s)
    tt = t[:npt]
    y = d[:npt] / np.where(mag[:npt] > 0, w[:npt], 1.0)
    taper = np.sin(np.pi * (np.arange(npt) + 0.5) / npt)  # sqrt of the Hann weights
    cols = np.column_stack([np.ones(npt), 1j * np.ones(npt), 2j * np.pi * tt]) * taper[:, None]
    a_mat = np.vstack([cols.real, cols.imag])
    rhs = np.concatenate([(y * taper).real, (y * taper).imag])
    coef, *_ = np.linalg.lstsq(a_mat, rhs, rcond=None)
    e0 = complex(coef[0], coef[1])
    df = float(coef[2])
    resid = (e0 + 2j * np.pi * df * t) * w
    info = {
        "method": "MC water template: (e0 + i 2 pi df t) W(t) fitted to D/W (Hann, "
                  f"{npt * dwell_s * 1e3:.0f} ms) and subtracted",
        "asymmetry": float(2 * e0.real),
        "phase_rad": float(e0.imag),
        "freq_hz": df,
        "points": int(npt),
    }
    return d - resid, info


def match_length(fid: np.ndarray, n: int) -> np.ndarray:
    """``fid`` truncated or zero-filled to ``n`` points (a water reference acquired with a
    different number of points than the metabolite scan: the eddy-current correction works
    point by point, and continues the water phase with its model where the water is below
    the noise, as in zero-filled points; the water amplitude is the line's area, unchanged
    once the water has decayed)."""
    fid = np.asarray(fid)
    if fid.shape[-1] >= n:
        return fid[..., :n]
    return np.concatenate([fid, np.zeros(fid.shape[:-1] + (n - fid.shape[-1],), fid.dtype)],
                          axis=-1)


def water_peak_hz(water: np.ndarray, dwell_s: float, f0_mhz: float) -> float:
    """Offset (Hz) of the water peak from 4.65 ppm: magnitude maximum, zero-filled x16."""
    ppm = qc.peak_ppm_position(water, dwell_s, f0_mhz, peak_ppm=(4.2, 5.1), zero_fill=16)
    return float((ppm - CENTRE_PPM) * f0_mhz)


def _residual_water_level(metab: np.ndarray, water_height: float, dwell_s, f0_mhz) -> float:
    spec, ppm = qc.spectrum(metab, dwell_s, f0_mhz)
    sel = (ppm >= 4.55) & (ppm <= 4.75)
    return float(np.abs(spec[sel]).max() / water_height)


# =============================================================================================
# pipelines on arrays
# =============================================================================================
@dataclass
class Preprocessed:
    metab: np.ndarray
    water: np.ndarray
    table: list[dict]
    qc: dict
    provenance: list[tuple[str, str]]


def _merge_params(params: dict | None) -> dict:
    p = dict(DEFAULTS)
    for key, value in (params or {}).items():
        if key == "linewidth_matching":  # the config block's, for mrsflow.linewidth
            continue
        if key not in DEFAULTS:
            raise InputError(f"config 'preprocess': unknown preprocessing parameter {key!r}; "
                             f"known: {sorted(DEFAULTS)}")
        p[key] = value
    return p


def _finish_qc(metab, water, dwell_s, f0_mhz) -> dict:
    return {
        "snr": qc.snr(metab, dwell_s, f0_mhz),
        "linewidth_naa_hz": qc.linewidth_hz(metab, dwell_s, f0_mhz, peak_ppm=qc.NAA_PPM),
        "linewidth_water_hz": qc.linewidth_hz(water, dwell_s, f0_mhz, peak_ppm=qc.WATER_PPM),
        "naa_ppm": qc.peak_ppm_position(metab, dwell_s, f0_mhz, peak_ppm=qc.NAA_PPM, use="real"),
        "water_ppm": qc.peak_ppm_position(water, dwell_s, f0_mhz, peak_ppm=qc.WATER_PPM),
    }


def _align_and_reject(rows, dwell_s, f0_mhz, p, ppm, pairs: np.ndarray | None):
    """Alignment + outlier rejection; returns (aligned rows, Alignment|None, outlier, rejected,
    zmax, info)."""
    k = rows.shape[0]
    if k == 1 or not p["align"]:
        reason = "single row (pre-averaged on the scanner)" if k == 1 else "disabled"
        zeros = np.zeros(k)
        return rows, None, np.zeros(k, bool), np.zeros(k, bool), zeros, {
            "applied": False, "reason": reason
        }
    al = align_transients(
        rows, dwell_s, f0_mhz, ppm=ppm, tmax_s=p["align_tmax_s"],
        max_shift_hz=p["max_shift_hz"], reject_params=p,
    )
    outlier, zmax, _ = detect_outliers(al.freq_hz, al.phase_deg, al.amplitude, al.mismatch, p)
    if not p["reject"]:
        outlier = np.zeros(k, bool)
    rejected = outlier.copy()
    if pairs is not None:
        bad_pairs = np.unique(pairs[outlier])
        rejected = np.isin(pairs, bad_pairs)
    if rejected.all():
        rejected[:] = False  # never reject everything
    kept = ~rejected
    fr = al.freq_hz[kept]
    ph = al.phase_deg[kept]
    info = {
        "applied": True,
        "method": "spectral registration (Near 2015) with free complex scale, 2 passes",
        "ppm_window": list(ppm) if ppm is not None else None,
        "tmax_s": p["align_tmax_s"],
        "max_shift_hz": p["max_shift_hz"],
        "freq_spread_rms_hz": float(np.sqrt(np.mean((fr - np.median(fr)) ** 2))),
        "phase_spread_rms_deg": float(np.sqrt(np.mean(wrap_deg(ph - np.median(ph)) ** 2))),
        "mismatch_median": float(np.median(al.mismatch)),
    }
    return al.correct(rows, dwell_s), al, outlier, rejected, zmax, info


def _row_table(k, pairs, cycle, metcycle, al, outlier, rejected, zmax, kind):
    table = []
    for r in range(k):
        table.append(
            {
                "kind": kind,
                "row": r,
                "pair": int(pairs[r]),
                "metcycle_index": int(metcycle[r]),
                "cycle": int(cycle[r]),
                "freq_hz": float(al.freq_hz[r]) if al is not None else 0.0,
                "phase_deg": float(al.phase_deg[r]) if al is not None else 0.0,
                "amplitude": float(al.amplitude[r]) if al is not None else 1.0,
                "mismatch": float(al.mismatch[r]) if al is not None else 0.0,
                "metric": float(zmax[r]),
                "outlier": bool(outlier[r]),
                "rejected": bool(rejected[r]),
            }
        )
    return table


@_single_thread_blas
def preprocess_mc(rows: np.ndarray, dwell_s: float, f0_mhz: float, params: dict | None = None
                  ) -> Preprocessed:
    """MC pipeline on raw rows (2P, N) in raw order (row ``r = m + 2 p``)."""
    p = _merge_params(params)
    rows = np.asarray(rows, dtype=np.complex128)
    k, n = rows.shape
    if k % 2:
        raise ValueError("MC data need an even number of rows (pairs)")
    prov: list[tuple[str, str]] = []
    pairs = np.arange(k) // 2
    metcycle = np.arange(k) % 2
    aligned, al, outlier, rejected, zmax, ainfo = _align_and_reject(
        rows, dwell_s, f0_mhz, p, tuple(p["align_ppm_mc"]), pairs
    )
    if ainfo["applied"]:
        prov.append((
            "Frequency and phase correction",
            f"per-transient alignment to the water peak ({ainfo['ppm_window']} ppm, first "
            f"{p['align_tmax_s']} s, 2 passes); offsets in the transients TSV",
        ))
    kept_pairs = np.unique(pairs[~rejected])
    if p["reject"] and rejected.any():
        prov.append((
            "Outlier removal",
            f"robust z > {p['z_thresh']} with floors; rejected pairs (DIM_DYN) "
            f"{np.unique(pairs[rejected]).tolist()}",
        ))
    a = aligned[0::2][kept_pairs]
    b = aligned[1::2][kept_pairs]
    water = 0.5 * (a + b).mean(axis=0)
    metab = 0.5 * (a - b).mean(axis=0)  # provisional: index 0 upright
    prov.append((
        "Signal averaging",
        f"MC reconstruction: water = mean of each pair, metabolites = half difference; "
        f"{kept_pairs.size} of {k // 2} pairs averaged",
    ))
    dw = water_peak_hz(water, dwell_s, f0_mhz)
    water = shift_hz(water, -dw, dwell_s)
    metab = shift_hz(metab, -dw, dwell_s)
    prov.append(("Frequency shift", f"water peak referenced to 4.65 ppm (shift {-dw:.4f} Hz)"))
    ecc_info: dict = {"applied": False}
    if p["ecc"]:
        metab, phi, ecc_info = klose_ecc(metab, water, dwell_s, min_snr=p["ecc_min_snr"])
        water = water * np.exp(-1j * phi)
        ecc_info["applied"] = True
        phase0 = -float(phi[0])
        prov.append((
            "Eddy current correction",
            "Klose 1990: water phase (same acquisition) subtracted point by point from "
            "metabolite and water FIDs (also zero-order phase)",
        ))
    else:
        phase0 = qc.autophase(water, dwell_s, f0_mhz, peak_ppm=qc.WATER_PPM)
        water = water * np.exp(1j * phase0)
        metab = metab * np.exp(1j * phase0)
        prov.append(("Zero-order phase correction", "water peak real and positive"))
    water_height = float(qc.peak_height(water, dwell_s, f0_mhz, peak_ppm=qc.WATER_PPM))
    resid_before = _residual_water_level(metab, water_height, dwell_s, f0_mhz)
    hl_info: dict = {"applied": False}
    tpl_info: dict = {"applied": False}
    method = str(p["mc_water_removal"])
    if method not in ("template", "hlsvd", "template+hlsvd"):
        raise InputError("config 'preprocess': mc_water_removal must be 'template', 'hlsvd' or "
                         "'template+hlsvd'")
    if p["hlsvd"] and "template" in method:
        metab, tpl_info = remove_water_template(
            metab, water, dwell_s, tmax_s=float(p["mc_template_tmax_s"])
        )
        tpl_info["applied"] = True
        prov.append(("Nuisance peak removal", ""))  # text completed once the sign is known
        tpl_prov = len(prov) - 1
    if p["hlsvd"] and "hlsvd" in method:
        metab, hl_info = remove_water_hlsvd(
            metab, dwell_s, f0_mhz, ppm=tuple(p["hlsvd_ppm"]),
            n_components=p["hlsvd_components"], n_points=p["hlsvd_points"],
        )
        hl_info["applied"] = True
        prov.append((
            "Nuisance peak removal",
            f"HLSVD residual water: {hl_info['n_removed']} of {hl_info['n_components']} "
            f"components in {list(p['hlsvd_ppm'])} ppm subtracted",
        ))
    hl_info["ppm_window"] = list(p["hlsvd_ppm"])
    hl_info["residual_water_before"] = resid_before
    hl_info["residual_water_after"] = _residual_water_level(metab, water_height, dwell_s, f0_mhz)
    water_removal = {
        "method": method if p["hlsvd"] else "none",
        "template": tpl_info,
        "residual_water_before": resid_before,
        "residual_water_after": hl_info["residual_water_after"],
    }
    # sign of the metabolite difference
    def sign_sum(spec_real: np.ndarray, ppm: np.ndarray) -> np.ndarray:
        """Sum over the sign windows of the real part minus the end-point straight line."""
        total = np.zeros(spec_real.shape[:-1])
        for w in p["sign_ppm"]:
            win = np.flatnonzero((ppm >= min(w)) & (ppm <= max(w)))
            re = spec_real[..., win]
            lo, hi = re[..., :3].mean(axis=-1), re[..., -3:].mean(axis=-1)
            edge = lo[..., None] + (hi - lo)[..., None] * np.linspace(0.0, 1.0, win.size)
            total = total + (re - edge).sum(axis=-1)
        return total

    spec, ppm = qc.spectrum(metab, dwell_s, f0_mhz)
    sign_metric = float(sign_sum(spec.real, ppm))
    upright = 0
    if sign_metric < 0:
        metab = -metab
        upright = 1
    if tpl_info["applied"]:
        if upright == 1:  # report relative to the final (upright) metabolite difference
            for key in ("asymmetry", "phase_rad", "freq_hz"):
                tpl_info[key] = -tpl_info[key]
        prov[tpl_prov] = (
            "Nuisance peak removal",
            "MC residual water: (e0 + i 2 pi df t) x water FID fitted to metabolites/water "
            f"(first {tpl_info['points'] * dwell_s * 1e3:.0f} ms, Hann taper) and subtracted; "
            f"water asymmetry {tpl_info['asymmetry']:.3g}, phase {tpl_info['phase_rad']:.3g} "
            f"rad, frequency {tpl_info['freq_hz']:.3g} Hz (state +1 relative to -1)",
        )
    cycle = np.where(metcycle == upright, 1, -1)
    prov.append((
        "Metabolite cycling subtraction sign",
        f"rows with DIM_METCYCLE index {upright} carry upright upfield metabolites "
        f"(downfield-inverted state); metabolites = (row[m={upright}] - row[m={1 - upright}])/2",
    ))
    # per-pair sign consistency (diagnostic)
    d = 0.5 * (aligned[0::2] - aligned[1::2]) * (1 if upright == 0 else -1)
    d = shift_hz(d, -dw, dwell_s) * np.exp(1j * phase0)
    dspec, _ = qc.spectrum(d, dwell_s, f0_mhz)
    pair_sign = np.sign(sign_sum(dspec.real, ppm))
    table = _row_table(k, pairs, cycle, metcycle, al, outlier, rejected, zmax, "mc")
    out_qc = {
        "mode": "mc",
        "n_transients": k,
        "n_pairs": k // 2,
        "n_pairs_averaged": int(kept_pairs.size),
        "n_rejected": int(rejected.sum()),
        "rejected_rows": np.flatnonzero(rejected).tolist(),
        "rejected_pairs": np.unique(pairs[rejected]).tolist(),
        "outlier_rows": np.flatnonzero(outlier).tolist(),
        "alignment": ainfo,
        "mc": {
            "upright_metcycle_index": upright,
            "sign_metric": sign_metric,
            "pairs_with_expected_sign": int((pair_sign > 0).sum()),
            "convention": "metabolite = (row[cycle=+1] - row[cycle=-1]) / 2 = U - D; cycle "
                          "+1 = downfield inverted (upfield upright)",
        },
        "referencing": {"water_shift_hz": -dw, "reference": "water at 4.65 ppm"},
        "ecc": ecc_info,
        "hlsvd": hl_info,
        "water_removal": water_removal,
        "water_peak_height": water_height,
        **_finish_qc(metab, water, dwell_s, f0_mhz),
    }
    return Preprocessed(metab, water, table, out_qc, prov)


@_single_thread_blas
def preprocess_classic(
    rows: np.ndarray,
    water_rows: np.ndarray,
    dwell_s: float,
    f0_mhz: float,
    params: dict | None = None,
) -> Preprocessed:
    """Classic (water-suppressed + separate water reference) pipeline on arrays."""
    p = _merge_params(params)
    rows = np.atleast_2d(np.asarray(rows, dtype=np.complex128))
    water_rows = np.atleast_2d(np.asarray(water_rows, dtype=np.complex128))
    k, n = rows.shape
    prov: list[tuple[str, str]] = []
    idx = np.arange(k)
    aligned, al, outlier, rejected, zmax, ainfo = _align_and_reject(
        rows, dwell_s, f0_mhz, p, tuple(p["align_ppm_classic"]), None
    )
    if ainfo["applied"]:
        prov.append((
            "Frequency and phase correction",
            f"spectral registration of the WS transients in {ainfo['ppm_window']} ppm",
        ))
    else:
        prov.append(("Frequency and phase correction", f"not applied: {ainfo['reason']}"))
    if rejected.any():
        prov.append(("Outlier removal", f"rejected rows {np.flatnonzero(rejected).tolist()}"))
    metab = aligned[~rejected].mean(axis=0)
    if k > 1:
        prov.append(("Signal averaging", f"{int((~rejected).sum())} of {k} WS transients"))
    # water reference
    w_al, w_alig, w_out, w_rej, w_z, w_info = _align_and_reject(
        water_rows, dwell_s, f0_mhz, p, tuple(p["align_ppm_water"]), None
    )
    water = match_length(w_al[~w_rej].mean(axis=0), n)
    if water_rows.shape[1] != n:
        prov.append((
            "Water reference length",
            f"{water_rows.shape[1]} points, the metabolite scan {n}: "
            + ("truncated" if water_rows.shape[1] > n else "zero-filled") + f" to {n}",
        ))
    dw = water_peak_hz(water, dwell_s, f0_mhz)
    water = shift_hz(water, -dw, dwell_s)
    metab = shift_hz(metab, -dw, dwell_s)
    prov.append((
        "Frequency shift",
        f"water reference peak to 4.65 ppm; the same shift ({-dw:.4f} Hz) applied to the "
        "metabolites (same B0 up to the drift between the scans)",
    ))
    ecc_info: dict = {"applied": False}
    if p["ecc"]:
        metab, phi, ecc_info = klose_ecc(metab, water, dwell_s, min_snr=p["ecc_min_snr"])
        water = water * np.exp(-1j * phi)
        ecc_info["applied"] = True
        prov.append((
            "Eddy current correction",
            "Klose 1990 with the separate water reference (referenced to 4.65 ppm first)",
        ))
    else:
        phi0 = qc.autophase(water, dwell_s, f0_mhz, peak_ppm=qc.WATER_PPM)
        water = water * np.exp(1j * phi0)
    water_height = float(qc.peak_height(water, dwell_s, f0_mhz, peak_ppm=qc.WATER_PPM))
    resid_before = _residual_water_level(metab, water_height, dwell_s, f0_mhz)
    hl_info: dict = {"applied": False}
    if p["hlsvd"]:
        metab, hl_info = remove_water_hlsvd(
            metab, dwell_s, f0_mhz, ppm=tuple(p["hlsvd_ppm"]),
            n_components=p["hlsvd_components"], n_points=p["hlsvd_points"],
        )
        hl_info["applied"] = True
        prov.append((
            "Nuisance peak removal",
            f"HLSVD residual water: {hl_info['n_removed']} components in "
            f"{list(p['hlsvd_ppm'])} ppm subtracted",
        ))
    hl_info["ppm_window"] = list(p["hlsvd_ppm"])
    hl_info["residual_water_before"] = resid_before
    hl_info["residual_water_after"] = _residual_water_level(metab, water_height, dwell_s, f0_mhz)
    # NAA referencing + zero-order phase on NAA (two passes: the second with the peak centred);
    # off for a metabolite-nulled (macromolecule) scan, which has no NAA line: its water
    # reference has already set its frequency and (ECC) its phase
    dn, phi_naa = 0.0, 0.0
    for _ in range(2 if p["naa_reference"] else 0):
        phi = qc.autophase(metab, dwell_s, f0_mhz, peak_ppm=qc.NAA_PPM)
        metab = metab * np.exp(1j * phi)
        naa_now = qc.peak_ppm_position(metab, dwell_s, f0_mhz, peak_ppm=qc.NAA_PPM, use="real")
        step = (float(p["naa_ref_ppm"]) - naa_now) * f0_mhz
        metab = shift_hz(metab, step, dwell_s)
        dn += step
        phi_naa += phi
    if p["naa_reference"]:
        prov.append((
            "Frequency shift", f"NAA referenced to {p['naa_ref_ppm']} ppm (shift {dn:.4f} Hz)"
        ))
        prov.append(("Zero-order phase correction",
                     f"NAA auto-phase {np.rad2deg(phi_naa):.3f} deg"))
    table = _row_table(k, idx, np.ones(k, int), np.zeros(k, int), al, outlier, rejected, zmax, "ws")
    kw = water_rows.shape[0]
    table += _row_table(kw, np.arange(kw), np.ones(kw, int), np.zeros(kw, int), w_alig, w_out,
                        w_rej, w_z, "water_ref")
    out_qc = {
        "mode": "classic",
        "n_transients": k,
        "n_water_transients": kw,
        "water_points": int(water_rows.shape[1]),
        "n_rejected": int(rejected.sum()),
        "rejected_rows": np.flatnonzero(rejected).tolist(),
        "outlier_rows": np.flatnonzero(outlier).tolist(),
        "water_rejected_rows": np.flatnonzero(w_rej).tolist(),
        "alignment": ainfo,
        "water_alignment": w_info,
        "referencing": {
            "water_shift_hz": -dw,
            "naa_shift_hz": dn,
            "naa_shift_note": "after the water-reference shift, which the metabolites share",
            "naa_zero_order_phase_deg": float(np.rad2deg(phi_naa)),
            "reference": f"NAA at {p['naa_ref_ppm']} ppm (water reference at 4.65 ppm)",
        },
        "ecc": ecc_info,
        "hlsvd": hl_info,
        "water_peak_height": water_height,
        **_finish_qc(metab, water, dwell_s, f0_mhz),
    }
    return Preprocessed(metab, water, table, out_qc, prov)


# =============================================================================================
# NIfTI-MRS I/O
# =============================================================================================
read_nifti_mrs = nmrs.read


def _rows_from(data: np.ndarray, ext: dict, mode: str) -> np.ndarray:
    """Rows (K, N) in raw order from (1,1,1,N[,d5[,d6]]) data."""
    if data.ndim < 4 or data.shape[:3] != (1, 1, 1):
        raise ValueError(f"expected single-voxel NIfTI-MRS, shape {data.shape}")
    x = data[0, 0, 0]
    n = x.shape[0]
    tags = [ext.get(f"dim_{i}") for i in (5, 6, 7)]
    if x.ndim == 1:
        return x[None, :]
    if x.ndim > 3:
        raise ValueError("more than two higher dimensions are not supported")
    if mode == "mc" and x.ndim == 3:
        if tags[0] != "DIM_METCYCLE" or x.shape[1] != 2:
            raise ValueError(f"MC data need dim_5 = DIM_METCYCLE of size 2, got {tags}")
        # (N, 2, P) -> rows r = m + 2 p  (Fortran order of the higher dims)
        return np.ascontiguousarray(x.transpose(2, 1, 0).reshape(-1, n))
    # any single higher dimension (or trailing singletons): rows in order
    k = int(np.prod(x.shape[1:]))
    other = [s for s in x.shape[1:] if s > 1]
    if len(other) > 1:
        raise ValueError(f"cannot interpret higher dimensions {x.shape[1:]} tags {tags}")
    return np.ascontiguousarray(x.reshape(n, k, order="F").T)


write_nifti_mrs = nmrs.write


def _input_rows(path: Path, data: np.ndarray, ext: dict, mode: str) -> np.ndarray:
    """:func:`_rows_from` with a shape problem reported as an InputError naming the file."""
    try:
        return _rows_from(data, ext, mode)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from err


def _timestamp(p: dict) -> str:
    if p.get("timestamp"):
        return str(p["timestamp"])
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        t = _dt.datetime.fromtimestamp(int(sde), tz=_dt.UTC)
    else:
        t = _dt.datetime.now(tz=_dt.UTC).replace(microsecond=0)
    return t.isoformat()


def _processed_ext(ext: dict, prov: list[tuple[str, str]], stamp: str) -> dict:
    out = {k: v for k, v in ext.items() if not k.startswith("dim_")}
    applied = list(out.get("ProcessingApplied", []) or [])
    for method, details in prov:
        applied.append(
            {"Time": stamp, "Program": PROGRAM, "Version": __version__, "Method": method,
             "Details": details}
        )
    out["ProcessingApplied"] = applied
    return out


def _fmt(x):
    """Deterministic JSON values: floats to 6 significant digits, numpy to python."""
    if isinstance(x, dict):
        return {str(k): _fmt(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_fmt(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_fmt(v) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if not math.isfinite(v):
            return None
        return float(f"{v:.6g}")
    return x


TSV_COLUMNS = ("kind", "row", "pair", "metcycle_index", "cycle", "freq_hz", "phase_deg",
               "amplitude", "mismatch", "metric", "outlier", "rejected")


def write_transients_tsv(path, table: list[dict]) -> None:
    lines = ["\t".join(TSV_COLUMNS)]
    for r in table:
        cells = []
        for c in TSV_COLUMNS:
            v = r[c]
            if isinstance(v, bool):
                cells.append("1" if v else "0")
            elif isinstance(v, float):
                cells.append(f"{v:.6g}")
            else:
                cells.append(str(v))
        lines.append("\t".join(cells))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def draw_processed(fig, metab, water, dwell_s, f0_mhz, title: str = "") -> None:
    """Processed metabolite spectrum (0.2-4.2 ppm) and the water (narrow right panel), drawn
    into ``fig`` (a matplotlib Figure or SubFigure)."""
    spec, ppm = qc.spectrum(metab, dwell_s, f0_mhz, zero_fill=2)
    ax, axw = fig.subplots(1, 2, gridspec_kw={
        "width_ratios": [3, 1], "left": 0.03, "right": 0.98, "bottom": 0.15, "top": 0.88,
        "wspace": 0.08})
    sel = (ppm >= 0.2) & (ppm <= 4.2)
    ax.plot(ppm[sel], spec.real[sel], lw=0.8, color="k")
    ax.set_xlim(4.2, 0.2)
    ax.set_xlabel("chemical shift (ppm)")
    ax.set_yticks([])
    ax.set_title(title or "processed metabolite spectrum", fontsize=9)
    qcpage.draw_water(axw, water, dwell_s, f0_mhz)


def plot_processed(path, metab, water, dwell_s, f0_mhz, title: str = "") -> None:
    """PNG of one processed scan (see :func:`draw_processed`)."""
    qcpage.save_one(path, lambda f: draw_processed(f, metab, water, dwell_s, f0_mhz, title),
                    width_in=9.0, height_in=3.6)


def run_preprocess(
    mrs_nii: Path,
    out_metab: Path,
    out_water: Path,
    out_qc_json: Path,
    out_transients_tsv: Path,
    out_png: Path | None,
    *,
    mode: str,
    water_nii: Path | None = None,
    params: dict | None = None,
) -> dict:
    """Preprocess one converted scan (NIfTI-MRS) and write the outputs (the PNG only if
    ``out_png`` is given and params' ``plot`` is true); returns the QC."""
    qcd, res, dwell = _preprocess_scan(mrs_nii, out_metab, out_water, out_qc_json,
                                       out_transients_tsv, mode=mode, water_nii=water_nii,
                                       params=params)
    if _merge_params(params)["plot"] and out_png is not None:
        plot_processed(out_png, res.metab, res.water, dwell, qcd["f0_mhz"],
                       qcpage.qc_title(Path(mrs_nii).name, qcd))
    return qcd


def read_inputs(mrs_nii, water_nii, mode):
    """(rows, water rows or None, dwell, f0, ext, affine, NIfTI version) of one scan."""
    data, ext, affine, dwell, img = read_nifti_mrs(mrs_nii)
    f0 = float(ext["SpectrometerFrequency"][0])
    nver = nmrs.nifti_version(img)
    if mode == "mc":
        rows = _input_rows(mrs_nii, data, ext, "mc")
        if rows.shape[0] % 2:
            raise InputError(f"{mrs_nii}: MC data need an even number of transients (pairs), "
                             f"got {rows.shape[0]}")
        return rows, None, dwell, f0, ext, affine, nver
    if mode != "classic":
        raise ValueError(f"mode must be 'mc' or 'classic', not {mode!r}")
    if water_nii is None:
        raise InputError(f"{mrs_nii}: classic (water-suppressed) mode needs the water "
                         "reference (water_nii / --water), none was given")
    rows = _input_rows(mrs_nii, data, ext, "classic")
    wdata, wext, _, wdwell, _ = read_nifti_mrs(water_nii)
    if not math.isclose(wdwell, dwell, rel_tol=1e-6):
        raise InputError(f"{water_nii}: water reference and metabolite data ({mrs_nii}) "
                         f"have different dwell times ({wdwell} s vs {dwell} s)")
    wrows = _input_rows(water_nii, wdata, wext, "classic")
    return rows, wrows, dwell, f0, ext, affine, nver


def _unusable(rows: np.ndarray, mode: str) -> Preprocessed:
    """What is written for a scan with no usable data: the raw mean (non-finite values as 0)
    as metabolite and water spectra, so every file of the contract exists, and QC that says
    nothing was processed (the fit step does not fit it)."""
    mean = np.nan_to_num(np.asarray(rows, complex)).mean(axis=0)
    none = dict.fromkeys(("snr", "linewidth_naa_hz", "linewidth_water_hz", "naa_ppm",
                          "water_ppm"))
    q = {"mode": mode, "n_transients": int(rows.shape[0]), "usable": False, **none}
    return Preprocessed(mean, mean.copy(), [], q, [])


def process_scan(rows, wrows, dwell_s, f0_mhz, mode, params=None) -> Preprocessed:
    """The preprocessing of one scan's raw rows (and water reference rows) with the physical
    sanity checks of :mod:`mrsflow.sanity`: data present and finite, a mirrored spectrum
    conjugated and processed again (or excluded), the water really water. The result's QC
    holds ``usable`` and ``sanity`` (``exclude``: reasons, ``notes``: corrections)."""
    p = _merge_params(params)
    if p["mirrored"] not in ("correct", "exclude"):
        raise InputError("config 'preprocess': mirrored must be 'correct' or 'exclude'")
    problems = [sanity.data_problem(rows)]
    if wrows is not None and sanity.data_problem(wrows):
        problems.append("water reference: " + sanity.data_problem(wrows))
    problems = [x for x in problems if x]
    if problems:
        res = _unusable(rows, mode)
        res.qc["sanity"] = {"exclude": problems, "notes": []}
        return res

    def run(r, w):
        if mode == "mc":
            return preprocess_mc(r, dwell_s, f0_mhz, p)
        return preprocess_classic(r, w, dwell_s, f0_mhz, p)

    res = run(rows, wrows)
    exclude, notes = [], []
    mirror = sanity.mirror_check(res.metab, dwell_s, f0_mhz)
    if mirror["mirrored"] and p["mirrored"] == "correct":
        res = run(np.conj(rows), None if wrows is None else np.conj(wrows))
        again = sanity.mirror_check(res.metab, dwell_s, f0_mhz)
        mirror = {**again, "corrected": True, "before": mirror}
        res.provenance.insert(0, (
            "Conjugation",
            "the stored spectrum was mirrored (NAA, Cr and Cho at their mirror positions "
            "about 4.65 ppm): raw data conjugated (metabolite and water) before processing",
        ))
        notes.append("spectrum was mirrored (conjugated FID): corrected by conjugation")
        if again["mirrored"]:
            exclude.append("spectrum mirrored even after conjugation")
    elif mirror["mirrored"]:
        exclude.append(
            f"spectrum mirrored: NAA, Cr and Cho found at their mirror positions about "
            f"{sanity.CENTRE_PPM} ppm (conjugated FID; preprocess.mirrored: exclude)")
    dominance = sanity.water_dominance(res.water, dwell_s, f0_mhz)
    residual = float(res.qc["hlsvd"]["residual_water_before"])
    exclude += sanity.water_problems(dominance, residual, p, mode=mode)
    if wrows is not None and wrows.shape[1] != rows.shape[1]:
        notes.append(f"water reference has {wrows.shape[1]} points, the metabolite scan "
                     f"{rows.shape[1]}: " + ("truncated" if wrows.shape[1] > rows.shape[1]
                                             else "zero-filled"))
    res.qc["usable"] = True
    res.qc["sanity"] = {"exclude": exclude, "notes": notes, "mirror": mirror,
                        "water_dominance": dominance, "water_ratio":
                        (1.0 / residual if residual > 0 else None)}
    return res


def _preprocess_scan(mrs_nii, out_metab, out_water, out_qc_json, out_transients_tsv, *,
                     mode, water_nii, params):
    """:func:`run_preprocess` without the picture; returns (QC dict, the processing result
    with the metabolite and water FIDs, dwell time in s)."""
    p = _merge_params(params)
    rows, wrows, dwell, f0, ext, affine, nver = read_inputs(mrs_nii, water_nii, mode)
    res = process_scan(rows, wrows, dwell, f0, mode, p)
    res.qc["raw_sha256"] = hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()
    stamp = _timestamp(p)
    n = res.metab.size
    write_nifti_mrs(out_metab, res.metab.reshape(1, 1, 1, n), dwell, f0, affine=affine,
                    hdr_ext=_processed_ext(ext, res.provenance, stamp), nifti_version=nver)
    wprov = [pr for pr in res.provenance if pr[0] != "Nuisance peak removal"]
    write_nifti_mrs(out_water, res.water.reshape(1, 1, 1, n), dwell, f0, affine=affine,
                    hdr_ext=_processed_ext(ext, wprov, stamp), nifti_version=nver)
    qcd = dict(res.qc)
    qcd["input"] = Path(mrs_nii).name
    qcd["water_input"] = Path(water_nii).name if water_nii is not None else None
    qcd["dwell_s"] = dwell
    qcd["f0_mhz"] = f0
    qcd["definitions"] = {
        "snr": {
            "peak_ppm": list(qc.NAA_PPM), "noise_ppm": [list(w) for w in qc.NOISE_PPM],
            "lb_hz": 0.0,
            "text": "NAA height of a pseudo-Voigt + line fit to the real spectrum (NAA "
                    "auto-phase, noise-window linear baseline) / SD of the real noise "
                    "(quadratic detrend per window; windows clipped to the spectral width, "
                    "the outermost 5 % of each end where none fits); LCModel SNR ~= snr / 2",
        },
        "linewidth": {
            "naa_ppm": list(qc.NAA_PPM), "water_ppm": list(qc.WATER_PPM),
            "text": "FWHM of a pseudo-Voigt + line fit to the real phased spectrum "
                    "(noise-window linear baseline)",
        },
        "sanity": "exclude: reasons the scan is not what the sheet says (mrsflow.sanity); "
                  "notes: corrections made",
    }
    qcd["definitions"]["transients_tsv"] = (
        "kind, row (0-based raw row), pair (DIM_DYN), metcycle_index, cycle (+1 = upfield "
        "upright), freq_hz / phase_deg (offset relative to the alignment reference), "
        "amplitude, mismatch, metric (max |robust z|), outlier, rejected"
    )
    qcd["params"] = {k: v for k, v in p.items() if k not in ("timestamp",)}
    qcd["version"] = __version__
    out_qc_json = Path(out_qc_json)
    out_qc_json.parent.mkdir(parents=True, exist_ok=True)
    out_qc_json.write_text(json.dumps(_fmt(qcd), indent=1, sort_keys=True) + "\n",
                           encoding="utf-8")
    write_transients_tsv(out_transients_tsv, res.table)
    return qcd, res, dwell


def run_participant(plan: list[dict], png: Path | None, *, params: dict | None = None) -> None:
    """The preprocess step of one participant: :func:`run_preprocess` for every scan of
    ``plan`` (dicts with mrs, water (or None), mode, metab, water_out, qc, transients, label)
    in one process; with ``png``, one QC page with a row per scan. (The workflow draws the
    processed spectra on the fit job's spectra page instead: this job then never imports
    matplotlib.)"""
    rows = []
    for item in plan:
        water = item.get("water")
        t0 = time.perf_counter()
        q, res, dwell = _preprocess_scan(
            Path(item["mrs"]), Path(item["metab"]), Path(item["water_out"]), Path(item["qc"]),
            Path(item["transients"]), mode=item["mode"],
            water_nii=Path(water) if water else None, params=params,
        )
        print(f"preprocessed {item['mrs']} in {time.perf_counter() - t0:.2f} s: "
              f"{qcpage.qc_title('', q)[2:]}", flush=True)
        if png is None:  # the workflow's case: nothing of the result is kept
            continue
        title = qcpage.qc_title(item.get("label") or Path(item["mrs"]).name, q)
        rows.append(functools.partial(draw_processed, metab=res.metab, water=res.water,
                                      dwell_s=dwell, f0_mhz=q["f0_mhz"], title=title))
    if png is not None:
        qcpage.save_rows(png, rows, width_in=9.0, row_height_in=2.6)
