"""Physical sanity checks on every scan, before fitting: is there data, is it the right way
round, is the water reference water?

A number that cannot be physical (a water reference that is not water, metabolite and water
files swapped, a mirrored spectrum, no data at all) must never be reported as a result, and
a scan like that must not stop the study either: each check gives the scan an exclusion
reason (``qc_reason`` in the tables) or, for a mirrored spectrum, a correction with a note.
All functions are pure and take FIDs in the project convention (:mod:`mrsflow.qc`).

- :func:`data_problem` (raw rows): all-zero or non-finite data (nothing to process).
- :func:`mirror_check` (processed metabolite spectrum): the three strongest singlets of
  brain spectra, NAA 2.01, Cr 3.03 and Cho 3.21 ppm, found at their mirror positions about
  the receiver frequency (4.65 ppm: 7.29, 6.27, 6.09 ppm) instead - the signature of a
  complex-conjugated FID (a converter or vendor sign convention; spec2nii conjugates Philips
  SDAT on read, for example). Decided on peak prominences in the magnitude spectrum (phase
  independent), each three-line pattern searched as a whole within +-0.15 ppm (a referencing
  error moves every line alike): mirrored when the mirror pattern carries at least
  :data:`MIRROR_RATIO` times the prominence of the true one and stands out of the noise
  (:data:`MIRROR_MIN_SNR`). Conjugation is exact and lossless, so by default the scan's raw
  data are conjugated and processed again, with a note (``preprocess.mirrored: correct``;
  FSL-MRS likewise conjugates a spectrum it finds reversed); ``exclude`` refuses the scan
  instead, for a lab that wants every converter problem fixed at its source. A separate
  water reference is conjugated with its scan: both come through one export path.
- :func:`water_dominance` (processed water reference): the water line's height over the
  largest magnitude in the metabolite region (0.5-4.0 ppm). For a water reference (or the
  MC water, the sum of the cycle pair) water is hundreds to thousands of times larger than
  any metabolite line; a water-suppressed metabolite scan named as the water reference has a
  residual water of the order of its metabolites.
- water ratio (``residual_water_before`` of :mod:`mrsflow.preprocess`): the metabolite
  scan's own water (before residual-water removal) relative to the reference's water line.
  Water suppression and MC subtraction leave at most a few per cent; a ratio near 1 means
  the "water reference" is another metabolite scan; a metabolite scan with several times
  the water of its reference (the reverse of the expected relation) means the two files
  are swapped.

Thresholds (:data:`DEFAULTS`, overridable in the config's ``preprocess`` block) are set
well away from what the twin and the real Philips exports show (dominance > 300, residual
water < 0.05; :mod:`tests.test_sanity`), so that a scan is excluded only when it is plainly
not what the sheet says.
"""

from __future__ import annotations

import numpy as np

from mrsflow import qc

CENTRE_PPM = qc.CENTRE_PPM
SINGLETS_PPM = (2.008, 3.027, 3.212)  # NAA, Cr, Cho
MIRROR_RATIO = 3.0
MIRROR_MIN_SNR = 20.0  # the pattern metric of pure noise reaches ~12 noise SDs
MAX_SHIFT_PPM = 0.15  # the pattern is searched within this shift of its nominal position
DEFAULTS = {
    "mirrored": "correct",  # or "exclude"
    "water_dominance_min": 20.0,  # water height / largest metabolite-region magnitude
    "water_ratio_min": 4.0,  # reference water / the metabolite scan's own water
}


def data_problem(rows: np.ndarray) -> str:
    """'' if the raw rows hold finite, not-all-zero data, else what is wrong."""
    rows = np.asarray(rows)
    bad = ~np.isfinite(rows)
    if bad.any():
        per_row = bad.reshape(-1, rows.shape[-1]).any(axis=-1)
        return (f"non-finite values (NaN/inf) in {int(per_row.sum())} of {per_row.size} "
                "transient(s)")
    if not np.any(rows):
        return "all-zero data (no signal was stored)"
    return ""


def _magnitude(fid, dwell_s, f0_mhz, lb_hz: float = 2.0):
    spec, ppm = qc.spectrum(fid, dwell_s, f0_mhz, lb_hz=lb_hz)
    return np.abs(spec), ppm


