"""Affine (12 degrees of freedom) registration of a brain-extracted T1 to the MNI152 template.

Used to bring every participant's MRS voxel into one space for the voxel-overlap figure
(``mrsflow.figures``); concentrations never depend on it. Written for this project with
numpy/scipy only (no FSL FLIRT / ANTs / SPM code).

Template
--------
The ICBM 2009a nonlinear symmetric MNI152 T1 template shipped with nilearn
(``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, 1 mm; TemplateFlow name
``MNI152NLin2009aSym``), scaled to a maximum of 1; the brain mask is the template above 0.2,
the definition of ``nilearn.datasets.load_mni152_brain_mask``. The file is read directly
with nibabel: importing ``nilearn.datasets`` (scikit-learn and friends) costs more than the
whole registration.

Model
-----
The transform is estimated in the direction the cost is evaluated, MNI -> subject::

    p = M (x - c_t) + b          x: MNI mm, p: subject world (RAS) mm, c_t: template centroid

and the result reported is its inverse (subject world -> MNI), a 4 x 4 matrix.

Cost: 1 - NCC, the normalised cross-correlation (Pearson correlation) between the template
brain at points x_k of a regular grid covering the template brain mask dilated by one grid
step (so the brain outline counts), and the participant's brain-extracted T1 (T1 x brain
mask, 0 outside) sampled at p(x_k) by trilinear interpolation
(``scipy.ndimage.map_coordinates``, order 1, 0 outside the image). NCC is invariant to the
intensity scale and offset, so the different T1 contrasts of scanner and template do not
matter as long as CSF < GM < WM in both (Hill et al. 2001, Phys Med Biol 46:R1, review of
similarity measures).

Initialisation (moments): centres of mass and second moments of the two brain masks.
Three candidate linear parts are scored at the coarsest level and the best one starts the
optimisation: an isotropic scaling by the cube root of the volume ratio; the symmetric
"recolouring" map C_s^(1/2) C_t^(-1/2) of the covariance matrices; and the principal-axes
rotation (eigenvectors matched in order, signs chosen closest to the identity) times the
per-axis scales. Translation: the subject centre of mass.

Optimisation: a two-level Gaussian pyramid (6 mm then 3 mm grids; both images smoothed to a
FWHM equal to the grid step, the subject first block-averaged to about half the step), each
level minimised over the 12 parameters with L-BFGS-B. Parameters are scaled so that one
unit is about 1 mm of displacement: the 9 entries of M in units of 1/50 (a 50 mm lever
arm), the 3 translations in mm. The gradient is analytic: d(NCC)/d(sample) times the image gradient
(central differences of the smoothed image, interpolated trilinearly) at the sample,
chained through p = M (x - c_t) + b. Deterministic (no random sampling, fixed point sets).

Accuracy on the synthetic twin (heads = the template warped by a subject affine and a smooth
nonlinear field of 2.5 mm RMS, so the truth is known): the accumbens (MNI -10, 12, -8) lands
within 0.4-0.8 mm of its coordinate and points across the brain within 0.5-0.65 mm RMS
(max ~1.2 mm), against 0.4-0.5 mm for the best possible affine (tests/test_register.py,
bench/bench_register.py). Through the workflow (dcm2niix T1, the segmentation's brain mask,
the converted MRS affine) the planted MNI voxel centres of a 6 + 6 twin were recovered with
a median error of 0.5 mm (max 1.0 mm, 36 scans). About 1-2 s per T1 on one core, plus
~0.5 s to prepare the template per process.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy import optimize

from mrsflow.errors import InputError
from mrsflow.mni import nilearn_data_dir

TEMPLATE_NAME = "MNI152NLin2009aSym"
TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_MASK_THRESHOLD = 0.2  # nilearn.datasets.load_mni152_brain_mask default
LEVELS_MM = (6.0, 3.0)
LEVER_MM = 50.0  # parameter scaling of the linear part (1 unit ~ 1 mm at 50 mm)
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


# ---------------------------------------------------------------------------------------
# template


@dataclass(frozen=True)
class Template:
    data: np.ndarray  # float32, max 1, 0 outside the brain
    mask: np.ndarray  # bool
    affine: np.ndarray  # vox -> MNI mm


@lru_cache(maxsize=1)
def mni_template() -> Template:
    """The MNI152 2009a template (1 mm), scaled to max 1, and its brain mask (> 0.2)."""
    img = nib.load(nilearn_data_dir() / TEMPLATE_FILE)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data /= float(data.max())
    mask = data > TEMPLATE_MASK_THRESHOLD
    return Template(np.where(mask, data, 0.0).astype(np.float32), mask, img.affine.copy())


# ---------------------------------------------------------------------------------------
# small helpers


def _apply(aff: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    return xyz @ aff[:3, :3].T + aff[:3, 3]


def _block_mean(a: np.ndarray, aff: np.ndarray, f: tuple[int, int, int]):
    """Average over f-voxel blocks; returns the array and its affine (block centres)."""
    if f == (1, 1, 1):
        return a.astype(np.float32), aff
    n = [s // k for s, k in zip(a.shape, f, strict=True)]
    a = np.ascontiguousarray(a[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]], np.float32)
    # one axis at a time, each reduction over a middle axis of a contiguous array (fast)
    a = a.reshape(n[0], f[0], -1).sum(axis=1)
    a = a.reshape(n[0], n[1], f[1], -1).sum(axis=2)
    a = a.reshape(n[0], n[1], n[2], f[2]).sum(axis=3) / np.float32(f[0] * f[1] * f[2])
    scale = np.diag([*f, 1.0])
    scale[:3, 3] = (np.asarray(f) - 1) / 2.0
    return a, aff @ scale


def _smooth(a: np.ndarray, aff: np.ndarray, fwhm_mm: float, already_mm: np.ndarray):
    """Gaussian smoothing to a total FWHM of ``fwhm_mm`` given the box width already
    applied per axis (``already_mm``; a box of width w has variance w^2 / 12)."""
    vox = np.linalg.norm(aff[:3, :3], axis=0)
    s2 = (fwhm_mm * _FWHM_TO_SIGMA) ** 2 - np.asarray(already_mm) ** 2 / 12.0
    sigma = np.sqrt(np.clip(s2, 0.0, None)) / vox
    return ndi.gaussian_filter(a, sigma, mode="constant", truncate=3.0).astype(np.float32)


def _moments(mask: np.ndarray, aff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (mm) and covariance (mm^2) of a binary mask's voxel centres, from its
    three 2D projections (no list of voxel indices: a 1 mm head has ~10^6 of them)."""
    proj = {ax: np.count_nonzero(mask, axis=ax).astype(np.float64) for ax in range(3)}
    n = float(proj[2].sum())
    i, j, k = (np.arange(s, dtype=np.float64) for s in mask.shape)
    pij, pik, pjk = proj[2], proj[1], proj[0]  # (i, j), (i, k), (j, k)
    mean = np.array([i @ pij.sum(1), j @ pij.sum(0), k @ pik.sum(0)]) / n
    sii = (i**2) @ pij.sum(1) / n
    sjj = (j**2) @ pij.sum(0) / n
    skk = (k**2) @ pik.sum(0) / n
    sij = i @ pij @ j / n
    sik = i @ pik @ k / n
    sjk = j @ pjk @ k / n
    second = np.array([[sii, sij, sik], [sij, sjj, sjk], [sik, sjk, skk]])
    cov_idx = second - np.outer(mean, mean)
    lin = aff[:3, :3]
    return lin @ mean + aff[:3, 3], lin @ cov_idx @ lin.T


