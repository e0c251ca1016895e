"""T1 tissue segmentation and MRS-voxel tissue fractions.

Two backends produce partial-volume (PVE) maps of CSF, GM and WM from a T1-weighted image:

``fsl_fast``
    FSL's ``bet`` then ``fast -t 1 -n 3`` (Zhang, Brady & Smith 2001, IEEE TMI 20:45), used
    when FSL is installed (``fast`` on PATH). For a T1 image FAST writes ``pve_0`` = CSF,
    ``pve_1`` = GM, ``pve_2`` = WM.
``builtin``
    A pip-only implementation (numpy/scipy) of the same family of models, written for this
    project; no FSL/ANTs/SPM code is used or copied. Steps:

    1. Brain extraction (morphological, on a ~2 mm copy of the image): Otsu's threshold of
       the whole image separates the dark group (air, skull, CSF) from tissue; the tissue
       mask is eroded by 4 mm to cut the thin bridges between brain and scalp/neck through
       the skull, the largest connected component is kept and grown back by geodesic
       dilation inside the tissue mask, then holes (ventricles) are filled and an 8 mm
       closing adds the sulcal and cisternal CSF (4 mm lost a third of the basal cisterns,
       -0.03 CSF in a 20 mm accumbens voxel). An already skull-stripped image (> 20 % exact zeros)
       keeps its zeros out of the mask. This needs no template and works on any T1 with a
       dark skull between brain and scalp (the twin's heads, the usual adult 3D T1); it is
       cruder than BET on difficult images (neck or eye tissue touching the brain).
    2. Bias-field correction in the spirit of Wells et al. 1996 (IEEE TMI 15:429) and Van
       Leemput et al. 1999 (IEEE TMI 18:885): log intensity = smooth 3rd-order polynomial of
       position + a log mean per class, fitted by trimmed least squares to the interiors
       (voxels whose six neighbours are of the same class) of GM and WM, alternated with
       the tissue model below. Fitting both classes together matters: a WM-only fit pulls
       partial-volume voxels into the field where WM is thin and feeds back on itself
       (a 4 % field error near the accumbens on twin heads, < 0.5 % with both classes).
    3. A partial-volume Gaussian mixture fitted by EM on the histogram of the corrected
       brain intensities (the mixel model of Santago & Gage 1993, IEEE TMI 12:566; Shattuck
       et al. 2001, NeuroImage 13:856; Tohka et al. 2004, NeuroImage 23:84): pure CSF, GM
       and WM Gaussians (own mean and variance, initialised by k-means) plus CSF/GM and
       GM/WM mixtures whose intensity is the linear mix of the pure means (variance the
       linear mix of the variances) at 9 discrete fractions, uniform within a mixture.
    4. A Markov random field prior (Potts-like, the model of FAST: Zhang et al. 2001) on the
       five labels {CSF, CSF/GM, GM, GM/WM, WM} over the 6-neighbourhood, solved by
       mean-field iterations (beta = 1.5, 6 iterations); same labels interact with weight
       1, a pure class and a mixture containing it with 0.5, others 0.
    5. PVE maps = posterior mean tissue fractions: sum over components of the posterior times
       the component's (CSF, GM, WM) fractions, so GM + WM + CSF = 1 in the brain mask.

    Not modelled (as in FAST): CSF/WM partial volume, which is read as GM (a thin GM rim at
    the ventricle walls; about -0.02 CSF / +0.02 GM in a 20 mm voxel touching a ventricle).

    Why this model: what the quantification needs is the volume fraction of each tissue in
    the MRS voxel, i.e. the *average* of per-voxel fractions. A linear-mixing (mixel) model
    is the physics of partial volume in the image; posterior-mean fractions under a prior
    that includes pure and mixed voxels stay unbiased when averaged (unlike unmixing each
    voxel independently, where noise pushes pure voxels into mixtures, or hard labels, which
    round every voxel), and the MRF suppresses noise-driven label flips as FAST does.

Voxel fractions: the MRS box (NIfTI-MRS affine, index box [-0.5, 0.5]^3, possibly oblique)
is rasterised onto the T1 grid by supersampling each T1 voxel near the box (``voxel_coverage``)
and the PVE maps are averaged with the covered fractions as weights (``tissue_fractions``).
The JSON written by ``write_fractions_json`` has FSL-MRS's keys ``"CSF"``, ``"GM"``, ``"WM"``
(as written by FSL-MRS ``svs_segment`` and read by ``fsl_mrs --tissue_frac``, which requires
these three keys to be present and sum to 1 and ignores others); our extra fields live under
``"mrsflow"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from mrsflow.errors import InputError

TISSUES = ("csf", "gm", "wm")
FSL_KEYS = {"csf": "CSF", "gm": "GM", "wm": "WM"}
MIN_BRAIN_FRACTION = 0.5  # below this the MRS voxel is reported as outside the brain


@dataclass
class Segmentation:
    """Partial-volume maps on the T1 grid (float32 in [0, 1], GM + WM + CSF = 1 inside the
    brain mask, 0 outside) and the brain mask (bool)."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    bias: np.ndarray | None = None  # estimated multiplicative bias field (builtin only)
    info: dict = field(default_factory=dict)

    def labels(self) -> np.ndarray:
        """Hard labels: 0 outside the brain, 1 CSF, 2 GM, 3 WM (argmax of the PVE)."""
        lab = np.argmax(np.stack([self.csf, self.gm, self.wm]), axis=0).astype(np.uint8) + 1
        lab[~self.brain_mask] = 0
        return lab


