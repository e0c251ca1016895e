"""The twin is not the fit model: its planted macromolecules, lineshape and eddy currents lie
outside what the fitter can represent, and its metabolite-nulled scans measure the MM the way
a study would (mrsflow.twin.macromolecules, mrsflow.twin.spectra, mrsflow.twin.generate)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT
from scipy.optimize import least_squares
from test_spectra import real_basis

from mrsflow import basis as B
from mrsflow import qc
from mrsflow.twin import macromolecules as M
from mrsflow.twin import spectra as S
from mrsflow.twin.design import mm_participants, mm_raw_paths
from mrsflow.twin.generate import write_participant, write_sheets

DT, F0, N = 5e-4, 127.8, 2048
T = np.arange(N) * DT


def _spectrum(fid):
    spec, ppm = qc.spectrum(fid, DT, F0)
    return spec, ppm


def test_planted_mm_is_not_a_combination_of_the_fitters_mm_entries():
    """The Landheer parametrisation has its area and its peaks where the paper puts them;
    the best non-negative combination of the basis set's MM and lipid entries (any widths the
    fitter could add are narrower, not broader) leaves over 20 % of it unexplained."""
    mm = M.mm_background(T, F0, 30.0, area=10.0)
    assert mm[0].real == pytest.approx(10.0) and abs(mm[0].imag) < 1e-9
    spec, ppm = _spectrum(mm)
    for p in (0.92, 2.15, 2.99, 3.75):  # maxima near each isolated peak (2.04 + 2.26 merge)
        win = (ppm > p - 0.12) & (ppm < p + 0.12)
        k = np.argmax(spec.real[win])
        assert abs(ppm[win][k] - p) < 0.08, p
    basis = real_basis()
    cols = [i for i, n in enumerate(basis.names) if n.startswith(("MM", "Lip"))]
    sel = (ppm > 0.5) & (ppm < 4.2)
    a = np.stack([_spectrum(basis.fids[i])[0][sel] for i in cols], axis=1)
    y = spec[sel]
    amat = np.vstack([a.real, a.imag])
    coef = least_squares(lambda c: amat @ c - np.concatenate([y.real, y.imag]),
                         np.ones(len(cols)), bounds=(0, np.inf)).x
    resid = np.concatenate([y.real, y.imag]) - amat @ coef
    assert np.linalg.norm(resid) / np.linalg.norm(np.concatenate([y.real, y.imag])) > 0.2


def test_participant_mm_varies_and_is_reproducible():
    a = M.mm_peaks(np.random.default_rng(1), 0.05)
    b = M.mm_peaks(np.random.default_rng(1), 0.05)
    c = M.mm_peaks(np.random.default_rng(2), 0.05)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:, 3], c[:, 3])
    np.testing.assert_array_equal(a[:, :3], np.array(M.MM_PEAKS_3T)[:, :3])


def test_inversion_recovery_nulls_metabolites_not_mm():
    """TI 650 ms at TR 2 s: T1 1.3 s nulled (< 0.5 %), 1.2-1.5 s within 4 %, MM (0.3 s) 77 %;
    TI = T1 ln 2 nulls at long TR."""
    assert abs(M.nulling_factor(1.3, 650.0, 2000.0)) < 0.005
    assert np.all(np.abs(M.nulling_factor(np.linspace(1.2, 1.5, 7), 650.0, 2000.0)) < 0.04)
    assert M.nulling_factor(M.MM_T1_S, 650.0, 2000.0) == pytest.approx(0.772, abs=0.002)
    assert M.nulling_factor(1.0, 1000.0 * math.log(2), 1e7) == pytest.approx(0.0, abs=1e-9)
    amps, t1 = M.nulled_amplitudes({"NAA": 10.0, "Cr": 8.0}, np.random.default_rng(0),
                                   650.0, 2000.0)
    assert set(t1) == {"NAA", "Cr"} and all(1.2 <= v <= 1.5 for v in t1.values())
    assert abs(amps["NAA"]) < 0.4 and abs(amps["Cr"]) < 0.32


def _voxel_scan(seed, **kw):
    """NAA alone (one singlet), no broad background: the lineshape shows bare."""
    spec = S.ScanSpec(mode="classic", n_motion=0, target_snr=1e6, target_linewidth_hz=7.0,
                      lineshape="voxel", n_baseline=0, **kw)
    return S.synthesize_scan(S.toy_basis(), {"NAA": 12.0}, 5.0e4, spec,
                             np.random.default_rng(seed))


def test_voxel_lineshape_is_not_voigt_and_is_shared_with_water():
    """The planted NAA line has the target FWHM, but no Voigt line fits the lineshape to
    within 2 % of its height (the fitter's lineshape model), it is asymmetric about its peak,
    and the metabolites carry exactly the water's lineshape (same voxel)."""
    s = _voxel_scan(3)
    assert s.linewidth_planted_hz == pytest.approx(7.0, rel=1e-3)
    # the lineshape alone: water's FID without its amplitude and T2 decay
    ls = s.ideal_water / (5.0e4 * np.exp(-T / (s.spec.t2_water_ms * 1e-3)))
    spec, ppm = _spectrum(ls)
    sel = np.abs(ppm - 4.65) < 0.25
    x, y = ppm[sel], spec.real[sel] / spec.real[sel].max()

    def voigt_resid(p):
        lor, gau, c, h = p
        fid = h * np.exp(2j * np.pi * (c - 4.65) * F0 * T - np.pi * lor * T
                         - (np.pi * gau * T) ** 2 / (4 * math.log(2)))
        return _spectrum(fid)[0].real[sel] - y

    fit = least_squares(voigt_resid, [2.0, 4.0, 4.65, 1.0 / 40],
                        bounds=([0, 0, 4.5, 0], [30, 30, 4.8, 10]))
    assert np.max(np.abs(fit.fun)) > 0.02
    peak = x[np.argmax(y)]
    assert abs(np.interp(peak - 0.03, x, y) - np.interp(peak + 0.03, x, y)) > 0.005
    template = S._basis_template(S.toy_basis(), {"NAA": 12.0}, s.spec)
    shared = s.ideal_metab / (template * np.exp(-T / (s.spec.t2_metab_ms * 1e-3)))
    np.testing.assert_allclose(shared[:400], ls[:400], rtol=1e-6, atol=1e-9)


def test_voxel_lineshape_is_reproducible_and_varies_between_scans():
    a, b, c = _voxel_scan(3), _voxel_scan(3), _voxel_scan(4)
    np.testing.assert_array_equal(a.transients, b.transients)
    assert not np.allclose(a.ideal_water / a.ideal_water[0], c.ideal_water / c.ideal_water[0])


def test_residual_eddy_current_stays_on_the_metabolites():
    """Correcting with the water's phase leaves d x A_ec exp(-t / tau) on the metabolites."""
    spec = S.ScanSpec(mode="classic", n_motion=0, target_snr=1e6, eddy_amp_rad=0.2,
                      eddy_residual_fraction=0.1)
    s = S.synthesize_scan(S.toy_basis(), {"NAA": 12.0}, 5.0e4, spec, np.random.default_rng(1))
    ref = S.synthesize_scan(S.toy_basis(), {"NAA": 12.0}, 5.0e4,
                            S.ScanSpec(mode="classic", n_motion=0, target_snr=1e6,
                                       eddy_amp_rad=0.2), np.random.default_rng(1))
    left = np.angle(s.ideal_metab / ref.ideal_metab)
    expected = 0.1 * 0.2 * np.exp(-T / 0.030)
    np.testing.assert_allclose(left[:100], expected[:100], atol=1e-9)


# --- the twin's exports: planted truth and the metabolite-nulled acquisition ----------------


@pytest.fixture(scope="module")
def cfg() -> dict:
    c = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    c["twin"].update({"n_cud": 1, "n_hc": 1})
    return c


@pytest.fixture(scope="module")
def hc01(cfg, tmp_path_factory):
    seq = cfg["sequence"]
    s = B.Sequence(seq["field_mhz"], seq["te1_ms"], seq["te2_ms"], 1 / seq["bandwidth_hz"],
                   seq["points"])
    root = tmp_path_factory.mktemp("mmtwin")
    B.write_fsl_basis(root / "basis", B.simulate_basis(s, cfg["basis"]["metabolites"],
                                                       cfg["basis"]["macromolecules"]), s)
    raw, truth = root / "raw", root / "truth"
    write_sheets(cfg["twin"], raw)
    write_participant(cfg, "sub-hc01", raw, truth, root / "basis")
    return raw, truth, root


def test_truth_says_what_was_planted(cfg, hc01):
    _, truth, _ = hc01
    scans = pd.read_csv(truth / "scans.sub-hc01.tsv", sep="\t")
    assert set(scans.mm_model) == {"landheer2020"}
    assert set(scans.lineshape) == {"voxel"}
    assert set(scans.eddy_residual_fraction) == {0.1}
    assert scans.mm_level.nunique() == 1 and 0.5 < scans.mm_level.iloc[0] < 1.5
    assert (scans.mm_area > 0).all()
    conc = pd.read_csv(truth / "concentrations.sub-hc01.tsv", sep="\t")
    assert not conc.metabolite.str.startswith(("MM", "Lip")).any()


def test_metabolite_nulled_scan_measures_the_planted_mm(cfg, hc01):
    """sub-hc01 (the first HC) has the metabolite-nulled acquisition with its water
    reference; processed and cleaned as the workflow does (mrsflow.mm), it gives this
    participant's planted MM (correlation of the spectra > 0.92 over 0.5-4.2 ppm, one
    participant's scan; the workflow averages several) with the residual metabolite lines
    removed."""
    from mrsflow import mm
    from mrsflow.twin.design import participant_rng

    raw, _, _ = hc01
    assert mm_participants(cfg["twin"]) == ["sub-hc01", "sub-cud01"]  # HC first
    paths = mm_raw_paths("sub-hc01", vendor="philips")
    for key in ("mrs", "water"):
        assert (raw / paths[key]).is_file() and (raw / paths[key]).with_suffix(".SPAR").is_file()
    fid, dwell, f0, _ = mm.process_mm_scans(
        [{"acq": "ws", "mrs": raw / paths["mrs"], "water": raw / paths["water"]}],
        cfg["preprocess"])
    cleaned, info = mm.clean_mm(fid, dwell, f0)
    assert info["kept"] >= 5
    rng = participant_rng(cfg["twin"]["seed"], "sub-hc01", "macromolecules")
    rng.normal()  # the level, drawn first (mrsflow.twin.generate)
    planted = M.mm_background(np.arange(fid.size) * dwell, f0, 30.0, 1.0,
                              M.mm_peaks(rng, cfg["twin"]["macromolecules"]["peak_sd"]))
    got, ppm = qc.spectrum(cleaned, dwell, f0)
    # as the scan sees it: with its linewidth (~7 Hz)
    want, _ = qc.spectrum(planted * np.exp(-np.pi * 7.0 * np.arange(fid.size) * dwell),
                          dwell, f0)
    sel = (ppm > 0.5) & (ppm < 4.2)
    assert np.corrcoef(got.real[sel], want.real[sel])[0, 1] > 0.92


def test_twin_plants_what_the_fit_basis_leaves_out(tmp_path):
    """The twin simulates every metabolite it plants (twin.concentrations_molal), whatever the
    fit's basis holds: a study that leaves Gly out of its fit still gets a twin brain with
    Gly (rule twin_basis), and the fit's basis has no Gly."""
    from conftest import snakemake_with_override

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    fit_metabolites = [m for m in cfg["basis"]["metabolites"] if m != "Gly"]
    override = {"basis": {"metabolites": fit_metabolites},
                "twin": {"n_cud": 1, "n_hc": 1}}
    proc = snakemake_with_override(tmp_path, override, "results/twin/basis",
                                   f"results/basis/{cfg['basis']['name']}", "--cores", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    twin = {p.stem for p in (tmp_path / "results" / "twin" / "basis").glob("*.json")}
    fit = {p.stem for p in (tmp_path / "results" / "basis" / cfg["basis"]["name"]).glob("*.json")}
    assert set(cfg["twin"]["concentrations_molal"]) <= twin
    assert "Gly" in twin and "Gly" not in fit
    assert set(fit_metabolites) <= fit
