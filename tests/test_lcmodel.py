"""The LCModel backend (mrsflow.fit.lcmodel): its file conventions, the challenge's LCModel
numbers reproduced, failures as exclusions, the small twin end to end, and a clear start-up
error when LCModel is asked for and absent.

LCModel is not shipped: tests that run it skip unless an executable is found (config path,
$MRSFLOW_LCMODEL, or ``lcmodel`` on PATH); CI builds it from ../shared/tools/lcmodel.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, snakemake_with_override

from mrsflow import fit as F
from mrsflow import nmrs
from mrsflow.basis import Basis
from mrsflow.fit import lcmodel as L

EXE = L.find_executable()
needs_lcmodel = pytest.mark.skipif(
    EXE is None, reason=f"no LCModel executable (${L.ENV_VAR} or lcmodel on PATH)")
F0, DW, N = 127.8, 5e-4, 2048
T = np.arange(N) * DW


def _line(ppm, protons=1.0):
    return protons * np.exp(2j * np.pi * (ppm - 4.65) * F0 * T)


def _toy_basis():
    fids = {"NAA": _line(2.008, 3), "Cr": _line(3.027, 3) + _line(3.913, 2),
            "GPC": _line(3.21, 9)}
    return Basis(list(fids), np.vstack(list(fids.values())), DW, F0, 4.65, 30.0)


def _gauss(fwhm_hz):
    return np.exp(-((np.pi * fwhm_hz * T) ** 2) / (4 * math.log(2)))


@needs_lcmodel
def test_singlets_land_where_they_are_and_scale_with_the_water(tmp_path):
    """Project-convention data and basis through LCModel: no referencing shift and no
    phase are needed, NAA's line in LCModel's plotted fit peaks at 2.01 ppm, and the
    amplitudes mapped back through the water (A = conc W / 2) come out within 5 % of the
    planted ones (Gaussian lines; ratios within 1 %)."""
    amps = {"NAA": 3.0, "Cr": 2.0, "GPC": 0.3}
    basis = _toy_basis()
    sig = sum(a * basis.fids[basis.names.index(k)] for k, a in amps.items()) * _gauss(6.0)
    sig = sig + 1e-3 * np.random.default_rng(0).standard_normal(2 * N).view(complex)
    water_fid = 5000.0 * _line(4.65) * _gauss(7.0)
    water = F.fit_water(water_fid, DW, F0)
    d, arrays = L.fit(sig, water_fid, DW, F0, basis, ppm_range=(0.2, 4.0), executable=EXE,
                      workdir=tmp_path, water=water, control_values={"NSIMUL": 0})
    assert d["backend"] == "lcmodel" and d["success"]
    assert d["groups"]["metabolites"]["shift_hz"] == pytest.approx(0.0, abs=0.2)
    assert abs(d["phi0_deg"]) <= 2
    ppm, fit = arrays["ppm"], arrays["fit"] - arrays["baseline"]
    window = (ppm > 1.9) & (ppm < 2.1)
    assert ppm[window][np.argmax(fit[window])] == pytest.approx(2.008, abs=0.01)
    got = {k: v["amplitude"] for k, v in d["metabolites"].items()}
    for k, a in amps.items():
        assert got[k] == pytest.approx(a, rel=0.05), (k, got)
    assert got["NAA"] / got["Cr"] == pytest.approx(1.5, rel=0.01)
    assert d["extra"]["snr_lcmodel"] > 0 and d["snr"] is None  # LCModel's S/N named apart


@needs_lcmodel
def test_the_challenge_reproduces_lcmodels_own_numbers(tmp_path, capsys):
    """The same data, basis and program as the anchors' LCModel column, settings in
    bench/_ismrm2016.py (LCMODEL_CHALLENGE): Glu, tNAA, tCr, Ins and tCho of datasets 1-10 and
    27 all within 2 % (measured: 55 of 55, median 0.2 %, at most 1.2 %) and the Cr test
    within 1 % (9.804 against 9.799 mM). Dataset 25 (no NAA, lipid/MM-dominated) is printed:
    Glu +1.7 %, tCr +4.0 %, Ins +4.5 %, tCho +2.3 % (not within 2 %); its fit is ill-conditioned
    (ATTMET 0.829 instead of 0.82919 moves its Ins by 1.4 %, datasets 1-10 not), but LCModel's own
    simulated MM components come out at the anchors' scale (within 3 %), which they do only
    with the challenge's T2 factor given as ATTMET."""
    sys.path.insert(0, str(ROOT / "bench"))
    from _ismrm2016 import DEFAULT, anchors, lcmodel_challenge

    if not (DEFAULT / "datasets_text").is_dir():
        pytest.skip(f"{DEFAULT} is absent (not shipped with the project)")
    got = lcmodel_challenge(EXE, tmp_path)
    a = anchors(DEFAULT).set_index(["dataset", "metabolite"])
    errors = {}
    with capsys.disabled():
        print("\nLCModel here vs the anchors' LCModel (mM):")
        for n in [*range(1, 11), 25, 27]:
            cells = []
            for name in ("Glu", "NAA+NAAG", "Cr+PCr", "Ins", "GPC+PCho"):
                ref, val = a.loc[(n, name), "lcmodel_mM"], got[n][name]
                errors[(n, name)] = 100 * (val / ref - 1) if ref else math.nan
                cells.append(f"{name} {val:6.2f}/{ref:6.2f} {errors[(n, name)]:+5.1f}%")
            print(f"{n:3d} " + " | ".join(cells))
        print(f"  0 Cr test: Cr+PCr {got[0]['Cr+PCr']:.3f}/{a.loc[(0, 'Cr+PCr'), 'lcmodel_mM']}")
    main = np.abs([e for (n, _), e in errors.items() if n != 25])
    assert main.max() <= 2.0, errors
    assert got[0]["Cr+PCr"] == pytest.approx(a.loc[(0, "Cr+PCr"), "lcmodel_mM"], rel=0.01)
    assert abs(errors[(25, "Glu")]) <= 2.0
    for mm in ("MM09", "MM12", "MM14", "MM17", "MM20"):
        assert got[25][mm] == pytest.approx(a.loc[(25, mm), "lcmodel_mM"], rel=0.03), mm


