"""The ISMRM 2016 fitting challenge (../shared/reference; skipped where absent) through
bench/bench_ismrm2016.py: the fitting engine and the water scaling on spectra the project
did not make.

With the challenge's own basis (its measured macromolecule spectrum) the builtin fitter
lands inside what LCModel 6.3 and FSL-MRS 2.4 report, or within 10 % of the nearer, on every
reported dataset but at most one per metabolite, and reads the Cr water-scaling test within
1 % of its exact-area answer (10.82 mM) with either basis; the config's fit QC excludes the
one spectrum no basis fits (dataset 25) and passes the fits that agree. The project's own
basis with its default macromolecule model does not yet reach that agreement (README,
Accuracy on data the project did not make); the benchmark prints those numbers.
"""

from __future__ import annotations

import sys

import pytest
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from _ismrm2016 import DEFAULT, anchors, challenge_basis, datasets  # noqa: E402
from bench_ismrm2016 import CR_TEST_MM, fit_all, fit_default, own_basis, report  # noqa: E402

pytestmark = pytest.mark.skipif(not (DEFAULT / "datasets_text").is_dir(),
                                reason=f"{DEFAULT} is absent (not shipped with the project)")
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def data():
    return datasets(DEFAULT), anchors(DEFAULT)


@pytest.fixture(scope="module")
def challenge_fits(data):
    spectra, _ = data
    return fit_all(spectra, challenge_basis(DEFAULT), CONFIG["fitting"], CONFIG["qc"])


def test_challenge_basis_agrees_with_lcmodel_and_fsl_mrs(data, challenge_fits):
    """Every reported dataset but at most one per metabolite inside the anchors (or 10 %);
    only dataset 25 (the spectrum no basis fits: 13 % of the tallest line left in the
    residual) is excluded by QC."""
    conc, seconds = challenge_fits
    hits, n_sets, excluded = report("challenge", conc, data[1], seconds)
    assert n_sets == 12
    assert excluded == [25]
    assert all(v >= n_sets - len(excluded) - 1 for v in hits.values()), hits
    assert conc[0]["tCr"] == pytest.approx(CR_TEST_MM, rel=0.01)


def test_qc_excludes_the_fit_that_leaves_structure_and_passes_good_fits(challenge_fits):
    """The config's fit QC on fits whose answer is known: those that agree with LCModel and
    FSL-MRS leave a residual that is noise (structure <= 1.1 x noise, <= 1.3 % of the
    tallest line) and a baseline that stays small where the metabolites are; dataset 25's fit
    does not, and is excluded naming the structure."""
    conc, _ = challenge_fits
    for n in range(1, 11):
        assert conc[n]["_excluded"] == [], n
        assert conc[n]["_fit_qc"]["residual_structure"] < 1.1
        assert conc[n]["_fit_qc"]["residual_max_pct"] < 1.3
        assert conc[n]["_fit_qc"]["baseline_excursion"] < 0.1
    reasons = "; ".join(conc[25]["_excluded"])
    assert "fit leaves structure in the residual" in reasons


def test_own_basis_reads_the_cr_test(data):
    spectra, table = data
    conc, _ = fit_all({0: spectra[0]}, own_basis(CONFIG), CONFIG["fitting"], CONFIG["qc"])
    assert conc[0]["tCr"] == pytest.approx(CR_TEST_MM, rel=0.01)


def test_mm_leak_test_sees_the_default_mm_model_and_not_the_measured_one(data):
    """bench/bench_mm_leakage.py's measure: the challenge's measured MM fitted alone reads
    almost nothing with a basis that holds that MM (the leak test of a right MM model), and
    tNAA, tCr and Glu at a third or more of dataset 1's values with the project's basis and
    its default MM model (what the own basis's excess over the anchors comes from)."""
    from bench_mm_leakage import as_fitted, leak

    spectra, _ = data
    ch = challenge_basis(DEFAULT)
    metab, _ = spectra[1]
    ref = fit_default(metab, ch, CONFIG["fitting"])
    g = ref.group_names.index("macromolecules")
    mm = as_fitted(ch.fids[ch.names.index("MM")], ref.amplitude("MM"), 0.25e-3,
                   ref.gamma_hz[g], ref.sigma_hz[g])
    right = leak(mm, 0.25e-3, 123.2, ch, CONFIG["fitting"])
    default = leak(mm, 0.25e-3, 123.2, own_basis(CONFIG), CONFIG["fitting"])
    for m in ("Glu", "tNAA", "tCr", "Ins", "tCho"):
        assert right[m] < 0.02 * ref.amplitude(m), m
    for m in ("Glu", "tNAA", "tCr"):
        assert default[m] > 0.3 * ref.amplitude(m), m


def test_an_mm_file_keeps_its_structure_at_the_default_cleaning_width(tmp_path, data):
    """The challenge's measured MM given as an `mm: {file: ...}` (rule mm_spectrum's
    mrsflow.mm.run_mm): cleaned at 15 Hz (the former default) it loses the narrow structure
    on its MM peaks, and the own metabolites fitted with it miss the anchors on most
    datasets; at `min_fwhm_hz: 8` (the default) it is kept (spectrum correlation > 0.99) and
    10 of 12 datasets are inside the anchors (or 10 %) for every reported metabolite."""
    import numpy as np

    from mrsflow import mm, nmrs, qc
    from mrsflow.basis import Basis

    spectra, table = data
    ch = challenge_basis(DEFAULT)
    mac = np.asarray(ch.fids[ch.names.index("MM")])
    nmrs.write(tmp_path / "mac.nii.gz", mac.reshape(1, 1, 1, -1), 0.25e-3, 123.2)
    own = own_basis(CONFIG)
    mets = [n for n in own.names if not n.startswith(("MM", "Lip"))]
    hits = {}
    for width in (15.0, 8.0):
        out = tmp_path / f"mm{width:g}.nii.gz"
        mm.run_mm({"file": "mac.nii.gz", "min_fwhm_hz": width}, tmp_path, out,
                  tmp_path / f"mm{width:g}.png")
        cleaned = np.asarray(nmrs.read(out)[0]).reshape(-1)
        a, ppm = qc.spectrum(cleaned, 0.25e-3, 123.2)
        b, _ = qc.spectrum(mac, 0.25e-3, 123.2)
        sel = (ppm > 0.5) & (ppm < 4.2)
        corr = np.corrcoef(a.real[sel], b.real[sel])[0, 1]
        basis = Basis(mets + ["MM"], np.vstack([own.fids[own.names.index(n)] for n in mets]
                                               + [cleaned]), 0.25e-3, 123.2, 4.65, 30.0)
        conc, _ = fit_all({k: v for k, v in spectra.items() if k}, basis, CONFIG["fitting"],
                          CONFIG["qc"])
        hits[width] = (corr, report(f"own + challenge MM cleaned at {width:g} Hz", conc, table,
                                    0.0)[0])
    assert hits[8.0][0] > 0.99 and hits[15.0][0] < hits[8.0][0], hits
    assert all(v >= 10 for v in hits[8.0][1].values()), hits[8.0]
    assert min(hits[15.0][1].values()) <= 4, hits[15.0]
