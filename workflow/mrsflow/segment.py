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
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from mrsflow import qcpage
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


def _finite32(data: np.ndarray) -> np.ndarray:
    """``data`` as float32 with NaN/inf replaced (``np.nan_to_num``); no copy when it is
    already a finite float32 array."""
    data = np.asarray(data, np.float32)
    return data if np.isfinite(data).all() else np.nan_to_num(data)


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty mask, grown by ``margin`` voxels (clipped
    to the array)."""
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(slice(max(int(hit[0]) - margin, 0),
                         min(int(hit[-1]) + 1 + margin, mask.shape[ax])))
    return tuple(out)


def _block_mean(data: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """float32 mean over non-overlapping f[0] x f[1] x f[2] blocks (a trailing partial
    block is dropped), one axis at a time: each pass reads its input once, with no
    reshaped copy of the whole image."""
    out = data
    for ax, k in enumerate(f):
        if k == 1:
            continue
        n = out.shape[ax] // k
        sl = [slice(None)] * out.ndim
        acc = None
        for o in range(k):
            sl[ax] = slice(o, o + n * k, k)
            acc = out[tuple(sl)].astype(np.float32) if acc is None else acc + out[tuple(sl)]
        out = acc
    return out / np.float32(np.prod(f)) if out is not data else out


def _upsample_region(small: np.ndarray, box: tuple[slice, ...], f: tuple[int, ...],
                     shape: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
    """Trilinear interpolation (on the block centres) of a binary low-resolution mask that
    is empty outside ``box``, thresholded at 0.5, computed only where it can be non-zero:
    returns the full-resolution slices and the mask there."""
    sub = np.pad(small[box], 1).astype(np.float32)  # index j <-> low-res index a - 1 + j
    out_box = []
    for ax, (sl, k) in enumerate(zip(box, f, strict=True)):
        n_low = small.shape[ax]
        start = sl.start * k
        stop = sl.stop * k if sl.stop < n_low else shape[ax]  # trailing voxels copy the edge
        c = np.clip((np.arange(start, stop) + 0.5) / k - 0.5, 0, n_low - 1)
        i0 = np.floor(c).astype(int)
        i1 = np.minimum(i0 + 1, n_low - 1)
        w = (c - i0).astype(np.float32)
        j0, j1 = i0 - sl.start + 1, i1 - sl.start + 1
        bshape = [1, 1, 1]
        bshape[ax] = -1
        sub = np.take(sub, j0, axis=ax) * (1 - w).reshape(bshape) + np.take(
            sub, j1, axis=ax) * w.reshape(bshape)
        out_box.append(slice(start, stop))
    return tuple(out_box), sub > 0.5


def _closing(mask: np.ndarray, ball: np.ndarray) -> np.ndarray:
    """``ndi.binary_closing(mask, ball)`` (outside the array = background) for a
    symmetric structuring element, by counting the mask voxels under the ball with an FFT
    convolution: a voxel is in the dilation when the count is >= 1, in the erosion (of
    the dilation) when it is |ball|. Float32 rounding of the counts is ~1e-4 here,
    far from the 0.5 margins, so the result is the same, several times faster than
    ``binary_closing`` for the 8 mm ball (257 voxels at 2 mm)."""
    from scipy import fft

    shape = [fft.next_fast_len(s + k - 1, True) for s, k in zip(mask.shape, ball.shape,
                                                                 strict=True)]
    kernel = fft.rfftn(ball.astype(np.float32), shape)
    same = tuple(slice(k // 2, k // 2 + s) for s, k in zip(mask.shape, ball.shape,
                                                           strict=True))

    def count(x):
        return fft.irfftn(fft.rfftn(x.astype(np.float32), shape) * kernel, shape)[same]

    return count(count(mask) > 0.5) > ball.sum() - 0.5


def extract_brain(
    data: np.ndarray, affine: np.ndarray, *, erode_mm: float = 4.0, close_mm: float = 8.0
) -> np.ndarray:
    """Brain mask (bool, on the input grid) by thresholding and morphology (see module doc).

    The morphology after the erosion runs on the bounding box of the largest component
    (plus the reach of each operation), and the mask is upsampled only there: the same
    result as on the whole ~2 mm grid, at a fraction of the cost."""
    data = _finite32(data)
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
    del lab, eroded
    # geodesic dilation back inside the tissue mask: n_grow 6-neighbour steps reach at most
    # n_grow voxels beyond the core's box; one more voxel of margin leaves a background
    # ring, so the hole filling and the closing (which stays inside the box of its input)
    # give the same result on the crop as on the whole grid
    n_grow = int(np.ceil(erode_mm / svox.min())) + 1
    box = _bbox(core, n_grow + 1)
    core = ndi.binary_dilation(core[box], structure=_ball(np.ones(3)), iterations=n_grow,
                               mask=tissue[box])
    core = ndi.binary_fill_holes(core)
    pad = int(np.ceil(close_mm / svox.min())) + 1
    closed = _closing(np.pad(core, pad), _ball(close_mm / svox))
    closed = ndi.binary_fill_holes(closed[pad:-pad, pad:-pad, pad:-pad])

    # back to the input grid (trilinear on the block centres), only around the brain
    full = np.zeros(small.shape, bool)
    full[box] = closed
    fbox, up = _upsample_region(full, box, f, data.shape)
    mask = np.zeros(data.shape, bool, order="F")  # NIfTI order, as it will be written
    mask[fbox] = up
    if np.count_nonzero(data == 0) > 0.2 * data.size:  # already skull-stripped/masked image:
        mask &= data > 0  # keep its zeros out
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


def _poly_exponents(order: int) -> list[tuple[int, int, int]]:
    """Exponents (a, b, c) of the monomials x^a y^b z^c, a+b+c <= order, in term order."""
    return [(a, b, c) for a in range(order + 1) for b in range(order + 1 - a)
            for c in range(order + 1 - a - b)]


def _poly_terms(xyz: np.ndarray, order: int = 3) -> np.ndarray:
    """(N, n_terms) float32 monomials x^a y^b z^c, a+b+c <= order, of coordinates in
    [-1, 1]."""
    exps = _poly_exponents(order)
    out = np.empty((len(xyz), len(exps)), np.float32)
    for j, (a, b, c) in enumerate(exps):
        out[:, j] = xyz[:, 0] ** a * xyz[:, 1] ** b * xyz[:, 2] ** c
    return out


def _box_coords(shape) -> list[np.ndarray]:
    """Normalised coordinates in [-1, 1] of the voxels of a box, per axis."""
    return [np.arange(s) / max(s - 1, 1) * 2 - 1 for s in shape]


def _poly_field(coef: np.ndarray, shape, order: int) -> np.ndarray:
    """sum_j coef[j] * term_j (the ``_poly_terms`` monomials of ``_box_coords``) on the
    whole box, float32. Evaluated separably: the (order + 1)^3 coefficient tensor is
    contracted with the per-axis powers, the last step a single matrix product."""
    pw = [np.stack([u**k for k in range(order + 1)]) for u in _box_coords(shape)]
    c = np.zeros((order + 1,) * 3)
    for cj, (a, b, k) in zip(coef, _poly_exponents(order), strict=True):
        c[a, b, k] = cj
    g = np.einsum("bj,ck,abc->ajk", pw[1], pw[2], c).reshape(order + 1, -1)
    return (pw[0].T.astype(np.float32) @ g.astype(np.float32)).reshape(shape)


def _neighbours(flat: np.ndarray, pshape) -> np.ndarray:
    """(n, 6) int32: the position in the voxel list of each voxel's 6 neighbours, n where
    the neighbour is not a voxel. ``flat`` are the voxels' ascending flat indices into a
    zero-padded volume of shape ``pshape``; the columns are in ascending order."""
    n = len(flat)
    rank = np.full(int(np.prod(pshape)), n, np.int32)
    rank[flat] = np.arange(n, dtype=np.int32)
    sy, sx = pshape[2], pshape[1] * pshape[2]
    nbr = np.empty((n, 6), np.int32)
    for j, off in enumerate((-sx, -sy, -1, 1, sy, sx)):
        nbr[:, j] = rank[flat + off]
    return nbr


def _neighbour_mean_operator(nbr: np.ndarray):
    """Sparse (n, n) float32 operator: (A @ q)[i] = mean of q over the voxel's neighbours
    (0 for a voxel without any)."""
    from scipy import sparse

    n = len(nbr)
    valid = nbr < n
    count = sum(valid[:, j].astype(np.int32) for j in range(nbr.shape[1]))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=indptr[1:])
    data = np.repeat((1.0 / np.maximum(count, 1)).astype(np.float32), count)
    return sparse.csr_matrix((data, nbr[valid], indptr), shape=(n, n))


def _group_tables(y: np.ndarray, mu, var, groups, fracs) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel: the likelihood of each of the five label groups, (n, 5) float32 relative
    to the largest (equal component weights within a group), and the mean fraction of the
    first tissue in the CSF/GM and GM/WM groups, (n, 2) float32.

    Both depend on the intensity only, so they are computed in float64 on a grid over
    the intensity range (step h = sd_min / 100) and linearly interpolated (error
    |f''| h^2 / 8, ~1e-5 of the log likelihood of a pure class, f'' = -1/var): on
    twin-like intensities the group posteriors are within 2e-5 of the direct per-voxel
    computation and the fractions within 1e-6."""
    from scipy.special import logsumexp

    m, v, _, _ = _components(mu, var)
    lo, hi = float(y.min()), float(y.max())
    hi = max(hi, lo + 1e-6 * max(abs(lo), 1.0))
    k = int(min(np.ceil((hi - lo) / (np.sqrt(v.min()) / 100)), 100_000)) + 1
    grid = np.linspace(lo, hi, max(k, 2))
    ll = (-0.5 * (grid[:, None] - m) ** 2 / v - 0.5 * np.log(2 * np.pi * v)
          + _comp_log_prior(np.full(5, 0.2), groups))
    first = fracs[np.arange(len(groups)), np.where(groups == 3, 1, 0)]
    log_lg = np.stack([logsumexp(ll[:, groups == g], axis=1) for g in range(5)], axis=1)
    fmix = np.stack([np.exp(ll[:, groups == g] - log_lg[:, g:g + 1]) @ first[groups == g]
                     for g in (1, 3)], axis=1)
    log_lg -= log_lg.max(axis=1, keepdims=True)  # a common shift per voxel cancels later

    # linear interpolation, all in float32: value at i0 + slope to i0 + 1 times w
    pos = (y - np.float32(lo)) * np.float32((len(grid) - 1) / (hi - lo))
    i0 = np.minimum(np.floor(pos), np.float32(len(grid) - 2))
    w = (pos - i0)[:, None]
    i0 = i0.astype(np.intp)
    out = []
    for tab in (log_lg, fmix):
        val = np.take(tab.astype(np.float32), i0, axis=0)
        val += np.take(np.diff(tab, axis=0).astype(np.float32), i0, axis=0) * w
        out.append(val)
    return np.exp(out[0], out=out[0]), out[1]