@pytest.fixture(scope="module")
def own_basis_on_challenge():
    """The challenge spectra, the config and the project's own basis for the challenge's
    sequence, and the workflow's LCModel backend's fits of them (bench_ismrm2016.py
    --backend lcmodel): shared by the tests below."""
    if EXE is None:
        pytest.skip(f"no LCModel executable (${L.ENV_VAR} or lcmodel on PATH)")
    sys.path.insert(0, str(ROOT / "bench"))
    import yaml
    from _ismrm2016 import DEFAULT, datasets
    from bench_ismrm2016 import fit_all, own_basis

    if not (DEFAULT / "datasets_text").is_dir():
        pytest.skip(f"{DEFAULT} is absent (not shipped with the project)")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    data, basis = datasets(DEFAULT), own_basis(cfg)
    fits = fit_all(data, basis, cfg["fitting"], cfg["qc"], backend="lcmodel", lcmodel_exe=EXE)
    return data, cfg, basis, fits


def test_lcmodel_with_the_projects_basis_misses_glu_and_ins_on_the_challenge(
        own_basis_on_challenge, capsys):
    """The workflow's LCModel backend (mrsflow.fit.lcmodel.fit, as bench_ismrm2016.py
    --backend lcmodel runs it) with the project's own basis and default MM model on the
    challenge: the singlets land inside the anchors (tNAA, tCr >= 10 of 12; measured 11, 11)
    but Glu and Ins do not (<= 4 of 12; measured 3 and 2): the paper's own fitter, given the
    project's basis, does not meet issue 20's "11 of 12 with the own basis" either, and the
    builtin fitter's Glu/Ins misses there are the MM model's, not the fitter's. If this fails
    because Glu or Ins now pass, the README's statement is out of date."""
    from _ismrm2016 import DEFAULT, anchors
    from bench_ismrm2016 import report

    _, _, _, (conc, sec) = own_basis_on_challenge
    with capsys.disabled():
        hits, n_sets, excluded = report("own (LCModel)", conc, anchors(DEFAULT), sec)
    assert n_sets == 12 and excluded == [25]
    assert hits["tNAA"] >= 10 and hits["tCr"] >= 10, hits
    assert hits["Glu"] <= 4 and hits["Ins"] <= 4, hits


def test_lcmodel_reads_like_the_builtin_fitter_when_its_lorentzian_prior_is_relaxed(
        own_basis_on_challenge):
    """Why the two fitters differ on the challenge's singlets with the project's basis:
    LCModel holds each metabolite's extra Lorentzian near 0.8 Hz (DEEXT2 2, DESDT2 0.4 s^-1);
    relaxed (DESDT2 20) it reads tNAA and tCr as high as the builtin fitter's Voigt does
    (measured: 0 and 1 of 12 inside, like the builtin; dataset 1 tNAA 21.4 against the
    builtin's 19.6 mM and the anchors' 12.1-15.7) and the Cr-only test within 2 % of its
    exact area (10.995 mM) instead of 10 % low (9.71)."""
    from bench_ismrm2016 import CR_TEST_MM, fit_all

    data, cfg, basis, (default, _) = own_basis_on_challenge
    data = {n: v for n, v in data.items() if n in (0, 1)}
    builtin, _ = fit_all(data, basis, cfg["fitting"], cfg["qc"])
    relaxed_fitting = {**cfg["fitting"], "lcmodel": {"control": {"DESDT2": 20.0}}}
    relaxed, _ = fit_all(data, basis, relaxed_fitting, cfg["qc"], backend="lcmodel",
                         lcmodel_exe=EXE)
    assert default[0]["tCr"] == pytest.approx(0.9 * CR_TEST_MM, rel=0.03)
    assert relaxed[0]["tCr"] == pytest.approx(CR_TEST_MM, rel=0.02)
    for m in ("tNAA", "tCr"):
        assert default[1][m] < 0.8 * builtin[1][m], m
        assert relaxed[1][m] == pytest.approx(builtin[1][m], rel=0.15), m


