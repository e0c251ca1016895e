"""Linear-combination model (LCM) fitting of 1H MR spectra, and the FSL-MRS backend.

Three backends produce one output contract (:data:`CONTRACT_KEYS`, :func:`write_result`):

- ``builtin``: the fitter of this module (numpy/scipy only), :func:`fit_spectrum`;
- ``fsl_mrs``: the FSL-MRS 2.x command line (:func:`build_fsl_mrs_command`,
  :func:`run_fsl_mrs`, :func:`parse_fsl_mrs_output`), used when ``fsl_mrs`` is on PATH;
- ``lcmodel``: LCModel (:mod:`mrsflow.fit.lcmodel`), when asked for and found.

Conventions
-----------
A resonance at delta ppm is ``exp(+2 pi i nu t)`` with ``nu = (delta - centre_ppm) * f0`` Hz;
the spectrum is ``fftshift(fft(fid))`` on the ascending frequency axis (no zero filling,
no apodisation, no first-point scaling: data and model go through the same FFT). Frequency-
domain points of an un-zero-filled FID carry independent noise, which the CRLBs rely on.

Model (frequency domain, over the fit range, default 0.2-4.2 ppm)
-----------------------------------------------------------------
::

    S(nu) = exp(i (phi0 + 2 pi nu tau)) * sum_g sum_{m in g} a_m F[b_m(t) E_g(t)](nu) + B(nu)
    E_g(t) = exp(-pi L_g t - (pi^2 / (4 ln 2)) G_g^2 t^2 + 2 pi i eps_g t)

- ``b_m``: basis FID as stored (fid[0] = number of protons), ``a_m >= 0`` its amplitude;
- per group g (default: metabolites one group, macromolecules/lipids another, like FSL-MRS's
  ``--metab_groups``): Lorentzian FWHM ``L_g`` (Hz), Gaussian FWHM ``G_g`` (Hz; the optimiser
  works with ``G_g^2 >= 0`` so that the derivative does not vanish at G = 0) and frequency
  shift ``eps_g`` (Hz). Reported as ``gamma_hz`` = L_g, ``sigma_hz`` = G_g, ``shift_hz`` =
  eps_g and ``linewidth_hz`` = Voigt FWHM (Olivero & Longbothum 1977, JQSRT 17:233:
  0.5346 L + sqrt(0.2166 L^2 + G^2)).
- soft priors (LCModel-like prior knowledge) tie groups g >= 1 (e.g. the macromolecules,
  whose broad basis lines barely constrain an extra broadening) to group 0: Gaussian priors on
  eps_g - eps_0, L_g - L_0 and G_g - G_0 with SD ``group_prior_sd_hz`` = (3, 3, 3) Hz. They
  enter the objective as rows ``noise_sd * (p_g - p_0) / SD`` (maximum a posteriori) and the
  Fisher information as the prior precision. ``group_prior_sd_hz=None`` disables them.
- zero-order phase ``phi0`` and first-order phase as a time shift ``tau`` (s); the linear phase
  pivots at ``centre_ppm`` (nu = 0), and is reported as ``phi1_deg_per_ppm = 360 tau f0``.
- baseline ``B``: complex, either Legendre polynomials of order n in the normalised fit-range
  frequency (``"poly, n"``, default n = 2, unpenalised, like FSL-MRS) or a cubic B-spline
  with knots every 0.15 ppm (the LCModel default knot spacing DKNTMN) and an LCModel-like
  stiffness: a second-difference roughness penalty ``lambda ||D2 c||^2`` on real and
  imaginary coefficients (P-splines: Eilers & Marx 1996, Stat Sci 11:89), lambda set from a
  target effective dimension (trace of the baseline smoother, per real component):
  ``"spline, <ED>"`` or ``"spline, very-stiff|stiff|moderate|flexible|very-flexible"``
  (ED 3 / 5 / 8 / 13 / 20, our own mapping).

Estimation
----------
Variable projection (Golub & Pereyra 1973, SIAM J Numer Anal 10:413; review 2003, Inverse
Problems 19:R1): for given nonlinear parameters theta = (L, G^2, eps per group, phi0, tau)
the linear parameters (amplitudes >= 0, baseline coefficients free) are solved exactly: the
baseline is projected out (QR, precomputed: it does not depend on theta), the amplitudes solved
by NNLS (Lawson-Hanson active set, ``scipy.optimize.nnls``, on the Cholesky factor of the
projected Gram matrix), the baseline back-substituted. The projected residual is minimised
over theta with ``scipy.optimize.least_squares`` (trust-region reflective, bounds, tolerances
1e-10) using the analytic Kaufman
Jacobian (Kaufman 1975, BIT 15:49): ``J_k = -P_perp (dPhi/dtheta_k) c`` with P_perp the
projector onto the orthogonal complement of the active columns (free amplitudes + baseline).

Robust start: complex cross-correlation of the data (1.8-3.4 ppm, linear trend projected out)
with a reference made of the singlets NAA, Cr, PCr, GPC, PCh for frequency shifts on a 0.5 Hz
grid within +-``max_shift_hz``: the maximum of |c| gives the shift (parabolic refinement), its
argument the zero-order phase. A few Lorentz/Gauss starting widths are then scored with the
projected residual and the best one starts the optimisation.

Noise and CRLBs
---------------
``noise_sd`` is the SD of ONE real component of the spectrum (unnormalised FFT), estimated
from the signal-free windows -2.5 to -0.5 and 9.5 to 11.5 ppm (those of ``mrsflow.qc``,
clipped to the inner 90 % of the band): real and imaginary parts of each window are detrended
with a quadratic in ppm and the pooled sum of squares divided by its degrees of freedom
(n - 3 per part and window). If fewer than 64 points are available it falls back to the
residual estimate. ``snr`` = NAA peak height of the fitted metabolite + MM model
(phase-corrected, no baseline, first FID point halved as in ``mrsflow.qc``) / ``noise_sd``.
``residual_sd = sqrt(RSS / (2K - p_eff))``
over the 2K real values of the fit range, p_eff = free amplitudes + baseline effective
dimension + nonlinear parameters; ``fit_quality = residual_sd / noise_sd`` (about 1 for a fit
that leaves only noise).

CRLBs: Fisher information of the FULL model, all amplitudes (also those at zero), all
baseline coefficients and all nonlinear parameters, ``F = J^T J / s^2`` with J the
un-projected Jacobian of the real-stacked model and s = ``noise_sd`` (for a penalised spline
the penalty enters as the Gaussian prior it is: ``F += lambda D^T D / s^2``, and so do the
group lineshape priors). ``crlb_abs`` =
sqrt(diag F^-1), ``crlb_pct`` = 100 crlb_abs / amplitude. Combined entries (tCr = Cr + PCr,
tNAA = NAA + NAAG, tCho = GPC + PCh, Glx = Glu + Gln) get ``sqrt(1^T C 1)`` including the
covariances. Because real and imaginary parts each carry variance s^2, no ad-hoc factor 2 is
needed; the Monte-Carlo test in ``tests/test_fit.py`` checks the calibration.

Speed: basis FFTs restricted to the fit-range bins, the baseline projector precomputed, the
Kaufman Jacobian needs only 2 FFTs per group, BLAS pinned to one thread (threadpoolctl: a
multi-threaded OpenBLAS is ~10x slower on these small matrices). ~0.05 s per spectrum
(``bench/bench_fit.py``).

Water
-----
:func:`fit_water` fits one Voigt line (complex amplitude, frequency, L, G^2) to the water
reference over 4.0-5.3 ppm; ``amplitude`` = |fid(t = 0)| of the fitted line = area of the
water peak (2 protons per molecule), in the same units as the metabolite amplitudes times
their proton count.

NIfTI-MRS input
---------------
:func:`read_nifti_mrs` reads spectra through :mod:`mrsflow.nmrs` (the files store the
conjugate of the project convention; ``nifti_mrs`` indexing and FSL-MRS undo it the same way),
dwell from ``pixdim[4]`` and f0 from the ``SpectrometerFrequency`` of the NIfTI-MRS JSON header
extension (code 44).

FSL-MRS backend
---------------
:func:`build_fsl_mrs_command` uses only options documented for FSL-MRS 2.x (user docs
``fitting_svs.rst`` "Wrapper options" and the ``fsl_mrs --help`` argument list of
``fsl_mrs/scripts/fsl_mrs.py``): ``--data --basis --output --h2o --tissue_frac --TE`` (ms)
``--TR`` (s) ``--ppmlim --baseline`` ("poly, N" / "spline, <stiffness>" / "off"; the legacy
``--baseline_order`` and the 1.x ``--add_MM`` are not used) ``--metab_groups`` (one
"A+B+..." entry per non-default group; FSL-MRS puts unlisted basis spectra in group 0)
``--ignore --keep --combine`` (tCr, tNAA, tCho, Glx) ``--algo --lorentzian --free_shift
--internal_ref --wref_metabolite --no_rescale --report --overwrite``. Outputs parsed (FSL-MRS
``FitRes.to_file``): ``concentrations.csv`` (two header rows: mean/std x raw/internal/
molality/molarity), ``all_parameters.csv`` (parameter, mean, std), ``qc.csv`` (Metab, SNR,
FWHM), ``summary.csv`` (fallback) and the model FID ``fit.nii.gz``. The sign conversions of
FSL-MRS's nuisance parameters (:func:`parse_fsl_mrs_output`) follow its model
``exp(-i(Phi0 + Phi1 nu))``, ``exp(-(gamma + sigma^2 t + i eps) t)`` as read in its source;
they are not verified against a live FSL-MRS 2.4 here (amplitudes and CRLBs do not depend
on them).

Basis resampling (:func:`resample_basis`)
------------------------------------------
The basis is brought onto the data's time grid ``k * dwell`` (k < npoints): (1) if the data
dwell is an integer multiple of the basis dwell, plain decimation (exact: the samples ARE the
basis signal at those times); (2) otherwise quintic-spline interpolation of the real and
imaginary parts of the FID after demodulation by its spectral centroid (interpolation error
~ (2 pi nu_max dwell)^6, far below the noise). A small spectrometer-frequency mismatch
(< 1 %) is absorbed by scaling the time axis by f0_data / f0_basis (ppm positions exact,
J couplings scaled by the same tiny factor); a larger one is an error. A different
``centre_ppm`` is corrected by the modulation exp(2 pi i (c_basis - c_data) f0 t). Points
beyond the basis duration are zero (reported in the fit message).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, optimize
from scipy.interpolate import BSpline, make_interp_spline

from mrsflow import __version__
from mrsflow.basis import Basis
from mrsflow.errors import InputError
from mrsflow.fit.contract import COMBINATIONS, _contract, _met_entry, is_macromolecule, voigt_fwhm

#: Gaussian decay exp(-_CQ G^2 t^2) has a spectral FWHM of G Hz
_CQ = math.pi**2 / (4.0 * math.log(2.0))

_SPLINE_STIFFNESS = {
    "very-stiff": 3.0,
    "stiff": 5.0,
    "moderate": 8.0,
    "flexible": 13.0,
    "very-flexible": 20.0,
}

_KNOT_SPACING_PPM = 0.15

_SINGLET_WEIGHTS = {"NAA": 1.0, "Cr": 0.5, "PCr": 0.4, "GPC": 0.1, "PCh": 0.05}

_NAA_PPM = (1.95, 2.08)

#: signal-free windows for the noise SD (the same as mrsflow.qc.NOISE_PPM): upfield of every
#: metabolite/MM signal and downfield of water and the amide/aromatic region
NOISE_PPM: tuple[tuple[float, float], ...] = ((-2.5, -0.5), (9.5, 11.5))


@functools.lru_cache(maxsize=1)
def _threadpool_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - optional
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def _single_thread_blas():
    """BLAS on one thread: the fitter's matrices are small and a multi-threaded OpenBLAS
    is up to 10x SLOWER on them (measured on 2 cores). No-op without threadpoolctl."""
    ctl = _threadpool_controller()
    if ctl is None:  # pragma: no cover
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


def _fit_bins(n: int, dwell_s: float, f0_mhz: float, centre_ppm: float, ppm_range) -> tuple:
    """Indices (unshifted FFT order, ascending frequency) of the bins in ``ppm_range``."""
    freqs = np.fft.fftfreq(n, dwell_s)
    ppm = centre_ppm + freqs / f0_mhz
    lo, hi = sorted(float(v) for v in ppm_range)
    sel = np.flatnonzero((ppm >= lo) & (ppm <= hi))
    if sel.size < 8:
        raise InputError(f"fit range {ppm_range} ppm holds only {sel.size} spectral points")
    sel = sel[np.argsort(freqs[sel])]
    return sel, freqs[sel], ppm[sel]


def _spectrum(fid: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft(fid))


def _ppm_full(n: int, dwell_s: float, f0_mhz: float, centre_ppm: float) -> np.ndarray:
    return centre_ppm + np.fft.fftshift(np.fft.fftfreq(n, dwell_s)) / f0_mhz


def estimate_noise_sd(
    fid: np.ndarray,
    dwell_s: float,
    f0_mhz: float,
    centre_ppm: float = 4.65,
    regions=None,
    min_points: int = 64,
) -> float | None:
    """SD of one real component of the spectrum in signal-free regions (see module doc).

    ``regions``: list of (lo, hi) ppm, default :data:`NOISE_PPM` (the windows of
    ``mrsflow.qc``), clipped to the inner 90 % of the band. Returns None when fewer than
    ``min_points`` complex points are available.
    """
    fid = np.asarray(fid, dtype=complex)
    n = fid.size
    spec = _spectrum(fid)
    ppm = _ppm_full(n, dwell_s, f0_mhz, centre_ppm)
    inner = np.zeros(n, dtype=bool)
    edge = max(1, int(0.05 * n))
    inner[edge : n - edge] = True
    regions = NOISE_PPM if regions is None else regions
    masks = [inner & (ppm >= min(r)) & (ppm <= max(r)) for r in regions]
    ss, dof, npts = 0.0, 0, 0
    for mask in masks:
        idx = np.flatnonzero(mask)
        if idx.size < 16:
            continue
        # split into contiguous runs
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
            if run.size < 16:
                continue
            x = np.linspace(-1.0, 1.0, run.size)
            vander = np.vander(x, 3)
            for part in (spec[run].real, spec[run].imag):
                coef, *_ = np.linalg.lstsq(vander, part, rcond=None)
                res = part - vander @ coef
                ss += float(res @ res)
                dof += run.size - 3
            npts += run.size
    if npts < min_points or dof <= 0:
        return None
    return math.sqrt(ss / dof)


@dataclass
class _Baseline:
    kind: str  # "poly", "spline" or "off"
    label: str  # "poly, 2" / "spline, moderate" / "off"
    order: int | None  # polynomial order (None for spline/off)
    cols: np.ndarray  # (K, nb) real basis functions
    pen: np.ndarray | None  # (npen, nb) sqrt(lambda) * D, or None
    ed: float  # effective dimension per real component


def _parse_baseline(spec) -> tuple[str, float | int | None, str]:
    """-> (kind, value, label). Accepts int order, 'poly, n', 'spline, <stiffness|ED>', 'off'."""
    if spec is None:
        return "off", None, "off"
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        order = int(spec)
        return ("off", None, "off") if order < 0 else ("poly", order, f"poly, {order}")
    text = str(spec).strip().lower()
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts or parts[0] in ("off", "none"):
        return "off", None, "off"
    kind = parts[0]
    if kind in ("poly", "polynomial"):
        order = int(parts[1]) if len(parts) > 1 else 2
        return ("off", None, "off") if order < 0 else ("poly", order, f"poly, {order}")
    if kind == "spline":
        value = parts[1] if len(parts) > 1 else "moderate"
        if value in _SPLINE_STIFFNESS:
            return "spline", _SPLINE_STIFFNESS[value], f"spline, {value}"
        try:
            ed = float(value)
        except ValueError:
            raise InputError(
                f"baseline spline stiffness {value!r}: use one of {sorted(_SPLINE_STIFFNESS)} "
                "or an effective dimension >= 2"
            ) from None
        if ed < 2.0:
            raise InputError(f"baseline spline effective dimension {ed} < 2")
        return "spline", ed, f"spline, {value}"
    try:
        return _parse_baseline(int(text))
    except ValueError:
        raise InputError(f"unknown baseline specification {spec!r}") from None


def _make_baseline(spec, ppm_sel: np.ndarray) -> _Baseline:
    kind, value, label = _parse_baseline(spec)
    k = ppm_sel.size
    if kind == "off":
        return _Baseline("off", label, None, np.zeros((k, 0)), None, 0.0)
    x = (ppm_sel - ppm_sel.min()) / max(np.ptp(ppm_sel), 1e-12) * 2.0 - 1.0
    if kind == "poly":
        order = int(value)
        cols = np.polynomial.legendre.legvander(x, order)
        return _Baseline("poly", label, order, cols, None, float(order + 1))
    # cubic B-spline with ~0.15 ppm knot spacing, second-difference penalty
    lo, hi = float(ppm_sel.min()), float(ppm_sel.max())
    nint = max(4, int(math.ceil((hi - lo) / _KNOT_SPACING_PPM)))
    h = (hi - lo) / nint
    knots = lo + h * np.arange(-3, nint + 4)
    xs = np.clip(ppm_sel, lo, hi - 1e-9 * h)
    cols = BSpline.design_matrix(xs, knots, 3).toarray()
    nb = cols.shape[1]
    diff2 = np.diff(np.eye(nb), n=2, axis=0)
    ed_target = min(float(value), nb - 1e-6)
    gram = cols.T @ cols
    mu = linalg.eigh(diff2.T @ diff2, gram, eigvals_only=True)
    mu = np.clip(mu, 0.0, None)

    def ed_of(log_lam: float) -> float:
        return float(np.sum(1.0 / (1.0 + math.exp(log_lam) * mu)))

    if ed_target >= ed_of(-40.0) - 1e-9:
        lam = 0.0
    else:
        lo_l, hi_l = -40.0, 60.0
        log_lam = optimize.brentq(lambda v: ed_of(v) - ed_target, lo_l, hi_l, xtol=1e-8)
        lam = math.exp(log_lam)
    ed = float(np.sum(1.0 / (1.0 + lam * mu)))
    return _Baseline("spline", label, None, cols, math.sqrt(lam) * diff2, ed)


def resample_basis(
    basis: Basis,
    dwell_s: float,
    npoints: int,
    f0_mhz: float | None = None,
    centre_ppm: float | None = None,
) -> tuple[Basis, str]:
    """Basis on the data's time grid (method in the module docstring) -> (basis, note)."""
    fids = np.asarray(basis.fids, dtype=complex)
    notes = []
    f0_data = float(basis.f0_mhz if f0_mhz is None else f0_mhz)
    c_data = float(basis.centre_ppm if centre_ppm is None else centre_ppm)
    rel_f0 = abs(basis.f0_mhz - f0_data) / f0_data
    if rel_f0 > 0.01:
        raise InputError(
            f"basis spectrometer frequency {basis.f0_mhz} MHz does not match the data "
            f"({f0_data} MHz): simulate the basis for this field"
        )
    scale = f0_data / basis.f0_mhz if rel_f0 > 1e-9 else 1.0
    if scale != 1.0:
        notes.append(f"basis f0 {basis.f0_mhz} MHz time-scaled to {f0_data} MHz")
    n_in = fids.shape[1]
    ratio = dwell_s * scale / basis.dwell_s
    kint = int(round(ratio))
    if abs(ratio - kint) < 1e-9 * max(1.0, ratio) and kint >= 1:
        out = fids[:, ::kint][:, :npoints]
        if kint > 1:
            notes.append(f"basis decimated by {kint}")
        if fids[:, ::kint].shape[1] > npoints:
            notes.append(f"basis truncated to {npoints} points")
        if out.shape[1] < npoints:
            out = np.concatenate([out, np.zeros((fids.shape[0], npoints - out.shape[1]))], axis=1)
            notes.append("basis shorter than the data: zero-filled")
    else:
        t_in = np.arange(n_in) * basis.dwell_s
        t_out = np.arange(npoints) * dwell_s * scale
        inside = t_out <= t_in[-1] + 1e-12
        out = np.zeros((fids.shape[0], npoints), dtype=complex)
        freqs = np.fft.fftfreq(n_in, basis.dwell_s)
        for i, fid in enumerate(fids):
            power = np.abs(np.fft.fft(fid)) ** 2
            nu_c = float(np.sum(freqs * power) / max(np.sum(power), 1e-300))
            demod = fid * np.exp(-2j * np.pi * nu_c * t_in)
            spl = make_interp_spline(t_in, np.column_stack([demod.real, demod.imag]), k=5)
            vals = spl(t_out[inside])
            out[i, inside] = (vals[:, 0] + 1j * vals[:, 1]) * np.exp(
                2j * np.pi * nu_c * t_out[inside]
            )
        notes.append(
            f"basis interpolated (quintic spline) from dwell {basis.dwell_s:g} s to {dwell_s:g} s"
        )
        if not inside.all():
            notes.append("basis shorter than the data: zero-filled")
    if abs(basis.centre_ppm - c_data) > 1e-9:
        t = np.arange(npoints) * dwell_s
        out = out * np.exp(2j * np.pi * (basis.centre_ppm - c_data) * f0_data * t)[None, :]
        notes.append(f"basis centre {basis.centre_ppm} ppm moved to {c_data} ppm")
    new = Basis(
        names=list(basis.names),
        fids=out,
        dwell_s=float(dwell_s),
        f0_mhz=f0_data,
        centre_ppm=c_data,
        te_ms=basis.te_ms,
        meta=dict(basis.meta),
    )
    return new, "; ".join(notes)


