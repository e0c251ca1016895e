"""Affine T1 -> MNI152 registration (mrsflow.register), checked on twin heads.

A twin head is the MNI152 template moved into the scanner by a known subject affine plus a
smooth nonlinear warp (2.5 mm RMS over the FOV), so the true world -> MNI mapping is known
(``SubjectAnatomy.world_to_mni``). An affine cannot undo the nonlinear part; the floor is the
least-squares affine fit of the true mapping (printed as "best affine"). Numbers seen on the
default twin (seed 20260, sub-cud01 / sub-hc03): accumbens error 0.62 / 0.41 mm, RMS over
brain points (10 mm grid) 0.64 / 0.49 mm against a best-affine floor of 0.51 / 0.40 mm,
maximum 1.19 / 1.05 mm, NCC 0.96 / 0.97.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mrsflow import register as R
from mrsflow.errors import InputError
from mrsflow.twin.anatomy import make_subject_anatomy
from mrsflow.twin.design import participant_rng

SEED = 20260
ACCUMBENS_MNI = np.array([[-10.0, 12.0, -8.0]])


def _brain_points(step: int = 10) -> np.ndarray:
    """MNI points (mm) on a step-mm grid inside the template brain mask."""
    tpl = R.mni_template()
    ijk = np.argwhere(tpl.mask[::step, ::step, ::step]).astype(float) * step
    return ijk @ tpl.affine[:3, :3].T + tpl.affine[:3, 3]


@pytest.fixture(scope="module", params=["sub-cud01", "sub-hc03"])
def registered(request, tmp_path_factory):
    pid = request.param
    anat = make_subject_anatomy(participant_rng(SEED, pid, "anatomy"))
    out = tmp_path_factory.mktemp(pid)
    t1 = nib.Nifti1Image(anat.t1, anat.affine)
    mask = nib.Nifti1Image(anat.brain_mask.astype(np.uint8), anat.affine)
    nib.save(t1, out / "t1.nii.gz")
    nib.save(mask, out / "mask.nii.gz")
    # the brain-extracted T1 (t1 x mask) is what the rule registers
    written = R.run_register(out / "t1.nii.gz", out / "mask.nii.gz", out / "xfm.json")
    return pid, anat, R.read_matrix(out / "xfm.json"), written, out


def test_accumbens_maps_to_its_mni_coordinate(registered):
    pid, anat, matrix, _, _ = registered
    world = anat.mni_to_world(ACCUMBENS_MNI)
    err = float(np.linalg.norm(R.apply(matrix, world) - ACCUMBENS_MNI))
    print(f"{pid}: accumbens (-10, 12, -8) mapped with an error of {err:.2f} mm")
    assert err < 3.0


def test_points_across_the_brain_within_a_few_mm(registered):
    pid, anat, matrix, written, _ = registered
    pts = _brain_points()
    world = anat.mni_to_world(pts)
    err = np.linalg.norm(R.apply(matrix, world) - pts, axis=1)
    rms = float(np.sqrt(np.mean(err**2)))
    # the floor: the best affine (least squares) of the true, nonlinear mapping
    x = np.c_[world, np.ones(len(world))]
    coef, *_ = np.linalg.lstsq(x, pts, rcond=None)
    floor = float(np.sqrt(np.mean(np.sum((x @ coef - pts) ** 2, axis=1))))
    print(f"{pid}: {len(pts)} brain points, RMS {rms:.2f} mm, max {err.max():.2f} mm, "
          f"best affine RMS {floor:.2f} mm, NCC {written['similarity']['value']:.3f}")
    assert rms < 4.0
    assert rms < floor + 1.5
    assert err.max() < 8.0


def test_json_contract_and_determinism(registered):
    _, anat, matrix, written, out = registered
    assert written["from"] == "T1w" and written["to"] == R.TEMPLATE_NAME
    assert np.asarray(written["matrix"]).shape == (4, 4)
    assert np.allclose(np.asarray(written["matrix"])[3], [0, 0, 0, 1])
    assert 0.8 < written["similarity"]["value"] <= 1.0
    assert [lv["step_mm"] for lv in written["levels"]] == list(R.LEVELS_MM)
    # again, with the template prepared once by the workflow's mni_template rule
    R.use_prepared_template(R.write_prepared_template(out / "template.npz"))
    try:
        again = R.register_to_mni(out / "t1.nii.gz", out / "mask.nii.gz")
    finally:
        R._PREPARED.clear()
        R._template_level.cache_clear()
        R._template_moments.cache_clear()
    np.testing.assert_allclose(again, matrix, rtol=0, atol=1e-8)
    assert json.loads((out / "xfm.json").read_text()) == written


def test_moments_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 11, 7)) > 0.6
    aff = np.array([[0.9, 0.1, 0, 3], [0, 1.1, 0.2, -4], [0.1, 0, 1.2, 5], [0, 0, 0, 1.0]])
    c, cov = R._moments(mask, aff)
    xyz = np.argwhere(mask) @ aff[:3, :3].T + aff[:3, 3]
    np.testing.assert_allclose(c, xyz.mean(0), atol=1e-10)
    np.testing.assert_allclose(cov, np.cov(xyz.T, bias=True), atol=1e-10)


def test_block_mean_and_its_affine():
    a = np.arange(6 * 4 * 2, dtype=np.float32).reshape(6, 4, 2)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    b, baff = R._block_mean(a, aff, (3, 2, 1))
    assert b.shape == (2, 2, 2)
    assert b[0, 0, 0] == pytest.approx(a[:3, :2, 0].mean())
    # block (0, 0, 0) is centred at index (1, 0.5, 0) of the original grid
    np.testing.assert_allclose(baff @ [0, 0, 0, 1], aff @ [1.0, 0.5, 0.0, 1.0])


def test_inputs_are_checked(tmp_path):
    aff = np.eye(4)
    with pytest.raises(InputError, match="too few"):
        R.register_arrays(np.ones((20, 20, 20)), np.zeros((20, 20, 20)), aff)
    with pytest.raises(InputError, match="differ in shape"):
        R.register_arrays(np.ones((20, 20, 20)), np.ones((20, 20, 21)), aff)
    t1 = nib.Nifti1Image(np.ones((20, 20, 20), np.float32), aff)
    shifted = aff.copy()
    shifted[0, 3] = 5.0
    mask = nib.Nifti1Image(np.ones((20, 20, 20), np.uint8), shifted)
    with pytest.raises(InputError, match="not on the T1's grid"):
        R.register_to_mni(t1, mask)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not a registration JSON"):
        R.read_matrix(tmp_path / "bad.json")
