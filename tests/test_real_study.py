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
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, SHARED_REFERENCE, snakemake

pytestmark = pytest.mark.slow
OSPREY = SHARED_REFERENCE / "osprey-philips-press"
TE35 = "UnEdited/sub-0{n}/ses-01/mrs/sub-0{n}_ses-01_press{ref}/sub-0{n}_PRESS_35_{kind}.sdat"
MMDATA = "UnEdited_with_MM_data/sub-01/ses-01"
SCANS = [
    ("sub-hc01", "neutral", TE35.format(n=1, ref="", kind="act"),
     TE35.format(n=1, ref="-ref", kind="ref"), ""),
    ("sub-hc01", "cocaine", TE35.format(n=2, ref="", kind="act"),
     TE35.format(n=2, ref="-ref", kind="ref"), ""),
    ("sub-cud01", "neutral",
     f"{MMDATA}/mrs/sub-01_ses-01_press/sub-01_ses-01_PRESS_raw-act_noID.SDAT",
     f"{MMDATA}/mrs/sub-01_ses-01_press_ref/sub-01_ses-01_PRESS_raw-ref_noID.SDAT",
     f"{MMDATA}/anat/sub-01_ses-01_T1w_scanner-space_FSL-skull-stripped.nii.gz"),
]
SEQUENCE = {"field_mhz": 127.8, "te1_ms": 12.0, "te2_ms": 18.0, "tr_ms": 2000.0,
            "bandwidth_hz": 2000.0, "points": 2048, "centre_ppm": 4.65}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not OSPREY.is_dir():
        pytest.skip(f"{OSPREY} is absent (the real Philips exports are not shipped)")
    base = tmp_path_factory.mktemp("real_study")
    raw = base / "raw"
    (raw / "phenotype").mkdir(parents=True)
    (raw / "participants.tsv").write_text(
        "participant_id\tgroup\tage\tsex\tcocaine_g_per_week\tcocaine_years\n"
        "sub-hc01\tHC\t30\tF\tn/a\tn/a\nsub-cud01\tCUD\t35\tM\t4.5\t8\n")
    (raw / "sessions.tsv").write_text("participant_id\tsession\tdrug\tperiod\n"
                                      "sub-hc01\tses-1\tnone\t1\nsub-cud01\tses-1\tplacebo\t1\n")
    lines = ["participant_id\tsession\tfilm\tacq\tmrs\twater\tt1w"]
    for pid, film, mrs, water, t1 in SCANS:
        lines.append("\t".join([pid, "ses-1", film, "ws", str(OSPREY / mrs), str(OSPREY / water),
                                str(OSPREY / t1) if t1 else ""]))
    (raw / "scans.tsv").write_text("\n".join(lines) + "\n")
    (raw / "phenotype" / "craving.tsv").write_text(
        "participant_id\tsession\tfilm\ttime\tvas\n" + "".join(
            f"{p}\tses-1\t{f}\t{t}\t{v}\n" for p in ("sub-hc01", "sub-cud01")
            for f, t, v in (("neutral", "pre", 5), ("neutral", "post", 6),
                            ("cocaine", "pre", 5), ("cocaine", "post", 20))))
    inverted = f"{MMDATA}/mrs/sub-01_ses-01_press-inverted{{}}/" \
               "sub-01_ses-01_PRESS-Inverted_TI-600_raw-{}_noID.SDAT"
    mm_scan = {"mrs": str(OSPREY / inverted.format("", "act")),
               "water": str(OSPREY / inverted.format("_ref", "ref"))}
    cfg = {"data": {"source": "sheets", "raw_dir": str(raw), "allow_outside_raw": True},
           # the TE 30 protocol with its metabolite-nulled scan: a measured MM spectrum
           "sequence": {**SEQUENCE, "mm": {"scans": [mm_scan]}},
           "protocols": {"press_te35": {**SEQUENCE, "te2_ms": 23.0}},
           "report": {"voi_location": "posterior cingulate cortex"}}
    (base / "study.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(base / "run"), "--configfile",
                     str(ROOT / "config" / "config.yaml"), str(base / "study.yaml"),
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
