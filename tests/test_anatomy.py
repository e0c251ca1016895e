"""The twin's synthetic anatomy: determinism, DICOM export, transforms, planted truth."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from mrsflow.twin import anatomy as A

# a coarse grid keeps these tests fast; nothing tested here depends on the resolution
LOWRES = A.AnatomyParams(shape=(96, 120, 128), voxel_mm=2.0)
ACCUMBENS_MNI = np.array([[-10.0, 12.0, -8.0]])


def _dcm2niix() -> str:
    exe = Path(sys.executable).parent / "dcm2niix"
    found = str(exe) if exe.exists() else shutil.which("dcm2niix")
    if found is None:
        pytest.skip("dcm2niix not installed")
    return found


def convert(dicom_dir: Path, out_dir: Path, name: str = "t1") -> nib.Nifti1Image:
    """dcm2niix a DICOM folder into out_dir/name.nii (the same call the workflow makes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [_dcm2niix(), "-z", "n", "-b", "n", "-f", name, "-o", str(out_dir), str(dicom_dir)],
        check=True,
        capture_output=True,
    )
    return nib.load(out_dir / f"{name}.nii")


def index_map(planted_affine: np.ndarray, converted: nib.Nifti1Image) -> np.ndarray:
    """For every voxel of the converted image, the index of the planted voxel at the same
    world position (asserting that the two grids coincide up to axis order and flips)."""
    p = np.linalg.inv(planted_affine) @ converted.affine
    ijk = np.indices(converted.shape[:3]).reshape(3, -1)
    src = p[:3, :3] @ ijk + p[:3, 3:4]
    assert np.allclose(src, np.rint(src), atol=1e-3), "grids are not the same voxel centres"
    return np.rint(src).astype(int)


@pytest.fixture(scope="module")
def lowres():
    return A.make_subject_anatomy(np.random.default_rng(5), LOWRES)


