"""The synthetic twin: design, determinism, and raw exports that real converters accept."""

from __future__ import annotations

import copy
import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT

from mrsflow import convert
from mrsflow.basis import Sequence, simulate_basis, write_fsl_basis
from mrsflow.sheets import load_study
from mrsflow.twin import anatomy
from mrsflow.twin.design import participant_rng, scan_sheet, study_design
from mrsflow.twin.generate import write_participant, write_participants, write_sheets


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def basis_dir(cfg, tmp_path_factory):
    seq = cfg["sequence"]
    s = Sequence(
        f0_mhz=seq["field_mhz"],
        te1_ms=seq["te1_ms"],
        te2_ms=seq["te2_ms"],
        dwell_s=1 / seq["bandwidth_hz"],
        npoints=seq["points"],
    )
    fids = simulate_basis(s, cfg["basis"]["metabolites"], cfg["basis"]["macromolecules"])
    out = tmp_path_factory.mktemp("basis")
    write_fsl_basis(out, fids, s)
    return out


def _generate(cfg, basis_dir, root, pid="sub-cud01"):
    raw, truth = root / "raw", root / "truth"
    write_sheets(cfg["twin"], raw)
    write_participant(cfg, pid, raw, truth, basis_dir)
    return raw, truth


@pytest.fixture(scope="module")
def twin_cud01(cfg, basis_dir, tmp_path_factory):
    return _generate(cfg, basis_dir, tmp_path_factory.mktemp("twin"))


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- design ----------------------------------------------------------------------------


def test_design_has_the_papers_shape(cfg):
    d = study_design(cfg["twin"])
    assert (d.participants.group == "CUD").sum() == 26
    assert (d.participants.group == "HC").sum() == 30
    assert len(d.scans) == 164  # 26 x 2 sessions x 2 films + 30 x 2 films
    cud = d.sessions[d.sessions.participant_id.str.startswith("sub-cud")]
    # randomised, balanced crossover: each CUD has one NAC and one placebo session
    assert (cud.groupby("participant_id").drug.apply(sorted).map(tuple) == ("nac", "placebo")).all()
    first = cud[cud.period == 1].drug.value_counts()
    assert first["nac"] == 13 and first["placebo"] == 13
    assert set(d.sessions[d.sessions.participant_id.str.startswith("sub-hc")].drug) == {"none"}
    assert d.craving.shape[0] == len(d.scans) * 2
    cud_part = d.participants[d.participants.group == "CUD"]
    assert cud_part.cocaine_g_per_week.mean() == pytest.approx(5.7, rel=0.3)


def test_design_plants_the_effects(cfg):
    """Large-sample check of the planted effects (n x 40 so sampling noise is small)."""
    big = copy.deepcopy(cfg["twin"])
    big.update(n_cud=26 * 40, n_hc=30 * 40)
    d = study_design(big)
    glu = d.concentrations[d.concentrations.metabolite == "Glu"].merge(d.scans)
    base = glu[(glu.film == "neutral") & (glu.drug != "nac")]
    m = base.groupby("group").conc_molal.mean()
    mean, sd_frac = cfg["twin"]["concentrations_molal"]["Glu"]
    sd_between = mean * sd_frac
    assert (m["HC"] - m["CUD"]) / sd_between == pytest.approx(0.75, abs=0.1)
    wide = glu.pivot_table(
        index=["participant_id", "session", "group", "drug"], columns="film", values="conc_molal"
    ).reset_index()
    wide["pct"] = 100 * (wide.cocaine / wide.neutral - 1)
    by = wide.groupby(["group", "drug"]).pct.mean()
    assert by["CUD", "placebo"] == pytest.approx(5.0, abs=0.5)
    assert by["CUD", "nac"] == pytest.approx(5.0, abs=0.5)  # NAC: no effect planted
    assert by["HC", "none"] == pytest.approx(-1.5, abs=0.5)
    crav = d.craving.pivot_table(
        index=["participant_id", "session", "group", "film"], columns="time", values="vas"
    ).reset_index()
    rise = (crav.post - crav.pre).groupby([crav.group, crav.film]).mean()
    assert rise["CUD", "cocaine"] > 15 and abs(rise["CUD", "neutral"]) < 2
    assert abs(rise["HC", "cocaine"]) < 3


