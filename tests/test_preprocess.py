"""Builtin preprocessing on synthesized scans written as spec2nii would write them."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
from test_spectra import CONC, real_basis

from mrsflow import preprocess as P
from mrsflow import qc
from mrsflow.twin import spectra as S

DT, F0, N = 5e-4, 127.8, 2048
WATER = 56000.0
HDR = {"EchoTime": 0.03, "RepetitionTime": 2.0}
AFFINE = np.array([[10.0, 0, 0, -8.0], [0, 12.0, 0, 14.0], [0, 0, 10.0, -6.0], [0, 0, 0, 1]])


def synth(seed, **kw):
    rng = np.random.default_rng(seed)
    spec = S.ScanSpec(**kw)
    return S.synthesize_scan(real_basis(), CONC, WATER, spec, rng)


def write_mc(s, path):
    """(1,1,1,N,2,P) with DIM_METCYCLE (fastest in row order) and DIM_DYN, as spec2nii."""
    pairs = s.n_rows // 2
    data = s.transients.reshape(pairs, 2, N).transpose(2, 1, 0)[None, None, None]
    return P.write_nifti_mrs(path, data, DT, F0, dim_tags=("DIM_METCYCLE", "DIM_DYN", None),
                             affine=AFFINE, hdr_ext=HDR)


def write_rows(rows, path):
    rows = np.atleast_2d(rows)
    data = rows.T[None, None, None] if rows.shape[0] > 1 else rows[0][None, None, None]
    tags = ("DIM_DYN", None, None) if rows.shape[0] > 1 else (None, None, None)
    return P.write_nifti_mrs(path, data, DT, F0, dim_tags=tags, affine=AFFINE, hdr_ext=HDR)


def run(tmp_path, mode="mc", water=None, params=None, name="scan"):
    out = {k: tmp_path / f"{name}_{k}" for k in ("metab.nii.gz", "water.nii.gz", "qc.json",
                                                  "transients.tsv", "spectrum.png")}
    qcd = P.run_preprocess(
        tmp_path / f"{name}.nii.gz", out["metab.nii.gz"], out["water.nii.gz"], out["qc.json"],
        out["transients.tsv"], out["spectrum.png"], mode=mode, water_nii=water,
        params={"timestamp": "2024-01-01T00:00:00+00:00", **(params or {})},
    )
    table = list(csv.DictReader(out["transients.tsv"].open(), delimiter="\t"))
    return qcd, table, out


def stored(path):
    """The spectrum of a NIfTI-MRS file in the project convention (files store its conjugate)."""
    return np.conj(np.asanyarray(nib.load(str(path)).dataobj))[0, 0, 0]


def offsets_error(table, s, kind="mc"):
    rows = [r for r in table if r["kind"] == kind]
    fr = np.array([float(r["freq_hz"]) for r in rows])
    ph = np.array([float(r["phase_deg"]) for r in rows])
    ok = ~s.motion
    df = fr - s.freq_hz
    df -= np.median(df[ok])
    dp = P.wrap_deg(ph - s.phase_deg)
    dp = P.wrap_deg(dp - np.median(dp[ok]))
    return math.sqrt(np.mean(df[ok] ** 2)), math.sqrt(np.mean(dp[ok] ** 2))


def oracle_metab(s):
    """Ideal processed metabolite FID plus exactly the noise the pipeline averages."""
    t = np.arange(N) * DT
    noise = s.transients - s.modulation * (s.ideal_water[None] + s.cycle[:, None] * s.ideal_metab)
    undo = np.exp(-1j * (2 * np.pi * s.freq_hz[:, None] * t + np.deg2rad(s.phase_deg)[:, None]))
    spec = s.spec
    undo = undo * np.exp(-1j * spec.eddy_amp_rad * np.exp(-t / (spec.eddy_tau_ms * 1e-3)))
    nc = noise * undo * s.cycle[:, None]
    keep = ~np.isin(np.arange(s.n_rows // 2), s.motion_pairs)
    return s.ideal_metab + (0.5 * (nc[0::2] + nc[1::2]))[keep].mean(0)


# ---------------------------------------------------------------------------------------------
def test_mc_recovery_over_ten_seeds(tmp_path):
    """Per-transient offsets, rejection, MC sign, SNR and linewidths over 10 scans."""
    rng = np.random.default_rng(2024)
    snr_r, lw_r = [], []
    for seed in range(10):
        s = synth(
            100 + seed,
            target_snr=float(rng.uniform(12, 25)),
            target_linewidth_hz=float(rng.uniform(5, 9)),
            n_motion=int(rng.integers(2, 5)),
            drift_hz_per_min=float(rng.uniform(-0.5, 1.0)),
            drift_walk_sd_hz=float(rng.uniform(0.05, 0.3)),
            eddy_amp_rad=float(rng.uniform(0.0, 0.8)),
            eddy_tau_ms=float(rng.uniform(10, 60)),
        )
        write_mc(s, tmp_path / "scan.nii.gz")
        qcd, table, _ = run(tmp_path, params={"plot": False})
        rms_f, rms_p = offsets_error(table, s)
        assert rms_f < 0.5 and rms_p < 3.0
        outlier = np.array([r["outlier"] == "1" for r in table])
        rejected = np.array([r["rejected"] == "1" for r in table])
        np.testing.assert_array_equal(outlier, s.motion)  # no false positive, none missed
        assert qcd["rejected_pairs"] == s.motion_pairs.tolist()
        np.testing.assert_array_equal(rejected, np.isin(np.arange(s.n_rows) // 2, s.motion_pairs))
        np.testing.assert_array_equal([int(r["cycle"]) for r in table], s.cycle)
        assert qcd["n_pairs_averaged"] == s.params["n_kept"]
        assert qcd["linewidth_water_hz"] == pytest.approx(s.water_linewidth_planted_hz, rel=0.02)
        assert qcd["naa_ppm"] == pytest.approx(2.008, abs=0.015)
        # the pipeline reproduces the QC of the ideal processed spectrum with the same noise
        ora = oracle_metab(s)
        assert qcd["snr"] == pytest.approx(qc.snr(ora, DT, F0), rel=0.03)
        assert qcd["linewidth_naa_hz"] == pytest.approx(qc.linewidth_hz(ora, DT, F0), rel=0.03)
        snr_r.append(qcd["snr"] / s.snr_planted)
        lw_r.append(qcd["linewidth_naa_hz"] / s.linewidth_planted_hz)
    snr_r, lw_r = np.array(snr_r), np.array(lw_r)
    assert abs(snr_r.mean() - 1) < 0.05 and np.all(np.abs(snr_r - 1) < 0.2)
    assert abs(lw_r.mean() - 1) < 0.07 and np.all(np.abs(lw_r - 1) < 0.25)


def test_outputs_headers_and_determinism(tmp_path):
    s = synth(7, n_motion=2)
    write_mc(s, tmp_path / "scan.nii.gz")
    qc1, _, out = run(tmp_path, name="scan")
    blobs = {k: v.read_bytes() for k, v in out.items()}
    qc2, _, out2 = run(tmp_path, name="scan")
    for k, v in out2.items():
        assert v.read_bytes() == blobs[k], k
    assert out["spectrum.png"].stat().st_size > 10_000
    qj = json.loads(out["qc.json"].read_text())
    for key in ("snr", "linewidth_water_hz", "linewidth_naa_hz", "n_transients", "n_rejected",
                "rejected_rows", "rejected_pairs", "alignment", "definitions", "params"):
        assert key in qj
    assert qj["n_transients"] == 128
    # NIfTI-MRS: single FID, header carried over, provenance added, affine kept, raw stored
    for key in ("metab.nii.gz", "water.nii.gz"):
        img = nib.load(str(out[key]))
        assert img.shape == (1, 1, 1, N)
        np.testing.assert_allclose(img.affine, AFFINE)
        ext = json.loads(img.header.extensions[0].get_content())
        assert ext["EchoTime"] == 0.03 and ext["RepetitionTime"] == 2.0
        assert ext["SpectrometerFrequency"] == [F0] and ext["ResonantNucleus"] == ["1H"]
        assert not any(k.startswith("dim_") for k in ext)
        methods = [e["Method"] for e in ext["ProcessingApplied"]]
        assert "Eddy current correction" in methods and "Signal averaging" in methods
        assert all(e["Program"] == "mrsflow.preprocess" for e in ext["ProcessingApplied"])
    from nifti_mrs.nifti_mrs import NIFTI_MRS

    nm = NIFTI_MRS(str(out["metab.nii.gz"]))
    np.testing.assert_allclose(nm[:][0, 0, 0], stored(out["metab.nii.gz"]))
    # read as nifti_mrs / FSL-MRS do: upright NAA at 2.008 ppm, water at 4.65
    metab, water = stored(out["metab.nii.gz"]), stored(out["water.nii.gz"])
    re, ppm, _ = qc.phased_real(metab, DT, F0, phase=None)
    naa = (ppm > 1.95) & (ppm < 2.06)
    assert re[naa].max() > 5 * abs(re[naa].min())
    water_ppm = qc.peak_ppm_position(water, DT, F0, peak_ppm=qc.WATER_PPM)
    assert water_ppm == pytest.approx(4.65, abs=2e-3)


@pytest.mark.parametrize("first", [1, -1])
def test_mc_sign_detected_from_the_data(tmp_path, first):
    s = synth(11, mc_first_cycle=first, n_motion=1)
    write_mc(s, tmp_path / "scan.nii.gz")
    qcd, table, out = run(tmp_path, params={"plot": False})
    assert qcd["mc"]["upright_metcycle_index"] == (0 if first == 1 else 1)
    np.testing.assert_array_equal([int(r["cycle"]) for r in table], s.cycle)
    re, ppm, _ = qc.phased_real(stored(out["metab.nii.gz"]), DT, F0, phase=None)
    assert re[(ppm > 1.95) & (ppm < 2.06)].max() > 0


def test_eddy_current_correction_removes_the_planted_phase():
    s = synth(21, target_snr=400.0, n_motion=0, eddy_amp_rad=1.0, eddy_tau_ms=40.0)
    on = P.preprocess_mc(s.transients, DT, F0, {"hlsvd": False})
    off = P.preprocess_mc(s.transients, DT, F0, {"hlsvd": False, "ecc": False})

    def block_phase(x):
        """Phase of the metabolites (1.8-4.0 ppm) relative to the ideal, 5 ms blocks, 0-150 ms."""
        a = P.band_filter(x, DT, F0, (1.8, 4.0))[0]
        b = P.band_filter(s.ideal_metab, DT, F0, (1.8, 4.0))[0]
        blocks = range(0, 300, 10)
        return np.array([np.angle(np.vdot(b[i : i + 10], a[i : i + 10])) for i in blocks])

    ph_on = block_phase(on.metab)
    assert np.abs(ph_on[:10]).max() < 0.01 and np.abs(ph_on).max() < 0.05
    ph_off = block_phase(off.metab)
    assert np.ptp(ph_off) > 0.3  # uncorrected: the ec phase (and its lineshape shift) remain
    a, ppm = qc.spectrum(on.metab, DT, F0)
    b, _ = qc.spectrum(off.metab, DT, F0)
    ideal, _ = qc.spectrum(s.ideal_metab, DT, F0)
    sel = (ppm > 1.8) & (ppm < 3.6)
    naa_h = qc.peak_height(s.ideal_metab, DT, F0)
    assert np.abs(a[sel] - ideal[sel]).max() < 0.02 * naa_h
    assert np.abs(b[sel] - ideal[sel]).max() > 0.08 * naa_h
    n_rel = on.qc["ecc"]["reliable_points"]
    assert n_rel > 200
    assert np.abs(np.angle(on.water[:n_rel])).max() < 1e-6  # water phase flat after Klose
    assert on.water[0].real > 0
    assert on.qc["ecc"]["continuation_tau_ms"] == pytest.approx(40.0, rel=0.15)


def test_mc_residual_water_removed_with_the_water_template():
    s = synth(31, mc_water_asymmetry=0.02, n_motion=2)  # imperfect MC water cancellation
    with_w = P.preprocess_mc(s.transients, DT, F0)
    without = P.preprocess_mc(s.transients, DT, F0, {"hlsvd": False})
    wr = with_w.qc["water_removal"]
    assert wr["method"] == "template" and not with_w.qc["hlsvd"]["applied"]
    tpl = wr["template"]
    assert tpl["asymmetry"] == pytest.approx(0.02, abs=2e-3)  # (a/2) W left in U - D
    assert abs(tpl["phase_rad"]) < 1e-3 and abs(tpl["freq_hz"]) < 0.01
    assert wr["residual_water_before"] > 0.005
    assert wr["residual_water_after"] < 1e-3
    assert with_w.qc["hlsvd"]["residual_water_after"] == wr["residual_water_after"]
    # with perfect MC cancellation (same noise) the metabolite spectra (0.2-4.2 ppm, up to
    # the edge next to water) agree: the water is gone, nothing else was touched
    clean = P.preprocess_mc(synth(31, n_motion=2).transients, DT, F0)
    assert abs(clean.qc["water_removal"]["template"]["asymmetry"]) < 1e-3
    a, ppm = qc.spectrum(with_w.metab, DT, F0)
    b, _ = qc.spectrum(clean.metab, DT, F0)
    c, _ = qc.spectrum(without.metab, DT, F0)
    met = (ppm > 0.2) & (ppm < 4.2)
    naa_h = qc.peak_height(clean.metab, DT, F0)
    assert np.abs(a[met] - b[met]).max() < 0.01 * naa_h
    assert np.abs(c[met] - b[met]).max() > 0.2 * naa_h  # the water tail that was removed


def test_mc_water_removal_methods_and_params():
    s = synth(32, n_motion=0, mc_water_asymmetry=0.01)
    both = P.preprocess_mc(s.transients, DT, F0, {"mc_water_removal": "template+hlsvd"})
    assert both.qc["hlsvd"]["applied"] and both.qc["water_removal"]["template"]["applied"]
    assert both.qc["water_removal"]["residual_water_after"] < 1e-3
    hl = P.preprocess_mc(s.transients, DT, F0, {"mc_water_removal": "hlsvd"})
    assert hl.qc["hlsvd"]["applied"] and not hl.qc["water_removal"]["template"]["applied"]
    assert hl.qc["hlsvd"]["residual_water_after"] < 0.01
    with pytest.raises(ValueError, match="mc_water_removal"):
        P.preprocess_mc(s.transients, DT, F0, {"mc_water_removal": "svd"})


def test_water_template_recovers_a_first_order_leak():
    """D = M + (e0 + i 2 pi df t) W with an arbitrary (eddy-current) water lineshape; the
    metabolites near water limit the estimate to ~1e-5 of the water."""
    t = np.arange(N) * DT
    ec = np.exp(0.3j * np.exp(-t / 0.02))
    water = 3e4 * np.exp(-t / 0.08 - (np.pi * 4.0 * t) ** 2 / (4 * np.log(2))) * ec
    s = synth(33, target_snr=1e5)
    metab = s.ideal_metab * ec
    e0, df = 0.004 + 2e-4j, 3e-3
    out, info = P.remove_water_template(metab + (e0 + 2j * np.pi * df * t) * water, water, DT)
    assert info["asymmetry"] == pytest.approx(2 * e0.real, abs=5e-5)
    assert info["phase_rad"] == pytest.approx(e0.imag, abs=3e-5)
    assert info["freq_hz"] == pytest.approx(df, abs=5e-4)
    spec, ppm = qc.spectrum(out - metab, DT, F0)
    ref, _ = qc.spectrum(metab, DT, F0)
    sel = (ppm > 0.2) & (ppm < 4.2)
    assert np.abs(spec[sel]).max() < 2e-3 * np.abs(ref[sel]).max()


def test_hlsvd_removes_lines_inside_the_window_only():
    """Lorentzian water (4.65) and a line at 4.60 inside the window are removed exactly;
    Cr 3.91, Ins 4.05, GPC 4.30 and NAA 4.38 ppm lines are kept, whatever the window."""
    t = np.arange(N) * DT

    def line(ppm, amp, fwhm):
        return amp * np.exp((2j * np.pi * (ppm - 4.65) * F0 - np.pi * fwhm) * t)

    keep = line(3.91, 2.0, 5) + line(4.05, 1.5, 6) + line(4.30, 1.0, 5) + line(4.38, 1.0, 5)
    keep = keep + line(2.01, 6.0, 5) + line(3.03, 5.0, 5)
    water = line(4.65, 400.0 * np.exp(0.7j), 9) + line(4.60, 0.5, 5)
    outs = []
    for win in ((4.45, 4.95), (4.5, 4.85), (4.4, 5.0)):
        out, info = P.remove_water_hlsvd(keep + water, DT, F0, ppm=win)
        assert 2 <= info["n_removed"] <= 4
        assert all(win[0] <= p <= win[1] for p in info["removed_ppm"])
        outs.append(out)
        assert np.abs(out - keep).max() < 1e-3 * np.abs(keep).max()
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-3)


def test_classic_multirow_through_files(tmp_path):
    s = synth(41, mode="classic", n_motion=3, target_snr=20.0)
    write_rows(s.transients, tmp_path / "scan.nii.gz")
    write_rows(s.water_ref, tmp_path / "ref.nii.gz")
    qcd, table, out = run(tmp_path, mode="classic", water=tmp_path / "ref.nii.gz")
    assert qcd["alignment"]["applied"]
    assert qcd["naa_ppm"] == pytest.approx(2.008, abs=0.01)
    ws = [r for r in table if r["kind"] == "ws"]
    assert len(ws) == 128 and len([r for r in table if r["kind"] == "water_ref"]) == 16
    outlier = np.array([r["outlier"] == "1" for r in ws])
    assert np.all(outlier[s.motion])  # every motion transient caught
    rms_f, rms_p = offsets_error(table, s, kind="ws")
    assert rms_f < 3.0  # low per-transient SNR: a coarser alignment than with MC water
    assert qcd["linewidth_water_hz"] == pytest.approx(s.water_linewidth_planted_hz, rel=0.03)
    assert qcd["snr"] == pytest.approx(s.snr_planted, rel=0.25)
    assert qcd["linewidth_naa_hz"] == pytest.approx(s.linewidth_planted_hz, rel=0.25)
    assert qcd["hlsvd"]["residual_water_after"] < 0.01


def test_classic_single_preaveraged_row(tmp_path):
    s = S.scanner_average(synth(43, mode="classic", target_snr=20.0, drift_hz_per_min=1.0))
    write_rows(s.transients, tmp_path / "scan.nii.gz")
    write_rows(s.water_ref, tmp_path / "ref.nii.gz")
    qcd, table, out = run(tmp_path, mode="classic", water=tmp_path / "ref.nii.gz")
    assert not qcd["alignment"]["applied"]
    assert "pre-averaged" in qcd["alignment"]["reason"]
    assert qcd["naa_ppm"] == pytest.approx(2.008, abs=0.01)
    assert qcd["n_transients"] == 1 and qcd["n_rejected"] == 0
    assert qcd["snr"] == pytest.approx(s.snr_planted, rel=0.25)
    assert qcd["linewidth_naa_hz"] == pytest.approx(s.linewidth_planted_hz, rel=0.25)
    ext = json.loads(nib.load(str(out["metab.nii.gz"])).header.extensions[0].get_content())
    details = [e["Details"] for e in ext["ProcessingApplied"]]
    assert any("pre-averaged" in d for d in details)


def test_classic_needs_water_and_unknown_params_fail(tmp_path):
    s = synth(1, mode="classic")
    write_rows(s.transients, tmp_path / "scan.nii.gz")
    with pytest.raises(ValueError, match="water"):
        run(tmp_path, mode="classic")
    with pytest.raises(ValueError, match="unknown preprocessing parameter"):
        run(tmp_path, mode="classic", water=tmp_path / "scan.nii.gz", params={"zthresh": 3})


def test_row_order_of_higher_dimensions():
    x = np.arange(4 * 2 * 3).reshape(4, 2, 3)  # (npts, metcycle, dyn)
    rows = P._rows_from(x[None, None, None], {"dim_5": "DIM_METCYCLE", "dim_6": "DIM_DYN"}, "mc")
    # raw row r = m + 2 p
    np.testing.assert_array_equal(rows[1], x[:, 1, 0])
    np.testing.assert_array_equal(rows[2], x[:, 0, 1])
    single = P._rows_from(x[:, 0, 0][None, None, None], {}, "classic")
    assert single.shape == (1, 4)


def test_participant_step_matches_single_scans_and_draws_a_row_per_scan(tmp_path):
    """run_participant (one process per participant in the workflow) writes, for each scan
    of its plan, byte for byte what run_preprocess writes for that scan alone, and one QC
    page whose height grows with the number of scans."""
    from PIL import Image

    plan = []
    for k, seed in enumerate((3, 4)):
        write_mc(synth(seed), tmp_path / f"s{k}.nii.gz")
        run(tmp_path, name=f"s{k}")  # the single-scan reference outputs
        plan.append({"mrs": str(tmp_path / f"s{k}.nii.gz"), "water": None, "mode": "mc",
                     "label": f"scan {k}", **{
                         key: str(tmp_path / "p" / f"s{k}_{suffix}") for key, suffix in (
                             ("metab", "metab.nii.gz"), ("water_out", "water.nii.gz"),
                             ("qc", "qc.json"), ("transients", "transients.tsv"))}})
    params = {"timestamp": "2024-01-01T00:00:00+00:00"}
    P.run_participant(plan, tmp_path / "p" / "page.png", params=params)
    for k in range(2):
        for suffix in ("metab.nii.gz", "water.nii.gz", "qc.json", "transients.tsv"):
            got = (tmp_path / "p" / f"s{k}_{suffix}").read_bytes()
            assert got == (tmp_path / f"s{k}_{suffix}").read_bytes(), (k, suffix)
    P.run_participant(plan[:1], tmp_path / "p" / "one.png", params=params)
    two = Image.open(tmp_path / "p" / "page.png").size
    one = Image.open(tmp_path / "p" / "one.png").size
    assert two[0] == one[0] and two[1] == 2 * one[1], (one, two)
