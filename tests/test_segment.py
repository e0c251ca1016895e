"""T1 segmentation and MRS-voxel tissue fractions, checked against the twin's planted truth."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi
from test_anatomy import ACCUMBENS_MNI, LOWRES, convert, index_map

from mrsflow import segment as S
from mrsflow.errors import InputError
from mrsflow.twin import anatomy as A

TOL = 0.05  # absolute tolerance on each tissue fraction (the study's requirement)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


def planted_labels(anat, src=None) -> np.ndarray:
    """Hard planted labels (0 outside, 1 CSF, 2 GM, 3 WM), optionally on another grid."""
    take = (lambda x: x) if src is None else (lambda x: x.ravel()[src])
    lab = np.argmax(np.stack([take(anat.csf), take(anat.gm), take(anat.wm)]), axis=0) + 1
    lab[~take(anat.brain_mask)] = 0
    return lab


def mrs_affine(anat, centre_mni, size_mm, angles_deg) -> np.ndarray:
    return A.plan_mrs_voxel(anat, centre_mni, size_mm, angles_deg)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A full-resolution twin head through the real path: DICOM -> dcm2niix -> run_segment."""
    tmp = tmp_path_factory.mktemp("subject")
    anat = A.make_subject_anatomy(np.random.default_rng(11))
    A.write_t1_dicom(tmp / "dicom", anat.t1, anat.affine, patient_id="sub-hc01",
                     study_uid_seed=11)
    img = convert(tmp / "dicom", tmp, "sub-hc01_T1w")
    t1_nii = tmp / "sub-hc01_T1w.nii"
    paths = S.run_segment(t1_nii, tmp / "seg", backend="builtin")
    seg, seg_aff = S.load_segmentation(paths)
    src = np.ravel_multi_index(tuple(index_map(anat.affine, img)), anat.t1.shape).reshape(
        img.shape
    )
    return {"anat": anat, "img": img, "t1_nii": t1_nii, "paths": paths, "seg": seg,
            "src": src, "tmp": tmp}


def test_outputs_have_bids_names_and_sum_to_one(subject):
    paths, seg = subject["paths"], subject["seg"]
    assert paths["GM"].name == "sub-hc01_label-GM_probseg.nii.gz"
    assert paths["mask"].name == "sub-hc01_desc-brain_mask.nii.gz"
    tot = seg.gm + seg.wm + seg.csf
    np.testing.assert_allclose(tot[seg.brain_mask], 1.0, atol=1e-4)
    assert np.all(tot[~seg.brain_mask] == 0)
    for t in ("gm", "wm", "csf"):
        m = getattr(seg, t)
        assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 + 1e-6
    assert np.allclose(nib.load(paths["GM"]).affine, subject["img"].affine)


def test_whole_brain_dice_against_planted(subject):
    truth = planted_labels(subject["anat"], subject["src"])
    lab = subject["seg"].labels()
    assert dice(truth == 2, lab == 2) >= 0.85  # GM, the requirement
    assert dice(truth == 3, lab == 3) >= 0.85  # WM
    assert dice(truth > 0, lab > 0) >= 0.95  # brain mask


def test_brain_extraction_sanity(subject):
    anat, seg, src = subject["anat"], subject["seg"], subject["src"]
    vox_ml = abs(np.linalg.det(subject["img"].affine[:3, :3])) / 1000.0
    assert 1000 <= seg.brain_mask.sum() * vox_ml <= 1800
    # the skull and scalp shell (head tissue > 3 mm outside the planted brain) is excluded
    brain = anat.brain_mask.ravel()[src]
    head = anat.head_mask.ravel()[src]
    shell = head & (ndi.distance_transform_edt(~brain) > 3)
    assert np.sum(seg.brain_mask & shell) < 0.002 * np.sum(shell)
    assert np.sum(seg.brain_mask & ~head) == 0


def test_voxel_fractions_through_the_workflow_step(subject):
    anat, tmp = subject["anat"], subject["tmp"]
    aff = mrs_affine(anat, ACCUMBENS_MNI[0], (12.0, 10.0, 14.0), (10.0, -15.0, 5.0))
    # a NIfTI-MRS-like file (NIfTI-2, complex FID along dim 4) carrying the voxel affine
    mrs = nib.Nifti2Image(np.zeros((1, 1, 1, 64), np.complex64), aff)
    nib.save(mrs, tmp / "svs.nii.gz")
    out_json, out_png = tmp / "frac" / "seg.json", tmp / "frac" / "overlay.png"
    fr = S.run_voxel_fractions(subject["t1_nii"], subject["paths"], tmp / "svs.nii.gz",
                               out_json, out_png)
    truth = A.voxel_truth_fractions(anat, aff)
    for t in ("gm", "wm", "csf"):
        assert abs(fr[f"f_{t}"] - truth[f"f_{t}"]) < TOL, (t, fr, truth)
    doc = json.loads(out_json.read_text())
    assert {"CSF", "GM", "WM"} <= set(doc)
    assert abs(doc["CSF"] + doc["GM"] + doc["WM"] - 1) < 1e-6  # FSL-MRS requires sum 1
    assert doc["mrsflow"]["brain_fraction"] > 0.99
    assert out_png.stat().st_size > 10_000
    assert abs(fr["covered_volume_mm3"] / (12 * 10 * 14) - 1) < 0.02


