"""The shared real Philips exports (../shared/reference/osprey-philips-press, skipped where
absent) as one small study, the way a lab's raw folder really comes: two TE 35 spectra
without a T1, one TE 30 spectrum with a NIfTI T1 (skull-stripped, scanner space) and its
metabolite-nulled scan (the protocol's measured macromolecule spectrum), one participant per
group, the files named by absolute path where they are
(data.allow_outside_raw). The whole workflow runs: two protocols in one run (one basis
each), tissue fractions from the T1 for one scan and from the default for the others (and
every row says which), the voxel placed where Osprey's example shows it, statistics that
cannot be estimated reported as skipped, the figures the data allow, and a MRSinMRS table
whose TE, averages and region match the files and the config.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SHARED_REFERENCE, snakemake

sys.path.insert(0, str(ROOT / "bench"))
from _osprey import anchors, measured_ratios, write_study  # noqa: E402
from bench_real_exports import report  # noqa: E402

pytestmark = pytest.mark.slow
OSPREY = SHARED_REFERENCE / "osprey-philips-press"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not OSPREY.is_dir():
        pytest.skip(f"{OSPREY} is absent (the real Philips exports are not shipped)")
    base = tmp_path_factory.mktemp("real_study")
    study = write_study(base, OSPREY)
    proc = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(base / "run"), "--configfile",
                     str(ROOT / "config" / "config.yaml"), str(study),
                     "--cores", "2", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return base / "run" / "results"


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False)


def test_two_protocols_each_with_its_own_basis_and_te(run):
    met = _table(run / "tables" / "metabolites.tsv")
    proto = met.drop_duplicates(["participant_id", "film"]).set_index(
        ["participant_id", "film"])
    assert proto.loc[("sub-hc01", "neutral"), "protocol"] == "press_te35"
    assert proto.loc[("sub-hc01", "cocaine"), "te_ms"] == 35
    assert proto.loc[("sub-cud01", "neutral"), "protocol"] == "press_te30_127p8"
    assert proto.loc[("sub-cud01", "neutral"), "te_ms"] == 30
    for name in ("press_te30_127p8", "press_te35"):
        assert (run / "basis" / name / "NAA.json").is_file()
    # TE 30 has its measured MM spectrum (the metabolite-nulled scan), TE 35 the default
    assert (run / "basis" / "press_te30_127p8" / "MM.json").is_file()
    assert not (run / "basis" / "press_te30_127p8" / "MM09.json").exists()
    assert (run / "basis" / "press_te35" / "MM09.json").is_file()
    assert (run / "basis" / "press_te30_127p8_mm.png").is_file()
    te35_fit = json.loads(next((run / "fit" / "sub-hc01").rglob("*neutral_desc-fit.json"))
                          .read_text())
    assert te35_fit["extra"]["protocol"]["te_ms"] == 35
    assert te35_fit["extra"]["inputs"]["basis"] == "results/basis/press_te35"


def test_the_measured_mm_is_phased_and_the_te30_fit_uses_it(run):
    """Osprey's TI 600 ms scan comes out of preprocessing 84 degrees out of phase; the cleaned
    MM spectrum is phased (FID(0) real) and the TE 30 fit gives it its part (unphased, the
    spline fit gave it amplitude 0)."""
    info = json.loads((run / "basis" / "press_te30_127p8_mm.json").read_text())
    assert abs(info["phase_correction_deg"]) > 45
    fit = json.loads(next((run / "fit" / "sub-cud01").rglob("*neutral_desc-fit.json"))
                     .read_text())
    assert fit["metabolites"]["MM"]["amplitude"] > 0.1 * fit["combined"]["tCr"]["amplitude"]


def test_tissue_from_the_nifti_t1_or_the_default_and_rows_say_which(run):
    met = _table(run / "tables" / "metabolites.tsv")
    src = met.drop_duplicates(["participant_id", "film"]).set_index(
        ["participant_id", "film"]).tissue_source
    assert src[("sub-cud01", "neutral")] == "T1"
    assert src[("sub-hc01", "neutral")] == src[("sub-hc01", "cocaine")] == "default"
    hc = met[met.participant_id == "sub-hc01"]
    assert (hc.f_gm == 1.0).all() and (hc.f_csf == 0.0).all()
    assert (run / "qc" / "sub-hc01_desc-voxel.jpg").is_file()  # says: no T1


def test_voxel_lies_in_the_posterior_cingulate_region(run):
    """The MRS voxel from the NIfTI-MRS affine on the NIfTI T1 in its own world coordinates:
    inside the brain, and (through the T1's registration to MNI152) on the midline in the
    posterior cingulate / precuneus, where Osprey's example places it."""
    tissue = json.loads(next((run / "segment" / "sub-cud01").rglob("*_desc-tissue.json"))
                        .read_text())
    assert tissue["mrsflow"]["brain_fraction"] > 0.99
    assert 0.4 < tissue["GM"] < 0.8 and tissue["CSF"] < 0.2
    xfm = json.loads(next((run / "segment" / "sub-cud01").rglob("*_xfm.json")).read_text())
    centre = np.array([*tissue["mrsflow"]["voxel_centre_world_mm"], 1.0])
    x, y, z = (np.array(xfm["matrix"]) @ centre)[:3]
    assert abs(x) < 10 and -70 < y < -35 and 15 < z < 50, (x, y, z)


def test_statistics_skipped_with_reasons_and_figures_drawn(run):
    models = _table(run / "stats" / "all_models.tsv")
    skipped = models[models.section == "skipped"]
    assert len(skipped) and (skipped.note != "").all()
    assert "skipped" in (run / "stats" / "summary.md").read_text()
    for n in (1, 2, 3):
        assert (run / "figures" / f"fig{n}.pdf").stat().st_size > 1000


def test_mrsinmrs_matches_the_files_and_the_config(run):
    rows = _table(run / "report" / "mrsinmrs.tsv")
    v = dict(zip(rows["item"], rows["value"], strict=True))
    assert v["Echo time (TE)"].startswith("30 ms (1 scan); 35 ms (2 scans)")
    assert v["Number of transients (averages) per spectrum"] == (
        "48 (raw header) (1 scan); 64 (raw header) (2 scans)")
    assert v["Volume of interest location"].startswith("posterior cingulate cortex;")
    assert "press_te35: TE1/TE2 12/23 ms" in v["Pulse sequence"]


def test_ratios_beside_lcmodel_and_fsl_mrs(run, capsys):
    """bench/bench_real_exports.py's comparison on this run (printed). What holds today
    (README, Accuracy; the spline baseline): every fit passes QC; Glu/tCr and tCho/tCr of all
    three spectra lie inside what LCModel and FSL-MRS report or within 10 % of the nearer
    (with a quadratic baseline Glu/tCr of the TE 35 pair read 0.72 and 2.02); tNAA/tCr of two
    (TE 35 sub-01 reads 1.18, 1.4 % beyond the 10 % margin); the TE 30 spectrum, fitted with
    its measured MM, has Glu/tCr inside. Ins/tCr does not yet (issue 20)."""
    measured = measured_ratios(run / "tables" / "metabolites.tsv")
    with capsys.disabled():
        hits = report(measured, anchors(OSPREY))
    assert (measured.qc_pass.astype(str) == "True").all()
    assert hits["Glu"] == 3 and hits["tCho"] == 3 and hits["tNAA"] >= 2
    te30 = measured.set_index("spectrum").loc["MM-data sub-01"]
    table = anchors(OSPREY)
    lo, hi = table[table.spectrum == "MM-data sub-01"].Glu.agg(["min", "max"])
    assert lo <= te30.Glu <= hi