def _sqrtm_sym(c: np.ndarray, power: float) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * w**power) @ v.T


def _initial_candidates(c_t: np.ndarray, c_s: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Linear parts (MNI -> subject) to try first (see module docstring)."""
    iso = (np.linalg.det(c_s) / np.linalg.det(c_t)) ** (1.0 / 6.0)
    recolour = _sqrtm_sym(c_s, 0.5) @ _sqrtm_sym(c_t, -0.5)
    w_t, v_t = np.linalg.eigh(c_t)
    w_s, v_s = np.linalg.eigh(c_s)
    v_s = v_s * np.sign(np.sum(v_s * v_t, axis=0))  # matched axes point the same way
    rot = v_s @ v_t.T
    if np.linalg.det(rot) < 0:  # pragma: no cover - only with mirrored inputs
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    principal = v_s @ np.diag(np.sqrt(w_s / w_t)) @ v_t.T
    principal = rot if not np.all(np.isfinite(principal)) else principal
    return [("isotropic", np.eye(3) * iso), ("moments", recolour), ("principal_axes", principal)]


# ---------------------------------------------------------------------------------------
# one pyramid level


@dataclass
class _Level:
    step_mm: float
    y: np.ndarray  # (n, 3) template sample points minus the template centroid, mm
    a: np.ndarray  # (n,) template values, mean removed
    a_norm: float
    img: np.ndarray  # subject brain, smoothed, on its (block-averaged) grid
    grad: tuple[np.ndarray, np.ndarray, np.ndarray]  # d img / d index
    w2i: np.ndarray  # subject world -> index of img

    def sample(self, m: np.ndarray, b: np.ndarray, with_grad: bool):
        p = self.y @ m.T + b
        idx = (p @ self.w2i[:3, :3].T + self.w2i[:3, 3]).T
        g = ndi.map_coordinates(self.img, idx, order=1, mode="constant", cval=0.0)
        if not with_grad:
            return g.astype(np.float64), None
        gi = np.stack(
            [ndi.map_coordinates(d, idx, order=1, mode="constant", cval=0.0) for d in self.grad],
            axis=1,
        ).astype(np.float64)
        return g.astype(np.float64), gi @ self.w2i[:3, :3]  # d g / d p (world mm)

    def ncc(self, m: np.ndarray, b: np.ndarray) -> float:
        g, _ = self.sample(m, b, False)
        bc = g - g.mean()
        nb = float(np.sqrt(bc @ bc))
        return float(self.a @ bc) / (self.a_norm * nb) if nb > 0 else 0.0

    def cost_grad(self, m: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """1 - NCC and its gradient with respect to M (3 x 3) and b (3)."""
        g, dgdp = self.sample(m, b, True)
        bc = g - g.mean()
        nb = float(np.sqrt(bc @ bc))
        if nb == 0:
            return 1.0, np.zeros((3, 3)), np.zeros(3)
        r = float(self.a @ bc) / (self.a_norm * nb)
        drdg = self.a / (self.a_norm * nb) - r * bc / nb**2
        dcdp = -drdg[:, None] * dgdp  # (n, 3)
        return 1.0 - r, dcdp.T @ self.y, dcdp.sum(axis=0)


#: the template as registration uses it, loaded by :func:`use_prepared_template`
_PREPARED: dict[str, np.ndarray] = {}


@lru_cache(maxsize=4)
def _template_level(step: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Template sample points (MNI mm, minus the template centroid), mean-removed values
    and their norm at one level: the template block-averaged onto a ``step`` grid and
    smoothed to a total FWHM of ``step``, over its brain mask dilated by one grid step."""
    if f"points_{step:g}" in _PREPARED:
        a = _PREPARED[f"values_{step:g}"]
        return _PREPARED[f"points_{step:g}"], a, float(np.sqrt(a @ a))
    tpl = mni_template()
    vox = np.linalg.norm(tpl.affine[:3, :3], axis=0)
    f = tuple(max(1, int(round(step / v))) for v in vox)
    data, aff = _block_mean(tpl.data, tpl.affine, f)
    data = _smooth(data, aff, step, np.asarray(f) * vox)
    inside, _ = _block_mean(tpl.mask.astype(np.float32), tpl.affine, f)
    inside = ndi.binary_dilation(inside > 0.5, iterations=1)
    ijk = np.argwhere(inside).astype(np.float64)
    a = data[inside].astype(np.float64)
    a -= a.mean()
    return _apply(aff, ijk) - _template_moments()[0], a, float(np.sqrt(a @ a))


@lru_cache(maxsize=1)
def _template_moments() -> tuple[np.ndarray, np.ndarray]:
    if "centroid" in _PREPARED:
        return _PREPARED["centroid"], _PREPARED["covariance"]
    tpl = mni_template()
    return _moments(tpl.mask, tpl.affine)


def write_prepared_template(path) -> Path:
    """Prepare the template once for every registration of a run (~0.45 s per process
    otherwise): its brain centroid and covariance and, per level of ``LEVELS_MM``, the
    sample points and mean-removed values; an uncompressed ``.npz``."""
    c_t, cov_t = _template_moments()
    arrays = {"levels_mm": np.asarray(LEVELS_MM), "centroid": c_t, "covariance": cov_t}
    for step in LEVELS_MM:
        y, a, _ = _template_level(step)
        arrays[f"points_{step:g}"], arrays[f"values_{step:g}"] = y, a
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)
    return path