def test_nifti_t1_gives_the_fractions_of_its_dicom_series(subject, tmp_path):
    """A T1 given as a NIfTI file (what BIDS datasets hold) is used in its own world
    coordinates: made by dcm2niix from the DICOM series, it gives the very fractions the
    series gives; and a scan without a T1 gets the fractions it is given, marked so."""
    from mrsflow import convert

    anat = subject["anat"]
    aff = mrs_affine(anat, ACCUMBENS_MNI[0], (10.0, 12.0, 10.0), (0.0, 15.0, 0.0))
    nib.save(nib.Nifti2Image(np.zeros((1, 1, 1, 64), np.complex64), aff), tmp_path / "svs.nii.gz")
    from_dicom = convert.convert_t1(subject["tmp"] / "dicom", tmp_path / "a" / "T1w.nii.gz")
    nifti = tmp_path / "bids" / "sub-hc01_T1w.nii"  # an uncompressed NIfTI as a lab has it
    nifti.parent.mkdir()
    nifti.write_bytes(gzip.decompress(from_dicom.read_bytes()))
    from_nifti = convert.convert_t1(nifti, tmp_path / "b" / "T1w.nii.gz")
    a, b = nib.load(from_dicom), nib.load(from_nifti)
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    fractions = []
    for t1, tag in ((from_dicom, "a"), (from_nifti, "b")):
        plan = {"t1": [{"t1": str(t1), "out_dir": str(tmp_path / tag / "seg")}],
                "voxels": [{"t1": str(t1), "mrs": str(tmp_path / "svs.nii.gz"),
                            "json": str(tmp_path / tag / "tissue.json"), "label": "x"},
                           {"t1": None, "fractions": {"gm": 0.7, "wm": 0.2, "csf": 0.1},
                            "source": "scans.tsv", "mrs": str(tmp_path / "svs.nii.gz"),
                            "json": str(tmp_path / tag / "given.json"), "label": "y"}]}
        S.run_participant(plan, tmp_path / tag / "page.png", backend="builtin")
        fractions.append(json.loads((tmp_path / tag / "tissue.json").read_text()))
        given = json.loads((tmp_path / tag / "given.json").read_text())
        assert (given["GM"], given["WM"], given["CSF"]) == (0.7, 0.2, 0.1)
        assert given["mrsflow"]["tissue_source"] == "scans.tsv"
    assert fractions[0]["mrsflow"]["tissue_source"] == "T1"
    assert {k: fractions[0][k] for k in ("GM", "WM", "CSF")} == {
        k: fractions[1][k] for k in ("GM", "WM", "CSF")}
    truth = A.voxel_truth_fractions(anat, aff)
    assert abs(fractions[1]["GM"] - truth["f_gm"]) < TOL


def test_voxel_outside_brain_is_detected(subject):
    anat, tmp, seg = subject["anat"], subject["tmp"], subject["seg"]
    for mni in ([0.0, 0.0, 115.0], [85.0, -20.0, 10.0]):  # above the vertex, in the scalp
        aff = mrs_affine(anat, np.array(mni), 10.0, (0.0, 0.0, 0.0))
        cov = S.voxel_coverage(seg.gm.shape, subject["img"].affine, aff)
        assert S.tissue_fractions(seg, cov)["brain_fraction"] < 0.05
        nib.save(nib.Nifti2Image(np.zeros((1, 1, 1, 8), np.complex64), aff), tmp / "out.nii.gz")
        with pytest.raises(InputError, match="outside the brain"):
            S.run_voxel_fractions(subject["t1_nii"], subject["paths"], tmp / "out.nii.gz",
                                  tmp / "out.json")


@pytest.mark.parametrize("seed", [21, 22])
def test_voxel_fractions_other_subjects(seed):
    anat = A.make_subject_anatomy(np.random.default_rng(seed))
    seg = S.segment_t1(anat.t1, anat.affine)
    rng = np.random.default_rng(seed)
    for size in (10.0, 15.0, 20.0):
        centre = ACCUMBENS_MNI[0] + rng.normal(0, 2, 3)
        aff = mrs_affine(anat, centre, size, rng.uniform(-20, 20, 3))
        fr = S.tissue_fractions(seg, S.voxel_coverage(seg.gm.shape, anat.affine, aff))
        truth = A.voxel_truth_fractions(anat, aff)
        for t in ("gm", "wm", "csf"):
            assert abs(fr[f"f_{t}"] - truth[f"f_{t}"]) < TOL, (seed, size, t, fr, truth)