def _prominence(mag: np.ndarray, ppm: np.ndarray, centre: float) -> float:
    """Peak magnitude within +-0.03 ppm of ``centre`` minus the median of the ring
    0.08-0.3 ppm away (0 where the window falls outside the band)."""
    dist = np.abs(ppm - centre)
    peak, ring = mag[dist <= 0.03], mag[(dist >= 0.08) & (dist <= 0.3)]
    if peak.size == 0 or ring.size == 0:
        return 0.0
    return max(0.0, float(peak.max() - np.median(ring)))


def _pattern(mag: np.ndarray, ppm: np.ndarray, positions) -> float:
    """The largest summed prominence of the singlet pattern ``positions`` shifted as a whole
    by up to +-:data:`MAX_SHIFT_PPM` (a referencing error moves every line alike)."""
    step = max(float(abs(ppm[1] - ppm[0])), 0.002)
    shifts = np.arange(-MAX_SHIFT_PPM, MAX_SHIFT_PPM + step / 2, step)
    return max(sum(_prominence(mag, ppm, p + s) for p in positions) for s in shifts)


def _magnitude_noise(fid, dwell_s, f0_mhz) -> float:
    """SD of one component of the (lb = 2 Hz) spectrum in the noise windows."""
    return qc.noise_sd(fid, dwell_s, f0_mhz, lb_hz=2.0)


def mirror_check(fid: np.ndarray, dwell_s: float, f0_mhz: float) -> dict:
    """Singlet-pattern prominences at the true and at the mirror positions; ``mirrored``
    decided as in the module docstring."""
    mag, ppm = _magnitude(fid, dwell_s, f0_mhz)
    direct = _pattern(mag, ppm, SINGLETS_PPM)
    mirror = _pattern(mag, ppm, [2 * CENTRE_PPM - d for d in SINGLETS_PPM])
    sd = _magnitude_noise(fid, dwell_s, f0_mhz)
    snr = mirror / sd if sd > 0 else float("inf")
    return {
        "singlet_prominence": direct,
        "mirror_prominence": mirror,
        "mirror_snr": snr,
        "mirrored": bool(mirror > MIRROR_RATIO * direct and snr > MIRROR_MIN_SNR),
        "positions_ppm": list(SINGLETS_PPM),
    }


def water_dominance(water: np.ndarray, dwell_s: float, f0_mhz: float) -> float:
    """Water line height over the largest signal in the metabolite region 0.5-4.0 ppm, both
    on the real part of the spectrum phased on the water (4.2-5.1 ppm): in absorption the
    water line's wings fall off as 1/offset^2 (in magnitude, as 1/offset, so that the wing
    alone would reach 5 % of the line at 4.0 ppm)."""
    phi = qc.autophase(water, dwell_s, f0_mhz, peak_ppm=(4.2, 5.1))
    spec, ppm = qc.spectrum(water, dwell_s, f0_mhz, lb_hz=2.0)
    re = (spec * np.exp(1j * phi)).real
    w = re[(ppm >= 4.2) & (ppm <= 5.1)]
    m = np.abs(re[(ppm >= 0.5) & (ppm <= 4.0)])
    if w.size == 0 or m.size == 0 or not m.max() > 0:
        return float("inf") if w.size and w.max() > 0 else 0.0
    return float(max(w.max(), 0.0) / m.max())


def water_problems(dominance: float, residual_water: float, p: dict, *, mode: str) -> list[str]:
    """Exclusion reasons from the water checks (``p``: the thresholds of :data:`DEFAULTS`).

    ``residual_water``: the metabolite scan's water over the reference's water line height."""
    ref = "the MC water (sum of the cycle pair)" if mode == "mc" else "the water reference"
    out = []
    ratio = 1.0 / residual_water if residual_water > 0 else float("inf")
    if mode != "mc" and ratio < 1.0 / p["water_ratio_min"]:
        return [f"metabolite and water files appear swapped: the metabolite scan holds "
                f"{residual_water:.3g} times the water of the water reference"]
    if dominance < p["water_dominance_min"]:
        what = ("is this scan metabolite-cycled?" if mode == "mc"
                else "is the water column pointing at a metabolite scan?")
        out.append(f"{ref} is not water: its water line is only {dominance:.3g} times the "
                   f"largest metabolite-region signal (< {p['water_dominance_min']:g}); {what}")
    if ratio < p["water_ratio_min"]:
        out.append(f"{ref} is not water: its water line is only {ratio:.3g} times the "
                   f"metabolite scan's own water (< {p['water_ratio_min']:g})")
    return out
