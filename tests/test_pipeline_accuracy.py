"""End-to-end accuracy of the builtin MC preprocessing + builtin LCM fit on twin scans.

Synthetic metabolite-cycled scans (:func:`mrsflow.twin.spectra.synthesize_scan`, the study's
basis, concentrations and macromolecules of ``config/config.yaml``) go through
:func:`mrsflow.preprocess.preprocess_mc` and :func:`mrsflow.fit.fit_spectrum`; the fitted
amplitudes are compared with the planted ones.

* Noiseless (``target_snr`` 1e5) with every artefact the twin plants (drift, jitter, two
  motion-corrupted transients, eddy currents 0.2 rad / 30 ms, macromolecules, broad
  baseline, water asymmetry between the MC states): every basis signal at >= 5 % of tCr's
  amplitude is recovered within 1 % (issue acceptance).  With the broad 200-500 Hz baseline
  the fitter needs its flexible spline baseline, and even on the ideal processed FID it
  misses Glc by ~1.2 % for one of the seeds; there the preprocessing must add < 0.25 %.
* Study quality (QC SNR 35 = LCModel 17.5, NAA FWHM 6.9 Hz) over 48 scans: median errors,
  median |error| against the CRLBs, the Glu error SD against its CRLB, and the error the
  preprocessing adds to the fit of the ideally processed FID carrying the same noise.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from mrsflow import fit, preprocess, quantify
from mrsflow.twin import spectra as S

ROOT = Path(__file__).resolve().parents[1]
DT, F0, N = 5e-4, 127.8, 2048
FRACTIONS = {"gm": 0.8, "wm": 0.17, "csf": 0.03}
BASIS_DIR = ROOT / "results" / "basis" / "press_te30_127p8"


@functools.lru_cache(maxsize=1)
def study_basis():
    """The study basis (PRESS TE 30 ms at 127.8 MHz): the workflow's, or simulated."""
    from mrsflow import basis as B

    if BASIS_DIR.is_dir() and any(BASIS_DIR.glob("*.json")):
        return B.read_fsl_basis(BASIS_DIR)
    seq = B.Sequence(F0, 12.0, 18.0, DT, N)
    fids = B.simulate_basis(seq, list(B.load_spin_systems()), list(B.load_macromolecules()))
    return B.Basis(list(fids), np.vstack(list(fids.values())), DT, F0, 4.65, 30.0)


@functools.lru_cache(maxsize=1)
def planted():
    """(amplitudes of every basis entry, water amplitude, twin artefacts) from the config."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    qp = quantify.QuantParams.from_config(cfg["quantify"])
    water = quantify.visible_water_mM(FRACTIONS, 30.0, 2000.0, qp)
    conc = {k: v[0] for k, v in cfg["twin"]["concentrations_molal"].items()}
    amps = quantify.signal_amplitudes(conc, FRACTIONS, 30.0, 2000.0, qp, water)
    amps.update(
        quantify.signal_amplitudes(cfg["twin"]["macromolecules_molal"], FRACTIONS, 30.0,
                                   2000.0, qp, water)
    )
    names = set(study_basis().names)
    amps = {k: float(v) for k, v in amps.items() if k in names}
    return amps, float(water), dict(cfg["twin"]["artefacts"])


def truth(amps: dict, name: str) -> float:
    combos = {"tCr": ("Cr", "PCr"), "tNAA": ("NAA", "NAAG")}
    return sum(amps[m] for m in combos.get(name, (name,)))


def fitted(fid, baseline="poly, 2") -> dict:
    """name -> (amplitude, CRLB %) for every basis entry and combination."""
    res = fit.fit_spectrum(fid, DT, F0, study_basis(), baseline_order=baseline).to_dict()
    out = {**res["metabolites"], **res["combined"]}
    return {k: (v["amplitude"], v["crlb_pct"]) for k, v in out.items()}


def rel_errors(fid, names, amps, baseline) -> dict:
    f = fitted(fid, baseline)
    return {m: f[m][0] / truth(amps, m) - 1.0 for m in names}


NOISELESS = S.ScanSpec(
    target_snr=1e5, target_linewidth_hz=6.9, n_motion=2, eddy_amp_rad=0.2, eddy_tau_ms=30.0,
    drift_hz_per_min=0.5, drift_walk_sd_hz=0.1, phase_jitter_sd_deg=5.0,
)


def _noiseless_case(seed, asym, broad):
    amps, water, _ = planted()
    spec = replace(NOISELESS, mc_water_asymmetry=asym,
                   n_baseline=3 if broad else 0, baseline_fwhm_hz=(200.0, 500.0))
    s = S.synthesize_scan(study_basis(), amps, water, spec, np.random.default_rng(seed))
    res = preprocess.preprocess_mc(s.transients, DT, F0, {"plot": False})
    assert res.qc["rejected_pairs"] == s.motion_pairs.tolist()
    tpl = res.qc["water_removal"]["template"]
    assert tpl["applied"] and tpl["asymmetry"] == pytest.approx(asym, abs=1e-3)
    return s, res


@pytest.mark.parametrize("asym", [0.0, 0.02])
def test_noiseless_recovery_within_one_percent(asym):
    """No broad baseline: the fit of the ideal FID is exact, so the whole 1 % is the
    preprocessing's; every basis signal >= 5 % of tCr (metabolites and MM) is checked."""
    amps, _, _ = planted()
    tcr = truth(amps, "tCr")
    names = sorted(k for k, v in amps.items() if v >= 0.05 * tcr) + ["tCr", "tNAA"]
    worst = {}
    for seed in (1, 2, 3):
        s, res = _noiseless_case(seed, asym, broad=False)
        err = rel_errors(res.metab, names, amps, "poly, 2")
        bad = {m: round(e, 4) for m, e in err.items() if abs(e) > 0.01}
        assert not bad, f"seed {seed}: {bad}"
        worst[seed] = max(abs(e) for e in err.values())
    assert max(worst.values()) < 0.005  # typically ~0.2 % (Tau)


