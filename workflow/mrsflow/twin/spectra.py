"""Per-scan synthesis of single-voxel 1H-MRS transients for the synthetic twin.

Everything is deterministic given the ``np.random.Generator`` passed in (the draws are made
in a fixed order), vectorised (one scan of 128 x 2048 points takes a few tens of ms) and in
the project FID convention: a resonance at ``delta`` ppm is ``exp(+2 pi i nu t)`` with
``nu = (delta - 4.65) * f0`` Hz.

Signal model
------------
Noiseless metabolite signal (basis FIDs carry no broadening)::

    M0(t) = sum_m a_m basis_m(t) + B(t)                  (matrix product)
    M(t)  = M0(t) exp(-t / T2_metab) V(t)                 (tissue-independent T2 Lorentzian)
    W(t)  = A_w   exp(-t / T2_water) V(t)                 (water singlet at 4.65 ppm)
    V(t)  = exp(-pi L t - (pi G t)^2 / (4 ln 2))          (common Voigt, B0 inhomogeneity)

``B(t)`` are a few broad Gaussian components (baseline), plus any ``background`` FID the
caller plants (the twin's macromolecules, :mod:`mrsflow.twin.macromolecules`).  ``L = eta w``
and ``G = (1 - eta) w`` with ``eta = ScanSpec.lorentz_fraction``; ``w`` is found by root finding
such that :func:`mrsflow.qc.linewidth_hz` of the ideal processed metabolite spectrum (NAA
window 1.9-2.1 ppm) equals ``target_linewidth_hz``.  The measured FWHM therefore includes
every overlapping signal (NAAG, Glu, MM, baseline) exactly as the QC of processed data sees
it.

Lineshape beyond Voigt (``ScanSpec.lineshape = "voxel"``): the inhomogeneous part is the
field distribution across the voxel instead of a Gaussian, ``V(t) = exp(-pi L t)
Phi((1 - eta) w t) exp(-(pi s (1 - eta) w t)^2 / (4 ln 2))``, where ``Phi`` is the
characteristic function of the sub-voxel offsets ``u = g.x + q (h.x)^2`` (x uniform in the
voxel, a linear gradient along a random direction g and a quadratic term along h, q drawn in
[-1.5, 1.5]: an asymmetric, non-Gaussian line; Juchem & de Graaf 2017, Anal Biochem 529:17
on B0 inhomogeneity and lineshape), normalised to mean 0 and SD 1 / 2.355, and ``s`` = 0.35
a microscopic Gaussian part.  Water and metabolites share it (the same voxel).

Residual eddy currents (``ScanSpec.eddy_residual_fraction`` = d): the metabolite signal
carries the eddy-current phase ``(1 + d) A_ec exp(-t / tau)`` while the water carries
``A_ec exp(-t / tau)``, so correcting with the water leaves ``d A_ec exp(-t / tau)`` on the
metabolites; the planted ideal spectrum keeps it (it is what perfect processing yields).

Metabolite cycling (Dreher & Leibfritz 2005, MRM 54:190; Hock et al. 2013, MRM 69:1253):
in one state the spectral region upfield of water (delta < 4.65 ppm) is inverted, in the
other the downfield region; water is not inverted.  A row in cycle state ``c`` is
``W + c M``: the sum of a pair is ``2 W`` and ``(row[c=+1] - row[c=-1]) / 2 = M``.  The
inversion acts on each resonance as a whole, so the metabolite signal ``M`` is inverted as a
whole: every resonance of the fit range (0.2-4.2 ppm) lies upfield.  Simplification: the few
downfield resonances (Glc H1-alpha at 5.22 ppm) are treated as upfield too.  (Splitting a
sampled spectrum at 4.65 ppm by a frequency mask would also invert the slowly decaying
dispersion tails of every upfield line and bias their fitted areas by 1-3 %.)  ``cycle``
holds ``c`` per row; the state of row 0 is ``ScanSpec.mc_first_cycle`` (random if None) and
states alternate.

Per-transient effects (whole transient, water and metabolites alike): frequency
``f_r = offset + drift * t_r / 60 + random walk`` (``t_r = r * TR``), zero-order phase
``phi_r = phi0 + N(0, jitter)``; ``n_motion`` motion-corrupted transients get an extra
frequency jump, phase jump, amplitude loss and Lorentzian broadening.  The eddy-current
phase ``phi_ec(t) = A_ec exp(-t / tau)`` multiplies every signal identically (Klose 1990
correctable).  Complex white Gaussian noise of SD ``noise_sd`` per real/imaginary component
is added to every row.

Planted quality
---------------
The *ideal processed* metabolite FID is ``U - D`` (MC) or ``M`` (classic): perfectly
aligned (zero frequency, zero phase), eddy-current free, water free and averaged over the
transients not corrupted by motion (MC: pairs without a motion row).  The noise SD per row
is set so that ``qc.peak_height(ideal) / sigma_spec = target_snr`` exactly, where
``sigma_spec = sigma_proc sqrt(N - 3/4)`` is the SD of the real part of the DFT of complex
white noise of SD ``sigma_proc`` per component with the first point halved (what
``qc.noise_sd`` estimates), and ``sigma_row = sigma_proc sqrt(2 n_pairs_kept)`` (MC: half
difference of a pair, averaged over pairs) or ``sigma_proc sqrt(n_rows_kept)`` (classic).
``snr_planted = target_snr``; ``qc.snr`` of one noisy realisation of that average scatters
around it with a relative SD of about ``1 / target_snr`` (the noise on the peak itself) and
a small upward bias (about +2 % at SNR 17.5).  ``linewidth_planted_hz`` is the QC FWHM of
the noiseless ideal processed spectrum, equal to the target to the root finder's tolerance
(noise narrows the measured FWHM by a few per cent on average).
``water_linewidth_planted_hz`` is the QC FWHM (window 4.3-5.0 ppm) of ``W``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy.optimize import brentq

from mrsflow import qc

CENTRE_PPM = 4.65

__all__ = ["ScanSpec", "ScanSynthesis", "scanner_average", "synthesize_scan", "toy_basis"]


@dataclass(frozen=True)
class ScanSpec:
    """Acquisition and quality parameters of one synthetic scan (defaults: the study)."""

    f0_mhz: float = 127.8
    dwell_s: float = 5e-4
    npoints: int = 2048
    te_ms: float = 30.0
    tr_s: float = 2.0
    n_transients: int = 128  # rows; MC: 2N rows (N pairs)
    mode: str = "mc"  # 'mc' | 'classic'
    target_snr: float = 17.5  # qc.snr of the ideal processed spectrum
    target_linewidth_hz: float = 7.0  # qc.linewidth_hz of NAA in the ideal processed spectrum
    lorentz_fraction: float = 0.3  # common Voigt: L = f w, G = (1 - f) w
    t2_metab_ms: float = 250.0  # tissue-independent T2 Lorentzian of every basis entry
    t2_water_ms: float = 80.0
    freq_offset_hz: float | None = None  # scan-level B0 offset; None -> U(-10, 10) Hz
    phase0_deg: float | None = None  # scan-level receiver phase; None -> U(-180, 180)
    drift_hz_per_min: float = 0.5  # linear B0 drift
    drift_walk_sd_hz: float = 0.1  # random-walk step SD per transient
    phase_jitter_sd_deg: float = 5.0
    n_motion: int = 2
    motion_freq_hz: tuple[float, float] = (4.0, 15.0)  # |jump|, random sign
    motion_phase_deg: tuple[float, float] = (30.0, 150.0)  # |jump|, random sign
    motion_amp_loss: tuple[float, float] = (0.3, 0.7)
    motion_broadening_hz: tuple[float, float] = (3.0, 10.0)  # extra Lorentzian FWHM
    eddy_amp_rad: float = 0.2
    eddy_tau_ms: float = 30.0
    n_baseline: int = 3
    baseline_fraction: float = 0.1  # total area of the broad components / metabolite area
    baseline_fwhm_hz: tuple[float, float] = (60.0, 150.0)
    baseline_ppm: tuple[float, float] = (0.5, 4.0)
    residual_water_fraction: float = 0.02  # classic WS rows: residual water / water
    n_water_ref: int = 16  # classic: separate water-reference transients
    mc_first_cycle: int | None = None  # +1 / -1 state of row 0; None -> random
    mc_water_asymmetry: float = 0.0  # water amplitude (1 +- a/2) in the two MC states
    lineshape: str = "voigt"  # 'voigt' | 'voxel' (sub-voxel field distribution, see above)
    eddy_residual_fraction: float = 0.0  # metabolites' extra eddy-current phase vs water
    # BOLD-like change of the Lorentzian FWHM (Hz; negative: narrower), water and metabolites
    # alike, applied after the target linewidth is met (the target is the scan at rest)
    bold_linewidth_hz: float = 0.0

    def __post_init__(self):
        if self.mode not in ("mc", "classic"):
            raise ValueError(f"mode must be 'mc' or 'classic', not {self.mode!r}")
        if self.mode == "mc" and self.n_transients % 2:
            raise ValueError("MC needs an even number of transients (pairs)")
        if self.n_transients < 1:
            raise ValueError("n_transients must be >= 1")
        if self.lineshape not in ("voigt", "voxel"):
            raise ValueError(f"lineshape must be 'voigt' or 'voxel', not {self.lineshape!r}")


@dataclass
class ScanSynthesis:
    """Synthetic transients with their planted truth.

    ``transients`` (n_rows, npoints) complex128, raw row order (MC: the cycle state
    alternates row by row).  ``freq_hz`` / ``phase_deg`` are the frequency (Hz) and
    zero-order phase (deg, wrapped to [-180, 180)) applied to each whole row (scan offset +
    drift + walk + jitter + motion jumps); ``motion`` flags motion-corrupted rows.  Classic
    mode adds ``water_ref`` rows (unsuppressed) with their own ``water_ref_freq_hz`` and
    ``water_ref_phase_deg``.  ``ideal_metab`` / ``ideal_water`` are the noiseless ideal
    processed FIDs the planted numbers refer to.
    """

    transients: np.ndarray
    cycle: np.ndarray
    freq_hz: np.ndarray
    phase_deg: np.ndarray
    motion: np.ndarray
    snr_planted: float
    linewidth_planted_hz: float
    water_linewidth_planted_hz: float
    noise_sd: float  # per row, per real/imaginary component
    spec: ScanSpec
    params: dict
    ideal_metab: np.ndarray
    ideal_water: np.ndarray
    modulation: np.ndarray  # (n_rows, npoints): per-row multiplicative signal modulation
    water_ref: np.ndarray | None = None
    water_ref_freq_hz: np.ndarray | None = None
    water_ref_phase_deg: np.ndarray | None = None
    noise: np.ndarray | None = None  # (n_rows, npoints): the noise added to each row
    pre_averaged: bool = False
    averaged_from: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.transients.shape[0])

    @property
    def pair(self) -> np.ndarray:
        """Pair (DIM_DYN) index of each row (MC), or the row index (classic)."""
        r = np.arange(self.n_rows)
        return r // 2 if self.spec.mode == "mc" else r

    @property
    def motion_pairs(self) -> np.ndarray:
        return np.unique(self.pair[self.motion])


# ---------------------------------------------------------------------------------------------
def toy_basis(
    f0_mhz: float = 127.8, dwell_s: float = 5e-4, npoints: int = 2048, te_ms: float = 30.0
):
    """Small analytic basis (no broadening, fid[0] = protons): NAA 2.008 (3H), Cr 3.027 (3H)
    + 3.913 (2H), Cho 3.21 (9H), Lac doublet 1.31 ppm (3H, J = 6.93 Hz) and a downfield
    Glc-like doublet at 5.22 ppm (1H, J = 3.8 Hz).  Returns a :class:`mrsflow.basis.Basis`.
    """
    from mrsflow.basis import Basis

    t = np.arange(npoints) * dwell_s

    def line(ppm, protons, j_hz=0.0):
        nu = (ppm - CENTRE_PPM) * f0_mhz
        if j_hz:
            return protons * np.exp(2j * np.pi * nu * t) * np.cos(np.pi * j_hz * t)
        return protons * np.exp(2j * np.pi * nu * t)

    entries = {
        "NAA": line(2.008, 3),
        "Cr": line(3.027, 3) + line(3.913, 2),
        "Cho": line(3.21, 9),
        "Lac": line(1.31, 3, 6.93),
        "Glc": line(5.22, 1, 3.8),
    }
    return Basis(
        names=list(entries),
        fids=np.vstack(list(entries.values())).astype(np.complex128),
        dwell_s=dwell_s,
        f0_mhz=f0_mhz,
        centre_ppm=CENTRE_PPM,
        te_ms=te_ms,
        meta={"kind": "toy"},
    )


def _basis_template(basis, amplitudes: dict[str, float], spec: ScanSpec) -> np.ndarray:
    """Sum_m a_m basis_m on the scan's time axis (centre moved to 4.65 ppm if needed)."""
    names = list(basis.names)
    unknown = sorted(set(amplitudes) - set(names))
    if unknown:
        raise KeyError(f"amplitudes for names not in the basis: {unknown}")
    if not math.isclose(basis.dwell_s, spec.dwell_s, rel_tol=1e-9):
        raise ValueError(f"basis dwell {basis.dwell_s} s != scan dwell {spec.dwell_s} s")
    if not math.isclose(basis.f0_mhz, spec.f0_mhz, rel_tol=1e-6):
        raise ValueError(f"basis f0 {basis.f0_mhz} MHz != scan f0 {spec.f0_mhz} MHz")
    fids = np.asarray(basis.fids)
    if fids.shape[1] < spec.npoints:
        raise ValueError(f"basis has {fids.shape[1]} points < {spec.npoints}")
    a = np.array([float(amplitudes.get(n, 0.0)) for n in names])
    m0 = a @ fids[:, : spec.npoints]
    centre = float(getattr(basis, "centre_ppm", CENTRE_PPM))
    if centre != CENTRE_PPM:
        t = np.arange(spec.npoints) * spec.dwell_s
        m0 = m0 * np.exp(2j * np.pi * (centre - CENTRE_PPM) * spec.f0_mhz * t)
    return m0.astype(np.complex128)