def use_prepared_template(path) -> None:
    """Use :func:`write_prepared_template`'s file in this process (same numbers, exactly)."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a prepared MNI template ({err})") from err
    if tuple(arrays.get("levels_mm", ())) != LEVELS_MM:
        raise InputError(f"{path}: prepared for levels {arrays.get('levels_mm')} mm, this "
                         f"version registers on {LEVELS_MM} mm; delete it to rebuild")
    _PREPARED.clear()
    _PREPARED.update(arrays)
    _template_level.cache_clear()
    _template_moments.cache_clear()


def _subject_level(brain: np.ndarray, aff: np.ndarray, step: float):
    vox = np.linalg.norm(aff[:3, :3], axis=0)
    f = tuple(max(1, int(round(step / 2.0 / v))) for v in vox)
    img, aff_b = _block_mean(brain, aff, f)
    img = _smooth(img, aff_b, step, np.asarray(f) * vox)
    grad = tuple(np.ascontiguousarray(g, dtype=np.float32) for g in np.gradient(img))
    return img, grad, np.linalg.inv(aff_b)


# ---------------------------------------------------------------------------------------
# registration


def _as_image(obj) -> nib.spatialimages.SpatialImage:
    if isinstance(obj, (str, Path)):
        try:
            return nib.load(str(obj))
        except Exception as err:  # nibabel raises several types for corrupt files
            raise InputError(f"{obj}: cannot read NIfTI ({err})") from err
    return obj


def register_arrays(t1: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> dict:
    """Register the brain ``t1 * mask`` (arrays on the grid ``affine``, vox -> world mm) to
    the MNI152 template. Returns a dict with ``matrix`` (4 x 4 subject world -> MNI mm),
    ``similarity`` (NCC at the finest level) and per-level diagnostics."""
    t1 = np.asarray(t1)
    mask = np.asarray(mask) > 0.5
    if t1.shape[:3] != mask.shape[:3]:
        raise InputError(f"T1 {t1.shape} and brain mask {mask.shape} differ in shape")
    if mask.sum() < 1000:
        raise InputError(f"brain mask has {int(mask.sum())} voxels; too few to register")
    t1 = t1.reshape(t1.shape[:3])
    affine = np.asarray(affine, float)

    # crop the subject to the mask's bounding box (+ a margin for the smoothing)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    margin = np.ceil(2.0 * max(LEVELS_MM) / vox).astype(int)
    span = [np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax)))
            for ax in range(3)]
    lo = np.maximum([s[0] - m for s, m in zip(span, margin, strict=True)], 0)
    hi = np.minimum([s[-1] + m + 1 for s, m in zip(span, margin, strict=True)], mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    brain = np.where(mask[box], t1[box], 0.0).astype(np.float32)
    scale = float(np.percentile(brain[mask[box]], 99.0))
    if not scale > 0:
        raise InputError("the T1 is zero inside the brain mask")
    brain /= scale
    shift = np.eye(4)
    shift[:3, 3] = lo
    aff_c = affine @ shift

    c_t, cov_t = _template_moments()
    c_s, cov_s = _moments(mask[box], aff_c)

    levels = []
    for step in LEVELS_MM:
        y, a, a_norm = _template_level(step)
        img, grad, w2i = _subject_level(brain, aff_c, step)
        levels.append(_Level(step, y, a, a_norm, img, grad, w2i))

    # initialisation: best of the moment-based candidates at the coarsest level
    b0 = c_s.copy()
    cands = _initial_candidates(cov_t, cov_s)
    scores = [levels[0].ncc(m, b0) for _, m in cands]
    best = int(np.argmax(scores))
    m0 = cands[best][1]
    info = {
        "initial": {"chosen": cands[best][0],
                    "ncc": {name: s for (name, _), s in zip(cands, scores, strict=True)}},
        "levels": [],
    }

    for lev in levels:
        def fun(theta, lev=lev, m0=m0, b0=b0):
            m = m0 + theta[:9].reshape(3, 3) / LEVER_MM
            b = b0 + theta[9:]
            c, gm, gb = lev.cost_grad(m, b)
            return c, np.concatenate([gm.ravel() / LEVER_MM, gb])

        res = optimize.minimize(
            fun, np.zeros(12), jac=True, method="L-BFGS-B",
            options={"maxiter": 200, "ftol": 1e-9, "gtol": 1e-6, "maxcor": 20},
        )
        m0 = m0 + res.x[:9].reshape(3, 3) / LEVER_MM
        b0 = b0 + res.x[9:]
        info["levels"].append({
            "step_mm": lev.step_mm, "n_points": int(len(lev.y)), "ncc": 1.0 - float(res.fun),
            "iterations": int(res.nit), "evaluations": int(res.nfev),
            "message": str(res.message),
        })

    # MNI -> subject: p = m0 (x - c_t) + b0 ; its inverse is the result
    fwd = np.eye(4)
    fwd[:3, :3] = m0
    fwd[:3, 3] = b0 - m0 @ c_t
    matrix = np.linalg.inv(fwd)
    return {
        "matrix": matrix,
        "similarity": info["levels"][-1]["ncc"],
        **info,
    }


def register_to_mni(t1_nii, mask_nii) -> np.ndarray:
    """4 x 4 affine from the participant's world (scanner RAS mm of ``t1_nii``) to MNI mm,
    estimated from the brain ``t1 * mask``. Arguments: paths or nibabel images."""
    return _register(t1_nii, mask_nii)["matrix"]


def _register(t1_nii, mask_nii) -> dict:
    t1, mask = _as_image(t1_nii), _as_image(mask_nii)
    if not np.allclose(t1.affine, mask.affine, atol=1e-3):
        raise InputError(f"{mask.get_filename()}: brain mask is not on the T1's grid")
    return register_arrays(np.asarray(t1.dataobj, np.float32), np.asarray(mask.dataobj),
                           t1.affine)


def apply(matrix: np.ndarray, xyz) -> np.ndarray:
    """Apply a 4 x 4 affine to points (n, 3)."""
    return _apply(np.asarray(matrix, float), np.atleast_2d(np.asarray(xyz, float)))


def _rounded(obj, digits: int = 8):
    """JSON-ready copy with floats rounded to ``digits`` significant digits."""
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(f"{float(obj):.{digits}g}")
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def run_register(t1_nii, mask_nii, out_json, *, images=None) -> dict:
    """Register and write the JSON: ``matrix`` (4 x 4, subject world RAS mm -> MNI mm, row
    major), ``from``/``to`` spaces, the template, ``similarity`` (NCC) and diagnostics.
    ``images``: the (T1, mask) of those files if already loaded. Returns the dict as
    written."""
    r = _register(*(images if images is not None else (t1_nii, mask_nii)))
    out = {
        "from": "T1w",
        "to": TEMPLATE_NAME,
        "description": "4x4 affine mapping subject world (scanner RAS, mm) to MNI152 mm",
        "matrix": _rounded(r["matrix"].tolist(), 12),
        "similarity": {"metric": "ncc", "value": _rounded(r["similarity"])},
        "template": TEMPLATE_FILE,
        "method": "12-dof affine, 1 - NCC, L-BFGS-B on a 6 mm / 3 mm pyramid (mrsflow.register)",
        "initial": _rounded(r["initial"]),
        "levels": _rounded(r["levels"]),
        "inputs": {"t1": str(t1_nii), "mask": str(mask_nii)},
    }
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


def read_matrix(path) -> np.ndarray:
    """The 4 x 4 subject-world -> MNI matrix of a JSON written by :func:`run_register`."""
    try:
        d = json.loads(Path(path).read_text())
        m = np.asarray(d["matrix"], float)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{path}: not a registration JSON ({err})") from err
    if m.shape != (4, 4):
        raise InputError(f"{path}: matrix must be 4 x 4, got {m.shape}")
    return m