@pytest.mark.parametrize("asym", [0.0, 0.02])
def test_noiseless_recovery_with_broad_baseline(asym):
    """Broad (200-500 Hz) baseline components: flexible spline baseline; metabolites >= 5 %
    of tCr within 1 % of the truth, or within 0.25 % of what the fitter gets from the ideal
    processed FID where the fitter alone misses by more (Glc, one seed)."""
    amps, _, _ = planted()
    tcr = truth(amps, "tCr")
    names = sorted(
        k for k, v in amps.items() if v >= 0.05 * tcr and not k.startswith(("MM", "Lip"))
    ) + ["tCr", "tNAA"]
    for seed in (1, 2, 3):
        s, res = _noiseless_case(seed, asym, broad=True)
        err = rel_errors(res.metab, names, amps, "spline, flexible")
        ideal = rel_errors(s.ideal_metab, names, amps, "spline, flexible")
        added = {m: err[m] - ideal[m] for m in names}
        assert max(abs(v) for v in added.values()) < 0.0025, f"seed {seed}: {added}"
        bad = {m: round(err[m], 4) for m in names
               if abs(err[m]) > max(0.01, abs(ideal[m]) + 0.0025)}
        assert not bad, f"seed {seed}: {bad}"


def test_hlsvd_window_stability_on_mc():
    """The optional HLSVD after the template removal: windows tight around water give
    nearly the same result (before: Tau +33 % / -9 % for 4.4-5.0 / 4.45-4.9 ppm) and leave
    no residual water.  What remains (< 1 %) is HLSVD removing metabolite signal under the
    water (Asc 4.5, GSH 4.56, NAAG 4.6, Glc 4.63 ppm) depending on the window."""
    amps, _, _ = planted()
    s, _ = _noiseless_case(1, 0.02, broad=False)
    names = ["tCr", "tNAA", "Glu", "Ins", "GPC"]
    errs = []
    for win in ((4.45, 4.95), (4.5, 4.85), (4.45, 4.9)):
        res = preprocess.preprocess_mc(s.transients, DT, F0, {
            "plot": False, "mc_water_removal": "template+hlsvd", "hlsvd_ppm": win})
        assert res.qc["hlsvd"]["residual_water_after"] < 1e-3
        errs.append(rel_errors(res.metab, names, amps, "poly, 2"))
    for m in names:
        vals = [e[m] for e in errs]
        assert max(vals) - min(vals) < 0.01 and max(abs(v) for v in vals) < 0.01, (m, vals)


# ---------------------------------------------------------------------------------------------
STUDY_METABS = ("Glu", "NAA", "tNAA", "tCr", "Ins")
N_SCANS = 40