def _nifti(path, fid):
    nmrs.write(path, np.asarray(fid, complex).reshape(1, 1, 1, -1), DW, F0)
    return path


@needs_lcmodel
def test_lcmodel_failing_on_a_spectrum_excludes_that_scan_with_its_message(tmp_path):
    """An all-zero spectrum makes LCModel stop (FATAL FTDATA): the scan is not fitted, its
    contract says why, and nothing raises; a pure-noise spectrum is fitted (amplitudes near
    zero) and its QC numbers say the residual is noise."""
    water = _nifti(tmp_path / "w.nii.gz", 5000.0 * _line(4.65) * _gauss(7.0))
    basis_dir = tmp_path / "basis"
    from mrsflow.basis import Sequence, simulate_basis, write_fsl_basis

    seq = Sequence(F0, 12.0, 18.0, DW, N)
    write_fsl_basis(basis_dir, simulate_basis(seq, ["NAA", "Cr", "PCr", "GPC", "PCh", "Glu"],
                                              []), seq)
    zero = _nifti(tmp_path / "zero.nii.gz", np.zeros(N, complex))
    d = F.run_fit(zero, water, basis_dir, tmp_path / "zero.json", tmp_path / "zero.tsv",
                  None, backend="lcmodel")
    assert d["success"] is False and "LCModel" in d["message"] and "FTDATA" in d["message"]
    assert json.loads((tmp_path / "zero.json").read_text())["success"] is False
    noise = _nifti(tmp_path / "noise.nii.gz",
                   np.random.default_rng(1).standard_normal(2 * N).view(complex))
    d = F.run_fit(noise, water, basis_dir, tmp_path / "n.json", tmp_path / "n.tsv", None,
                  backend="lcmodel")
    assert d["success"] is True
    assert 0.5 < d["extra"]["fit_qc"]["residual_structure"] < 1.5


@needs_lcmodel
@pytest.mark.slow
def test_small_twin_runs_end_to_end_with_lcmodel_beside_builtin(tmp_path):
    """The 4 + 4 twin with fitting.backend lcmodel and compare [builtin]: every scan fitted by
    LCModel for the tables and by the builtin fitter beside it; LCModel's Glu follows the
    planted Glu (r >= 0.85; its scale differs from the builtin fitter's, README); the
    agreement table and figure name both, with the fit jobs' seconds."""
    proc = snakemake_with_override(
        tmp_path, {"twin": {"n_cud": 4, "n_hc": 4},
                   "fitting": {"backend": "lcmodel", "compare": ["builtin"]}},
        "--cores", "2", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = tmp_path / "results"
    fits = sorted((res / "fit").rglob("*_desc-fit.json"))
    assert len(fits) == 24
    assert {json.loads(p.read_text())["backend"] for p in fits} == {"lcmodel"}
    other = sorted((res / "fit_compare" / "builtin").rglob("*_desc-fit.json"))
    assert {json.loads(p.read_text())["backend"] for p in other} == {"builtin"}
    assert len(other) == 24
    rec = pd.read_csv(res / "twin" / "recovery" / "concentrations_summary.tsv",
                      sep="\t").set_index("metabolite")
    assert rec.loc["Glu", "r"] >= 0.85 and rec.loc["tNAA", "r"] >= 0.95
    agree = pd.read_csv(res / "tables" / "fit_agreement_builtin.tsv", sep="\t")
    agree = agree.set_index("metabolite")
    assert set(agree.primary) == {"lcmodel"} and set(agree.other) == {"builtin"}
    assert agree.loc["Glu", "n"] == 24 and agree.loc["Glu", "r"] > 0.9
    assert agree.loc["Glu", "seconds_primary"] > agree.loc["Glu", "seconds_other"] > 0
    assert (res / "figures" / "fit_agreement_builtin.png").stat().st_size > 20_000
    assert (res / "verification.tsv").is_file()


def test_asking_for_an_absent_lcmodel_stops_at_start_up(tmp_path):
    """fitting.backend lcmodel with a path that is not an executable: one line naming it,
    exit 2, before any job."""
    proc = snakemake_with_override(
        tmp_path, {"twin": {"n_cud": 1, "n_hc": 1}, "fitting": {
            "backend": "lcmodel", "lcmodel": {"executable": str(tmp_path / "no-lcmodel")}}},
        "-n", timeout=300)
    assert proc.returncode != 0
    assert (f"mrsflow: error: fitting.backend lcmodel: fitting.lcmodel.executable = "
            f"{tmp_path / 'no-lcmodel'}: not an executable file") in proc.stderr