def test_lowres_segmentation_is_deterministic_and_sensible():
    anat = A.make_subject_anatomy(np.random.default_rng(4), LOWRES)
    a = S.segment_t1(anat.t1, anat.affine, seed=0)
    b = S.segment_t1(anat.t1, anat.affine, seed=0)
    for t in ("gm", "wm", "csf", "brain_mask"):
        np.testing.assert_array_equal(getattr(a, t), getattr(b, t))
    truth = planted_labels(anat)
    assert dice(truth == 2, a.labels() == 2) > 0.8
    assert dice(truth > 0, a.brain_mask) > 0.93


@pytest.mark.parametrize("seed", range(6))
def test_coverage_volume_of_oblique_boxes(seed):
    rng = np.random.default_rng(seed)
    t1_aff = np.diag([1.0, 1.0, 1.2, 1.0])
    t1_aff[:3, 3] = [-90.0, -120.0, -100.0]
    mrs = np.eye(4)
    mrs[:3, :3] = A._rotation(rng.uniform(-30, 30, 3)) @ np.diag(rng.uniform(8, 25, 3))
    mrs[:3, 3] = rng.uniform(-20, 20, 3)
    cov = S.voxel_coverage((180, 220, 170), t1_aff, mrs)
    box = abs(np.linalg.det(mrs[:3, :3]))
    assert abs(cov.covered_volume_mm3 / box - 1) < 0.02
    assert np.all((cov.weights > 0) & (cov.weights <= 1))
    idx, w = cov  # unpacks as (indices, weights)
    assert idx.shape == (len(w), 3)


def test_fractions_normalised_and_json_keys(tmp_path):
    shape = (20, 20, 20)
    rng = np.random.default_rng(0)
    p = rng.dirichlet([2, 3, 1], size=shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:18, 2:18, 2:18] = True
    p[~mask] = 0
    seg = S.Segmentation(p[..., 1], p[..., 2], p[..., 0], mask)
    mrs = np.diag([6.0, 5.0, 7.0, 1.0])
    mrs[:3, 3] = [9.5, 10.0, 9.0]
    fr = S.tissue_fractions(seg, S.voxel_coverage(shape, np.eye(4), mrs))
    assert abs(fr["f_gm"] + fr["f_wm"] + fr["f_csf"] - 1) < 1e-9
    assert fr["brain_fraction"] == pytest.approx(1.0)
    path = S.write_fractions_json(tmp_path / "x_segmentation.json", fr, {"backend": "builtin"})
    doc = json.loads(path.read_text())
    assert doc["GM"] == pytest.approx(fr["f_gm"]) and doc["mrsflow"]["backend"] == "builtin"


def test_backend_resolution(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert S.backend("auto") == "builtin"
    with pytest.raises(RuntimeError, match="FSL"):
        S.backend("fsl_fast")
    with pytest.raises(RuntimeError, match="FSL"):
        S.run_fast("t1.nii.gz", "out/fast")
    with pytest.raises(ValueError):
        S.backend("spm")
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/fsl/bin/{name}")
    assert S.backend("auto") == "fsl_fast"


def test_fsl_fast_backend(subject, tmp_path):
    if shutil.which("fast") is None or shutil.which("bet") is None:
        pytest.skip("FSL (bet, fast) is not installed")
    seg = S.run_fast(subject["t1_nii"], tmp_path / "fast")
    truth = planted_labels(subject["anat"], subject["src"])
    assert dice(truth == 2, seg.labels() == 2) >= 0.8


def test_real_t1_sanity_mni152_template():
    """On a real (non-synthetic) T1, the MNI152 template image itself (skull-stripped, so
    brain extraction must keep its zeros out), the builtin segmentation agrees with the
    template's own tissue probability maps."""
    d = A.nilearn_data_dir()

    def load(name):
        img = nib.load(d / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
        return np.asarray(img.dataobj, np.float32), img.affine

    t1, aff = load("t1")
    gm, wm = load("gm")[0] / 255, load("wm")[0] / 255
    brain = t1 > 0
    truth = np.argmax(np.stack([np.clip(brain - gm - wm, 0, 1), gm, wm]), axis=0) + 1
    truth[~brain] = 0
    seg = S.segment_t1(t1, aff)
    assert dice(brain, seg.brain_mask) > 0.97
    assert dice(truth == 2, seg.labels() == 2) > 0.85
    assert dice(truth == 3, seg.labels() == 3) > 0.85