def _to_volume(values: np.ndarray, mb: np.ndarray, box, shape, fill: float = 0.0):
    """Scatter voxel values (ordered as ``np.nonzero(mb)``) into a float32 volume of
    ``shape`` (``mb`` is the mask on the ``box`` slices). Fortran order, the NIfTI byte
    order, so that writing the map needs no transposed copy."""
    tmp = np.full(mb.shape, fill, np.float32)
    tmp[mb] = values
    vol = np.zeros(shape, np.float32, order="F")  # calloc: untouched pages cost nothing
    if fill:
        vol += np.float32(fill)
    vol[box] = tmp
    return vol


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
    """The model of the module docstring, on the brain voxels only (float32 vectors in
    C order of the brain's bounding box; neighbours through an index table)."""
    data = _finite32(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"segment_t1 needs a 3D image, got shape {data.shape}")
    rng = np.random.default_rng(seed)
    mask = extract_brain(data, affine) if brain_mask is None else np.asarray(brain_mask, bool)
    if not mask.any():
        raise ValueError("segment_t1: the brain mask is empty")
    box = _bbox(mask)
    mb = np.ascontiguousarray(mask[box])
    shape = mb.shape
    pshape = tuple(s + 2 for s in shape)
    flat = np.flatnonzero(np.pad(mb, 1))  # voxels in a zero-padded box, ascending
    raw = np.maximum(data[box][mb], np.float32(1e-3))
    n = len(raw)
    nbr = _neighbours(flat, pshape)

    # the bias model is fitted on a fixed random subset: its polynomial terms, once
    sub = np.sort(rng.choice(n, size=min(subsample, n), replace=False))
    loc = np.unravel_index(flat[sub], pshape)
    xyz = np.empty((len(sub), 3), np.float32)
    for a in range(3):
        xyz[:, a] = (loc[a] - 1) / max(shape[a] - 1, 1) * 2 - 1
    terms = _poly_terms(xyz, bias_order)
    del xyz, loc
    log_raw_sub = np.log(raw[sub])
    nbr_sub = nbr[sub]

    # initial class means: 3-class k-means of the intensity histogram
    p5, p45, p85, p999 = np.percentile(raw, [5, 45, 85, 99.9])
    top = float(p999) * 1.2
    nbins = 1024
    edges = np.linspace(0.0, top, nbins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    mu = np.array([p5, p45, p85], float)
    h, _ = np.histogram(raw, bins=nbins, range=(0.0, top))  # = bins=edges, faster
    for _ in range(30):
        lab = np.argmin(np.abs(centres[:, None] - mu[None, :]), axis=1)
        mu = np.array([np.average(centres[lab == k], weights=h[lab == k] + 1e-9)
                       for k in range(3)])
    var = np.full(3, ((mu[2] - mu[1]) / 6) ** 2)
    pi = np.array([0.1, 0.15, 0.3, 0.15, 0.3])
    _, _, groups, fracs = _components(mu, var)
    log_bias = np.zeros(n, np.float32)
    y = raw
    for outer in range(6):
        h, _ = np.histogram(y, bins=nbins, range=(0.0, top))
        mu, var, pi, rtab = _em_histogram(centres, h, mu, var, pi, groups, 15, tied)
        if outer == 5:
            break
        # bias from the interiors of GM and WM: voxels nearer the class mean than the
        # neighbouring classes whose six neighbours are too (so mostly free of partial
        # volume); log intensity = polynomial + per-class log mean, fitted jointly by least
        # squares with 3-MAD trimming. Using both classes balances the partial-volume
        # contamination that a WM-only fit feeds back into the field.
        cuts = (0.5 * (mu[0] + mu[1]), 0.5 * (mu[1] + mu[2]))
        code = np.zeros(n + 1, np.int8)  # 1 GM, 2 WM; position n: outside the mask
        code[:n][(y > cuts[0]) & (y < cuts[1])] = 1
        code[:n][y > cuts[1]] = 2
        c0 = code[sub]
        inner = (c0 > 0) & np.all(code[nbr_sub] == c0[:, None], axis=1)
        rows = [np.nonzero(inner & (c0 == k))[0] for k in (1, 2)]  # positions in sub
        rows_a = np.concatenate(rows)
        t = log_raw_sub[rows_a]
        c = np.repeat([0, 1], [len(r) for r in rows])
        design = np.concatenate([terms[rows_a, 1:], np.eye(2, dtype=np.float32)[c]], axis=1)
        ok = np.ones(len(t), bool)
        for _ in range(2):
            coef = _lsq(design[ok], t[ok])
            res = t - design @ coef
            mad = 1.4826 * float(np.median(np.abs(res[ok] - np.median(res[ok]))))
            ok = np.abs(res - np.median(res[ok])) < 3 * max(mad, 1e-3)
        log_bias = _poly_field(np.r_[0.0, coef[:-2]], shape, bias_order)[mb]
        if len(rows[1]):
            wm_field = design[len(rows[0]):, :-2] @ coef[:-2]  # the field at the WM rows
            log_bias -= np.float32(np.median(wm_field))
        y = raw / np.exp(log_bias)
    del terms, nbr_sub

    # per-voxel group likelihoods and the conditional fractions of the mixed groups
    lg, fmix = _group_tables(y, mu, var, groups, fracs)

    # mean-field MRF on the five labels: q ~ lg * pi * exp(beta * mean_nb(q) @ J^T)
    a_mean = _neighbour_mean_operator(nbr)
    del nbr
    # (row sums by a matrix product: numpy reductions along a length-5 axis are slow)
    ones = np.ones(5, np.float32)
    lg *= pi.astype(np.float32)
    qg = lg / (lg @ ones)[:, None]
    bj = (mrf_beta * _J.T).astype(np.float32)
    for _ in range(mrf_iterations):
        e = (a_mean @ qg) @ bj  # in [0, beta]: neighbour means sum to <= 1, J <= 1
        if mrf_beta > 50:  # exp would overflow float32 beyond beta ~ 88
            e -= e.max(axis=1, keepdims=True)
        np.exp(e, out=e)
        e *= lg
        e /= (e @ ones)[:, None]
        qg = e
    pve = np.empty((n, 3), np.float32)
    pve[:, 0] = qg[:, 0] + qg[:, 1] * fmix[:, 0]
    pve[:, 1] = qg[:, 1] * (1 - fmix[:, 0]) + qg[:, 2] + qg[:, 3] * fmix[:, 1]
    pve[:, 2] = qg[:, 3] * (1 - fmix[:, 1]) + qg[:, 4]

    out = {t: _to_volume(pve[:, k], mb, box, data.shape) for k, t in enumerate(TISSUES)}
    bias = _to_volume(np.exp(log_bias), mb, box, data.shape, fill=1.0)
    info = {
        "backend": "builtin",
        "means": mu.tolist(),
        "sds": np.sqrt(var).tolist(),
        "label_proportions": dict(zip(_GROUPS, pi.tolist(), strict=True)),
        "brain_volume_ml": float(n * np.prod(_voxel_sizes(affine)) / 1000.0),
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

    def plane(self, shape, axis: int, index: int) -> np.ndarray:
        """``as_volume(shape)`` sliced at ``index`` along ``axis``, without the volume."""
        other = [a for a in range(3) if a != axis]
        out = np.zeros([shape[a] for a in other], np.float32)
        sel = self.indices[:, axis] == index
        out[self.indices[sel][:, other[0]], self.indices[sel][:, other[1]]] = self.weights[sel]
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


def text_row(text: str, width: int = 900):
    """A QC-page row that is only a line of text (wrapped), as a Pillow image."""
    import textwrap

    from PIL import Image, ImageDraw

    lines = textwrap.wrap(text, width=width // 8)
    img = Image.new("RGB", (width, 24 + 18 * len(lines)), "black")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((12, 12 + 18 * i), line, fill="white", font=_font(13))
    return img


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


@dataclass
class OverlayBackground:
    """A T1 prepared once for drawing several voxels on it: the RAS-canonical array and
    affine, the GM map on the same grid (or None) and the display window."""

    can: np.ndarray
    aff: np.ndarray
    gm: np.ndarray | None
    window: tuple[float, float]


def overlay_background(t1_data: np.ndarray, t1_affine: np.ndarray,
                       seg: Segmentation | None = None) -> OverlayBackground:
    data = np.asarray(t1_data, np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    can, aff = _canonical(data, np.asarray(t1_affine, float))
    gm = _canonical(seg.gm, np.asarray(t1_affine, float))[0] if seg is not None else None
    every2 = can[::2, ::2, ::2]  # the display window from every 8th voxel: same to ~0.1 %
    pos = every2[every2 > 0]
    window = tuple(float(v) for v in np.percentile(pos, [1, 99.5])) if pos.size else (0.0, 1.0)
    return OverlayBackground(can, aff, gm, window)


def _edge(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with a 4-neighbour outside it (a one-pixel outline)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow with FreeType)
    except (TypeError, ImportError, OSError):  # pragma: no cover - bitmap fallback
        return ImageFont.load_default()


def voxel_page_row(bg: OverlayBackground, mrs_affine: np.ndarray, *,
                   fractions: dict | None = None, title: str | None = None):
    """Sagittal, coronal and axial T1 slices through the MRS voxel centre with the voxel's
    coverage (translucent fill, red at partial to yellow at full coverage, yellow outline)
    as one RGB ``PIL.Image``, one pixel per voxel (stretched to square millimetres).

    Display convention: neurological (the subject's left on the image left in coronal and
    axial views, anterior to the right in the sagittal view); the caption says so. With
    ``fractions`` (from :func:`tissue_fractions`) they are printed; with a GM map in ``bg``
    the GM boundary is outlined in cyan. Composed with numpy and Pillow: no matplotlib
    import (~0.7 s) in the segment job."""
    from PIL import Image, ImageDraw

    can, aff, gm = bg.can, bg.aff, bg.gm
    cov = voxel_coverage(can.shape, aff, mrs_affine)
    centre = np.asarray(mrs_affine, float)[:3, 3]
    ijk = np.round(np.linalg.inv(aff) @ np.r_[centre, 1.0])[:3].astype(int)
    ijk = np.clip(ijk, 0, np.array(can.shape) - 1)
    vox = _voxel_sizes(aff)
    lo, hi = bg.window
    views = [  # (name, slice axis, horizontal axis, vertical axis, labels left/right/bottom/top)
        ("sagittal", 0, 1, 2, ("P", "A", "I", "S")),
        ("coronal", 1, 0, 2, ("L", "R", "I", "S")),
        ("axial", 2, 0, 1, ("L", "R", "P", "A")),
    ]
    small, big = _font(12), _font(14)
    panels = []
    for name, axis, h, v, lab in views:
        sl = tuple(ijk[a] if a == axis else slice(None) for a in range(3))
        # RAS array, rows = vertical axis flipped (superior/anterior at the top); +x (the
        # subject's right) to the right, i.e. the subject's left on the image left
        img = can[sl].T[::-1]
        c = cov.plane(can.shape, axis, ijk[axis]).T[::-1]
        grey = np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * 255.0
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        inside = c > 0
        fill = np.stack([np.full(c.shape, 255.0), 255.0 * c, np.zeros(c.shape)], axis=-1)
        rgb[inside] = 0.55 * rgb[inside] + 0.45 * fill[inside]
        if gm is not None:
            rgb[_edge(gm[sl].T[::-1] > 0.5)] = (0, 255, 255)
        outline = _edge(c >= 0.5)
        outline[1:] |= outline[:-1]  # two pixels wide
        rgb[outline] = (255, 255, 0)
        panel = Image.fromarray(rgb.astype(np.uint8), "RGB")
        size = (round(panel.width * vox[h] / min(vox)), round(panel.height * vox[v] / min(vox)))
        if size != panel.size:
            panel = panel.resize(size, Image.Resampling.NEAREST)
        pd = ImageDraw.Draw(panel)
        w_, h_ = panel.size
        for txt, xy, anchor in zip(lab, ((4, h_ / 2), (w_ - 4, h_ / 2), (w_ / 2, h_ - 4),
                                         (w_ / 2, 4)), ("lm", "rm", "ms", "mt"), strict=True):
            pd.text(xy, txt, fill="white", font=small, anchor=anchor)
        panels.append((name, panel))

    caption = "neurological convention (subject's left on image left); MRS voxel in yellow"
    if fractions is not None:
        f = fractions
        caption += f"; GM {f['f_gm']:.2f}  WM {f['f_wm']:.2f}  CSF {f['f_csf']:.2f}"
        if gm is not None:
            caption += " (GM edge cyan)"
    pad, head, label_h = 10, (24 if title else 6), 18
    width = sum(pn.width for _, pn in panels) + pad * (len(panels) + 1)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [caption]
    if measure.textlength(caption, font=small) > width - 2 * pad:  # a narrow T1: two lines
        first, _, rest = caption.partition("; ")
        lines = [first, rest]
    foot = 6 + 16 * len(lines)
    height = head + label_h + max(pn.height for _, pn in panels) + foot
    page = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(page)
    if title:
        draw.text((width / 2, 4), title, fill="white", font=big, anchor="mt")
    x = pad
    for name, pn in panels:
        draw.text((x + pn.width / 2, head + label_h - 3), name, fill="white", font=small,
                  anchor="ms")
        page.paste(pn, (x, head + label_h))
        x += pn.width + pad
    for i, line in enumerate(reversed(lines)):
        draw.text((width / 2, height - 5 - 16 * i), line, fill="white", font=small,
                  anchor="ms")
    return page


def overlay_png(
    t1_data: np.ndarray,
    t1_affine: np.ndarray,
    mrs_affine: np.ndarray,
    png_path: Path,
    *,
    seg: Segmentation | None = None,
    title: str | None = None,
) -> Path:
    """PNG of one voxel on its T1 (see :func:`voxel_page_row`); with ``seg`` the GM/WM/CSF
    fractions are printed and the GM boundary is outlined."""
    bg = overlay_background(t1_data, t1_affine, seg)
    fr = (tissue_fractions(seg, voxel_coverage(seg.gm.shape, t1_affine, mrs_affine))
          if seg is not None else None)
    return qcpage.save_images(png_path, [voxel_page_row(bg, mrs_affine, fractions=fr,
                                                        title=title)])


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


def _save_nifti_gz(img: nib.Nifti1Image, path: Path) -> None:
    """``nib.save(img, path)`` for a ``.nii.gz``, the same bytes once decompressed, but
    deflated as nibabel writes them by zlib at level 1 (nibabel's default) with the Z_RLE
    strategy (matches at distance 1 only, "designed to be almost as fast as
    Z_HUFFMAN_ONLY, but give better compression for PNG image data": zlib manual,
    deflateInit2): on these mostly-zero maps faster than nibabel's gzip writer, and
    smaller. wbits = 31 makes a standard gzip stream (RFC 1952)."""
    import io
    import zlib

    class DeflateWriter(io.RawIOBase):
        """Write-only stream that compresses into ``f``; like nibabel's gzip writer it
        can only 'seek' to where it is."""

        def __init__(self, f):
            super().__init__()
            self.f, self.n = f, 0
            self.z = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.f.write(self.z.compress(b))
            self.n += len(b)
            return len(b)

        def tell(self) -> int:
            return self.n

        def seek(self, pos: int, whence: int = 0) -> int:
            if whence != 0 or pos != self.n:
                raise OSError("cannot seek in a compressed stream")
            return pos

    with open(path, "wb") as f:
        gz = DeflateWriter(f)
        img.to_file_map({"image": nib.FileHolder(fileobj=gz)})
        f.write(gz.z.flush())


def run_segment(
    t1_nii: Path, out_dir: Path, backend: str = "auto", *, stem: str | None = None, seed: int = 0
) -> dict[str, Path]:
    """Segment a T1 NIfTI and write ``<stem>_label-{GM,WM,CSF}_probseg.nii.gz`` and
    ``<stem>_desc-brain_mask.nii.gz`` into out_dir (stem defaults to the T1 name without
    ``_T1w.nii.gz``). Returns the paths keyed GM, WM, CSF, mask."""
    return _segment_to_files(t1_nii, out_dir, backend, stem=stem, seed=seed)[0]


def _segment_to_files(t1_nii: Path, out_dir: Path, backend: str, *, stem: str | None,
                      seed: int) -> tuple[dict[str, Path], Segmentation, nib.Nifti1Image]:
    """:func:`run_segment`, also returning the segmentation exactly as written (float32
    maps, boolean mask) and the T1 as an in-memory image (its voxels read once), for steps
    that go on in the same process."""
    t1_nii, out_dir = Path(t1_nii), Path(out_dir)
    if not t1_nii.exists():
        raise InputError(f"{t1_nii}: T1 image not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or _stem(t1_nii)
    img = nib.load(t1_nii)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    name = resolve_backend(backend)
    if name == "fsl_fast":
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            seg = run_fast(t1_nii, Path(tmp) / "fast")
    else:
        seg = segment_t1(data, img.affine, seed=seed)
    paths = segmentation_paths(out_dir, stem)
    hdr = img.header.copy()
    # NIfTI stores the voxels in Fortran order: Fortran-ordered arrays (the builtin maps
    # already are) spare nibabel a transposed copy of every slice it writes
    maps = {t.upper(): np.asfortranarray(getattr(seg, t), dtype=np.float32) for t in TISSUES}
    maps["mask"] = np.asfortranarray(seg.brain_mask, dtype=np.uint8)
    for key, arr in maps.items():
        out = nib.Nifti1Image(arr, img.affine, hdr)
        out.set_data_dtype(arr.dtype)
        out.header.set_slope_inter(1.0, 0.0)
        _save_nifti_gz(out, paths[key])
    written = Segmentation(maps["GM"], maps["WM"], maps["CSF"], maps["mask"] > 0)
    return paths, written, nib.Nifti1Image(data, img.affine, img.header)


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
    fr, mrs_affine = _voxel_fractions(t1_nii, seg, seg_aff, mrs_nii, out_json,
                                      min_brain_fraction=min_brain_fraction)
    if out_png is not None:
        overlay_png(np.asanyarray(t1.dataobj), t1.affine, mrs_affine, out_png, seg=seg)
    return fr


def _voxel_fractions(t1_nii: Path, seg: Segmentation, seg_aff: np.ndarray, mrs_nii: Path,
                     out_json: Path, *, min_brain_fraction: float):
    """Tissue fractions of one MRS voxel on a loaded segmentation; writes the JSON and
    returns (fractions, the voxel's affine)."""
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
        "tissue_source": "T1",
        "t1": str(t1_nii),
        "mrs": str(mrs_nii),
        "voxel_centre_world_mm": [round(float(v), 3) for v in mrs_affine[:3, 3]],
        "voxel_size_mm": [round(float(v), 3) for v in _voxel_sizes(mrs_affine)],
    }
    write_fractions_json(out_json, fr, extra)
    return fr, mrs_affine


def run_participant(plan: dict, png: Path | None, *, backend: str = "auto",
                    min_brain_fraction: float = MIN_BRAIN_FRACTION) -> None:
    """The segment step of one participant: :func:`run_segment` for each T1 of
    ``plan["t1"]`` (dicts t1, out_dir and optionally xfm: then the brain is also registered
    to MNI152 with :func:`mrsflow.register.run_register`), then the tissue fractions of
    every voxel of ``plan["voxels"]`` (dicts t1, mrs, json, label) on its T1's
    segmentation, in one process; then one QC page with a row per distinct voxel placement
    (scans at the same place share a row)."""
    loaded = {}
    for item in plan["t1"]:
        t0 = time.perf_counter()
        paths, seg, t1 = _segment_to_files(Path(item["t1"]), Path(item["out_dir"]), backend,
                                           stem=None, seed=0)
        print(f"segmented {item['t1']} in {time.perf_counter() - t0:.2f} s", flush=True)
        if item.get("xfm"):
            from mrsflow import register

            t0 = time.perf_counter()
            mask = nib.Nifti1Image(seg.brain_mask.astype(np.uint8), t1.affine)
            reg = register.run_register(Path(item["t1"]), paths["mask"], Path(item["xfm"]),
                                        images=(t1, mask))
            print(f"registered {item['t1']} to MNI152 in {time.perf_counter() - t0:.2f} s "
                  f"(NCC {reg['similarity']['value']:.3f})", flush=True)
        loaded[item["t1"]] = (seg, t1)
    placements: dict[tuple, dict] = {}  # one page row per distinct voxel placement
    backgrounds = {}
    without_t1 = []
    for v in plan["voxels"]:
        if v.get("t1") is None:  # no T1: the fractions given in scans.tsv or the default
            fr = {f"f_{t}": float(v["fractions"][t]) for t in ("gm", "wm", "csf")}
            mrs_affine = nib.load(v["mrs"]).affine
            write_fractions_json(Path(v["json"]), fr, {
                "tissue_source": v["source"], "t1": None, "mrs": str(v["mrs"]),
                "voxel_centre_world_mm": [round(float(x), 3) for x in mrs_affine[:3, 3]],
                "voxel_size_mm": [round(float(x), 3) for x in _voxel_sizes(mrs_affine)]})
            print(f"tissue fractions of {v['mrs']} ({v['source']}, no T1): GM {fr['f_gm']:.3f} "
                  f"WM {fr['f_wm']:.3f} CSF {fr['f_csf']:.3f}", flush=True)
            without_t1.append(f"{v.get('label') or Path(v['mrs']).name} ({v['source']})")
            continue
        if v["t1"] not in loaded:
            raise InputError(f"{v['mrs']}: its T1 {v['t1']} is not among the participant's "
                             "segmented T1s")
        seg, t1 = loaded[v["t1"]]
        fr, mrs_affine = _voxel_fractions(Path(v["t1"]), seg, t1.affine, Path(v["mrs"]),
                                          Path(v["json"]),
                                          min_brain_fraction=min_brain_fraction)
        print(f"tissue fractions of {v['mrs']}: GM {fr['f_gm']:.3f} WM {fr['f_wm']:.3f} "
              f"CSF {fr['f_csf']:.3f}", flush=True)
        if png is None:
            continue
        if v["t1"] not in backgrounds:
            backgrounds[v["t1"]] = overlay_background(np.asanyarray(t1.dataobj), t1.affine,
                                                      seg)
        # scans planned at the same place (e.g. both films of a session: same geometry to
        # 0.01 mm) share a row, titled with all their labels
        key = (v["t1"], *np.round(np.asarray(mrs_affine, float), 2).ravel().tolist())
        row = placements.setdefault(key, {"bg": backgrounds[v["t1"]], "aff": mrs_affine,
                                          "fr": fr, "labels": []})
        row["labels"].append(v.get("label") or Path(v["mrs"]).name)
    if png is not None:
        rows = [voxel_page_row(r["bg"], r["aff"], fractions=r["fr"], title=", ".join(r["labels"]))
                for r in placements.values()]
        if without_t1:
            rows.append(text_row("no T1, so no placement and tissue fractions from the sheet "
                                 "or the config's default: " + "; ".join(without_t1)))
        qcpage.save_images(png, rows)