def _resolve_groups(names: list[str], groups) -> tuple[list[str], list[list[str]], np.ndarray]:
    """-> (group names, members per group, group index per basis entry).

    ``groups``: None (metabolites / macromolecules), "combine_all", "separate_all", a
    mapping group name -> list of basis names, or a list whose entries are lists of names or
    FSL-MRS-style "A+B" strings (named group1, group2, ...). Basis names not listed form the
    group "metabolites" (group 0, the reference of the lineshape priors).
    """
    if groups is None:
        mm = [n for n in names if is_macromolecule(n)]
        spec = {"macromolecules": mm} if mm and len(mm) < len(names) else {}
    elif isinstance(groups, str):
        if groups == "combine_all":
            spec = {}
        elif groups == "separate_all":
            spec = {n: [n] for n in names}
        else:
            raise InputError(f"unknown groups specification {groups!r}")
    elif isinstance(groups, dict):
        spec = {str(k): list(v) for k, v in groups.items()}
    else:
        spec = {
            f"group{i + 1}": (entry.split("+") if isinstance(entry, str) else list(entry))
            for i, entry in enumerate(groups)
        }
    gnames: list[str] = []
    members: list[list[str]] = []
    listed = [n for v in spec.values() for n in v]
    if len(listed) != len(set(listed)):
        raise InputError(f"a basis entry is listed in more than one group: {spec}")
    unknown = sorted(set(listed) - set(names))
    if unknown:
        raise InputError(f"groups name basis entries that are not in the basis: {unknown}")
    rest = [n for n in names if n not in listed]
    if rest:
        gnames.append("metabolites")
        members.append(rest)
    for gname, mem in spec.items():
        mem = [n for n in names if n in set(mem)]
        if mem:
            gnames.append(gname)
            members.append(mem)
    gidx = np.zeros(len(names), dtype=int)
    for g, mem in enumerate(members):
        for n in mem:
            gidx[names.index(n)] = g
    return gnames, members, gidx