def test_participant_streams_are_order_free():
    a = participant_rng(1, "sub-cud01", "anatomy").random(3)
    b = participant_rng(1, "sub-cud01", "anatomy").random(3)
    c = participant_rng(1, "sub-cud02", "anatomy").random(3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --- files -----------------------------------------------------------------------------


def test_sheets_validate_and_match_the_design(cfg, twin_cud01):
    raw, _ = twin_cud01
    study = load_study(raw, check_files=False)
    d = study_design(cfg["twin"])
    sheet = scan_sheet(d, cfg["twin"])
    pd.testing.assert_frame_equal(
        study.scans[sheet.columns].reset_index(drop=True), sheet, check_dtype=False
    )
    assert set(study.scans.group) == {"CUD", "HC"}


def test_generation_is_deterministic(cfg, basis_dir, twin_cud01, tmp_path):
    """Same seed, same files, also when written by two forked workers next to another
    participant (the workflow's twin_participants job); another seed, other files."""
    raw, truth = twin_cud01
    raw2, truth2 = tmp_path / "again" / "raw", tmp_path / "again" / "truth"
    write_sheets(cfg["twin"], raw2)
    write_participants(cfg, ["sub-hc01", "sub-cud01"], raw2, truth2, basis_dir, workers=2)
    assert (raw2 / "sub-hc01").is_dir()
    assert _digest(raw) == {k: v for k, v in _digest(raw2).items() if "sub-hc01" not in k}
    assert sorted(p.name for p in truth2.iterdir()) == [  # merged tables, no parts left
        "concentrations.tsv", "scans.tsv", "tissue.tsv", "transients.tsv"]
    for table in ("concentrations", "scans", "tissue", "transients"):
        merged = pd.read_csv(truth2 / f"{table}.tsv", sep="\t")
        assert set(merged.participant_id) == {"sub-cud01", "sub-hc01"}
        pd.testing.assert_frame_equal(
            merged[merged.participant_id == "sub-cud01"].reset_index(drop=True),
            pd.read_csv(truth / f"{table}.sub-cud01.tsv", sep="\t"))
    other = copy.deepcopy(cfg)
    other["twin"]["seed"] += 1
    raw3, _ = _generate(other, basis_dir, tmp_path / "other")
    sdat = "sub-cud01/ses-1/mrs/sub-cud01_ses-1_task-neutral_svs.SDAT"
    assert (raw / sdat).read_bytes() != (raw3 / sdat).read_bytes()


def test_spectra_convert_validate_and_sit_on_the_accumbens(cfg, twin_cud01, tmp_path):
    raw, truth = twin_cud01
    tissue = pd.read_csv(truth / "tissue.sub-cud01.tsv", sep="\t").set_index("session")
    t1_nii = convert.convert_t1(
        raw / "sub-cud01/ses-1/anat/sub-cud01_ses-1_T1w", tmp_path / "t1.nii.gz"
    )
    # the converted T1 has the planted geometry (world coordinates, not only a file)
    anat = anatomy.make_subject_anatomy(
        participant_rng(cfg["twin"]["seed"], "sub-cud01", "anatomy")
    )
    img = nib.load(t1_nii)
    corners = np.array([[0, 0, 0], [191, 0, 0], [0, 239, 0], [0, 0, 255], [95, 120, 128]], float)
    world_planted = nib.affines.apply_affine(anat.affine, corners)
    vox_conv = nib.affines.apply_affine(np.linalg.inv(img.affine), world_planted)
    data = np.asanyarray(img.dataobj)
    assert np.allclose(vox_conv, np.round(vox_conv), atol=1e-3)  # lands on voxel centres
    centre = tuple(np.round(vox_conv[-1]).astype(int))
    assert data[centre] == pytest.approx(anat.t1[95, 120, 128], rel=0.01, abs=2)

    scans = pd.read_csv(truth / "scans.sub-cud01.tsv", sep="\t")
    d = study_design(cfg["twin"])
    for s in scans.itertuples():
        name = f"sub-cud01_{s.session}_task-{s.film}_svs"
        out = convert.convert_spectrum(
            raw / f"sub-cud01/{s.session}/mrs/{name}.SDAT", tmp_path / f"{name}.nii.gz", acq="mc"
        )
        convert.validate_nifti_mrs(out)
        mrs = nib.load(out)
        assert mrs.shape == (1, 1, 1, 2048, 2, cfg["twin"]["n_transients"] // 2)
        centre_world = convert.voxel_centre_ras(out)
        planted = tissue.loc[s.session, ["voxel_x", "voxel_y", "voxel_z"]].to_numpy(float)
        assert np.linalg.norm(centre_world - planted) < 1.0
        # ... which is the planted (jittered) accumbens target in this participant's anatomy
        row = d.scans.set_index(["participant_id", "session", "film"]).loc[
            ("sub-cud01", s.session, s.film)
        ]
        target = row[["voxel_mni_x", "voxel_mni_y", "voxel_mni_z"]].to_numpy(float)
        assert np.linalg.norm(anat.world_to_mni(centre_world[None])[0] - target) < 1.0
        # voxel volume as planned (1.2 mL)
        assert abs(np.linalg.det(mrs.affine[:3, :3])) == pytest.approx(1200.0, rel=1e-3)


def test_preprocessing_recovers_the_planted_transients(twin_cud01, tmp_path):
    """Twin SDAT -> spec2nii -> preprocess: per-transient offsets, rejected transients and
    spectral quality against the planted truth (issue 5's acceptance on real exports)."""
    from mrsflow import preprocess

    raw, truth = twin_cud01
    trans = pd.read_csv(truth / "transients.sub-cud01.tsv", sep="\t")
    scans = pd.read_csv(truth / "scans.sub-cud01.tsv", sep="\t")
    for s in scans.itertuples():
        name = f"sub-cud01_{s.session}_task-{s.film}"
        nii = convert.convert_spectrum(
            raw / f"sub-cud01/{s.session}/mrs/{name}_svs.SDAT",
            tmp_path / f"{name}.nii.gz",
            acq="mc",
        )
        out = {
            k: tmp_path / f"{name}_{k}"
            for k in ("m.nii.gz", "w.nii.gz", "qc.json", "t.tsv", "p.png")
        }
        qcd = preprocess.run_preprocess(
            nii,
            out["m.nii.gz"],
            out["w.nii.gz"],
            out["qc.json"],
            out["t.tsv"],
            out["p.png"],
            mode="mc",
        )
        est = pd.read_csv(out["t.tsv"], sep="\t").sort_values("row")
        tru = trans[(trans.session == s.session) & (trans.film == s.film)].sort_values("row")
        ok = ~tru.motion.to_numpy()
        df = est.freq_hz.to_numpy() - tru.freq_hz.to_numpy()
        df -= np.median(df[ok])
        dp = preprocess.wrap_deg(est.phase_deg.to_numpy() - tru.phase_deg.to_numpy())
        dp = preprocess.wrap_deg(dp - np.median(dp[ok]))
        assert np.sqrt(np.mean(df[ok] ** 2)) < 0.5
        assert np.sqrt(np.mean(dp[ok] ** 2)) < 3.0
        planted_bad_pairs = set(tru.pair[tru.motion])
        rejected_pairs = set(est.pair[est.rejected.astype(bool)])
        assert rejected_pairs == planted_bad_pairs
        assert qcd["snr"] == pytest.approx(s.snr, rel=0.10)
        assert qcd["linewidth_naa_hz"] == pytest.approx(s.linewidth_hz, rel=0.10)
        assert qcd["linewidth_water_hz"] == pytest.approx(s.linewidth_water_hz, rel=0.10)