def test_same_seed_same_subject_other_seed_differs():
    a = A.make_subject_anatomy(np.random.default_rng(1), LOWRES)
    b = A.make_subject_anatomy(np.random.default_rng(1), LOWRES)
    c = A.make_subject_anatomy(np.random.default_rng(2), LOWRES)
    for name in ("t1", "gm", "wm", "csf", "brain_mask", "head_mask", "bias", "affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(a.t1, c.t1)
    assert not np.allclose(a.subject_affine, c.subject_affine)
    assert a.t1.dtype == np.float32 and a.gm.dtype == np.float32


def test_planted_maps_are_partial_volumes(lowres):
    tot = lowres.gm + lowres.wm + lowres.csf
    assert min(lowres.gm.min(), lowres.wm.min(), lowres.csf.min()) >= 0.0
    assert tot.max() <= 1.0 + 1e-5
    assert np.all(tot[~lowres.brain_mask] <= 0.5 + 1e-5)
    assert np.median(tot[lowres.brain_mask]) > 0.99
    vol_l = lowres.brain_mask.sum() * 8.0 / 1e6
    assert 1.1 < vol_l < 1.9


def test_mni_to_world_round_trip(lowres):
    rng = np.random.default_rng(0)
    mni = rng.uniform([-60, -90, -40], [60, 60, 70], size=(200, 3))
    world = lowres.mni_to_world(mni)
    np.testing.assert_allclose(lowres.world_to_mni(world), mni, atol=0.1)
    assert np.max(np.abs(lowres.world_to_mni(world) - mni)) < 1e-6
    # the warp is a real nonlinear deformation on top of the affine
    affine_only = world @ np.eye(3) * 0 + A._apply(lowres.subject_affine, mni)
    shift = np.linalg.norm(world - affine_only, axis=1)
    assert 0.3 < shift.mean() < 8.0


def test_contrast_is_t1_like(lowres):
    t1, m = lowres.t1, lowres.brain_mask
    med = {t: np.median(t1[m & (getattr(lowres, t) > 0.9)]) for t in ("csf", "gm", "wm")}
    assert med["csf"] < med["gm"] < med["wm"]
    assert 0.55 < med["gm"] / med["wm"] < 0.8


def test_accumbens_is_grey_matter():
    anat = A.make_subject_anatomy(np.random.default_rng(3))  # at full resolution
    world = anat.mni_to_world(ACCUMBENS_MNI)
    vox = A._apply(np.linalg.inv(anat.affine), world).T
    gm = ndi.map_coordinates(anat.gm, vox, order=1)[0]
    assert gm > 0.5
    # a 10 mm voxel there is GM-rich and entirely in the brain
    mrs = np.diag([10.0, 10.0, 10.0, 1.0])
    mrs[:3, 3] = world[0]
    fr = A.voxel_truth_fractions(anat, mrs)
    assert fr["f_gm"] > 0.6 and fr["f_gm"] > fr["f_wm"] > fr["f_csf"]
    assert abs(fr["f_gm"] + fr["f_wm"] + fr["f_csf"] - 1) < 1e-9
    assert fr["brain_fraction"] > 0.99
    # a planned (head-aligned, angulated) voxel sits at the MNI centre and has its size
    planned = A.plan_mrs_voxel(anat, ACCUMBENS_MNI[0], (10.0, 12.0, 14.0), (10.0, -5.0, 20.0))
    np.testing.assert_allclose(anat.world_to_mni(planned[:3, 3][None])[0], ACCUMBENS_MNI[0],
                               atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(planned[:3, :3], axis=0), [10, 12, 14])
    # a voxel in the air is not in the brain
    mrs[:3, 3] = anat.affine[:3, 3] + 5.0
    assert A.voxel_truth_fractions(anat, mrs)["brain_fraction"] == 0.0


def test_bias_field_and_noise_present(lowres):
    b = lowres.bias[lowres.head_mask]
    assert 0.02 < np.std(np.log(b)) < 0.3
    assert b.max() / b.min() > 1.1
    # background (an 8-voxel corner cube of air) is Rician noise of the stated sigma
    air = lowres.t1[:8, :8, :8]
    assert not lowres.head_mask[:8, :8, :8].any()
    assert air.min() >= 0.0
    expected = lowres.noise_sigma * np.sqrt(np.pi / 2)  # Rayleigh mean
    assert abs(air.mean() / expected - 1) < 0.1
    wm = lowres.brain_mask & (lowres.wm > 0.99)
    assert np.std(lowres.t1[wm] / lowres.bias[wm]) > 0.5 * lowres.noise_sigma


def test_head_has_skull_and_scalp(lowres):
    brain, head = lowres.brain_mask, lowres.head_mask
    assert np.all(head[brain])  # brain inside the head
    # ... strictly: at least ~10 mm of non-brain head tissue around it
    dist_out = ndi.distance_transform_edt(head, sampling=2.0)
    assert np.min(dist_out[brain]) >= 8.0
    # a dark shell (CSF/skull) then a bright scalp (fat) outside the brain
    d = ndi.distance_transform_edt(~brain, sampling=2.0)
    wm_level = np.median(lowres.t1[brain & (lowres.wm > 0.9)])
    shell = head & (d > 3) & (d <= 6)
    scalp = head & (d > 10) & (d <= 13)
    assert np.median(lowres.t1[shell]) < 0.3 * wm_level
    assert np.percentile(lowres.t1[scalp], 90) > 0.8 * wm_level


def _sha(paths):
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def test_dicom_deterministic_and_dcm2niix_round_trip(lowres, tmp_path):
    kw = dict(patient_id="sub-cud01", study_uid_seed=42)
    p1 = A.write_t1_dicom(tmp_path / "a", lowres.t1, lowres.affine, **kw)
    p2 = A.write_t1_dicom(tmp_path / "b", lowres.t1, lowres.affine, **kw)
    assert len(p1) == LOWRES.shape[0]
    assert _sha(p1) == _sha(p2)
    p3 = A.write_t1_dicom(tmp_path / "c", lowres.t1, lowres.affine, patient_id="sub-cud01",
                          study_uid_seed=43)
    assert _sha(p1) != _sha(p3)

    import pydicom

    ds = pydicom.dcmread(p1[0])
    assert ds.SOPClassUID == A.MR_IMAGE_STORAGE and ds.Modality == "MR"
    assert ds.Manufacturer == "Philips" and float(ds.MagneticFieldStrength) == 3
    assert ds.PatientPosition == "HFS" and ds.BitsAllocated == 16
    assert [float(v) for v in ds.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]  # sagittal
    assert ds.StudyInstanceUID == pydicom.dcmread(p2[-1]).StudyInstanceUID

    img = convert(tmp_path / "a", tmp_path / "nii")
    src = index_map(lowres.affine, img)
    # same world coordinates for corresponding voxels (several probes, 0.01 mm)
    for flat in (0, 1234, src.shape[1] // 2, src.shape[1] - 1):
        ijk = np.unravel_index(flat, img.shape)
        w_conv = A._apply(img.affine, np.array([ijk], float))[0]
        w_plant = A._apply(lowres.affine, src[:, flat][None].astype(float))[0]
        np.testing.assert_allclose(w_conv, w_plant, atol=0.01)
    data = np.asarray(img.dataobj, np.float32).ravel()
    planted = lowres.t1[tuple(src)]
    assert np.corrcoef(data, planted)[0, 1] > 0.999


def test_dicom_oblique_anisotropic_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = ndi.gaussian_filter(rng.random((14, 18, 11)).astype(np.float32), 1.5) * 1000
    rot = A._rotation((12.0, -20.0, 7.0))
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.1, 0.9, 2.5])
    aff[:3, 3] = [-8.0, 20.0, 33.0]
    paths = A.write_t1_dicom(tmp_path / "d", vol, aff, patient_id="p", study_uid_seed=1,
                             slice_axis=2)
    assert len(paths) == 11
    img = convert(tmp_path / "d", tmp_path / "n")
    src = index_map(aff, img)
    data = np.asarray(img.dataobj, np.float32).ravel()
    assert np.corrcoef(data, vol[tuple(src)])[0, 1] > 0.999


def test_template_cache_gives_identical_subjects(tmp_path):
    """The twin's prepared-template cache (one job writes it, every participant job loads it)
    changes nothing: the same subject with and without it, byte for byte."""
    import hashlib

    from mrsflow.twin import anatomy as A
    from mrsflow.twin.design import participant_rng

    def digest():
        a = A.make_subject_anatomy(participant_rng(7, "sub-x", "anatomy"))
        return hashlib.sha256(a.t1.tobytes() + a.gm.tobytes()).hexdigest()

    A.use_template_cache(None)
    fresh = digest()
    A.use_template_cache(A.write_template_cache(tmp_path / "tpl.npz"))
    try:
        assert digest() == fresh
    finally:
        A.use_template_cache(None)
