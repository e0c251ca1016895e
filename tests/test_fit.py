"""Tests of mrsflow.fit: the builtin LCM fitter, its CRLBs, the water fit, basis resampling,
the file wrapper and the FSL-MRS backend (command line, output parsing, contract).

Synthetic data use the basis simulated by mrsflow.basis for the study sequence (127.8 MHz,
PRESS TE1 12 ms / TE2 18 ms, dwell 0.5 ms, 2048 points) and the model's own conventions:
Voigt broadening exp(-pi L t - (pi G t)^2 / (4 ln 2)) with L, G the Lorentzian/Gaussian FWHM,
shift exp(2 pi i eps t), phase exp(i(phi0 + 2 pi nu tau)) and a quadratic complex baseline.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest

from mrsflow import fit as F
from mrsflow.basis import Basis, Sequence, read_fsl_basis, simulate_basis, write_fsl_basis
from mrsflow.errors import InputError

METABOLITES = (
    "Ala Asc Asp Cr GABA GPC GSH Glc Gln Glu Gly Ins Lac NAA NAAG PCh PCr PE sIns Tau".split()
)
MACROMOLECULES = "MM09 MM12 MM14 MM17 MM20 Lip09 Lip13a Lip13b Lip20".split()
CONC = {
    "NAA": 12.0, "Cr": 6.0, "PCr": 4.5, "GPC": 1.2, "PCh": 0.6, "Ins": 6.5, "Glu": 10.0,
    "Gln": 3.5, "GABA": 1.5, "GSH": 2.0, "Tau": 1.5, "Asp": 2.5, "NAAG": 1.2, "Lac": 0.8,
    "sIns": 0.3, "Glc": 1.5, "Asc": 1.2, "Gly": 0.8, "PE": 1.5, "Ala": 0.5,
    # macromolecules / lipids (proton-equivalent amplitudes, as in the twin's config)
    "MM09": 3.0, "MM12": 2.0, "MM14": 2.5, "MM17": 1.5, "MM20": 4.0, "Lip09": 0.5,
    "Lip13a": 0.8, "Lip13b": 0.5, "Lip20": 0.5,
}  # fmt: skip
TRUE_COMBINED = {name: sum(CONC[p] for p in parts) for name, parts in F.COMBINATIONS.items()}
F0, DWELL, NPTS = 127.8, 0.0005, 2048
SEQ = Sequence(F0, 12.0, 18.0, DWELL, NPTS)
# a smooth complex baseline: quadratic in ppm over the fit range (about 5 % of the NAA height)
BASELINE = np.array([200.0, 100.0, 50.0]) * (1.0 + 0.5j)
# linewidth of the study: Lorentz 3 Hz + Gauss 5.1 Hz FWHM -> NAA FWHM ~6.9 Hz
LORENTZ_HZ, GAUSS_HZ = 3.0, 5.1
SNR_TARGET = 17.5


def _make_basis(seq: Sequence) -> Basis:
    fids = simulate_basis(seq, METABOLITES, MACROMOLECULES)
    return Basis(
        names=list(fids),
        fids=np.array(list(fids.values())),
        dwell_s=seq.dwell_s,
        f0_mhz=seq.f0_mhz,
        centre_ppm=seq.centre_ppm,
        te_ms=seq.te_ms,
    )


@pytest.fixture(scope="module")
def basis() -> Basis:
    return _make_basis(SEQ)


def synth(
    basis: Basis,
    conc: dict,
    *,
    lorentz=LORENTZ_HZ,
    gauss=GAUSS_HZ,
    shift=2.0,
    phi0=0.4,
    tau_ms=0.05,
    baseline=BASELINE,
    dwell=DWELL,
    f0=F0,
) -> np.ndarray:
    """Noiseless FID of the fit model (same broadening for metabolites and MM)."""
    n = basis.npoints
    t = np.arange(n) * dwell
    amps = np.array([conc.get(name, 0.0) for name in basis.names])
    dec = np.exp(-math.pi * lorentz * t - F._CQ * gauss**2 * t * t + 2j * math.pi * shift * t)
    spec = np.fft.fft((amps @ basis.fids) * dec)
    freqs = np.fft.fftfreq(n, dwell)
    spec *= np.exp(1j * (phi0 + 2 * math.pi * freqs * tau_ms * 1e-3))
    x = (4.65 + freqs / f0 - 2.2) / 2.0
    spec += sum(c * x**k for k, c in enumerate(baseline))
    return np.fft.ifft(spec)


def naa_height(basis: Basis, conc: dict, lorentz=LORENTZ_HZ, gauss=GAUSS_HZ) -> float:
    """NAA peak height of the phased, baseline-free noiseless spectrum (real part, first point
    halved: the numerator of mrsflow.qc.snr)."""
    fid = synth(basis, conc, lorentz=lorentz, gauss=gauss, shift=0.0, phi0=0.0, tau_ms=0.0,
                baseline=(0.0,))  # fmt: skip
    fid[0] *= 0.5  # first-point correction, as in mrsflow.qc's SNR
    spec = np.fft.fftshift(np.fft.fft(fid)).real
    ppm = 4.65 + np.fft.fftshift(np.fft.fftfreq(basis.npoints, DWELL)) / F0
    return float(spec[(ppm > 1.95) & (ppm < 2.08)].max())


def naa_fwhm_hz(basis: Basis, lorentz=LORENTZ_HZ, gauss=GAUSS_HZ) -> float:
    n = basis.npoints
    t = np.arange(n) * DWELL
    fid = basis.fids[basis.names.index("NAA")] * np.exp(
        -math.pi * lorentz * t - F._CQ * gauss**2 * t * t
    )
    zf = 32
    spec = np.fft.fftshift(np.fft.fft(fid, n * zf)).real
    freqs = np.fft.fftshift(np.fft.fftfreq(n * zf, DWELL))
    ppm = 4.65 + freqs / F0
    k = int(np.argmax(np.where((ppm > 1.9) & (ppm < 2.1), spec, -np.inf)))
    half = spec[k] / 2
    lo, hi = k, k
    while spec[lo] > half:
        lo -= 1
    while spec[hi] > half:
        hi += 1
    return float(freqs[hi] - freqs[lo])


def rel_err(res: F.FitResult, name: str, truth: dict) -> float:
    return res.amplitude(name) / truth[name] - 1.0


# --------------------------------------------------------------------------------------------
# Noiseless recovery
# --------------------------------------------------------------------------------------------
def test_noiseless_recovery_all_metabolites_within_1pct(basis):
    fid = synth(basis, CONC, lorentz=3.0, gauss=4.0, shift=3.0, phi0=0.3, tau_ms=0.1)
    res = F.fit_spectrum(fid, DWELL, F0, basis)
    assert res.success, res.message
    tcr = CONC["Cr"] + CONC["PCr"]
    checked = [m for m in METABOLITES if CONC[m] >= 0.05 * tcr]
    assert {"GPC", "PCh", "Lac", "Gly", "GABA"} <= set(checked)
    errors = {m: rel_err(res, m, CONC) for m in checked}
    worst = max(errors, key=lambda m: abs(errors[m]))
    assert abs(errors[worst]) < 0.01, f"{worst}: {errors[worst]:+.4%}"
    for name, true in TRUE_COMBINED.items():
        assert res.amplitude(name) == pytest.approx(true, rel=1e-3)
    # nonlinear parameters: both groups
    np.testing.assert_allclose(res.gamma_hz, 3.0, atol=0.02)
    np.testing.assert_allclose(res.sigma_hz, 4.0, atol=0.02)
    np.testing.assert_allclose(res.shift_hz, 3.0, atol=0.02)
    assert res.phi0_deg == pytest.approx(math.degrees(0.3), abs=0.05)
    assert res.phi1_deg_per_ppm == pytest.approx(360 * 0.1e-3 * F0, abs=0.05)
    assert res.group_names == ["metabolites", "macromolecules"]


def test_noiseless_recovery_with_spline_baseline(basis):
    """The penalised-spline baseline (LCModel-like stiffness) also recovers the amplitudes."""
    fid = synth(basis, CONC, lorentz=3.0, gauss=4.0, shift=3.0)
    res = F.fit_spectrum(fid, DWELL, F0, basis, baseline_order="spline, moderate")
    assert res.baseline == "spline, moderate"
    assert res.baseline_order is None
    assert res.extra["baseline_ed"] == pytest.approx(8.0, abs=1e-3)
    for m in ("NAA", "Cr", "Glu", "Ins", "GPC"):
        assert rel_err(res, m, CONC) == pytest.approx(0.0, abs=0.01), m


@pytest.mark.parametrize("shift_hz", [-15.0, 15.0])
@pytest.mark.parametrize("phase_deg", [-60.0, 60.0])
def test_robust_start_large_shift_and_phase(basis, shift_hz, phase_deg):
    rng = np.random.default_rng(11)
    fid = synth(basis, CONC, shift=shift_hz, phi0=math.radians(phase_deg))
    sd_t = naa_height(basis, CONC) / 40.0 / math.sqrt(NPTS)  # SNR 40
    fid = fid + sd_t * (rng.standard_normal(NPTS) + 1j * rng.standard_normal(NPTS))
    res = F.fit_spectrum(fid, DWELL, F0, basis)
    assert res.success
    assert res.shift_hz[0] == pytest.approx(shift_hz, abs=0.5)
    assert res.phi0_deg == pytest.approx(phase_deg, abs=5.0)
    for m in ("NAA", "tCr", "Glu", "Ins"):
        err = res.amplitude(m) / (TRUE_COMBINED.get(m) or CONC[m]) - 1
        assert abs(err) < 3 * res.crlb(m) / res.amplitude(m), (m, err)


# --------------------------------------------------------------------------------------------
# Jacobian and noise estimate
# --------------------------------------------------------------------------------------------
def test_analytic_jacobian_matches_finite_differences(basis):
    fid = synth(basis, CONC)
    res = F.fit_spectrum(fid, DWELL, F0, basis)
    names = res.names
    gnames, _, gidx = F._resolve_groups(names, None)
    idx, nu, ppm_sel = F._fit_bins(NPTS, DWELL, F0, 4.65, (0.2, 4.2))
    bl = F._make_baseline(2, ppm_sel)
    y = np.fft.fft(fid)[idx] / 1e4
    prob = F._VarPro(y, basis.fids, gidx, len(gnames), np.arange(NPTS) * DWELL, nu, idx, bl)
    # a point off the optimum for the model derivatives ...
    theta = np.array([2.5, 3.5, 16.0, 20.0, 1.5, 2.5, 0.3, 0.08])
    st = prob.evaluate(theta)
    full = prob.full_jacobian(theta, st)[:, prob.nbasis + 2 * prob.nbl :]

    def model(th):
        s = prob.evaluate(th)
        return s["mr"] @ st["a"]

    for k in range(theta.size):
        h = 1e-6 * max(1.0, abs(theta[k]))
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        num = (model(tp) - model(tm)) / (2 * h)
        np.testing.assert_allclose(full[:, k], num, rtol=1e-5, atol=1e-6 * np.abs(num).max())
    # ... and the optimum (zero residual) for the Kaufman Jacobian of the projected residual,
    # which drops a term proportional to the residual (Kaufman 1975): exact there
    tau_ms = res.phi1_deg_per_ppm / (360.0 * F0) * 1e3
    theta = np.concatenate(
        [res.gamma_hz, res.sigma_hz**2, res.shift_hz, [math.radians(res.phi0_deg), tau_ms]]
    )
    jac = prob.jacobian(theta)
    for k in range(theta.size):
        h = 1e-5 * max(1.0, abs(theta[k]))
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        num = (prob.residual(tp) - prob.residual(tm)) / (2 * h)
        assert np.linalg.norm(jac[:, k] - num) <= 1e-3 * np.linalg.norm(num) + 1e-12, k


def test_noise_estimate_from_signal_free_regions(basis):
    rng = np.random.default_rng(3)
    sd_t = 2.0
    fid = synth(basis, CONC) + sd_t * (rng.standard_normal(NPTS) + 1j * rng.standard_normal(NPTS))
    est = F.estimate_noise_sd(fid, DWELL, F0)
    assert est == pytest.approx(sd_t * math.sqrt(NPTS), rel=0.06)
    # too narrow a band: no signal-free region -> None
    assert F.estimate_noise_sd(fid[:256], DWELL, F0, regions=[(20.0, 30.0)]) is None


# --------------------------------------------------------------------------------------------
# Monte Carlo at the study SNR: bias, efficiency, CRLB calibration
# --------------------------------------------------------------------------------------------
MC_METABOLITES = ("Glu", "NAA", "tCr", "Ins")
MC_SETS = 6  # concentration sets: the reference one and 5 randomised (log-normal, 15 % SD)
MC_PAIRS = 30  # antithetic noise pairs per set -> 360 fits
MC_SEED = 20260


def test_monte_carlo_bias_efficiency_and_crlb_calibration(basis):
    """SNR 17.5 (NAA height / SD of the real noise), NAA FWHM ~6.9 Hz.

    Noise realisations come in antithetic pairs (n, -n): for an estimator close to linear in
    the noise the pair's errors cancel about the bias, so the median relative error estimates
    the bias with a fraction of the Monte-Carlo noise of independent draws (the threshold is
    unchanged). MAE / median CRLB of an efficient, calibrated fit is ~0.67; CRLB calibration =
    SD of the relative errors / mean relative CRLB.
    """
    assert naa_fwhm_hz(basis) == pytest.approx(6.9, abs=0.4)
    rng = np.random.default_rng(MC_SEED)
    sets = [dict(CONC)]
    for _ in range(MC_SETS - 1):
        sets.append({k: v * math.exp(rng.normal(0.0, 0.15)) for k, v in CONC.items()})
    errors = {m: [] for m in MC_METABOLITES}
    crlbs = {m: [] for m in MC_METABOLITES}
    snrs, fitq, times = [], [], []
    for conc in sets:
        truth = {**conc, **{c: sum(conc[p] for p in ps) for c, ps in F.COMBINATIONS.items()}}
        clean = synth(basis, conc, shift=rng.uniform(-4, 4), phi0=rng.uniform(-0.6, 0.6))
        sd_t = naa_height(basis, conc) / SNR_TARGET / math.sqrt(NPTS)
        for _ in range(MC_PAIRS):
            noise = sd_t * (rng.standard_normal(NPTS) + 1j * rng.standard_normal(NPTS))
            for sign in (1.0, -1.0):
                t0 = time.perf_counter()
                res = F.fit_spectrum(clean + sign * noise, DWELL, F0, basis)
                times.append(time.perf_counter() - t0)
                snrs.append(res.snr)
                fitq.append(res.fit_quality)
                for m in MC_METABOLITES:
                    errors[m].append(rel_err(res, m, truth))
                    crlbs[m].append(res.crlb(m) / truth[m])
    lines = []
    stats = {}
    for m in MC_METABOLITES:
        e, c = np.array(errors[m]), np.array(crlbs[m])
        bias = float(np.median(e))
        mae_ratio = float(np.median(np.abs(e)) / np.median(c))
        calib = float(np.std(e, ddof=1) / np.mean(c))
        stats[m] = (bias, mae_ratio, calib)
        lines.append(
            f"{m}: bias {bias:+.2%}, MAE/CRLB {mae_ratio:.3f}, SD/CRLB {calib:.3f}, "
            f"median CRLB {np.median(c):.1%}"
        )
    report = "; ".join(lines) + (
        f"; median SNR {np.median(snrs):.2f}, median fit quality {np.median(fitq):.3f}, "
        f"median fit time {np.median(times):.3f} s"
    )
    print(report)
    assert np.median(snrs) == pytest.approx(SNR_TARGET, rel=0.05), report
    assert np.median(fitq) == pytest.approx(1.0, abs=0.05), report
    for m, (bias, mae_ratio, _) in stats.items():
        assert abs(bias) <= 0.02, f"{m} bias | {report}"
        assert mae_ratio <= 0.75, f"{m} MAE/CRLB | {report}"
    assert 0.8 <= stats["Glu"][2] <= 1.25, f"Glu CRLB calibration | {report}"


# --------------------------------------------------------------------------------------------
# Basis resampling
# --------------------------------------------------------------------------------------------
def test_resample_basis_decimation_is_exact(basis):
    fine = _make_basis(Sequence(F0, 12.0, 18.0, DWELL / 2, 2 * NPTS))
    out, note = F.resample_basis(fine, DWELL, NPTS, F0, 4.65)
    assert "decimated by 2" in note
    assert out.fids.shape == basis.fids.shape
    np.testing.assert_allclose(out.fids, basis.fids, atol=1e-9 * np.abs(basis.fids).max())


def test_resample_basis_interpolation_and_fit(basis):
    """A basis at 0.4 ms x 2600 points is interpolated onto the 0.5 ms x 2048 grid."""
    other = _make_basis(Sequence(F0, 12.0, 18.0, 0.0004, 2600))
    out, note = F.resample_basis(other, DWELL, NPTS, F0, 4.65)
    assert "interpolated" in note
    err = np.abs(out.fids - basis.fids).max(axis=1) / np.abs(basis.fids).max(axis=1)
    assert err.max() < 1e-3
    # fit_spectrum resamples on its own and still recovers the amplitudes
    fid = synth(basis, CONC)
    res = F.fit_spectrum(fid, DWELL, F0, other)
    assert "interpolated" in res.message
    for m in ("NAA", "Cr", "PCr", "Glu", "Ins", "GPC", "Gln"):
        assert rel_err(res, m, CONC) == pytest.approx(0.0, abs=0.01), m


def test_resample_basis_centre_and_field_checks(basis):
    shifted = _make_basis(Sequence(F0, 12.0, 18.0, DWELL, NPTS, centre_ppm=4.7))
    out, note = F.resample_basis(shifted, DWELL, NPTS, F0, 4.65)
    assert "centre" in note
    np.testing.assert_allclose(out.fids, basis.fids, atol=1e-9 * np.abs(basis.fids).max())
    wrong_field = Basis(basis.names, basis.fids, DWELL, 123.2, 4.65, 30.0)
    with pytest.raises(InputError, match="spectrometer frequency"):
        F.resample_basis(wrong_field, DWELL, NPTS, F0, 4.65)
    short = Basis(basis.names, basis.fids[:, :1024], DWELL, F0, 4.65, 30.0)
    out, note = F.resample_basis(short, DWELL, NPTS, F0, 4.65)
    assert "zero-filled" in note
    assert np.all(out.fids[:, 1024:] == 0)


# --------------------------------------------------------------------------------------------
# Water
# --------------------------------------------------------------------------------------------
def test_fit_water_voigt():
    rng = np.random.default_rng(5)
    t = np.arange(NPTS) * DWELL
    amp, lor, gau, shift, phase = 3.0e4, 4.0, 6.0, 1.3, 0.7
    w = amp * np.exp(1j * phase + 2j * math.pi * shift * t - math.pi * lor * t
                     - F._CQ * gau**2 * t * t)  # fmt: skip
    w = w + 3.0 * (rng.standard_normal(NPTS) + 1j * rng.standard_normal(NPTS))
    out = F.fit_water(w, DWELL, F0)
    assert out["amplitude"] == pytest.approx(amp, rel=2e-3)
    assert out["linewidth_hz"] == pytest.approx(F.voigt_fwhm(lor, gau), abs=0.05)
    assert out["gamma_hz"] == pytest.approx(lor, abs=0.1)
    assert out["sigma_hz"] == pytest.approx(gau, abs=0.1)
    assert out["shift_hz"] == pytest.approx(shift, abs=0.02)
    assert out["phase_deg"] == pytest.approx(math.degrees(phase), abs=0.5)


def test_voigt_fwhm_limits():
    assert F.voigt_fwhm(5.0, 0.0) == pytest.approx(5.0, rel=1e-3)
    assert F.voigt_fwhm(0.0, 5.0) == pytest.approx(5.0, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Files: NIfTI-MRS in, JSON/TSV/PNG out
# --------------------------------------------------------------------------------------------
def _write_nifti_mrs(path, fid):
    from mrsflow import nmrs

    nmrs.write(path, fid.reshape(1, 1, 1, -1).astype(np.complex64), DWELL, F0)


@pytest.fixture(scope="module")
def study_files(basis, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fitfiles")
    rng = np.random.default_rng(7)
    clean = synth(basis, CONC)
    sd_t = naa_height(basis, CONC) / SNR_TARGET / math.sqrt(NPTS)
    fid = clean + sd_t * (rng.standard_normal(NPTS) + 1j * rng.standard_normal(NPTS))
    t = np.arange(NPTS) * DWELL
    water_amp = 2.0 * 35880.0 * 0.7 / 1e3  # any positive number
    water = water_amp * np.exp(
        0.3j - math.pi * 4.0 * t - F._CQ * 5.0**2 * t * t + 2j * math.pi * 2.0 * t
    )
    water = water + 1e-3 * water_amp * (rng.standard_normal(NPTS) + 1j * rng.standard_normal(NPTS))
    metab_nii, water_nii = tmp / "metab.nii.gz", tmp / "water.nii.gz"
    _write_nifti_mrs(metab_nii, fid)
    _write_nifti_mrs(water_nii, water)
    basis_dir = tmp / "basis"
    write_fsl_basis(basis_dir, dict(zip(basis.names, basis.fids, strict=True)), SEQ)
    return {
        "dir": tmp, "metab": metab_nii, "water": water_nii, "basis": basis_dir, "fid": fid,
        "clean": clean, "water_amp": water_amp,
    }  # fmt: skip


def test_read_nifti_mrs_returns_stored_values(study_files):
    fid, dwell, f0, hdr = F.read_nifti_mrs(study_files["metab"])
    assert dwell == pytest.approx(DWELL)
    assert f0 == pytest.approx(F0)
    assert hdr["SpectrometerFrequency"][0] == pytest.approx(F0)
    np.testing.assert_allclose(fid, study_files["fid"].astype(np.complex64), rtol=1e-6)


def test_run_fit_builtin_writes_contract(study_files):
    out = study_files["dir"] / "out"
    d = F.run_fit(
        study_files["metab"], study_files["water"], study_files["basis"],
        out / "fit.json", out / "fit.tsv", out / "fit.png", backend="builtin",
    )  # fmt: skip
    assert tuple(d) == F.CONTRACT_KEYS
    assert d["success"] and d["backend"] == "builtin"
    loaded = json.loads((out / "fit.json").read_text())
    assert loaded == d
    for name in METABOLITES + MACROMOLECULES:
        assert tuple(loaded["metabolites"][name]) == F.METABOLITE_KEYS
    assert set(loaded["combined"]) == set(F.COMBINATIONS)
    # amplitudes in basis units (fid[0] = protons): NAA within 3 CRLB of the truth
    naa = loaded["metabolites"]["NAA"]
    assert abs(naa["amplitude"] - CONC["NAA"]) < 3 * naa["crlb_abs"]
    assert loaded["water_amplitude"] == pytest.approx(study_files["water_amp"], rel=1e-3)
    assert loaded["water_linewidth_hz"] == pytest.approx(F.voigt_fwhm(4.0, 5.0), abs=0.05)
    assert loaded["fit_quality"] == pytest.approx(1.0, abs=0.1)
    assert loaded["snr"] == pytest.approx(SNR_TARGET, rel=0.15)
    tsv = (out / "fit.tsv").read_text().splitlines()
    assert tsv[0] == "name\tkind\tamplitude\tcrlb_abs\tcrlb_pct"
    assert len(tsv) == 1 + len(METABOLITES) + len(MACROMOLECULES) + len(F.COMBINATIONS)
    assert tsv[-1].startswith("Glx\tcombined\t")
    assert (out / "fit.png").stat().st_size > 10_000
    # deterministic: a second run writes byte-identical JSON and TSV
    F.run_fit(
        study_files["metab"], study_files["water"], study_files["basis"],
        out / "fit2.json", out / "fit2.tsv", out / "fit2.png", backend="builtin",
    )  # fmt: skip
    assert (out / "fit2.json").read_bytes() == (out / "fit.json").read_bytes()
    assert (out / "fit2.tsv").read_bytes() == (out / "fit.tsv").read_bytes()


def test_combined_crlb_uses_covariance(basis):
    rng = np.random.default_rng(9)
    fid = synth(basis, CONC)
    sd_t = naa_height(basis, CONC) / SNR_TARGET / math.sqrt(NPTS)
    res = F.fit_spectrum(fid + sd_t * (rng.standard_normal(NPTS) + 1j * rng.standard_normal(NPTS)),
                         DWELL, F0, basis)  # fmt: skip
    i, j = res.names.index("Cr"), res.names.index("PCr")
    cov = res.covariance
    expected = math.sqrt(cov[i, i] + cov[j, j] + 2 * cov[i, j])
    assert res.crlb("tCr") == pytest.approx(expected, rel=1e-9)
    assert cov[i, j] < 0  # Cr and PCr overlap: anticorrelated, tCr better than the sum
    assert res.crlb("tCr") < math.hypot(res.crlb("Cr"), res.crlb("PCr"))


# --------------------------------------------------------------------------------------------
# FSL-MRS backend
# --------------------------------------------------------------------------------------------
#: fsl_mrs options documented in FSL-MRS 2.x (docs/user_docs/fitting_svs.rst, `fsl_mrs --help`)
FSL_DOCUMENTED = {
    "--data", "--basis", "--output", "--algo", "--ignore", "--keep", "--combine", "--ppmlim",
    "--h2o", "--baseline", "--metab_groups", "--lorentzian", "--free_shift", "--ind_scale",
    "--disable_MH_priors", "--mh_samples", "--t1", "--TE", "--TR", "--tissue_frac",
    "--t1-values", "--t2-values", "--internal_ref", "--wref_metabolite", "--ref_protons",
    "--ref_int_limits", "--h2o_scale", "--report", "--verbose", "--overwrite", "--conj_fid",
    "--no_conj_fid", "--conj_basis", "--no_conj_basis", "--no_rescale", "--config",
}  # fmt: skip


def _option_values(cmd: list[str], opt: str) -> list[str]:
    i = cmd.index(opt)
    vals = []
    for tok in cmd[i + 1 :]:
        if tok.startswith("--"):
            break
        vals.append(tok)
    return vals


def test_fsl_mrs_command_line(tmp_path):
    """Documented options only; by default no FSL-MRS quantification step (the project
    scales by water itself: no --h2o/--TE/--TR/--tissue_frac), every MM/lipid entry its
    own --metab_groups group (FSL-MRS's recommendation), no HTML report; both on request."""
    names = METABOLITES + MACROMOLECULES
    kw = {"water_nii": tmp_path / "wref.nii.gz", "te_ms": 30.0, "tr_ms": 2000.0,
          "tissue_json": tmp_path / "tissue.json", "basis_names": names}
    cmd = F.build_fsl_mrs_command(tmp_path / "metab.nii.gz", tmp_path / "basis",
                                  tmp_path / "out", **kw)
    assert cmd[0] == "fsl_mrs"
    used = {tok for tok in cmd if tok.startswith("--")}
    assert used <= FSL_DOCUMENTED, used - FSL_DOCUMENTED
    assert _option_values(cmd, "--data") == [str(tmp_path / "metab.nii.gz")]
    assert _option_values(cmd, "--basis") == [str(tmp_path / "basis")]
    assert _option_values(cmd, "--output") == [str(tmp_path / "out")]
    for opt in ("--h2o", "--tissue_frac", "--TE", "--TR", "--report"):
        assert opt not in cmd
    assert _option_values(cmd, "--ppmlim") == ["0.2", "4.2"]
    assert _option_values(cmd, "--baseline") == ["poly, 2"]
    assert _option_values(cmd, "--metab_groups") == MACROMOLECULES
    combos = [cmd[i + 1 : i + 3] for i, tok in enumerate(cmd) if tok == "--combine"]
    assert combos == [["Cr", "PCr"], ["NAA", "NAAG"], ["GPC", "PCh"], ["Glu", "Gln"]]
    for flag in ("--overwrite", "--no_rescale"):
        assert flag in cmd
    on = F.build_fsl_mrs_command(tmp_path / "metab.nii.gz", tmp_path / "basis",
                                 tmp_path / "out", params={"fsl_mrs": {
                                     "report": True, "water_scaling": True}}, **kw)
    assert _option_values(on, "--h2o") == [str(tmp_path / "wref.nii.gz")]
    assert _option_values(on, "--tissue_frac") == [str(tmp_path / "tissue.json")]
    assert _option_values(on, "--TE") == ["30"]  # ms
    assert _option_values(on, "--TR") == ["2"]  # s
    assert "--report" in on
    for legacy in ("--baseline_order", "--add_MM", "--t1"):
        assert legacy not in cmd
    # options from params
    cmd2 = F.build_fsl_mrs_command(
        "m.nii.gz", "b", "o", basis_names=names,
        params={"baseline": "spline, moderate", "ignore": ["Lip09", "Lip13a"],
                "algo": "MH", "lorentzian": True, "free_shift": True, "report": False,
                "groups": {"mm": ["MM09", "MM12"], "lip": ["Lip13b", "Lip20"]},
                "ppm_range": (0.5, 4.0)},
    )  # fmt: skip
    assert _option_values(cmd2, "--baseline") == ["spline, moderate"]
    assert _option_values(cmd2, "--ignore") == ["Lip09", "Lip13a"]
    assert _option_values(cmd2, "--metab_groups") == ["MM09+MM12", "Lip13b+Lip20"]
    assert _option_values(cmd2, "--algo") == ["MH"]
    assert _option_values(cmd2, "--ppmlim") == ["0.5", "4"]
    assert "--lorentzian" in cmd2 and "--free_shift" in cmd2 and "--report" not in cmd2
    assert "--h2o" not in cmd2 and "--TE" not in cmd2
    cmd3 = F.build_fsl_mrs_command("m", "b", "o", params={"baseline_order": -1})
    assert _option_values(cmd3, "--baseline") == ["off"]


def test_backend_resolution(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("MRSFLOW_LCMODEL", raising=False)
    assert F.backend_available("builtin")
    assert not F.backend_available("fsl_mrs")
    assert not F.backend_available("lcmodel")
    assert F.resolve_backend("auto") == "builtin"
    with pytest.raises(InputError):
        F.resolve_backend("fsl_mrs")
    with pytest.raises(InputError, match="no LCModel executable"):
        F.resolve_backend("lcmodel")
    with pytest.raises(InputError, match="unknown fitting backend"):
        F.resolve_backend("tarquin")
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert F.resolve_backend("auto") == "fsl_mrs"  # auto never picks LCModel
    assert F.resolve_backend("lcmodel") == "lcmodel"


def _write_fsl_fixture(out_dir, res: F.FitResult, k: float, fit_fid: np.ndarray | None):
    """A hand-written fsl_mrs output folder following FSL-MRS's CSV layouts
    (FitRes.to_file: summary, concentrations (two header rows), qc, parameters)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {n: res.amplitude(n) * k for n in res.names}
    sd = {n: res.crlb(n) * k for n in res.names}
    combos = {"+".join(p): c for c, p in F.COMBINATIONS.items()}
    for fsl_name, ours in combos.items():
        raw[fsl_name] = res.amplitude(ours) * k
        sd[fsl_name] = res.crlb(ours) * k
    tcr = raw["Cr+PCr"]
    lines = [
        "Metabs,mean,mean,mean,mean,std,std,std,std",
        ",raw,internal,molality,molarity,raw,internal,molality,molarity",
    ]
    for n, r in raw.items():
        s = sd[n]
        lines.append(f"{n},{r},{r / tcr},{r * 1.1},{r * 0.9},{s},{s / tcr},{s * 1.1},{s * 0.9}")
    (out_dir / "concentrations.csv").write_text("\n".join(lines) + "\n")
    lines = ["Metab,/Cr+PCr,/Cr+PCr CRLB,mMol/kg,mMol/kg CRLB,mM,mM CRLB,%CRLB,SNR,FWHM"]
    for n, r in raw.items():
        s = sd[n]
        pct = 100 * s / r if r > 0 else 999
        lines.append(f"{n},{r / tcr},{s / tcr},{r},{s},{r},{s},{pct},20.0,7.0")
    (out_dir / "summary.csv").write_text("\n".join(lines) + "\n")
    (out_dir / "qc.csv").write_text("Metab,SNR,FWHM\nNAA,35.2,6.9\nCr,20.1,7.1\nPCr,15.0,7.0\n")
    lines = ["parameter,mean,std"]
    lines += [f"{n},{raw[n]},{sd[n]}" for n in res.names]
    for i in range(2):
        lines.append(f"gamma_{i},{math.pi * res.gamma_hz[i]},0.1")
    for i in range(2):
        sig = math.pi * res.sigma_hz[i] / (2 * math.sqrt(math.log(2)))
        lines.append(f"sigma_{i},{sig},0.1")
    for i in range(2):
        lines.append(f"eps_{i},{-2 * math.pi * res.shift_hz[i]},0.1")
    lines.append(f"Phi0,{-math.radians(res.phi0_deg)},0.01")
    lines.append(f"Phi1,{-math.radians(res.phi1_deg_per_ppm) / F0},0.0001")
    for i in range(3):
        lines += [f"B_real_{i},0.1,0.01", f"B_imag_{i},0.1,0.01"]
    (out_dir / "all_parameters.csv").write_text("\n".join(lines) + "\n")
    if fit_fid is not None:
        _write_nifti_mrs(out_dir / "fit.nii.gz", fit_fid * k)


def _key_tree(d):
    if isinstance(d, dict):
        return {k: _key_tree(v) for k, v in d.items()}
    return None


def test_contract_identical_between_builtin_and_fsl_fixture(study_files, tmp_path):
    d_builtin = json.loads(
        json.dumps(
            F.run_fit(
                study_files["metab"], study_files["water"], study_files["basis"],
                tmp_path / "b.json", tmp_path / "b.tsv", tmp_path / "b.png",
            )
        )
    )  # fmt: skip
    fid, dwell, f0, _ = F.read_nifti_mrs(study_files["metab"])
    basis_r = read_fsl_basis(study_files["basis"])
    res = F.fit_spectrum(fid, dwell, f0, basis_r)
    k = 3.7
    fsl_dir = tmp_path / "fsl"
    _write_fsl_fixture(fsl_dir, res, k, study_files["clean"])
    water = F.fit_water(*F.read_nifti_mrs(study_files["water"])[:3])
    names = basis_r.names
    # the builtin fit's two groups (metabolites, macromolecules), as written by the fixture
    _, order, group_members = F._fsl_group_entries(
        names, {"macromolecules": [n for n in names if F.is_macromolecule(n)]})
    d_fsl = F.parse_fsl_mrs_output(
        fsl_dir, amplitude_scale=k, group_names=order,
        group_members=group_members, f0_mhz=f0, dwell_s=dwell,
        npoints=fid.size, data_fid=fid, water=water, version="fsl_mrs 2.4.0 (fixture)",
    )  # fmt: skip
    d_fsl = F.write_result(d_fsl, tmp_path / "f.json", tmp_path / "f.tsv")
    assert tuple(d_fsl) == F.CONTRACT_KEYS
    for key in ("metabolites", "combined", "groups", "water"):
        assert _key_tree(d_fsl[key]) == _key_tree(d_builtin[key]), key
    assert d_fsl["backend"] == "fsl_mrs"
    # values round-trip through the documented units
    for n in ("NAA", "Glu", "Cr"):
        assert d_fsl["metabolites"][n]["amplitude"] == pytest.approx(res.amplitude(n), rel=1e-6)
        assert d_fsl["metabolites"][n]["crlb_abs"] == pytest.approx(res.crlb(n), rel=1e-6)
    assert d_fsl["combined"]["tCr"]["amplitude"] == pytest.approx(res.amplitude("tCr"), 1e-6)
    g = d_fsl["groups"]["metabolites"]
    assert g["gamma_hz"] == pytest.approx(res.gamma_hz[0], rel=1e-6)
    assert g["sigma_hz"] == pytest.approx(res.sigma_hz[0], rel=1e-6)
    assert g["shift_hz"] == pytest.approx(res.shift_hz[0], rel=1e-6)
    assert d_fsl["phi0_deg"] == pytest.approx(res.phi0_deg, abs=1e-6)
    assert d_fsl["phi1_deg_per_ppm"] == pytest.approx(res.phi1_deg_per_ppm, abs=1e-6)
    assert d_fsl["snr"] is None  # FSL-MRS's SNR is its own definition, named apart:
    assert d_fsl["extra"]["snr_fsl_mrs"] == pytest.approx(35.2)
    assert d_fsl["fit_quality"] == pytest.approx(1.0, abs=0.1)
    assert d_fsl["water_amplitude"] == pytest.approx(d_builtin["water_amplitude"], rel=1e-9)
    tsv_b = [ln.split("\t")[:2] for ln in (tmp_path / "b.tsv").read_text().splitlines()]
    tsv_f = [ln.split("\t")[:2] for ln in (tmp_path / "f.tsv").read_text().splitlines()]
    assert sorted(tsv_b) == sorted(tsv_f)


FAKE_FSL_MRS = """#!{python}
# Test double of FSL-MRS's fsl_mrs: records its argv, fits with the builtin fitter and writes
# FSL-MRS-style CSVs (see tests/test_fit.py::_write_fsl_fixture). NOT FSL-MRS.
import argparse, json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
if "--version" in sys.argv:
    print("0.0.0-test-double")
    sys.exit(0)
import test_fit
from mrsflow import fit as F
from mrsflow.basis import read_fsl_basis
p = argparse.ArgumentParser()
for opt in ("--data", "--basis", "--output", "--h2o", "--tissue_frac", "--TE", "--TR",
            "--baseline"):
    p.add_argument(opt)
p.add_argument("--ppmlim", nargs=2)
p.add_argument("--metab_groups", nargs="+")
p.add_argument("--combine", nargs="+", action="append")
for flag in ("--no_rescale", "--report", "--overwrite"):
    p.add_argument(flag, action="store_true")
args = p.parse_args()
out = Path(args.output)
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
(out / "options.txt").write_text(json.dumps(vars(args)) + "\\n")  # as fsl_mrs writes it
fid, dwell, f0, _ = F.read_nifti_mrs(args.data)
res = F.fit_spectrum(fid, dwell, f0, read_fsl_basis(args.basis))
test_fit._write_fsl_fixture(out, res, 1.0, None)
"""


FAKE_RESULTS_TO_SPECTRUM = """#!{python}
# Test double of FSL-MRS's results_to_spectrum (RESULTS --export_baseline -o OUT -f NAME):
# writes NAME (the full model, baseline included, as FSL-MRS does; here the fitted data
# itself) and NAME_baseline (a known broad line at 1.3 ppm) as NIfTI-MRS. NOT FSL-MRS.
import argparse, json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {tests!r})
import test_fit
from mrsflow import fit as F
p = argparse.ArgumentParser()
p.add_argument("results_dir")
p.add_argument("--export_baseline", action="store_true")
p.add_argument("-o", "--output")
p.add_argument("-f", "--filename")
args = p.parse_args()
opts = json.loads((Path(args.results_dir) / "options.txt").read_text())
fid = F.read_nifti_mrs(opts["data"])[0]
base = test_fit.fake_fsl_baseline(fid)
out = Path(args.output)
test_fit._write_nifti_mrs(out / f"{{args.filename}}.nii.gz", fid)
test_fit._write_nifti_mrs(out / f"{{args.filename}}_baseline.nii.gz", base)
"""


def fake_fsl_baseline(fid: np.ndarray) -> np.ndarray:
    """The test double's baseline: a broad line (40 Hz) at 1.3 ppm, 5 % of max|FID|."""
    t = np.arange(fid.size) * DWELL
    nu = (1.3 - 4.65) * F0
    return 0.05 * np.abs(fid).max() * np.exp(2j * np.pi * nu * t - np.pi * 40.0 * t)


def test_fsl_fit_curve_and_baseline_come_from_results_to_spectrum(study_files, tmp_path,
                                                                  monkeypatch):
    """fsl_mrs saves CSVs only: the backend asks FSL-MRS's results_to_spectrum for the model
    and baseline, draws and QCs them in data units (divided by the scale k); without it the
    fit stands, the QC page has no curve and the contract says why."""
    import os
    import sys
    from pathlib import Path

    bindir = tmp_path / "bin"
    bindir.mkdir()
    fmt = {"python": sys.executable, "tests": str(Path(__file__).parent)}
    (bindir / "fsl_mrs").write_text(FAKE_FSL_MRS.format(**fmt))
    (bindir / "fsl_mrs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    out = tmp_path / "bare"
    d = F.run_fit(study_files["metab"], None, study_files["basis"], out / "f.json",
                  out / "f.tsv", out / "f.png", backend="fsl_mrs")
    assert d["success"] and "results_to_spectrum (FSL-MRS) not on PATH" in d["extra"]["fit_curve"]
    assert "fit_qc" not in d["extra"]

    (bindir / "results_to_spectrum").write_text(FAKE_RESULTS_TO_SPECTRUM.format(**fmt))
    (bindir / "results_to_spectrum").chmod(0o755)
    out = tmp_path / "full"
    d = F.run_fit(study_files["metab"], None, study_files["basis"], out / "f.json",
                  out / "f.tsv", out / "f.png", backend="fsl_mrs")
    from mrsflow.fit.builtin import _fit_bins
    from mrsflow.fit.fsl_mrs import _fsl_plot_arrays

    fid, dwell, f0, _ = F.read_nifti_mrs(study_files["metab"])
    arrays = _fsl_plot_arrays(out / "f_fsl_mrs", fid, dwell, f0, 4.65, d)  # what is drawn
    assert d["extra"]["fit_curve"] == "results_to_spectrum"
    base = fake_fsl_baseline(fid)  # in data units: the double wrote k * base
    idx, nu, _ = _fit_bins(fid.size, DWELL, F0, 4.65, d["ppm_range"])
    ph = np.exp(-1j * (np.radians(d["phi0_deg"]) + np.radians(d["phi1_deg_per_ppm"]) * nu / F0))
    np.testing.assert_allclose(arrays["baseline"], np.fft.fft(base)[idx] * ph, rtol=1e-4,
                               atol=1e-4 * np.abs(arrays["baseline"]).max())
    np.testing.assert_allclose(arrays["fit"], arrays["data"], rtol=1e-4,
                               atol=1e-4 * np.abs(arrays["data"]).max())
    assert np.ptp(arrays["baseline"].real) > 0.01 * np.abs(arrays["data"]).max()
    q = d["extra"]["fit_qc"]  # the QC sees FSL-MRS's baseline, not zeros
    assert q["baseline_excursion"] > 0.001 and q["residual_structure"] < 0.1


def test_run_fsl_mrs_plumbing_with_a_test_double(study_files, tmp_path, monkeypatch):
    """run_fit(backend='fsl_mrs') end to end against a fake ``fsl_mrs`` on PATH: scaled
    input copies, tissue JSON conversion, --no_rescale, parsing back to data units."""
    import os
    import sys
    from pathlib import Path

    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "fsl_mrs"
    fake.write_text(FAKE_FSL_MRS.format(python=sys.executable, tests=str(Path(__file__).parent)))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert F.resolve_backend("auto") == "fsl_mrs"
    tissue = tmp_path / "tissue.json"
    tissue.write_text(json.dumps({"gm": 0.6, "wm": 0.35, "csf": 0.05}))
    out = tmp_path / "res"
    d = F.run_fit(
        study_files["metab"], study_files["water"], study_files["basis"],
        out / "f.json", out / "f.tsv", out / "f.png", backend="fsl_mrs",
        params={"te_ms": 30.0, "tr_ms": 2000.0}, tissue_json=tissue,
    )  # fmt: skip
    assert tuple(d) == F.CONTRACT_KEYS and d["backend"] == "fsl_mrs"
    assert d["backend_version"] == "fsl_mrs 0.0.0-test-double"
    argv = json.loads((out / "f_fsl_mrs" / "argv.json").read_text())
    work = out / "f_fsl_mrs_inputs"
    assert _option_values(argv, "--data") == [str(work / "metab_scaled.nii.gz")]
    assert "--h2o" not in argv and "--TE" not in argv and "--no_rescale" in argv
    assert _option_values(argv, "--metab_groups") == [
        n for n in read_fsl_basis(study_files["basis"]).names if F.is_macromolecule(n)]
    # the scaled copy keeps the NIfTI-MRS header and equals k * data
    fid, dwell, f0, _ = F.read_nifti_mrs(study_files["metab"])
    fid_s, dwell_s, f0_s, _ = F.read_nifti_mrs(work / "metab_scaled.nii.gz")
    k = d["extra"]["amplitude_scale"]
    assert (dwell_s, f0_s) == (dwell, f0)
    np.testing.assert_allclose(fid_s, k * fid, rtol=1e-5, atol=1e-6 * np.abs(k * fid).max())
    # amplitudes back in data units: equal to the builtin fit of the original data
    res = F.fit_spectrum(fid, dwell, f0, read_fsl_basis(study_files["basis"]))
    for n in ("NAA", "Glu", "Ins", "Cr"):
        assert d["metabolites"][n]["amplitude"] == pytest.approx(res.amplitude(n), rel=1e-3)
    assert d["water_amplitude"] == pytest.approx(study_files["water_amp"], rel=1e-3)
    assert json.loads((out / "f.json").read_text())["backend"] == "fsl_mrs"
    assert (out / "f.png").stat().st_size > 10_000  # no fit_summary.png: plotted from data


@pytest.mark.skipif(not F.backend_available("fsl_mrs"), reason="fsl_mrs not on PATH")
def test_fsl_mrs_backend_runs(study_files, tmp_path):  # pragma: no cover - needs FSL-MRS
    d = F.run_fit(
        study_files["metab"], study_files["water"], study_files["basis"],
        tmp_path / "f.json", tmp_path / "f.tsv", tmp_path / "f.png", backend="fsl_mrs",
        params={"te_ms": 30.0, "tr_ms": 2000.0},
    )  # fmt: skip
    assert tuple(d) == F.CONTRACT_KEYS
    assert d["backend"] == "fsl_mrs" and d["success"]
    naa = d["metabolites"]["NAA"]
    assert naa["amplitude"] == pytest.approx(CONC["NAA"], rel=0.15)
    assert d["combined"]["tCr"]["amplitude"] == pytest.approx(TRUE_COMBINED["tCr"], rel=0.15)


FAILING_FSL_MRS = """#!/bin/sh
# Test double of FSL-MRS's fsl_mrs failing as FSL-MRS 2.4.11 does on a pure-noise scan when
# asked to quantify (issue 21). NOT FSL-MRS.
if [ "$1" = "--version" ]; then echo 0.0.0-test-double; exit 0; fi
echo "Traceback (most recent call last):" >&2
printf '%s%s\n' "fsl_mrs.utils.quantify.QuantificationError: " \
  "Metabolite reference ['Cr', 'PCr'] has not been fit (conc=0)" >&2
exit 1
"""


def test_fsl_mrs_failing_on_a_spectrum_excludes_that_scan(study_files, tmp_path, monkeypatch):
    """fsl_mrs exiting 1 on a spectrum: that scan is not fitted, with FSL-MRS's last line
    as the reason; nothing raises, the QC page gets a message row."""
    import os

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "fsl_mrs").write_text(FAILING_FSL_MRS)
    (bindir / "fsl_mrs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    out = tmp_path / "res"
    d = F.run_fit(study_files["metab"], study_files["water"], study_files["basis"],
                  out / "f.json", out / "f.tsv", out / "f.png", backend="fsl_mrs")
    assert d["success"] is False and d["backend"] == "fsl_mrs"
    assert d["message"].startswith("not fitted: fsl_mrs failed (exit 1): ")
    assert "QuantificationError: Metabolite reference ['Cr', 'PCr']" in d["message"]
    assert json.loads((out / "f.json").read_text())["success"] is False
    assert not (out / "f.png").exists()