def _voigt(t: np.ndarray, lorentz_hz: float, gauss_hz: float) -> np.ndarray:
    return np.exp(-np.pi * lorentz_hz * t - (np.pi * gauss_hz * t) ** 2 / (4.0 * math.log(2.0)))


#: microscopic Gaussian part of the 'voxel' lineshape, relative to its inhomogeneous width
VOXEL_GAUSS = 0.35
_VOXEL_BINS = 64


def voxel_offsets(rng: np.random.Generator, n: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """A sub-voxel field distribution (module docstring) as a histogram: (unit offsets of the
    bin centres, weights summing to 1); mean 0, SD 1 / 2.355."""
    x = rng.uniform(-0.5, 0.5, (n, 3))
    g, h = rng.normal(size=3), rng.normal(size=3)
    q = rng.uniform(-1.5, 1.5)
    u = x @ (g / np.linalg.norm(g)) + q * (x @ (h / np.linalg.norm(h))) ** 2
    u = (u - u.mean()) / (2.355 * u.std())
    w, edges = np.histogram(u, bins=_VOXEL_BINS)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w = w / w.sum()
    shift = float(w @ centres)  # keep the histogram's mean at 0 exactly
    return centres - shift, w


def _lineshape(t: np.ndarray, w: float, eta: float, voxel) -> np.ndarray:
    """Common lineshape of width parameter ``w``: Voigt, or the 'voxel' one (``voxel`` =
    :func:`voxel_offsets`)."""
    if voxel is None:
        return _voigt(t, eta * w, (1.0 - eta) * w)
    u, p = voxel
    s = (1.0 - eta) * w * t
    phi = np.exp(2j * np.pi * np.outer(s, u)) @ p
    return np.exp(-np.pi * eta * w * t) * phi * _voigt(s, 0.0, VOXEL_GAUSS)


def _wrap_deg(x):
    return (np.asarray(x, dtype=float) + 180.0) % 360.0 - 180.0


def synthesize_scan(
    basis,
    amplitudes: dict[str, float],
    water_amplitude: float,
    spec: ScanSpec,
    rng: np.random.Generator,
    background: np.ndarray | None = None,
    *,
    width_hz: float | None = None,
    noise_sd_row: float | None = None,
) -> ScanSynthesis:
    """Synthesize one scan's transients (see the module docstring for the model).

    ``background``: an FID added to the basis combination before relaxation and lineshape
    (planted macromolecules). ``width_hz`` / ``noise_sd_row``: the lineshape width ``w`` and
    the noise SD per row, instead of finding them from the target linewidth and SNR (a
    metabolite-nulled scan, which has no NAA line to calibrate on, takes its participant's).
    """
    n, dt = spec.npoints, spec.dwell_s
    t = np.arange(n) * dt
    mc = spec.mode == "mc"
    n_rows = spec.n_transients

    # ---- scan-level draws (fixed order) ----------------------------------------------------
    f_off = rng.uniform(-10.0, 10.0) if spec.freq_offset_hz is None else spec.freq_offset_hz
    ph0 = rng.uniform(-180.0, 180.0) if spec.phase0_deg is None else spec.phase0_deg
    c0 = int(rng.choice([-1, 1])) if spec.mc_first_cycle is None else int(spec.mc_first_cycle)
    if c0 not in (-1, 1):
        raise ValueError("mc_first_cycle must be +1 or -1")
    rw_phase = rng.uniform(-np.pi, np.pi)
    bl_ppm = rng.uniform(*spec.baseline_ppm, size=spec.n_baseline)
    bl_fwhm = rng.uniform(*spec.baseline_fwhm_hz, size=spec.n_baseline)
    bl_w = rng.uniform(0.5, 1.5, size=spec.n_baseline)
    # per-row draws
    walk = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, spec.drift_walk_sd_hz, n_rows - 1))])
    jitter = rng.normal(0.0, spec.phase_jitter_sd_deg, n_rows)
    n_mot = min(spec.n_motion, n_rows)
    mot_rows = np.sort(rng.choice(n_rows, size=n_mot, replace=False)).astype(int)
    mot_df = rng.uniform(*spec.motion_freq_hz, n_mot) * rng.choice([-1, 1], n_mot)
    mot_dp = rng.uniform(*spec.motion_phase_deg, n_mot) * rng.choice([-1, 1], n_mot)
    mot_loss = rng.uniform(*spec.motion_amp_loss, n_mot)
    mot_lb = rng.uniform(*spec.motion_broadening_hz, n_mot)
    noise = rng.standard_normal((n_rows, 2 * n)).view(np.complex128)
    if not mc:
        n_ref = spec.n_water_ref
        ref_walk = walk[-1] + np.cumsum(rng.normal(0.0, spec.drift_walk_sd_hz, n_ref))
        ref_jitter = rng.normal(0.0, spec.phase_jitter_sd_deg, n_ref)
        ref_noise = rng.standard_normal((n_ref, 2 * n)).view(np.complex128)
    voxel = voxel_offsets(rng) if spec.lineshape == "voxel" else None  # drawn last

    # ---- noiseless templates -----------------------------------------------------------------
    m0 = _basis_template(basis, amplitudes, spec)
    met_area = float(np.real(m0[0]))
    if background is not None:
        m0 = m0 + np.asarray(background, complex)[: spec.npoints]
    if spec.n_baseline and spec.baseline_fraction:
        areas = spec.baseline_fraction * abs(met_area) * bl_w / bl_w.sum()
        nu_bl = (bl_ppm - CENTRE_PPM) * spec.f0_mhz
        comps = (
            areas[:, None]
            * np.exp(2j * np.pi * nu_bl[:, None] * t)
            * np.exp(-((np.pi * bl_fwhm[:, None] * t) ** 2) / (4.0 * math.log(2.0)))
        )
        m0 = m0 + comps.sum(axis=0)
    t2m = np.exp(-t / (spec.t2_metab_ms * 1e-3))
    t2w = np.exp(-t / (spec.t2_water_ms * 1e-3))
    eta = spec.lorentz_fraction
    ec_res = np.exp(1j * spec.eddy_residual_fraction * spec.eddy_amp_rad
                    * np.exp(-t / (spec.eddy_tau_ms * 1e-3)))

    def metab(w: float) -> np.ndarray:
        return m0 * t2m * ec_res * _lineshape(t, w, eta, voxel)

    def ideal(w: float) -> np.ndarray:
        return metab(w)

    target = spec.target_linewidth_hz
    lw_at: dict[float, float] = {}

    def lw_of(w: float) -> float:
        """QC FWHM of ideal(w), memoised: each costs a line fit, brentq re-evaluates the
        bracket ends and the root it returns is one of its evaluated points."""
        if w not in lw_at:
            lw_at[w] = qc.linewidth_hz(ideal(w), dt, spec.f0_mhz, peak_ppm=qc.NAA_PPM)
        return lw_at[w]

    def lw_err(w: float) -> float:
        lw = lw_of(w)
        # no half-maximum crossing inside the window = broader than measurable
        return lw - target if np.isfinite(lw) else target

    if width_hz is None:
        w_lo, w_hi = 1e-3, target
        while lw_err(w_hi) < 0:
            w_hi *= 1.5
        e_lo = lw_err(w_lo)
        if not e_lo < 0:
            raise ValueError(
                f"target linewidth {target} Hz below the intrinsic NAA FWHM "
                f"({e_lo + target:.3f} Hz with no common broadening)"
            )
        w = brentq(lw_err, w_lo, w_hi, xtol=1e-7, rtol=1e-10)
    else:
        w = float(width_hz)
    lor, gau = eta * w, (1.0 - eta) * w
    vt = _lineshape(t, w, eta, voxel) * np.exp(-np.pi * spec.bold_linewidth_hz * t)
    m_full = m0 * t2m * ec_res * vt
    ideal_metab = m_full
    ideal_water = float(water_amplitude) * t2w * vt
    # ideal_metab is ideal(w) unless a BOLD change was applied on top
    lw_planted = (lw_of(w) if spec.bold_linewidth_hz == 0 else
                  qc.linewidth_hz(ideal_metab, dt, spec.f0_mhz, peak_ppm=qc.NAA_PPM))
    lw_water = qc.linewidth_hz(ideal_water, dt, spec.f0_mhz, peak_ppm=qc.WATER_PPM)

    # ---- per-row truth -------------------------------------------------------------------------
    rows = np.arange(n_rows)
    t_row = rows * spec.tr_s
    freq = f_off + spec.drift_hz_per_min * t_row / 60.0 + walk
    phase = ph0 + jitter
    amp = np.ones(n_rows)
    lb = np.zeros(n_rows)
    motion = np.zeros(n_rows, dtype=bool)
    motion[mot_rows] = True
    freq[mot_rows] += mot_df
    phase[mot_rows] += mot_dp
    amp[mot_rows] *= 1.0 - mot_loss
    lb[mot_rows] += mot_lb
    phase = _wrap_deg(phase)
    cycle = (c0 * (-1) ** rows).astype(np.int8) if mc else np.ones(n_rows, dtype=np.int8)

    ec = np.exp(1j * spec.eddy_amp_rad * np.exp(-t / (spec.eddy_tau_ms * 1e-3)))
    modulation = (
        (amp * np.exp(1j * np.deg2rad(phase)))[:, None]
        * np.exp(2j * np.pi * freq[:, None] * t[None, :] - np.pi * lb[:, None] * t[None, :])
        * ec[None, :]
    )

    # ---- noise calibration -------------------------------------------------------------------
    if mc:
        pair = rows // 2
        n_keep = (n_rows // 2) - np.unique(pair[motion]).size
        keep_factor = 2.0 * n_keep
    else:
        n_keep = n_rows - int(motion.sum())
        keep_factor = float(n_keep)
    if n_keep < 1:
        raise ValueError("every transient is motion-corrupted")
    height = qc.peak_height(ideal_metab, dt, spec.f0_mhz, peak_ppm=qc.NAA_PPM)
    if noise_sd_row is None:
        sigma_spec = height / spec.target_snr
        sigma_proc = sigma_spec / math.sqrt(n - 0.75)
        sigma_row = sigma_proc * math.sqrt(keep_factor)
    else:
        sigma_row = float(noise_sd_row)
        sigma_proc = sigma_row / math.sqrt(keep_factor)
        sigma_spec = sigma_proc * math.sqrt(n - 0.75)

    # ---- rows ----------------------------------------------------------------------------------
    if mc:
        a = spec.mc_water_asymmetry
        sig = ideal_water[None, :] * (1.0 + cycle[:, None] * a / 2.0) + cycle[:, None] * ideal_metab
    else:
        resid_w = spec.residual_water_fraction * np.exp(1j * rw_phase) * ideal_water
        sig = np.broadcast_to(m_full + resid_w, (n_rows, n))
    row_noise = sigma_row * noise
    transients = modulation * sig + row_noise

    params = {
        "mode": spec.mode,
        "freq_offset_hz": float(f_off),
        "phase0_deg": float(ph0),
        "mc_first_cycle": c0 if mc else None,
        "voigt_lorentz_hz": float(lor),
        "voigt_gauss_hz": float(gau),
        "width_hz": float(w),
        "lineshape": spec.lineshape,
        "eddy_residual_fraction": spec.eddy_residual_fraction,
        "t2_metab_ms": spec.t2_metab_ms,
        "t2_water_ms": spec.t2_water_ms,
        "naa_peak_height": float(height),
        "sigma_spec": float(sigma_spec),
        "sigma_proc": float(sigma_proc),
        "n_kept": int(n_keep),
        "motion_rows": mot_rows.tolist(),
        "motion_freq_jump_hz": mot_df.tolist(),
        "motion_phase_jump_deg": mot_dp.tolist(),
        "motion_amp_loss": mot_loss.tolist(),
        "motion_broadening_hz": mot_lb.tolist(),
        "eddy_amp_rad": spec.eddy_amp_rad,
        "eddy_tau_ms": spec.eddy_tau_ms,
        "baseline_ppm": bl_ppm.tolist(),
        "baseline_fwhm_hz": bl_fwhm.tolist(),
        "residual_water_phase_rad": float(rw_phase) if not mc else None,
        "water_amplitude": float(water_amplitude),
        "spec": asdict(spec),
    }
    out = ScanSynthesis(
        transients=np.ascontiguousarray(transients),
        cycle=cycle,
        freq_hz=freq,
        phase_deg=phase,
        motion=motion,
        snr_planted=float(spec.target_snr if noise_sd_row is None else height / sigma_spec),
        linewidth_planted_hz=float(lw_planted),
        water_linewidth_planted_hz=float(lw_water),
        noise_sd=float(sigma_row),
        spec=spec,
        params=params,
        ideal_metab=ideal_metab,
        ideal_water=ideal_water,
        modulation=modulation,
        noise=row_noise,
    )
    if not mc:
        t_ref = (n_rows + np.arange(n_ref)) * spec.tr_s
        ref_freq = f_off + spec.drift_hz_per_min * t_ref / 60.0 + ref_walk
        ref_phase = _wrap_deg(ph0 + ref_jitter)
        ref_mod = (
            np.exp(1j * np.deg2rad(ref_phase))[:, None]
            * np.exp(2j * np.pi * ref_freq[:, None] * t[None, :])
            * ec[None, :]
        )
        out.water_ref = ref_mod * (ideal_water + m_full)[None, :] + sigma_row * ref_noise
        out.water_ref_freq_hz = ref_freq
        out.water_ref_phase_deg = ref_phase
    return out


def scanner_average(synth: ScanSynthesis) -> ScanSynthesis:
    """Classic-mode export pre-averaged on the scanner: one row, drift NOT corrected.

    The WS rows (motion-corrupted ones included, as the scanner does not reject) and the
    water-reference rows are each averaged into a single row.  The planted numbers are
    re-derived for that averaged spectrum: the ideal processed metabolite FID becomes the
    average of the noiseless per-row metabolite signals with the eddy-current phase removed
    (what Klose correction with the water reference does) and the rows' mean frequency
    offset removed (referencing): ``M(t) mean_r(mod_r(t)) / ec(t) exp(-2 pi i f_mean t)``.
    ``linewidth_planted_hz`` is its QC FWHM (drift, jitter and the motion rows broaden it)
    and ``snr_planted = qc.peak_height(ideal) / (sigma_row / sqrt(n_rows) sqrt(N - 3/4))``,
    the noiseless-height-over-noise-SD value of the exported average.  The per-transient
    truth of the averaged rows is kept in ``averaged_from``.
    """
    spec = synth.spec
    if spec.mode != "classic":
        raise ValueError("scanner_average is for classic (non-MC) scans")
    if synth.pre_averaged:
        return synth
    n, dt = spec.npoints, spec.dwell_s
    t = np.arange(n) * dt
    n_rows = synth.n_rows
    ec = np.exp(1j * spec.eddy_amp_rad * np.exp(-t / (spec.eddy_tau_ms * 1e-3)))
    mean_mod = synth.modulation.mean(axis=0)
    m_full = synth.ideal_metab
    # referenced like the processed spectrum: the mean frequency offset of the rows removed
    f_mean = float(np.mean(synth.freq_hz))
    ideal_avg = m_full * mean_mod / ec * np.exp(-2j * np.pi * f_mean * t)
    sigma_avg = synth.noise_sd / math.sqrt(n_rows)
    height = qc.peak_height(ideal_avg, dt, spec.f0_mhz, peak_ppm=qc.NAA_PPM)
    snr_planted = height / (sigma_avg * math.sqrt(n - 0.75))
    lw = qc.linewidth_hz(ideal_avg, dt, spec.f0_mhz, peak_ppm=qc.NAA_PPM)
    water_ref = synth.water_ref
    if water_ref is not None:
        n_ref_avg = water_ref.shape[0]
        f_ref = float(np.mean(synth.water_ref_freq_hz))
        ideal_w_avg = synth.ideal_water * np.mean(
            np.exp(
                1j * np.deg2rad(synth.water_ref_phase_deg)[:, None]
                + 2j * np.pi * (synth.water_ref_freq_hz[:, None] - f_ref) * t[None, :]
            ),
            axis=0,
        )
        lw_w = qc.linewidth_hz(ideal_w_avg, dt, spec.f0_mhz, peak_ppm=qc.WATER_PPM)
        water_avg = water_ref.mean(axis=0, keepdims=True)
    else:
        n_ref_avg, lw_w, water_avg = 0, synth.water_linewidth_planted_hz, None
    phase_mean = float(np.rad2deg(np.angle(mean_mod[0] / ec[0])))
    ref_phase_mean = (
        0.0
        if water_ref is None
        else float(np.rad2deg(np.angle(np.exp(1j * np.deg2rad(synth.water_ref_phase_deg)).mean())))
    )
    params = dict(synth.params)
    params.update(
        {
            "pre_averaged": True,
            "n_averaged": n_rows,
            "n_water_ref_averaged": n_ref_avg,
            "naa_peak_height": float(height),
            "sigma_spec": float(sigma_avg * math.sqrt(n - 0.75)),
            "sigma_proc": float(sigma_avg),
        }
    )
    return replace(
        synth,
        transients=synth.transients.mean(axis=0, keepdims=True),
        cycle=np.ones(1, dtype=np.int8),
        freq_hz=np.array([float(np.mean(synth.freq_hz))]),
        phase_deg=np.array([phase_mean]),
        motion=np.zeros(1, dtype=bool),
        snr_planted=float(snr_planted),
        linewidth_planted_hz=float(lw),
        water_linewidth_planted_hz=float(lw_w),
        noise_sd=float(sigma_avg),
        params=params,
        ideal_metab=ideal_avg,
        ideal_water=synth.ideal_water if water_ref is None else ideal_w_avg,
        modulation=mean_mod[None, :],
        noise=None if synth.noise is None else synth.noise.mean(axis=0, keepdims=True),
        water_ref=water_avg,
        water_ref_freq_hz=(
            None if water_ref is None else np.array([float(np.mean(synth.water_ref_freq_hz))])
        ),
        water_ref_phase_deg=None if water_ref is None else np.array([ref_phase_mean]),
        pre_averaged=True,
        averaged_from={
            "freq_hz": synth.freq_hz,
            "phase_deg": synth.phase_deg,
            "motion": synth.motion,
            "water_ref_freq_hz": synth.water_ref_freq_hz,
            "water_ref_phase_deg": synth.water_ref_phase_deg,
        },
    )


def realized_metabolite_fid(synth: ScanSynthesis) -> np.ndarray:
    """The processed metabolite FID an ideal pipeline would produce from *these* transients:
    the noiseless processed signal plus exactly the noise the average keeps (true frequency,
    phase and eddy-current modulation undone, the motion-corrupted transients or MC pairs
    dropped). Its QC numbers are the quality the generated files really have."""
    spec = synth.spec
    t = np.arange(spec.npoints) * spec.dwell_s
    ec = np.exp(1j * spec.eddy_amp_rad * np.exp(-t / (spec.eddy_tau_ms * 1e-3)))
    undo = np.exp(
        -1j
        * (2 * np.pi * synth.freq_hz[:, None] * t[None, :] + np.deg2rad(synth.phase_deg)[:, None])
    )
    if synth.pre_averaged:  # the scanner averaged; only the mean offset and ec are undone
        undo = np.exp(-2j * np.pi * synth.freq_hz[:, None] * t[None, :])
    noise = synth.noise * undo / ec[None, :]
    if spec.mode == "mc" and not synth.pre_averaged:
        nc = noise * synth.cycle[:, None]
        keep = ~np.isin(np.arange(synth.n_rows // 2), synth.motion_pairs)
        return synth.ideal_metab + (0.5 * (nc[0::2] + nc[1::2]))[keep].mean(axis=0)
    return synth.ideal_metab + noise[~synth.motion].mean(axis=0)


def realized_quality(synth: ScanSynthesis) -> dict:
    """QC numbers of the generated data (see :func:`realized_metabolite_fid`)."""
    spec = synth.spec
    fid = realized_metabolite_fid(synth)
    return {
        "snr": float(qc.snr(fid, spec.dwell_s, spec.f0_mhz)),
        "linewidth_hz": float(qc.linewidth_hz(fid, spec.dwell_s, spec.f0_mhz)),
        "linewidth_water_hz": float(synth.water_linewidth_planted_hz),
    }