@functools.lru_cache(maxsize=1)
def study_snr_results():
    """40 twin scans at the study's quality (each its own drift, jitter, motion, broad
    baseline, first MC state and noise; 32 MC pairs to keep the runtime down - the noise is
    calibrated on the average, so the processed SNR is the same).  Per metabolite: relative
    errors of the pipeline, of the fit of the ideally processed FID carrying exactly the same
    noise (:func:`mrsflow.twin.spectra.realized_metabolite_fid`, the "oracle"), and the
    pipeline fit's CRLB %."""
    amps, water, art = planted()
    spec = S.ScanSpec(
        target_snr=35.0, target_linewidth_hz=6.9, n_transients=64,
        drift_hz_per_min=float(art["drift_hz_per_min"]),
        drift_walk_sd_hz=float(art["drift_walk_sd_hz"]),
        phase_jitter_sd_deg=float(art["phase_jitter_sd_deg"]),
        n_motion=int(art["n_motion"]), eddy_amp_rad=float(art["eddy_amp_rad"]),
        eddy_tau_ms=float(art["eddy_tau_ms"]), baseline_fraction=float(art["baseline_fraction"]),
        baseline_fwhm_hz=tuple(art["baseline_fwhm_hz"]),
        mc_water_asymmetry=float(art["mc_water_asymmetry"]),
    )
    out = {k: {m: [] for m in STUDY_METABS} for k in ("pipe", "oracle", "crlb")}
    for seed in range(N_SCANS):
        s = S.synthesize_scan(study_basis(), amps, water, spec, np.random.default_rng(900 + seed))
        res = preprocess.preprocess_mc(s.transients, DT, F0, {"plot": False})
        f = fitted(res.metab)
        fo = fitted(S.realized_metabolite_fid(s))
        for m in STUDY_METABS:
            out["pipe"][m].append(f[m][0] / truth(amps, m) - 1.0)
            out["oracle"][m].append(fo[m][0] / truth(amps, m) - 1.0)
            out["crlb"][m].append(f[m][1])
    return {k: {m: np.array(v) for m, v in d.items()} for k, d in out.items()}


@pytest.mark.parametrize("name", ["Glu", "NAA", "tCr", "Ins"])
def test_study_snr_preprocessing_adds_no_error(name):
    """Paired with the oracle: the preprocessing's own contribution is far below the CRLB."""
    r = study_snr_results()
    err, ora, crlb = 100 * r["pipe"][name], 100 * r["oracle"][name], r["crlb"][name]
    added = err - ora
    assert np.sqrt(np.mean(added**2)) <= 0.1 * np.median(crlb)
    assert abs(np.median(err) - np.median(ora)) <= 0.25


@pytest.mark.parametrize("name", ["Glu", "NAA", "tCr", "Ins"])
def test_study_snr_bias_and_precision(name):
    """Median error within +-2 %, median |error| <= 0.75 x median CRLB % (0.674 expected
    for unbiased Gaussian errors with SD = CRLB).  When the pipeline misses a criterion but
    the oracle (no preprocessing error at all) misses it equally, the limit is the fitter's
    (its low-SNR bias, and baseline misfit of the twin's broad components beyond the CRLB):
    reported as an expected failure with the numbers."""
    r = study_snr_results()
    err, ora, crlb = 100 * r["pipe"][name], 100 * r["oracle"][name], r["crlb"][name]
    med, ratio = np.median(err), np.median(np.abs(err)) / np.median(crlb)
    o_med, o_ratio = np.median(ora), np.median(np.abs(ora)) / np.median(crlb)
    ok = abs(med) <= 2.0 and ratio <= 0.75
    if not ok:
        fitter_limited = (abs(o_med) > 2.0 or o_ratio > 0.75) and abs(med - o_med) <= 0.25 \
            and abs(ratio - o_ratio) <= 0.05
        assert fitter_limited, (med, ratio, o_med, o_ratio)
        pytest.xfail(
            f"{name}: fitter-limited: pipeline median {med:+.2f} %, |err|/CRLB {ratio:.2f}; "
            f"oracle median {o_med:+.2f} %, |err|/CRLB {o_ratio:.2f}"
        )


def test_study_snr_glu_error_matches_crlb():
    r = study_snr_results()
    err = 100 * r["pipe"]["Glu"]
    ratio = np.std(err, ddof=1) / np.mean(r["crlb"]["Glu"])
    assert 0.8 <= ratio <= 1.25
