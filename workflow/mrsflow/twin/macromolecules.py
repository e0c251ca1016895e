"""The twin's macromolecule (MM) background: a measured-like spectrum the fitter never sees,
and the metabolite-nulled acquisition that measures it.

The fitter's default MM model is the basis set's parametrised entries (LCModel's MM09-MM20
and lipids, :mod:`mrsflow.basis`); planting those would make the twin the fit model itself.
The twin plants instead a ten-peak parametrisation of *measured* human brain MM at 3 T,
after Landheer et al. 2020 (MRM 84:2327, "Concentration and effective T2 relaxation times
of macromolecules at 3T"): per peak its chemical shift (ppm), Gaussian FWHM (Hz), effective
T2 (ms) and relative concentration. At the scan's TE each peak is weighted by
``exp(-TE / T2)``; the sum is scaled to a total area (``area``, in the amplitude units of the
basis, :func:`mm_background`) and varies between participants (level and each peak's share).

A study measures its MM with a metabolite-nulled acquisition (Cudalbu et al. 2021, NMR
Biomed 34:e4393): an inversion recovery whose inversion time nulls the metabolites (T1 1.2-1.5
s at 3 T) while the short-T1 MM (~0.3 s) recover. :func:`nulling_factor` gives the
longitudinal magnetisation after inversion, ``1 - 2 exp(-TI/T1) + exp(-TR/T1)``; with TR 2 s
and TI 650 ms a metabolite of T1 1.3 s is nulled, those of 1.2 and 1.5 s keep +3 % and -3 %
of their signal, the MM 77 %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

CENTRE_PPM = 4.65

#: (ppm, Gaussian FWHM Hz, effective T2 ms, relative concentration): measured human brain MM
#: at 3 T after Landheer et al. 2020, MRM 84:2327
MM_PEAKS_3T = (
    (0.92, 25.2, 26.6, 21.1),
    (1.21, 21.1, 38.7, 8.2),
    (1.39, 28.5, 17.9, 20.4),
    (1.67, 38.2, 16.6, 48.0),
    (2.04, 37.1, 14.3, 78.4),
    (2.26, 32.4, 19.9, 50.4),
    (2.70, 35.3, 25.5, 19.0),
    (2.99, 28.0, 21.0, 29.1),
    (3.21, 17.2, 17.7, 10.0),
    (3.75, 57.0, 21.0, 40.1),
)
#: inversion-recovery MM acquisition: metabolite and MM T1 at 3 T (s)
METABOLITE_T1_S = (1.2, 1.5)
MM_T1_S = 0.3


def mm_peaks(rng: np.random.Generator | None = None, peak_sd: float = 0.0) -> np.ndarray:
    """The parametrisation as an array (n, 4); each peak's concentration varied by a factor
    ``N(1, peak_sd)`` (clipped at 0.3) when ``rng`` is given (one participant's MM)."""
    peaks = np.array(MM_PEAKS_3T, dtype=float)
    if rng is not None and peak_sd > 0:
        peaks[:, 3] *= np.clip(rng.normal(1.0, peak_sd, len(peaks)), 0.3, None)
    return peaks


def mm_background(t: np.ndarray, f0_mhz: float, te_ms: float, area: float,
                  peaks: np.ndarray | None = None) -> np.ndarray:
    """The MM FID on the time axis ``t`` (s), project convention (a line at ``delta`` ppm is
    ``exp(+2 pi i (delta - 4.65) f0 t)``), with no common broadening: Gaussian peaks of their
    measured FWHM, weighted ``conc exp(-TE/T2)`` and scaled so that FID(0) = ``area``."""
    peaks = mm_peaks() if peaks is None else np.asarray(peaks, float)
    t = np.asarray(t, float)
    ppm, fwhm, t2, conc = peaks.T
    weight = conc * np.exp(-te_ms / t2)
    nu = (ppm - CENTRE_PPM) * f0_mhz
    lines = np.exp(2j * np.pi * np.outer(nu, t) - np.outer((np.pi * fwhm) ** 2,
                                                           t**2) / (4.0 * math.log(2.0)))
    fid = weight @ lines
    return fid * (float(area) / float(np.real(fid[0])))


def nulling_factor(t1_s, ti_ms: float, tr_ms: float):
    """Longitudinal magnetisation (fraction of M0) at the excitation of an inversion
    recovery with inversion time TI and repetition time TR (ideal pulses, steady state)."""
    t1 = np.asarray(t1_s, float) * 1000.0
    return 1.0 - 2.0 * np.exp(-ti_ms / t1) + np.exp(-tr_ms / t1)


def nulled_amplitudes(amplitudes: Mapping[str, float], rng: np.random.Generator,
                      ti_ms: float, tr_ms: float) -> tuple[dict[str, float], dict[str, float]]:
    """Metabolite amplitudes in a metabolite-nulled scan: each metabolite's T1 drawn from
    :data:`METABOLITE_T1_S` (uniform; in name order), returns (amplitudes, T1 s)."""
    names = sorted(amplitudes)
    t1 = rng.uniform(*METABOLITE_T1_S, len(names))
    factors = nulling_factor(t1, ti_ms, tr_ms)
    return ({n: float(amplitudes[n] * f) for n, f in zip(names, factors, strict=True)},
            {n: float(v) for n, v in zip(names, t1, strict=True)})
