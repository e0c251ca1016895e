"""Synthetic-twin transients: determinism, MC structure, planted linewidth/SNR, speed."""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest

from mrsflow import qc
from mrsflow.twin import spectra as S

DT, F0, N = 5e-4, 127.8, 2048
TOY_AMPS = {"NAA": 12.0, "Cr": 8.0, "Cho": 1.5, "Lac": 0.5, "Glc": 1.0}
WATER = 56000.0
CONC = {
    "NAA": 12, "Cr": 5, "PCr": 3, "GPC": 1, "PCh": 0.5, "Glu": 9, "Gln": 3, "Ins": 6,
    "NAAG": 1.5, "GSH": 2, "GABA": 1.5, "Tau": 1.5, "Lac": 0.5, "Asp": 2, "sIns": 0.3, "PE": 1.5,
    "Asc": 1, "Glc": 1, "Ala": 0.3, "Gly": 0.5, "MM09": 3, "MM12": 2, "MM14": 2, "MM17": 2,
    "MM20": 4,
}


@functools.lru_cache(maxsize=1)
def real_basis():
    """The project's simulated PRESS basis (TE 30 ms), shared by the twin tests."""
    from mrsflow import basis as B

    seq = B.Sequence(F0, 15.0, 15.0, DT, N)
    names = list(B.load_spin_systems())
    mms = list(B.load_macromolecules())
    fids = B.simulate_basis(seq, names, mms)
    return B.Basis(list(fids), np.vstack(list(fids.values())), DT, F0, 4.65, 30.0)


def synth(seed=0, basis=None, amps=None, **kw):
    spec = S.ScanSpec(**kw)
    return S.synthesize_scan(
        basis or S.toy_basis(), amps or TOY_AMPS, WATER, spec, np.random.default_rng(seed)
    )