@contextmanager
def _blas_single_thread():
    """Run with one BLAS thread: the matrix products here are small or memory-bound, and
    on a shared 2-core machine a spinning BLAS thread pool makes them several times
    slower. threadpoolctl ships with scikit-learn (a nilearn dependency); without it this
    is a no-op."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------------------
# brain extraction


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.asarray(radius_vox, float), 0.5)
    n = np.floor(r).astype(int)
    g = np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij")
    return sum((gi / ri) ** 2 for gi, ri in zip(g, r, strict=True)) <= 1.0 + 1e-9


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's (1979) threshold maximising the between-class variance of a histogram."""
    h, edges = np.histogram(values, bins=bins)
    c = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(h).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(h * c)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(c[np.argmax(w0 * w1 * (mu0 - mu1) ** 2)])


def _block_mean(data: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    shp = tuple(s // k for s, k in zip(data.shape, f, strict=True))
    d = data[: shp[0] * f[0], : shp[1] * f[1], : shp[2] * f[2]]
    return d.reshape(shp[0], f[0], shp[1], f[1], shp[2], f[2]).mean(axis=(1, 3, 5))


def extract_brain(
    data: np.ndarray, affine: np.ndarray, *, erode_mm: float = 4.0, close_mm: float = 8.0
) -> np.ndarray:
    """Brain mask (bool, on the input grid) by thresholding and morphology (see module doc)."""
    data = np.nan_to_num(np.asarray(data, np.float32))
    vox = _voxel_sizes(affine)
    f = tuple(max(1, int(round(2.0 / v))) for v in vox)
    small = _block_mean(data, f)
    svox = vox * np.asarray(f)
    hi = float(np.percentile(small, 99.8))
    thr = otsu_threshold(np.clip(small, 0, hi).ravel())
    tissue = small > thr

    eroded = ndi.binary_erosion(tissue, structure=_ball(erode_mm / svox))
    lab, n = ndi.label(eroded)
    if n == 0:
        raise ValueError("brain extraction found no tissue above the Otsu threshold")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    core = lab == int(np.argmax(sizes))
    # geodesic dilation back inside the tissue mask
    step = _ball(np.ones(3) * 1.0)
    for _ in range(int(np.ceil(erode_mm / svox.min())) + 1):
        core = ndi.binary_dilation(core, structure=step) & tissue
    core = ndi.binary_fill_holes(core)
    pad = int(np.ceil(close_mm / svox.min())) + 1
    closed = ndi.binary_closing(np.pad(core, pad), structure=_ball(close_mm / svox))
    closed = ndi.binary_fill_holes(closed[pad:-pad, pad:-pad, pad:-pad])

    # back to the input grid (trilinear on the block centres)
    coords = [(np.arange(s) + 0.5) / k - 0.5 for s, k in zip(data.shape, f, strict=True)]
    up = closed.astype(np.float32)
    for ax, c in enumerate(coords):
        c = np.clip(c, 0, up.shape[ax] - 1)
        i0 = np.floor(c).astype(int)
        i1 = np.minimum(i0 + 1, up.shape[ax] - 1)
        w = (c - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[ax] = -1
        up = np.take(up, i0, axis=ax) * (1 - w).reshape(shape) + np.take(
            up, i1, axis=ax
        ) * w.reshape(shape)
    mask = up > 0.5
    if np.mean(data == 0) > 0.2:  # an already skull-stripped/masked image: keep its zeros out
        mask &= data > 0
    return mask


# ---------------------------------------------------------------------------------------
# partial-volume mixture with MRF

_N_LEVELS = 9
_GROUPS = ("csf", "csf/gm", "gm", "gm/wm", "wm")
# compatibility of neighbouring labels: 1 for the same label, ``_J_ADJACENT`` for a pure
# class next to a mixture containing it (or two mixtures sharing a class), 0 otherwise
_J_ADJACENT = 0.5
_J = np.eye(5) + _J_ADJACENT * (np.eye(5, k=1) + np.eye(5, k=-1))


def _components(mu: np.ndarray, var: np.ndarray):
    """Means, variances, group of each component and its (CSF, GM, WM) fractions."""
    t = np.arange(1, _N_LEVELS + 1) / (_N_LEVELS + 1)  # fraction of the first tissue
    means, vars_, groups, fracs = [], [], [], []
    for k in range(3):
        means.append(mu[k])
        vars_.append(var[k])
        groups.append(2 * k)
        fr = np.zeros(3)
        fr[k] = 1.0
        fracs.append(fr)
    for g, (a, b) in ((1, (0, 1)), (3, (1, 2))):
        for f in t:
            means.append(f * mu[a] + (1 - f) * mu[b])
            vars_.append(f * var[a] + (1 - f) * var[b])
            groups.append(g)
            fr = np.zeros(3)
            fr[a], fr[b] = f, 1 - f
            fracs.append(fr)
    return np.array(means), np.array(vars_), np.array(groups), np.array(fracs)


def _loglik(y: np.ndarray, mu, var) -> np.ndarray:
    """Log-likelihood (N, ncomp) float32 of every component."""
    m, v, _, _ = _components(mu, var)
    out = np.empty((len(y), len(m)), np.float32)
    for c in range(len(m)):
        d = y - np.float32(m[c])
        out[:, c] = d * d * np.float32(-0.5 / v[c]) + np.float32(-0.5 * np.log(2 * np.pi * v[c]))
    return out


def _responsibilities(ll: np.ndarray, log_prior_comp: np.ndarray) -> np.ndarray:
    r = ll + log_prior_comp.astype(np.float32)
    r -= r.max(axis=1, keepdims=True)
    np.exp(r, out=r)
    r /= r.sum(axis=1, keepdims=True)
    return r


def _comp_log_prior(pi: np.ndarray, groups: np.ndarray) -> np.ndarray:
    ncomp_group = np.bincount(groups, minlength=5).astype(float)
    return np.log(pi)[groups] - np.log(ncomp_group[groups])


def _em_histogram(centres, counts, mu, var, pi, groups, iterations, tied):
    """EM of the PV mixture on a histogram of intensities (weights = counts)."""
    w_all = counts.astype(float)
    for _ in range(iterations):
        r = _responsibilities(_loglik(centres, mu, var), _comp_log_prior(pi, groups))
        rw = r * w_all[:, None]
        for k in range(3):
            sw = float(rw[:, k].sum())
            if sw > 10:
                mu[k] = float(rw[:, k] @ centres) / sw
        if tied:
            num = sum(float(rw[:, k] @ (centres - mu[k]) ** 2) for k in range(3))
            den = float(rw[:, :3].sum())
            var[:] = max(num / max(den, 1.0), 1e-6 * mu[2] ** 2)
        else:
            for k in range(3):
                sw = float(rw[:, k].sum())
                if sw > 10:
                    var[k] = max(float(rw[:, k] @ (centres - mu[k]) ** 2) / sw,
                                 1e-6 * mu[2] ** 2)
        onehot = np.zeros((len(groups), 5))
        onehot[np.arange(len(groups)), groups] = 1.0
        pi = np.maximum((rw.sum(axis=0) @ onehot) / w_all.sum(), 1e-4)
        pi /= pi.sum()
    return mu, var, pi, r


def _lsq(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Least squares by the normal equations (well conditioned here: monomials of
    coordinates in [-1, 1] and class indicators), with a tiny ridge for safety."""
    x = x.astype(np.float64)
    g = x.T @ x
    g[np.diag_indices_from(g)] += 1e-9 * np.trace(g) / len(g)
    return np.linalg.solve(g, x.T @ t.astype(np.float64))


def _poly_terms(xyz: np.ndarray, order: int = 3) -> np.ndarray:
    """(N, n_terms) float32 monomials x^a y^b z^c, a+b+c <= order, of coordinates in
    [-1, 1]."""
    n_terms = sum(1 for a in range(order + 1) for b in range(order + 1 - a)
                  for _ in range(order + 1 - a - b))
    out = np.empty((len(xyz), n_terms), np.float32)
    j = 0
    for a in range(order + 1):
        for b in range(order + 1 - a):
            for c in range(order + 1 - a - b):
                out[:, j] = xyz[:, 0] ** a * xyz[:, 1] ** b * xyz[:, 2] ** c
                j += 1
    return out


def _neighbour_mean(q: np.ndarray, flat: np.ndarray, pshape, count) -> np.ndarray:
    """Mean of (N, G) label posteriors over the in-mask 6-neighbours of each voxel; flat are
    the voxels' flat indices into a zero-padded volume of shape pshape."""
    g = q.shape[1]
    vol = np.zeros((g, int(np.prod(pshape))), np.float32)
    vol[:, flat] = q.T
    vol = vol.reshape(g, *pshape)
    acc = np.zeros((g, *(s - 2 for s in pshape)), np.float32)
    c = slice(1, -1)
    acc += vol[:, :-2, c, c]
    acc += vol[:, 2:, c, c]
    acc += vol[:, c, :-2, c]
    acc += vol[:, c, 2:, c]
    acc += vol[:, c, c, :-2]
    acc += vol[:, c, c, 2:]
    del vol
    # gather at the voxels (their flat index in the unpadded interior)
    out = np.empty_like(q)
    ijk = np.unravel_index(flat, pshape)
    sub = np.ravel_multi_index(tuple(i - 1 for i in ijk), tuple(s - 2 for s in pshape))
    acc = acc.reshape(g, -1)
    for k in range(g):
        out[:, k] = acc[k, sub] / count
    return out


def segment_t1(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    seed: int = 0,
    brain_mask: np.ndarray | None = None,
    mrf_beta: float = 1.5,
    mrf_iterations: int = 6,
    bias_order: int = 3,
    subsample: int = 200_000,
    tied: bool = False,
) -> Segmentation:
    """Builtin segmentation of a T1-weighted image (see the module docstring).

    data, affine: the T1 array and its vox->world affine (only voxel sizes are used).
    brain_mask: skip brain extraction and use this mask. Deterministic for a given seed.
    """
    with _blas_single_thread():
        return _segment_t1(
            data, affine, seed=seed, brain_mask=brain_mask, mrf_beta=mrf_beta,
            mrf_iterations=mrf_iterations, bias_order=bias_order, subsample=subsample,
            tied=tied,
        )


def _segment_t1(data, affine, *, seed, brain_mask, mrf_beta, mrf_iterations, bias_order,
                subsample, tied) -> Segmentation:
    data = np.nan_to_num(np.asarray(data, np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"segment_t1 needs a 3D image, got shape {data.shape}")
    rng = np.random.default_rng(seed)
    mask = extract_brain(data, affine) if brain_mask is None else np.asarray(brain_mask, bool)
    idx = np.nonzero(mask)
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx]) + 1
    shape = tuple(hi - lo)
    loc = tuple(i - l for i, l in zip(idx, lo, strict=True))
    raw = np.maximum(data[idx], 1e-3)
    n = len(raw)

    # polynomial terms of the bias model on normalised coordinates (float32, once)
    xyz = np.empty((n, 3), np.float32)
    for a in range(3):
        xyz[:, a] = loc[a] / max(shape[a] - 1, 1) * 2 - 1
    terms = _poly_terms(xyz, bias_order)
    del xyz
    subset = np.zeros(n, bool)
    subset[rng.choice(n, size=min(subsample, n), replace=False)] = True
    pshape = tuple(s + 2 for s in shape)
    flat = np.ravel_multi_index(tuple(i + 1 for i in loc), pshape)

    # initial class means: 3-class k-means of the intensity histogram
    top = float(np.percentile(raw, 99.9)) * 1.2
    edges = np.linspace(0.0, top, 1025)
    centres = 0.5 * (edges[:-1] + edges[1:])
    mu = np.percentile(raw, [5, 45, 85]).astype(float)
    h, _ = np.histogram(raw, bins=edges)
    for _ in range(30):
        lab = np.argmin(np.abs(centres[:, None] - mu[None, :]), axis=1)
        mu = np.array([np.average(centres[lab == k], weights=h[lab == k] + 1e-9)
                       for k in range(3)])
    var = np.full(3, ((mu[2] - mu[1]) / 6) ** 2)
    pi = np.array([0.1, 0.15, 0.3, 0.15, 0.3])
    _, _, groups, fracs = _components(mu, var)
    log_bias = np.zeros(n, np.float32)
    y = raw
    six = ndi.generate_binary_structure(3, 1)
    for outer in range(6):
        h, _ = np.histogram(y, bins=edges)
        mu, var, pi, rtab = _em_histogram(centres, h, mu, var, pi, groups, 15, tied)
        if outer == 5:
            break
        # bias from the interiors of GM and WM: voxels nearer the class mean than the
        # neighbouring classes whose six neighbours are too (so mostly free of partial
        # volume); log intensity = polynomial + per-class log mean, fitted jointly by least
        # squares with 3-MAD trimming. Using both classes balances the partial-volume
        # contamination that a WM-only fit feeds back into the field.
        cuts = (0.5 * (mu[0] + mu[1]), 0.5 * (mu[1] + mu[2]))
        rows, target, cls = [], [], []
        for k, cond in ((1, (y > cuts[0]) & (y < cuts[1])), (2, y > cuts[1])):
            vol = np.zeros(int(np.prod(pshape)), bool)
            vol[flat] = cond
            inner = ndi.binary_erosion(vol.reshape(pshape), structure=six).ravel()[flat]
            inner &= subset
            rows.append(np.nonzero(inner)[0])
            target.append(np.log(raw[inner]))
            cls.append(np.full(int(inner.sum()), k - 1))
        rows_a, t, c = np.concatenate(rows), np.concatenate(target), np.concatenate(cls)
        design = np.concatenate([terms[rows_a, 1:], np.eye(2, dtype=np.float32)[c]], axis=1)
        ok = np.ones(len(t), bool)
        for _ in range(2):
            coef = _lsq(design[ok], t[ok])
            res = t - design @ coef
            mad = 1.4826 * float(np.median(np.abs(res[ok] - np.median(res[ok]))))
            ok = np.abs(res - np.median(res[ok])) < 3 * max(mad, 1e-3)
        log_bias = terms[:, 1:] @ coef[:-2].astype(np.float32)
        log_bias -= float(np.median(log_bias[rows[1]])) if len(rows[1]) else 0.0
        y = raw / np.exp(log_bias)
    del terms

    # per-voxel group likelihoods and the conditional fractions of the mixed groups
    ll = _loglik(y, mu, var)
    ll += _comp_log_prior(np.full(5, 0.2), groups).astype(np.float32)[None, :]
    shift = ll.max(axis=1, keepdims=True)
    np.exp(ll - shift, out=ll)
    lg = np.zeros((n, 5), np.float32)
    fmix = np.zeros((n, 5), np.float32)  # fraction of the first tissue of a mixed group
    first = fracs[np.arange(len(groups)), np.where(groups == 3, 1, 0)]
    for g in range(5):
        cols = np.nonzero(groups == g)[0]
        lg[:, g] = ll[:, cols].sum(axis=1)
        if g in (1, 3):
            fmix[:, g] = (ll[:, cols] @ first[cols].astype(np.float32)) / np.maximum(
                lg[:, g], 1e-30)
    del ll

    # mean-field MRF on the five labels
    count = _neighbour_mean(np.ones((n, 1), np.float32), flat, pshape, 1.0)[:, 0]
    count = np.maximum(count, 1.0)
    log_pi = np.log(pi).astype(np.float32)
    qg = lg * pi.astype(np.float32)
    qg /= qg.sum(axis=1, keepdims=True)
    for _ in range(mrf_iterations):
        nb = _neighbour_mean(qg, flat, pshape, count)
        e = log_pi[None, :] + np.float32(mrf_beta) * (nb @ _J.T.astype(np.float32))
        e -= e.max(axis=1, keepdims=True)
        qg = lg * np.exp(e)
        qg /= qg.sum(axis=1, keepdims=True)
    pve = np.empty((n, 3), np.float32)
    pve[:, 0] = qg[:, 0] + qg[:, 1] * fmix[:, 1]
    pve[:, 1] = qg[:, 1] * (1 - fmix[:, 1]) + qg[:, 2] + qg[:, 3] * fmix[:, 3]
    pve[:, 2] = qg[:, 3] * (1 - fmix[:, 3]) + qg[:, 4]

    out = {t: np.zeros(data.shape, np.float32) for t in TISSUES}
    for k, t in enumerate(TISSUES):
        out[t][idx] = pve[:, k]
    bias = np.ones(data.shape, np.float32)
    bias[idx] = np.exp(log_bias)
    info = {
        "backend": "builtin",
        "means": mu.tolist(),
        "sds": np.sqrt(var).tolist(),
        "label_proportions": dict(zip(_GROUPS, pi.tolist(), strict=True)),
        "brain_volume_ml": float(mask.sum() * np.prod(_voxel_sizes(affine)) / 1000.0),
        "bias_polynomial_order": bias_order,
        "mrf_beta": mrf_beta,
        "mrf_iterations": mrf_iterations,
        "seed": seed,
    }
    return Segmentation(out["gm"], out["wm"], out["csf"], mask, bias, info)


# ---------------------------------------------------------------------------------------
# FSL FAST backend


def _fsl_env() -> dict:
    env = dict(os.environ)
    env["FSLOUTPUTTYPE"] = "NIFTI_GZ"
    return env


def _find_image(prefix: Path) -> Path:
    for ext in (".nii.gz", ".nii"):
        p = prefix.parent / (prefix.name + ext)
        if p.exists():
            return p
    raise RuntimeError(f"FSL did not write {prefix}.nii.gz")


def run_fast(t1_nii: Path, out_prefix: Path) -> Segmentation:
    """Segment with FSL: ``bet <t1> <prefix>_brain -m`` then
    ``fast -t 1 -n 3 -o <prefix> <prefix>_brain`` (FAST's documented options: -t image type
    1 = T1, -n number of classes, -o output basename). For T1 images FAST's ``pve_0`` is
    CSF, ``pve_1`` GM and ``pve_2`` WM. Raises RuntimeError when FSL is not installed."""
    fast, bet = shutil.which("fast"), shutil.which("bet")
    if fast is None or bet is None:
        raise RuntimeError(
            "the fsl_fast backend needs FSL's 'bet' and 'fast' on PATH (install FSL and "
            "source $FSLDIR/etc/fslconf/fsl.sh), or use the builtin backend"
        )
    t1_nii, out_prefix = Path(t1_nii), Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    brain = out_prefix.parent / (out_prefix.name + "_brain")
    env = _fsl_env()
    for cmd in (
        [bet, str(t1_nii), str(brain), "-m"],
        [fast, "-t", "1", "-n", "3", "-o", str(out_prefix), str(_find_image(brain))],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    mask_img = nib.load(_find_image(out_prefix.parent / (out_prefix.name + "_brain_mask")))
    mask = np.asanyarray(mask_img.dataobj) > 0
    pve = [
        nib.load(_find_image(Path(f"{out_prefix}_pve_{k}"))).get_fdata(dtype=np.float32)
        for k in range(3)
    ]
    stack = np.clip(np.stack(pve), 0.0, 1.0) * mask
    total = stack.sum(axis=0)
    mask &= total > 0
    stack = np.where(mask, stack / np.maximum(total, 1e-6), 0.0).astype(np.float32)
    info = {"backend": "fsl_fast", "commands": ["bet -m", "fast -t 1 -n 3"]}
    return Segmentation(stack[1], stack[2], stack[0], mask, None, info)


def resolve_backend(name: str = "auto") -> str:
    """Resolve a backend name: 'auto' -> 'fsl_fast' if FSL's ``fast`` is on PATH, else
    'builtin'. 'fsl_fast' without FSL raises RuntimeError."""
    if name == "auto":
        return "fsl_fast" if shutil.which("fast") and shutil.which("bet") else "builtin"
    if name == "builtin":
        return name
    if name == "fsl_fast":
        if not (shutil.which("fast") and shutil.which("bet")):
            raise RuntimeError("backend 'fsl_fast' requested but FSL's bet/fast are not on PATH")
        return name
    raise ValueError(f"unknown segmentation backend {name!r} (auto, builtin, fsl_fast)")


backend = resolve_backend  # the name the workflow uses


# ---------------------------------------------------------------------------------------
# MRS voxel coverage and tissue fractions


@dataclass
class Coverage:
    """Fraction of each T1 voxel covered by the MRS box: ``indices`` (n, 3) int into the T1
    array, ``weights`` (n,) in (0, 1]. Unpacks as ``indices, weights``."""

    indices: np.ndarray
    weights: np.ndarray
    t1_voxel_volume_mm3: float
    box_volume_mm3: float

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.indices
        yield self.weights

    @property
    def covered_volume_mm3(self) -> float:
        return float(self.weights.sum()) * self.t1_voxel_volume_mm3

    def as_volume(self, shape) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        if len(self.weights):
            out[tuple(self.indices.T)] = self.weights
        return out


def voxel_coverage(
    t1_shape, t1_affine: np.ndarray, mrs_affine: np.ndarray, supersample: int = 5
) -> Coverage:
    """Rasterise the (oblique) MRS box onto the T1 grid.

    Each T1 voxel in the box's bounding region is supersampled by ``supersample``^3
    cell-centred points; a point is inside when its MRS index coordinates lie in
    [-0.5, 0.5]^3. The weight is the inside fraction (vectorised, chunked numpy)."""
    t1_affine = np.asarray(t1_affine, float)
    mrs_affine = np.asarray(mrs_affine, float)
    t1_shape = tuple(int(s) for s in t1_shape[:3])
    # box corners in T1 index space -> integer bounding region
    c = np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")).reshape(3, -1)
    to_t1 = np.linalg.inv(t1_affine) @ mrs_affine
    corners = to_t1[:3, :3] @ c + to_t1[:3, 3:4]
    lo = np.maximum(np.floor(corners.min(axis=1) - 0.5).astype(int), 0)
    hi = np.minimum(np.ceil(corners.max(axis=1) + 0.5).astype(int) + 1, t1_shape)
    vvol = float(abs(np.linalg.det(t1_affine[:3, :3])))
    bvol = float(abs(np.linalg.det(mrs_affine[:3, :3])))
    if np.any(hi <= lo):
        return Coverage(np.zeros((0, 3), int), np.zeros(0), vvol, bvol)
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    ).reshape(-1, 3)
    s = int(supersample)
    g = (np.arange(s) + 0.5) / s - 0.5
    offs = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)  # (s^3, 3)
    to_mrs = np.linalg.inv(to_t1)
    rot, tr = to_mrs[:3, :3], to_mrs[:3, 3]
    centres = grid @ rot.T + tr  # (n, 3) MRS index of each T1 voxel centre
    doffs = offs @ rot.T  # (s^3, 3)
    weights = np.empty(len(grid))
    chunk = max(1, 2_000_000 // len(offs))
    for i in range(0, len(grid), chunk):
        u = centres[i : i + chunk, None, :] + doffs[None, :, :]
        inside = np.all(np.abs(u) <= 0.5, axis=2)
        weights[i : i + chunk] = inside.mean(axis=1)
    keep = weights > 0
    return Coverage(grid[keep], weights[keep], vvol, bvol)


def tissue_fractions(seg: Segmentation, coverage: Coverage) -> dict:
    """Tissue fractions of the MRS voxel: coverage-weighted means of the PVE maps,
    normalised to f_gm + f_wm + f_csf = 1 over the tissue found. Also returns the covered
    volume (mm^3), the box volume, and ``brain_fraction`` = the covered fraction inside the
    brain mask (~0 for a voxel outside the brain; then the f_* are NaN)."""
    idx, w = tuple(coverage.indices.T), coverage.weights
    sw = float(w.sum())
    brain = float(w @ seg.brain_mask[idx]) / sw if sw > 0 else 0.0
    vals = {t: float(w @ getattr(seg, t)[idx]) if sw > 0 else 0.0 for t in TISSUES}
    tot = sum(vals.values())
    out = {f"f_{t}": (vals[t] / tot if tot > 0 else float("nan")) for t in ("gm", "wm", "csf")}
    out.update(
        covered_volume_mm3=coverage.covered_volume_mm3,
        box_volume_mm3=coverage.box_volume_mm3,
        brain_fraction=brain,
    )
    return out


def write_fractions_json(path: Path, fracs: Mapping, extra: Mapping | None = None) -> Path:
    """FSL-MRS segmentation JSON: {"CSF", "GM", "WM"} (what ``svs_segment`` writes and
    ``fsl_mrs --tissue_frac`` reads) plus our own fields under "mrsflow"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {FSL_KEYS[t]: float(fracs[f"f_{t}"]) for t in TISSUES}
    ours = {k: v for k, v in fracs.items() if not k.startswith("f_")}
    ours.update(extra or {})
    doc["mrsflow"] = _jsonable(ours)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


# ---------------------------------------------------------------------------------------
# figure


def _canonical(data: np.ndarray, affine: np.ndarray):
    """Reorder an array to the closest RAS orientation (no resampling)."""
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(data, ornt)
    aff = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape[:3])
    return out, aff


def overlay_png(
    t1_data: np.ndarray,
    t1_affine: np.ndarray,
    mrs_affine: np.ndarray,
    png_path: Path,
    *,
    seg: Segmentation | None = None,
    title: str | None = None,
) -> Path:
    """Sagittal, coronal and axial T1 slices through the MRS voxel centre with the voxel's
    coverage drawn (translucent fill + outline), matplotlib Agg.

    Display convention: neurological (the subject's left on the image left in coronal and
    axial views, anterior to the right in the sagittal view); the caption says so. With
    ``seg`` the GM/WM/CSF fractions are printed and the GM boundary is contoured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(t1_data, np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    can, aff = _canonical(data, np.asarray(t1_affine, float))
    cov = voxel_coverage(can.shape, aff, mrs_affine).as_volume(can.shape)
    gm = _canonical(seg.gm, np.asarray(t1_affine, float))[0] if seg is not None else None
    centre = np.asarray(mrs_affine, float)[:3, 3]
    ijk = np.round(np.linalg.inv(aff) @ np.r_[centre, 1.0])[:3].astype(int)
    ijk = np.clip(ijk, 0, np.array(can.shape) - 1)
    vox = _voxel_sizes(aff)
    lo, hi = np.percentile(can[can > 0], [1, 99.5]) if np.any(can > 0) else (0.0, 1.0)

    views = [  # (name, slicer, horizontal axis, vertical axis, labels)
        ("sagittal", (ijk[0], slice(None), slice(None)), 1, 2, ("P", "A", "I", "S")),
        ("coronal", (slice(None), ijk[1], slice(None)), 0, 2, ("L", "R", "I", "S")),
        ("axial", (slice(None), slice(None), ijk[2]), 0, 1, ("L", "R", "P", "A")),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="k")
    for ax, (name, sl, h, v, lab) in zip(axes, views, strict=True):
        # RAS array, rows = vertical axis, origin lower: +x (subject's right) is drawn to
        # the right, i.e. the subject's left on the image left (neurological convention)
        img, c = can[sl].T, cov[sl].T
        ext = (0, img.shape[1] * vox[h], 0, img.shape[0] * vox[v])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=ext,
                  interpolation="nearest")
        ax.imshow(np.ma.masked_less_equal(c, 0.0), cmap="autumn", alpha=0.45, origin="lower",
                  extent=ext, vmin=0, vmax=1, interpolation="nearest")
        if c.max() > 0:
            ax.contour(c, levels=[0.5], colors="yellow", linewidths=1.2, origin="lower",
                       extent=ext)
        if gm is not None:
            ax.contour(gm[sl].T, levels=[0.5], colors="cyan", linewidths=0.4, origin="lower",
                       extent=ext)
        for txt, xy in zip(lab, ((0.02, 0.5), (0.94, 0.5), (0.5, 0.02), (0.5, 0.93)),
                           strict=True):
            ax.text(*xy, txt, color="w", transform=ax.transAxes, fontsize=9)
        ax.set_title(name, color="w", fontsize=10)
        ax.set_axis_off()
    caption = "neurological convention (subject's left on image left); MRS voxel in yellow"
    if seg is not None:
        f = tissue_fractions(seg, voxel_coverage(seg.gm.shape, t1_affine, mrs_affine))
        caption += f"; GM {f['f_gm']:.2f}  WM {f['f_wm']:.2f}  CSF {f['f_csf']:.2f} (GM edge cyan)"
    fig.text(0.5, 0.02, caption, ha="center", color="w", fontsize=9)
    if title:
        fig.suptitle(title, color="w")
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100, facecolor="k")
    plt.close(fig)
    return png_path


# ---------------------------------------------------------------------------------------
# workflow steps


def _stem(path: Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name[: -len("_T1w")] if name.endswith("_T1w") else name


def segmentation_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """BIDS-derivative names of the segmentation outputs."""
    out_dir = Path(out_dir)
    paths = {t.upper(): out_dir / f"{stem}_label-{t.upper()}_probseg.nii.gz" for t in TISSUES}
    paths["mask"] = out_dir / f"{stem}_desc-brain_mask.nii.gz"
    return paths


def run_segment(
    t1_nii: Path, out_dir: Path, backend: str = "auto", *, stem: str | None = None, seed: int = 0
) -> dict[str, Path]:
    """Segment a T1 NIfTI and write ``<stem>_label-{GM,WM,CSF}_probseg.nii.gz`` and
    ``<stem>_desc-brain_mask.nii.gz`` into out_dir (stem defaults to the T1 name without
    ``_T1w.nii.gz``). Returns the paths keyed GM, WM, CSF, mask."""
    t1_nii, out_dir = Path(t1_nii), Path(out_dir)
    if not t1_nii.exists():
        raise InputError(f"{t1_nii}: T1 image not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or _stem(t1_nii)
    img = nib.load(t1_nii)
    name = resolve_backend(backend)
    if name == "fsl_fast":
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            seg = run_fast(t1_nii, Path(tmp) / "fast")
    else:
        data = np.asanyarray(img.dataobj).astype(np.float32)
        seg = segment_t1(data, img.affine, seed=seed)
    paths = segmentation_paths(out_dir, stem)
    hdr = img.header.copy()
    for t in TISSUES:
        out = nib.Nifti1Image(getattr(seg, t).astype(np.float32), img.affine, hdr)
        out.set_data_dtype(np.float32)
        out.header.set_slope_inter(1.0, 0.0)
        nib.save(out, paths[t.upper()])
    m = nib.Nifti1Image(seg.brain_mask.astype(np.uint8), img.affine, hdr)
    m.set_data_dtype(np.uint8)
    m.header.set_slope_inter(1.0, 0.0)
    nib.save(m, paths["mask"])
    return paths


def load_segmentation(seg_paths: Mapping[str, Path]) -> tuple[Segmentation, np.ndarray]:
    """Read the maps written by ``run_segment`` (returns the segmentation and its affine)."""
    imgs = {k: nib.load(Path(v)) for k, v in seg_paths.items()}
    maps = {k: imgs[k].get_fdata(dtype=np.float32) for k in ("GM", "WM", "CSF")}
    mask = np.asanyarray(imgs["mask"].dataobj) > 0
    return Segmentation(maps["GM"], maps["WM"], maps["CSF"], mask), imgs["GM"].affine


def run_voxel_fractions(
    t1_nii: Path,
    seg_paths: Mapping[str, Path],
    mrs_nii: Path,
    out_json: Path,
    out_png: Path | None = None,
    *,
    min_brain_fraction: float = MIN_BRAIN_FRACTION,
) -> dict:
    """The per-scan step: tissue fractions of the MRS voxel of ``mrs_nii`` (NIfTI-MRS; its
    affine places the voxel) on the segmentation of ``t1_nii``; writes the FSL-MRS JSON and
    the overlay PNG. Raises InputError when the voxel is not in the brain."""
    t1_nii, mrs_nii = Path(t1_nii), Path(mrs_nii)
    seg, seg_aff = load_segmentation(seg_paths)
    t1 = nib.load(t1_nii)
    if not np.allclose(seg_aff, t1.affine, atol=1e-3) or seg.gm.shape != t1.shape[:3]:
        raise InputError(f"{seg_paths['GM']}: segmentation grid differs from {t1_nii}")
    mrs_affine = nib.load(mrs_nii).affine
    cov = voxel_coverage(seg.gm.shape, seg_aff, mrs_affine)
    fr = tissue_fractions(seg, cov)
    if not fr["brain_fraction"] >= min_brain_fraction:
        raise InputError(
            f"{mrs_nii}: the MRS voxel lies outside the brain of {t1_nii} (only "
            f"{100 * fr['brain_fraction']:.0f} % of it is inside the brain mask); check that "
            "the T1 and the spectrum are from the same session and that the T1 was not "
            "re-oriented or re-sliced"
        )
    extra = {
        "t1": str(t1_nii),
        "mrs": str(mrs_nii),
        "voxel_centre_world_mm": [round(float(v), 3) for v in mrs_affine[:3, 3]],
        "voxel_size_mm": [round(float(v), 3) for v in _voxel_sizes(mrs_affine)],
    }
    write_fractions_json(out_json, fr, extra)
    if out_png is not None:
        overlay_png(np.asanyarray(t1.dataobj), t1.affine, mrs_affine, out_png, seg=seg)
    return fr
