"""A measured macromolecule spectrum as one basis entry (mrsflow.mm): cleaning keeps the
broad MM signal and drops residual metabolite lines and noise; the basis then has one MM
entry instead of the parametrised ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrsflow import basis as B
from mrsflow import mm, nmrs, qc

DT, F0, N = 5e-4, 127.8, 2048
T = np.arange(N) * DT


def line(ppm, area, fwhm_hz, gauss=True):
    nu = (ppm - 4.65) * F0
    decay = (np.exp(-(np.pi * fwhm_hz * T) ** 2 / (4 * math.log(2))) if gauss
             else np.exp(-np.pi * fwhm_hz * T))
    return area * np.exp(2j * np.pi * nu * T) * decay


# a 3 T MM spectrum (positions and widths after Landheer et al. 2020, MRM 84:2327)
MM_TRUE = sum(line(p, a, w) for p, a, w in ((0.92, 3.0, 25.2), (1.21, 1.0, 21.1),
                                            (1.39, 2.0, 28.5), (1.67, 2.0, 38.2),
                                            (2.04, 3.0, 37.1), (2.26, 2.0, 32.4),
                                            (2.99, 1.5, 28.0), (3.75, 2.0, 57.0)))


def test_clean_mm_keeps_the_broad_signal_and_drops_metabolite_residue_and_noise():
    residue = line(2.01, 0.6, 5.0, gauss=False) + line(3.03, 0.5, 5.0, gauss=False)
    noise = 0.02 * (np.random.default_rng(4).normal(size=N)
                    + 1j * np.random.default_rng(5).normal(size=N))
    clean, info = mm.clean_mm(MM_TRUE + residue + noise, DT, F0)
    assert clean[0] == pytest.approx(1.0)
    s_true, ppm = qc.spectrum(MM_TRUE / abs(MM_TRUE[0]), DT, F0)
    s_clean, _ = qc.spectrum(clean, DT, F0)
    sel = (ppm > 0.5) & (ppm < 4.2)
    assert np.corrcoef(s_true.real[sel], s_clean.real[sel])[0, 1] > 0.99
    near = lambda p: np.abs(ppm - p) < 0.03  # noqa: E731
    # the 5 Hz residual singlets are gone: no narrow peak left on the broad MM
    for p in (2.01, 3.03):
        excess = s_clean.real[near(p)].max() - s_true.real[near(p)].max()
        assert abs(excess) < 0.1 * s_true.real[sel].max()
    assert any(abs(p - 2.01) < 0.02 for p in info["removed_narrow_ppm"])


def test_clean_mm_phases_an_mm_spectrum_that_comes_out_of_phase():
    """A metabolite-nulled spectrum is not phased on NAA: given 70 degrees out of phase (as
    Osprey's Philips TI 600 scan comes out of its preprocessing at 84), the cleaned MM starts
    real and positive and is the absorption spectrum again; one in phase is left so."""
    noise = 0.01 * (np.random.default_rng(6).normal(size=N)
                    + 1j * np.random.default_rng(7).normal(size=N))
    s_true, ppm = qc.spectrum(MM_TRUE / abs(MM_TRUE[0]), DT, F0)
    sel = (ppm > 0.5) & (ppm < 4.2)
    for deg in (70.0, 0.0):
        clean, info = mm.clean_mm(MM_TRUE * np.exp(1j * np.radians(deg)) + noise, DT, F0)
        assert clean[0] == pytest.approx(1.0)
        assert info["phase_correction_deg"] == pytest.approx(-deg, abs=2.0)
        s_clean, _ = qc.spectrum(clean, DT, F0)
        assert np.corrcoef(s_true.real[sel], s_clean.real[sel])[0, 1] > 0.99


def test_measured_mm_replaces_the_parametrised_entries(tmp_path):
    mm_nii = nmrs.write(tmp_path / "mm.nii.gz", (MM_TRUE / abs(MM_TRUE[0])).reshape(1, 1, 1, N),
                        DT, F0)
    cfg = {"field_mhz": F0, "te1_ms": 12.0, "te2_ms": 18.0, "bandwidth_hz": 1 / DT,
           "points": N, "metabolites": ["NAA", "Cr"],
           "macromolecules": ["MM09", "MM12", "MM20", "Lip13a"]}
    B.run_basis(cfg, tmp_path / "basis", tmp_path / "basis.png", mm_nii=mm_nii)
    basis = B.read_fsl_basis(tmp_path / "basis")
    assert sorted(basis.names) == ["Cr", "Lip13a", "MM", "NAA"]
    got = basis.fids[basis.names.index("MM")]
    np.testing.assert_allclose(got, MM_TRUE / abs(MM_TRUE[0]), atol=1e-6)