class _VarPro:
    """Projected residual and Kaufman Jacobian of the LCM model (normalised units)."""

    def __init__(self, y, fids, gidx, ngroups, t, nu, idx, baseline: _Baseline):
        self.y = y
        self.fids = fids
        self.gidx = gidx
        self.ngroups = ngroups
        self.t = t
        self.t2 = t * t
        self.nu = nu
        self.idx = idx
        self.k = y.size
        self.nbasis = fids.shape[0]
        self.baseline = baseline
        k = self.k
        nbl = baseline.cols.shape[1]
        self.nbl = nbl
        ab = np.zeros((2 * k, 2 * nbl))
        ab[:k, :nbl] = baseline.cols
        ab[k:, nbl:] = baseline.cols
        self.ab = ab
        npen = 0 if baseline.pen is None else baseline.pen.shape[0]
        self.npen = npen
        if npen:
            pen2 = linalg.block_diag(baseline.pen, baseline.pen)
            ab_aug = np.vstack([ab, pen2])
            self.pen2 = pen2
        else:
            ab_aug = ab
            self.pen2 = None
        self.m = 2 * k + 2 * npen
        yr = np.zeros(self.m)
        yr[:k] = y.real
        yr[k : 2 * k] = y.imag
        self.yr = yr
        if nbl:
            qb, rb = np.linalg.qr(ab_aug)
            self.qb, self.rb = qb, rb
            self.qb_top = qb[: 2 * k]
            self.yt = yr - qb @ (qb.T @ yr)
        else:
            self.qb = self.rb = self.qb_top = None
            self.yt = yr.copy()
        self.nnl = 3 * ngroups + 2
        self._key = None
        self._state = None
        # soft priors on groups >= 1 relative to group 0: weights (shift, lorentz, gauss)
        self.prior_w = np.zeros(3)

    def set_prior(self, noise_sd_norm: float, prior_sd_hz) -> None:
        """Rows noise * (p_g - p_0) / sd for g >= 1 (MAP = penalised least squares)."""
        if prior_sd_hz is None or self.ngroups < 2:
            self.prior_w = np.zeros(3)
            return
        sd = np.asarray(prior_sd_hz, dtype=float)
        self.prior_w = np.where(sd > 0, noise_sd_norm / np.where(sd > 0, sd, 1.0), 0.0)

    def _prior_rows(self, theta) -> tuple[np.ndarray, np.ndarray]:
        g = self.ngroups
        if g < 2 or not np.any(self.prior_w):
            return np.zeros(0), np.zeros((0, theta.size))
        lw, gsq, eps, _, _ = self.unpack(theta)
        gw = np.sqrt(np.maximum(gsq, 1e-8))
        rows, jac = [], []
        for kind, vals, w in (
            (2, eps, self.prior_w[0]),
            (0, lw, self.prior_w[1]),
            (1, gw, self.prior_w[2]),
        ):
            if w == 0:
                continue
            for gg in range(1, g):
                rows.append(w * (vals[gg] - vals[0]))
                jr = np.zeros(theta.size)
                if kind == 1:  # d sqrt(q) / dq = 1 / (2 sqrt(q))
                    jr[g + gg] = w / (2.0 * gw[gg])
                    jr[g] = -w / (2.0 * gw[0])
                else:
                    jr[kind * g + gg] = w
                    jr[kind * g] = -w
                jac.append(jr)
        return np.array(rows), np.array(jac)

    # parameter vector: [L_g..., Gsq_g..., eps_g..., phi0, tau_ms]
    def unpack(self, theta):
        g = self.ngroups
        return theta[:g], theta[g : 2 * g], theta[2 * g : 3 * g], theta[3 * g], theta[3 * g + 1]

    def _project_b(self, mat_top: np.ndarray) -> np.ndarray:
        """P_perp(baseline) applied to vectors with zero penalty rows -> (m, ...)."""
        out = np.zeros((self.m,) + mat_top.shape[1:])
        out[: 2 * self.k] = mat_top
        if self.qb is not None:
            out -= self.qb @ (self.qb_top.T @ mat_top)
        return out

    def evaluate(self, theta):
        key = theta.tobytes()
        if key == self._key:
            return self._state
        lw, gsq, eps, phi0, tau_ms = self.unpack(theta)
        t = self.t
        dec = np.exp(
            np.outer(-math.pi * lw, t)
            - np.outer(_CQ * gsq, self.t2)
            + np.outer(2j * math.pi * eps, t)
        )
        x = self.fids * dec[self.gidx]
        f = np.fft.fft(x, axis=1)[:, self.idx]
        ph = np.exp(1j * (phi0 + 2.0 * math.pi * self.nu * tau_ms * 1e-3))
        mc = f * ph[None, :]
        mr = np.concatenate([mc.real, mc.imag], axis=1).T  # (2K, nb)
        mt = self._project_b(mr)
        gram = mt.T @ mt
        a = _nnls_gram(gram, mt.T @ self.yt)
        res = self.yt - mt @ a
        state = {
            "x": x,
            "mc": mc,
            "mr": mr,
            "mt": mt,
            "gram": gram,
            "a": a,
            "res": res,
            "ph": ph,
        }
        self._key, self._state = key, state
        return state

    def residual(self, theta):
        res = self.evaluate(theta)["res"]
        if np.any(self.prior_w):
            res = np.concatenate([res, self._prior_rows(theta)[0]])
        return res

    def _model_derivatives(self, theta, st) -> np.ndarray:
        """d(model)/d(theta) at fixed linear parameters, complex (K, nnl)."""
        g = self.ngroups
        a = st["a"]
        fg = np.zeros((g, self.t.size), dtype=complex)
        for gg in range(g):
            sel = self.gidx == gg
            if np.any(a[sel] > 0):
                fg[gg] = a[sel] @ st["x"][sel]
        ft1 = np.fft.fft(fg * self.t[None, :], axis=1)[:, self.idx] * st["ph"][None, :]
        ft2 = np.fft.fft(fg * self.t2[None, :], axis=1)[:, self.idx] * st["ph"][None, :]
        smet = a @ st["mc"]
        d = np.empty((self.k, self.nnl), dtype=complex)
        d[:, :g] = -math.pi * ft1.T
        d[:, g : 2 * g] = -_CQ * ft2.T
        d[:, 2 * g : 3 * g] = 2j * math.pi * ft1.T
        d[:, 3 * g] = 1j * smet
        d[:, 3 * g + 1] = 1j * 2.0 * math.pi * self.nu * 1e-3 * smet
        return d

    def jacobian(self, theta):
        st = self.evaluate(theta)
        d = self._model_derivatives(theta, st)
        dr = np.concatenate([d.real, d.imag], axis=0)
        dp = self._project_b(dr)
        act = np.flatnonzero(st["a"] > 0)
        if act.size:
            mta = st["mt"][:, act]
            gaa = st["gram"][np.ix_(act, act)]
            coef = _solve_spd(gaa, mta.T @ dp)
            dp -= mta @ coef
        if np.any(self.prior_w):
            return np.vstack([-dp, self._prior_rows(theta)[1]])
        return -dp

    def baseline_coefs(self, st) -> np.ndarray:
        if self.qb is None:
            return np.zeros(0)
        rest = self.yr.copy()
        rest[: 2 * self.k] -= st["mr"] @ st["a"]
        return linalg.solve_triangular(self.rb, self.qb.T @ rest)

    def full_jacobian(self, theta, st) -> np.ndarray:
        """Un-projected Jacobian (2K, nb + 2 nbl + nnl) of the real-stacked model."""
        d = self._model_derivatives(theta, st)
        dr = np.concatenate([d.real, d.imag], axis=0)
        return np.concatenate([st["mr"], self.ab, dr], axis=1)