def test_same_seed_same_arrays_other_seed_differs():
    a, b, c = synth(1), synth(1), synth(2)
    for name in ("transients", "freq_hz", "phase_deg", "motion", "cycle", "ideal_metab"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.snr_planted == b.snr_planted and a.noise_sd == b.noise_sd
    assert not np.array_equal(a.transients, c.transients)
    assert not np.array_equal(a.freq_hz, c.freq_hz)
    assert a.transients.dtype == np.complex128 and a.transients.shape == (128, N)


def test_classic_determinism_and_water_reference():
    a = synth(4, mode="classic", n_water_ref=12)
    b = synth(4, mode="classic", n_water_ref=12)
    np.testing.assert_array_equal(a.water_ref, b.water_ref)
    assert a.water_ref.shape == (12, N)
    assert np.all(a.cycle == 1)


@pytest.mark.parametrize("first", [1, -1])
def test_mc_pair_sum_has_no_metabolites_and_difference_no_water(first):
    s = synth(3, target_snr=1e9, mc_first_cycle=first, n_motion=0)  # effectively noiseless
    assert s.cycle[0] == first and np.all(s.cycle[1::2] == -s.cycle[0::2])
    demod = s.transients / s.modulation  # undo per-row frequency, phase, motion and ec
    total = 0.5 * (demod[0::2] + demod[1::2])
    diff = 0.5 * (demod[0::2] - demod[1::2]) * first
    np.testing.assert_allclose(total, np.broadcast_to(s.ideal_water, total.shape), atol=1e-4)
    np.testing.assert_allclose(diff, np.broadcast_to(s.ideal_metab, diff.shape), atol=1e-4)
    # spectra: the sum carries nothing but the water (no NAA on top of the water's tail),
    # the difference carries no water
    spec_sum, ppm = qc.spectrum(total.mean(0) - s.ideal_water, DT, F0)
    spec_diff, _ = qc.spectrum(diff.mean(0), DT, F0)
    naa = (ppm > 1.95) & (ppm < 2.05)
    wat = (ppm > 4.6) & (ppm < 4.7)
    naa_height = np.abs(spec_diff[naa]).max()
    assert np.abs(spec_sum[naa]).max() < 1e-4 * naa_height
    spec_w, _ = qc.spectrum(s.ideal_water, DT, F0)
    spec_m, _ = qc.spectrum(s.ideal_metab, DT, F0)
    assert np.abs(spec_diff[wat] - spec_m[wat]).max() < 1e-7 * np.abs(spec_w[wat]).max()
    # the difference is the metabolite signal itself, inverted as a whole by the cycling
    np.testing.assert_allclose(spec_diff, spec_m, atol=1e-7 * np.abs(spec_m).max())


def test_motion_rows_and_per_row_truth():
    s = synth(5, n_motion=4)
    assert s.motion.sum() == 4
    rows = np.flatnonzero(s.motion)
    assert rows.tolist() == s.params["motion_rows"]
    amp = np.abs(s.modulation[:, 0])
    assert np.all(amp[~s.motion] == pytest.approx(1.0))
    assert np.all((amp[s.motion] > 0.29) & (amp[s.motion] < 0.71))
    assert np.all(np.abs(s.phase_deg) <= 180.0)
    assert s.params["n_kept"] == 64 - np.unique(rows // 2).size


@pytest.mark.parametrize("use_real_basis", [False, True])
def test_planted_linewidth_and_snr(use_real_basis):
    """Noiseless: QC FWHM = target, peak height / sigma_spec = target exactly.  With the
    ideal average's noise: the noise SD (hence SNR with the noiseless height) within 10 %
    per spectrum; the fully noisy qc.snr / qc.linewidth within 10 % on average (their
    per-spectrum scatter is ~1/SNR, intrinsic to a peak-height / half-maximum measure)."""
    basis = real_basis() if use_real_basis else S.toy_basis()
    amps = CONC if use_real_basis else TOY_AMPS
    rng = np.random.default_rng(99)
    snr_ratio, lw_ratio = [], []
    for i, (snr_t, lw_t) in enumerate(
        [(12, 5), (15, 6), (17.5, 7), (20, 8), (25, 9), (12, 9), (25, 5), (18, 6.5)]
    ):
        for mode in ("mc", "classic"):
            s = synth(10 + i, basis=basis, amps=amps, mode=mode, target_snr=snr_t,
                      target_linewidth_hz=lw_t)
            ideal = s.ideal_metab
            assert qc.linewidth_hz(ideal, DT, F0) == pytest.approx(lw_t, rel=1e-3)
            assert s.linewidth_planted_hz == pytest.approx(lw_t, rel=1e-3)
            sigma_spec = s.params["sigma_spec"]
            assert qc.peak_height(ideal, DT, F0) / sigma_spec == pytest.approx(snr_t, rel=1e-9)
            assert s.params["sigma_proc"] * math.sqrt(N - 0.75) == pytest.approx(sigma_spec)
            factor = 2 * s.params["n_kept"] if mode == "mc" else s.params["n_kept"]
            assert s.noise_sd == pytest.approx(s.params["sigma_proc"] * math.sqrt(factor))
            noisy = ideal + s.params["sigma_proc"] * rng.standard_normal(2 * N).view(complex)
            sd = qc.noise_sd(noisy, DT, F0)
            assert sd == pytest.approx(sigma_spec, rel=0.10)
            assert qc.peak_height(ideal, DT, F0) / sd == pytest.approx(snr_t, rel=0.10)
            snr_ratio.append(qc.snr(noisy, DT, F0) / snr_t)
            lw_ratio.append(qc.linewidth_hz(noisy, DT, F0) / lw_t)
    assert np.mean(snr_ratio) == pytest.approx(1.0, abs=0.06)
    assert np.mean(lw_ratio) == pytest.approx(1.0, abs=0.10)
    assert np.all(np.abs(np.array(snr_ratio) - 1) < 0.35)
    assert np.all(np.abs(np.array(lw_ratio) - 1) < 0.35)


def test_water_linewidth_planted_is_qc_of_ideal_water():
    s = synth(6, target_linewidth_hz=6.0)
    got = qc.linewidth_hz(s.ideal_water, DT, F0, peak_ppm=qc.WATER_PPM)
    assert s.water_linewidth_planted_hz == pytest.approx(got)
    assert s.water_linewidth_planted_hz > s.linewidth_planted_hz  # shorter water T2


def test_infeasible_linewidth_raises():
    with pytest.raises(ValueError, match="below the intrinsic"):
        synth(0, target_linewidth_hz=0.5)


def test_scanner_average_describes_the_averaged_spectrum():
    s = synth(7, mode="classic", target_snr=20, target_linewidth_hz=6.0,
              drift_hz_per_min=1.0, drift_walk_sd_hz=0.2, n_motion=2)
    a = S.scanner_average(s)
    assert a.transients.shape == (1, N) and a.water_ref.shape == (1, N) and a.pre_averaged
    np.testing.assert_allclose(a.transients[0], s.transients.mean(0))
    assert a.averaged_from["freq_hz"] is s.freq_hz
    # drift, jitter and motion rows are not corrected by the scanner: broader, lower SNR
    assert a.linewidth_planted_hz > s.linewidth_planted_hz
    assert a.snr_planted < s.snr_planted
    # the planted SNR is the noiseless height over the averaged noise
    sigma_spec = s.noise_sd / math.sqrt(s.n_rows) * math.sqrt(N - 0.75)
    assert a.snr_planted == pytest.approx(qc.peak_height(a.ideal_metab, DT, F0) / sigma_spec)
    assert a.linewidth_planted_hz == pytest.approx(qc.linewidth_hz(a.ideal_metab, DT, F0))
    with pytest.raises(ValueError):
        S.scanner_average(synth(0))


def test_eddy_current_phase_common_to_all_rows():
    s = synth(8, eddy_amp_rad=0.8, eddy_tau_ms=20.0, n_motion=0)
    t = np.arange(N) * DT
    ec = np.exp(1j * 0.8 * np.exp(-t / 0.02))
    rest = s.modulation / ec[None, :]
    # what remains per row is a pure frequency/phase: exp(i (2 pi f t + phi))
    expected = np.exp(1j * (2 * np.pi * s.freq_hz[:, None] * t + np.deg2rad(s.phase_deg)[:, None]))
    np.testing.assert_allclose(rest, expected, atol=1e-9)


def test_one_scan_well_under_a_second():
    basis = real_basis()
    synth(0, basis=basis, amps=CONC)  # warm-up
    times = []
    for seed in range(3):
        t0 = time.perf_counter()
        synth(seed, basis=basis, amps=CONC)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 1.0