def _solve_spd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a (possibly near-singular) symmetric positive semi-definite system."""
    try:
        return linalg.cho_solve(linalg.cho_factor(gram, check_finite=False), rhs)
    except linalg.LinAlgError:
        return np.linalg.lstsq(gram, rhs, rcond=1e-12)[0]


def _nnls_gram(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """argmin_{a >= 0} ||M a - y||^2 given gram = M^T M and rhs = M^T y.

    The Cholesky factor R (gram = R^T R) turns it into the small square NNLS problem
    min ||R a - R^-T rhs|| (same minimiser), solved by Lawson-Hanson (scipy.optimize.nnls).
    """
    n = gram.shape[0]
    ridge = 0.0
    for _ in range(6):
        try:
            r = linalg.cholesky(gram + ridge * np.eye(n), lower=False, check_finite=False)
            break
        except linalg.LinAlgError:
            ridge = max(ridge * 100.0, 1e-13 * float(np.trace(gram)) / n)
    else:  # pragma: no cover - pathological
        return np.clip(np.linalg.lstsq(gram, rhs, rcond=None)[0], 0.0, None)
    z = linalg.solve_triangular(r, rhs, trans="T", check_finite=False)
    try:
        a, _ = optimize.nnls(r, z, maxiter=50 * n)
    except RuntimeError:  # pragma: no cover - iteration limit
        a = np.clip(linalg.solve_triangular(r, z, check_finite=False), 0.0, None)
    return a


def _reference_fid(basis_fids, names, t):
    weights = np.array([_SINGLET_WEIGHTS.get(n, 0.0) for n in names])
    if not np.any(weights):
        weights = np.array([0.0 if is_macromolecule(n) else 1.0 for n in names])
    if not np.any(weights):
        weights = np.ones(len(names))
    return (weights @ basis_fids) * np.exp(-math.pi * 4.0 * t)


def _initial_shift_phase(fid, ref, dwell_s, ppm, max_shift_hz, window=(1.8, 3.4)):
    """Complex cross-correlation over frequency shifts -> (shift_hz, phi0_rad).

    With y_w the data spectrum restricted to ``window`` (linear trend projected out) and
    R_D the spectrum of the reference shifted by D Hz, Parseval gives
    c(D) = sum_k conj(R_D(k)) y_w(k) = N sum_n conj(r(n)) ifft(y_w)(n) exp(-2 pi i D n dt),
    i.e. ONE zero-padded FFT of h(n) = conj(r(n)) ifft(y_w)(n) evaluates c on a grid of
    1/(M dt) ~ 0.5 Hz.
    """
    n = fid.size
    sel = np.flatnonzero((ppm >= window[0]) & (ppm <= window[1]))
    if sel.size < 8:
        return 0.0, 0.0
    yfull = np.fft.fft(fid)
    ywin = yfull[sel]
    x = np.linspace(-1.0, 1.0, sel.size)
    vander = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(vander, ywin, rcond=None)
    yw = np.zeros(n, dtype=complex)
    yw[sel] = ywin - vander @ coef
    h = np.conj(ref) * np.fft.ifft(yw)
    m = 1 << int(math.ceil(math.log2(max(n, 2.0 / (0.5 * dwell_s)))))
    c = np.fft.fft(h, m)
    shifts = np.fft.fftfreq(m, dwell_s)
    ok = np.abs(shifts) <= max_shift_hz
    cand = np.flatnonzero(ok)
    j = int(cand[np.argmax(np.abs(c[cand]))])
    step = 1.0 / (m * dwell_s)
    mag = np.abs(c)
    y0, y1, y2 = mag[(j - 1) % m], mag[j], mag[(j + 1) % m]
    den = y0 - 2.0 * y1 + y2
    frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    shift = float(shifts[j] + step * frac)
    phase = float(np.angle(c[j]))
    return shift, phase


@dataclass
class FitResult:
    """Builtin fit result; :meth:`to_dict` gives the output contract."""

    names: list[str]
    amplitudes: np.ndarray
    crlb_abs: np.ndarray
    combined: dict
    group_names: list[str]
    group_members: list[list[str]]
    gamma_hz: np.ndarray
    sigma_hz: np.ndarray
    shift_hz: np.ndarray
    phi0_deg: float
    phi1_deg_per_ppm: float
    noise_sd: float
    residual_sd: float
    snr: float
    ppm_range: tuple
    baseline: str
    baseline_order: int | None
    f0_mhz: float
    dwell_s: float
    npoints: int
    centre_ppm: float
    success: bool
    message: str
    nfev: int
    covariance: np.ndarray
    param_names: list[str]
    ppm: np.ndarray
    data: np.ndarray  # phase-corrected spectra over the fit range (complex)
    fit: np.ndarray
    baseline_spec: np.ndarray
    noise_source: str = "region"
    water: dict | None = None
    backend: str = "builtin"
    backend_version: str = f"mrsflow {__version__}"
    extra: dict = field(default_factory=dict)

    @property
    def fit_quality(self) -> float:
        return self.residual_sd / self.noise_sd if self.noise_sd > 0 else math.nan

    @property
    def residual(self) -> np.ndarray:
        return self.data - self.fit

    def amplitude(self, name: str) -> float:
        if name in self.combined:
            return float(self.combined[name][0])
        return float(self.amplitudes[self.names.index(name)])

    def crlb(self, name: str) -> float:
        if name in self.combined:
            return float(self.combined[name][1])
        return float(self.crlb_abs[self.names.index(name)])

    def to_dict(self) -> dict:
        mets = {
            n: _met_entry(a, c)
            for n, a, c in zip(self.names, self.amplitudes, self.crlb_abs, strict=True)
        }
        comb = {n: _met_entry(a, c) for n, (a, c) in self.combined.items()}
        groups = {
            gname: {
                "members": list(mem),
                "gamma_hz": float(self.gamma_hz[i]),
                "sigma_hz": float(self.sigma_hz[i]),
                "shift_hz": float(self.shift_hz[i]),
                "linewidth_hz": voigt_fwhm(self.gamma_hz[i], self.sigma_hz[i]),
            }
            for i, (gname, mem) in enumerate(zip(self.group_names, self.group_members, strict=True))
        }
        extra = {"nfev": int(self.nfev), "noise_source": self.noise_source, **self.extra}
        return _contract(
            backend=self.backend,
            backend_version=self.backend_version,
            success=self.success,
            message=self.message,
            metabolites=mets,
            combined=comb,
            groups=groups,
            phi0_deg=self.phi0_deg,
            phi1_deg_per_ppm=self.phi1_deg_per_ppm,
            noise_sd=self.noise_sd,
            residual_sd=self.residual_sd,
            snr=self.snr,
            ppm_range=self.ppm_range,
            baseline=self.baseline,
            baseline_order=self.baseline_order,
            f0_mhz=self.f0_mhz,
            dwell_s=self.dwell_s,
            npoints=self.npoints,
            centre_ppm=self.centre_ppm,
            water=self.water,
            extra=extra,
        )


def fit_spectrum(
    fid: np.ndarray,
    dwell_s: float,
    f0_mhz: float,
    basis: Basis,
    *,
    ppm_range=(0.2, 4.2),
    baseline_order=2,
    groups=None,
    centre_ppm: float = 4.65,
    ignore=None,
    noise_regions=None,
    max_shift_hz: float = 30.0,
    group_prior_sd_hz=(3.0, 3.0, 3.0),
) -> FitResult:
    """Fit ``fid`` with the linear-combination model (see module docstring).

    ``baseline_order``: int polynomial order (-1: none) or a string ``"poly, n"``,
    ``"spline, <stiffness|ED>"``, ``"off"``. ``groups``: see :func:`_resolve_groups`.
    ``ignore``: basis names to leave out. The basis is resampled to the data if needed.
    ``noise_regions``: (lo, hi) ppm windows for the noise SD (default :data:`NOISE_PPM`).
    ``max_shift_hz``: search range of the initial frequency-shift grid.
    ``group_prior_sd_hz``: (shift, Lorentz, Gauss) prior SDs of groups >= 1 relative to group 0.
    """
    with _single_thread_blas():
        return _fit_spectrum(
            fid,
            dwell_s,
            f0_mhz,
            basis,
            ppm_range=ppm_range,
            baseline_order=baseline_order,
            groups=groups,
            centre_ppm=centre_ppm,
            ignore=ignore,
            noise_regions=noise_regions,
            max_shift_hz=max_shift_hz,
            group_prior_sd_hz=group_prior_sd_hz,
        )


def _optimise(prob: _VarPro, theta0, lb, ub):
    return optimize.least_squares(
        prob.residual,
        theta0,
        jac=prob.jacobian,
        bounds=(lb, ub),
        method="trf",
        x_scale="jac",
        ftol=1e-10,
        xtol=1e-10,
        gtol=1e-10,
        max_nfev=300,
    )


def _fit_spectrum(
    fid,
    dwell_s,
    f0_mhz,
    basis,
    *,
    ppm_range,
    baseline_order,
    groups,
    centre_ppm,
    ignore,
    noise_regions,
    max_shift_hz,
    group_prior_sd_hz,
) -> FitResult:
    fid = np.asarray(fid, dtype=complex).ravel()
    n = fid.size
    notes = []
    if (
        basis.npoints != n
        or abs(basis.dwell_s - dwell_s) > 1e-12 * dwell_s
        or abs(basis.f0_mhz - f0_mhz) > 1e-9 * f0_mhz
        or abs(basis.centre_ppm - centre_ppm) > 1e-9
    ):
        basis, note = resample_basis(basis, dwell_s, n, f0_mhz, centre_ppm)
        if note:
            notes.append(note)
    names = [nm for nm in basis.names if nm not in set(ignore or ())]
    keep = [basis.names.index(nm) for nm in names]
    bfids = np.asarray(basis.fids, dtype=complex)[keep]
    gnames, members, gidx = _resolve_groups(names, groups)
    ngroups = len(gnames)

    t = np.arange(n) * dwell_s
    idx, nu, ppm_sel = _fit_bins(n, dwell_s, f0_mhz, centre_ppm, ppm_range)
    bl = _make_baseline(baseline_order, ppm_sel)

    yfull = np.fft.fft(fid)
    scale = float(np.max(np.abs(yfull[idx])))
    if not scale > 0:
        raise InputError("the spectrum is zero in the fit range")
    y = yfull[idx] / scale
    prob = _VarPro(y, bfids, gidx, ngroups, t, nu, idx, bl)

    # ---- noise (needed first: it weights the lineshape priors)
    noise = estimate_noise_sd(fid, dwell_s, f0_mhz, centre_ppm, regions=noise_regions)
    noise_source = "region" if (noise is not None and noise > 0) else "residual"
    if noise_source == "region":
        prob.set_prior(noise / scale, group_prior_sd_hz)

    # ---- robust start
    ppm_all = centre_ppm + np.fft.fftfreq(n, dwell_s) / f0_mhz
    ref = _reference_fid(bfids, names, t)
    shift0, phi00 = _initial_shift_phase(fid, ref, dwell_s, ppm_all, max_shift_hz)
    g = ngroups
    best = None
    for lw0, gw0 in ((1.5, 2.0), (3.0, 5.0), (6.0, 8.0)):
        theta0 = np.concatenate(
            [np.full(g, lw0), np.full(g, gw0**2), np.full(g, shift0), [phi00, 0.0]]
        )
        cost = float(np.sum(prob.residual(theta0) ** 2))
        if best is None or cost < best[0]:
            best = (cost, theta0)
    theta0 = best[1]
    shift_margin = max_shift_hz + 20.0
    lb = np.concatenate([np.zeros(g), np.zeros(g), np.full(g, -shift_margin), [-np.inf, -2.0]])
    ub = np.concatenate(
        [np.full(g, 80.0), np.full(g, 80.0**2), np.full(g, shift_margin), [np.inf, 2.0]]
    )
    theta0 = np.clip(theta0, lb + 1e-9, ub - 1e-9)
    sol = _optimise(prob, theta0, lb, ub)
    if noise_source == "residual":
        # no signal-free region: noise from the residual of a first fit, then refit with priors
        st = prob.evaluate(sol.x)
        rss0 = float(np.sum(st["res"][: 2 * prob.k] ** 2))
        dof0 = max(2 * prob.k - np.count_nonzero(st["a"] > 0) - 2.0 * bl.ed - prob.nnl, 1.0)
        prob.set_prior(math.sqrt(rss0 / dof0), group_prior_sd_hz)
        if np.any(prob.prior_w):
            sol = _optimise(prob, np.clip(sol.x, lb + 1e-9, ub - 1e-9), lb, ub)
    theta = sol.x
    st = prob.evaluate(theta)
    a_norm = st["a"]
    b_norm = prob.baseline_coefs(st)
    lw, gsq, eps, phi0, tau_ms = prob.unpack(theta)

    # ---- residual, CRLB
    rss = float(np.sum(st["res"][: 2 * prob.k] ** 2))
    full_res = prob.yr[: 2 * prob.k] - st["mr"] @ a_norm - prob.ab @ b_norm
    rss_data = float(full_res @ full_res)
    p_eff = int(np.count_nonzero(a_norm > 0)) + 2.0 * bl.ed + prob.nnl
    dof = max(2 * prob.k - p_eff, 1.0)
    residual_sd = math.sqrt(rss_data / dof)
    if noise_source == "region":
        noise_sd = noise / scale
    else:
        noise_sd = residual_sd
        notes.append("no signal-free region: noise SD from the fit residual")
    jac_full = prob.full_jacobian(theta, st)
    fisher = jac_full.T @ jac_full
    nb = prob.nbasis
    if prob.pen2 is not None:
        sl = slice(nb, nb + 2 * prob.nbl)
        fisher[sl, sl] += prob.pen2.T @ prob.pen2
    prior_jac = prob._prior_rows(theta)[1]
    if prior_jac.size:
        sl = slice(nb + 2 * prob.nbl, None)
        # rows were weighted with the noise used in the optimisation; re-weight to noise_sd
        w_used = prob.prior_w.copy()
        prob.set_prior(noise_sd, group_prior_sd_hz)
        prior_jac = prob._prior_rows(theta)[1]
        prob.prior_w = w_used
        fisher[sl, sl] += prior_jac.T @ prior_jac
    cov = linalg.pinvh(fisher) * noise_sd**2
    amps = a_norm * scale
    cov_s = cov.copy()
    cov_s[: nb + 2 * prob.nbl, :] *= scale
    cov_s[:, : nb + 2 * prob.nbl] *= scale
    crlb_abs = np.sqrt(np.clip(np.diag(cov_s)[:nb], 0.0, None))
    combined = {}
    for cname, parts in COMBINATIONS.items():
        if all(p in names for p in parts):
            ii = [names.index(p) for p in parts]
            var = float(np.sum(cov_s[np.ix_(ii, ii)]))
            combined[cname] = (float(amps[ii].sum()), math.sqrt(max(var, 0.0)))

    # ---- spectra for plots, SNR
    ph = np.exp(1j * (phi0 + 2.0 * math.pi * nu * tau_ms * 1e-3))
    met = (a_norm @ st["mc"]) / ph * scale
    base = (bl.cols @ (b_norm[: prob.nbl] + 1j * b_norm[prob.nbl :])) * scale if prob.nbl else 0
    base = np.broadcast_to(base, nu.shape).astype(complex)
    data_pc = yfull[idx] / ph
    fit_pc = met + base / ph
    # SNR as mrsflow.qc defines it: first-point-corrected (halved) spectrum, so subtract the
    # model FID's first point / 2 (a constant), real part of the phase-corrected model
    fid0 = complex(np.sum(a_norm * prob.fids[:, 0])) * scale
    met_h = met.real - 0.5 * fid0.real
    naa = (ppm_sel >= _NAA_PPM[0]) & (ppm_sel <= _NAA_PPM[1])
    peak = float(np.max(met_h[naa])) if np.any(naa) else float(np.max(met_h))
    noise_abs = noise_sd * scale
    snr = peak / noise_abs if noise_abs > 0 else math.nan

    pnames = (
        list(names)
        + [f"baseline_re_{j}" for j in range(prob.nbl)]
        + [f"baseline_im_{j}" for j in range(prob.nbl)]
        + [f"lorentz_hz_{gn}" for gn in gnames]
        + [f"gauss_sq_hz2_{gn}" for gn in gnames]
        + [f"shift_hz_{gn}" for gn in gnames]
        + ["phi0_rad", "tau_ms"]
    )
    msg = sol.message if sol.success else f"optimiser: {sol.message}"
    if notes:
        msg = msg + " | " + "; ".join(notes)
    phi0_deg = float((math.degrees(phi0) + 180.0) % 360.0 - 180.0)
    return FitResult(
        names=list(names),
        amplitudes=amps,
        crlb_abs=crlb_abs,
        combined=combined,
        group_names=gnames,
        group_members=members,
        gamma_hz=np.asarray(lw, float).copy(),
        sigma_hz=np.sqrt(np.clip(gsq, 0.0, None)),
        shift_hz=np.asarray(eps, float).copy(),
        phi0_deg=phi0_deg,
        phi1_deg_per_ppm=float(360.0 * tau_ms * 1e-3 * f0_mhz),
        noise_sd=float(noise_abs),
        residual_sd=float(residual_sd * scale),
        snr=float(snr),
        ppm_range=(float(min(ppm_range)), float(max(ppm_range))),
        baseline=bl.label,
        baseline_order=bl.order,
        f0_mhz=float(f0_mhz),
        dwell_s=float(dwell_s),
        npoints=int(n),
        centre_ppm=float(centre_ppm),
        success=bool(sol.success),
        message=msg,
        nfev=int(sol.nfev),
        covariance=cov_s,
        param_names=pnames,
        ppm=ppm_sel,
        data=data_pc,
        fit=fit_pc,
        baseline_spec=base / ph,
        noise_source=noise_source,
        extra={"rss_projected": rss * scale**2, "baseline_ed": bl.ed},
    )
