"""Synthetic subject anatomy of the twin: a T1-weighted head made from the MNI152 template.

Every participant of the twin gets a head whose brain is the ICBM 2009a (nonlinear,
symmetric) MNI152 template shipped with nilearn, moved into the scanner by a subject
transform, and a 3D T1-weighted image of it written as a classic Philips-like DICOM series.
The planted truth (partial-volume maps, brain mask, the exact MNI -> scanner mapping) is
returned alongside, so that segmentation and voxel tissue fractions can be checked.

Spaces and transforms
---------------------
World = NIfTI RAS+ mm, the scanner coordinates (origin at the magnet isocentre).
The subject transform maps subject world ``w`` to MNI mm::

    mni = M @ (w + d(u)),   u = A^-1 w  (continuous voxel index of the acquisition grid)

``M`` is the inverse of the subject affine ``S = T R Z`` (MNI -> world: per-axis scaling
``Z``, rotation ``R``, translation ``T`` = head position in the scanner) and ``d`` is a smooth
nonlinear displacement (mm, world axes) spanned by separable low-frequency cosines of the
acquisition voxel index (orders 0..3, random, seeded; its Jacobian is kept well below 1,
so the warp is a diffeomorphism). Images are made by pulling the MNI maps through this
mapping (trilinear, float32: ``scipy.ndimage.map_coordinates(order=1)``, computed by
``_Sampler``); the forward mapping ``mni_to_world`` inverts it by fixed-point iteration
``w <- S mni - d(A^-1 w)``, which contracts by ``|grad d| < 0.3`` per step and is run to
1e-9 mm.

The population scale: the MNI152 average brain is larger than individual brains
(its brain mask is 1.89 L; typical adult brain+CSF masks are ~1.2-1.6 L; the linear
native->MNI scaling of adults is ~1.05-1.1 per axis, e.g. Lancaster et al. 2007, Hum Brain
Mapp 28:1194 on the size bias of the ICBM152 space). The subject affine therefore scales by
``population_scale`` (0.93) times ``1 +/- scale_jitter`` (5 %) per axis.

Tissue maps
-----------
GM and WM are the template's probability maps (uint8/255), the brain mask is the template
T1's nonzero region (the template is distributed skull-stripped), CSF = mask x (1 - GM - WM)
clipped at 0. The maps are an average of 152 registered brains, so their tissue boundaries
are blurred by the residual misregistration (15 % of brain voxels have no class above 0.6);
an individual's partial-volume layer is about one voxel thick. The three probabilities are
therefore sharpened, p_t <- p_t^2 / sum_s p_s^2 (``SHARPEN_GAMMA``), before use; CSF is still
mask - GM - WM. After resampling, GM + WM + CSF = the (interpolated) brain fraction <= 1.

T1 contrast (the blend)
-----------------------
Inside the brain the image is the tissue model plus the template's own texture::

    T1 = mu_CSF p_CSF + mu_GM p_GM + mu_WM p_WM + alpha (mu_WM - mu_GM) r

where ``r`` is the residual of the MNI T1 after its least-squares fit on (p_CSF, p_GM, p_WM)
inside the mask (before sharpening), in units of the template's own GM-WM contrast, high-
pass filtered (minus its 6 mm Gaussian-smoothed self) so that only anatomical detail is kept
and the template's slow intensity drifts do not act as a second, unplanted bias field. The
MNI T1 is itself almost linear in the maps (fitted means CSF 70, GM 168, WM 224; residual SD
6 = 11 % of the GM-WM contrast), so ``alpha = 0.5`` keeps half of the genuine MNI152 texture
(deep-GM shading, anatomical detail), while the class contrast is that of a 3 T MPRAGE
(CSF : GM : WM = 0.25 : 0.65 : 1, GM/WM ~ 0.65 rather than the template's 0.75 after
averaging). The tissue part is exactly linear in the planted partial volumes, which is what
makes the planted maps the truth a partial-volume segmenter should recover; the texture has
zero mean within each class and shifts partial-volume estimates by a few percent at most.

Head
----
Around the brain, on a 2 mm MNI grid, by distance from the (closed) brain mask: extra-axial
CSF 0-2 mm, skull 2-7 mm (dark inner/outer tables 0.05 with a diploe of 0.3), galea/muscle
7-8.5 mm (0.45), subcutaneous fat 8.5-12.5 mm (bright, 1.1), skin 12.5-14 mm (0.6), then air;
plus a neck (an elliptic cylinder of muscle in a fat ring, below MNI z = -40, outside the
skull). No face, eyes or spinal canal: the skull closes under the brainstem. The profile is
box-filtered over 2 mm before sampling so thin layers are not aliased away.

Acquisition
-----------
A sagittal 3D T1 (Philips 3D T1-TFE/MPRAGE-like), 1 mm isotropic, 192 (R-L, slices) x 240
(A-P) x 256 (S-I) voxels: 192 sagittal partitions keep the whole head for every drawn pose
(a 176-slice slab clips the scalp of a yawed, wide head). The FOV is centred on the head as
an operator would plan it (+/- 3 mm), the head itself sits +/- 10 mm off isocentre (x: +/- 6
mm, left-right centring in a head coil is tighter). The stored array is RAS-ordered
(axis 0 = +x, 1 = +y, 2 = +z); the DICOM writer reorders it to the usual sagittal display.
A smooth multiplicative bias field exp(sum of cosines up to order 2, SD of log 0.08) and
Rician noise (sigma 3 % of WM) are applied; intensities are in scanner units (WM ~ 1000).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from mrsflow.mni import nilearn_data_dir

# tissue intensities relative to WM = 1 (3 T MPRAGE-like)
MU = {"csf": 0.25, "gm": 0.65, "wm": 1.0}
# head layers: (outer edge in mm from the brain surface, relative intensity)
HEAD_LAYERS = (
    (2.0, 0.25),  # extra-axial CSF
    (3.5, 0.05),  # inner table
    (5.5, 0.30),  # diploe
    (7.0, 0.05),  # outer table
    (8.5, 0.45),  # galea / temporal muscle
    (12.5, 1.10),  # subcutaneous fat
    (14.0, 0.60),  # skin
)
NECK_MUSCLE = 0.45
NECK_FAT = 1.10
_HEAD_STEP_MM = 2.0
SHARPEN_GAMMA = 2.0  # tissue-probability sharpening (see module docstring)
_TEXTURE_HIGHPASS_MM = 6.0  # Gaussian sigma of the part of the texture removed
_WARP_ORDER = 3
_BIAS_ORDER = 2


@dataclass(frozen=True)
class AnatomyParams:
    """Knobs of the synthetic anatomy (defaults: a 3 T sagittal 1 mm MPRAGE)."""

    shape: tuple[int, int, int] = (192, 240, 256)
    voxel_mm: float = 1.0
    head_centre_mni: tuple[float, float, float] = (0.0, -17.0, -18.0)  # FOV planned here
    fov_offset_mm: float = 3.0  # planning error of the FOV centre (uniform +/-)
    population_scale: float = 0.93
    scale_jitter: float = 0.05  # per axis, uniform +/-
    rotation_deg: tuple[float, float, float] = (6.0, 3.0, 3.0)  # pitch(x), roll(y), yaw(z)
    translation_mm: tuple[float, float, float] = (6.0, 10.0, 10.0)  # head position, uniform +/-
    warp_rms_mm: float = 2.5  # RMS length of the nonlinear displacement over the FOV
    bias_sd: float = 0.08  # SD of the log bias field over the FOV
    noise_sd: float = 0.03  # Rician sigma relative to WM intensity
    texture_weight: float = 0.5  # alpha of the MNI T1 texture (see module docstring)
    wm_level: float = 1000.0  # scanner units of WM


@dataclass
class SubjectAnatomy:
    """One subject's head on the acquisition grid with its planted truth."""

    t1: np.ndarray  # float32, scanner units, RAS-ordered array
    affine: np.ndarray  # 4x4 vox -> world (RAS mm)
    gm: np.ndarray  # float32 partial volumes, GM + WM + CSF <= 1
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray  # bool, interpolated template mask >= 0.5
    head_mask: np.ndarray  # bool, noise-free signal above air
    bias: np.ndarray  # float32 multiplicative bias field applied to the image
    noise_sigma: float  # Rician sigma in scanner units
    subject_affine: np.ndarray  # S: MNI mm -> world mm (before the warp)
    warp_coef: np.ndarray  # (3, K, K, K) displacement coefficients, mm
    params: AnatomyParams = field(default_factory=AnatomyParams)

    # -- the subject transform ------------------------------------------------------------
    def _disp(self, world: np.ndarray) -> np.ndarray:
        """Displacement d(A^-1 w) in mm at world points (n, 3)."""
        u = _apply(np.linalg.inv(self.affine), world)
        shape = self.t1.shape
        bases = [_cos_basis_at(u[:, ax], shape[ax], self.warp_coef.shape[1]) for ax in range(3)]
        return np.stack(
            [np.einsum("abc,na,nb,nc->n", c, *bases) for c in self.warp_coef], axis=1
        )

    def world_to_mni(self, xyz: np.ndarray) -> np.ndarray:
        """Subject world mm (n, 3) -> MNI mm (n, 3): the mapping used to make the image."""
        w = np.atleast_2d(np.asarray(xyz, float))
        return _apply(np.linalg.inv(self.subject_affine), w + self._disp(w))

    def mni_to_world(self, xyz_mni: np.ndarray) -> np.ndarray:
        """MNI mm (n, 3) -> subject world mm (n, 3), the exact inverse of ``world_to_mni``."""
        v = _apply(self.subject_affine, np.atleast_2d(np.asarray(xyz_mni, float)))
        w = v.copy()
        for _ in range(100):
            w_new = v - self._disp(w)
            if np.max(np.abs(w_new - w)) < 1e-9:
                return w_new
            w = w_new
        return w


# ---------------------------------------------------------------------------------------
# template data (cached per process)


@dataclass(frozen=True)
class _Template:
    affine: np.ndarray  # 1 mm MNI grid
    gm: np.ndarray  # float32, masked
    wm: np.ndarray
    mask: np.ndarray  # float32 0/1
    texture: np.ndarray  # float32, masked MNI T1 residual in units of its GM-WM contrast
    head: np.ndarray  # float32 2 mm grid: non-brain intensity (CSF value inside the brain)
    head_affine: np.ndarray
    head_bbox_mni: np.ndarray  # (2, 3) mm extent of the head (non-air) region
    brain_bbox_mni: np.ndarray


_TEMPLATE_CACHE: list[Path] = []  # set by use_template_cache()


def write_template_cache(path: Path) -> Path:
    """Save the prepared template (the few seconds of loading, sharpening and head building
    every participant job would otherwise repeat) as an uncompressed .npz."""
    tpl = _build_template()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **{f.name: getattr(tpl, f.name) for f in fields(_Template)})
    return path


def use_template_cache(path: Path | None) -> None:
    """Load the template from ``path`` (written by :func:`write_template_cache`)."""
    _TEMPLATE_CACHE[:] = [Path(path)] if path else []
    _template.cache_clear()
    _samplers.cache_clear()


@lru_cache(maxsize=1)
def _template() -> _Template:
    if _TEMPLATE_CACHE:
        with np.load(_TEMPLATE_CACHE[0]) as z:
            return _Template(**{f.name: z[f.name] for f in fields(_Template)})
    return _build_template()


def _build_template() -> _Template:
    # one BLAS thread, as in make_subject_anatomy: the normal equations below round
    # differently with other thread counts, and the texture (hence every T1) would follow
    with _blas_single_thread():
        return _build_template_unthreaded()


def _build_template_unthreaded() -> _Template:
    # imported here only: participant jobs load the prepared template and need neither
    import nibabel as nib
    from scipy import ndimage as ndi

    d = nilearn_data_dir()

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        img = nib.load(d / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
        return np.ascontiguousarray(np.asanyarray(img.dataobj), dtype=np.float32), img.affine

    t1, aff = load("t1")
    gm, _ = load("gm")
    wm, _ = load("wm")
    mask = (t1 > 0).astype(np.float32)
    gm *= mask / 255.0
    wm *= mask / 255.0
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    inside = mask > 0
    design = np.stack([csf[inside], gm[inside], wm[inside]], axis=1)
    coef = np.linalg.solve(design.T @ design, design.T @ t1[inside])  # 3 x 3 normal eqs
    resid = (t1[inside] - design @ coef) / float(coef[2] - coef[1])
    sd = float(resid.std())
    texture = np.zeros_like(t1)
    texture[inside] = np.clip(resid, -3 * sd, 3 * sd)
    # keep the fine detail only: subtract the smooth part (normalised Gaussian convolution
    # inside the mask) so the template's slow intensity drifts do not masquerade as bias
    smooth = ndi.gaussian_filter(texture, _TEXTURE_HIGHPASS_MM, truncate=2.0) / np.maximum(
        ndi.gaussian_filter(mask, _TEXTURE_HIGHPASS_MM, truncate=2.0), 1e-3
    )
    texture = np.where(inside, texture - smooth, 0.0).astype(np.float32)

    if SHARPEN_GAMMA != 1.0:
        # an individual's tissue boundaries are sharper than the 152-brain average
        p = np.stack([csf[inside], gm[inside], wm[inside]]) ** SHARPEN_GAMMA
        p /= np.maximum(p.sum(axis=0), 1e-12)
        gm[inside], wm[inside] = p[1], p[2]

    idx = np.argwhere(inside)
    brain_bbox = _apply(aff, np.stack([idx.min(0) - 1, idx.max(0) + 1]).astype(float))

    head, head_aff, head_bbox = _head_layers(mask, aff)
    c = np.ascontiguousarray
    return _Template(
        aff, c(gm), c(wm), c(mask), c(texture), c(head), head_aff, head_bbox, brain_bbox
    )


def _head_layers(mask: np.ndarray, aff: np.ndarray):
    """Non-brain head intensities on a 2 mm MNI grid (see module docstring)."""
    from scipy import ndimage as ndi

    step = _HEAD_STEP_MM
    lo = np.array([-120.0, -160.0, -170.0])
    hi = np.array([120.0, 124.0, 140.0])
    shape = tuple(int(round(x)) + 1 for x in (hi - lo) / step)
    haff = np.diag([step, step, step, 1.0])
    haff[:3, 3] = lo
    # brain fraction on the 2 mm grid (2 mm box average of the 1 mm mask)
    src = ndi.uniform_filter(mask, size=2, mode="constant")
    pts = np.indices(shape, dtype=np.float32).reshape(3, -1)
    vox = np.linalg.inv(aff) @ haff
    coords = vox[:3, :3] @ pts + vox[:3, 3:4]
    frac = ndi.map_coordinates(src, coords, order=1, mode="constant", output=np.float32)
    brain = frac.reshape(shape) > 0.5
    # closing by 6 mm (dilate then erode, both by distance thresholds), then fill holes
    grown = ndi.distance_transform_edt(~brain, sampling=step) <= 6.0
    closed = ndi.distance_transform_edt(np.pad(grown, 1), sampling=step)[1:-1, 1:-1, 1:-1] > 6.0
    closed = ndi.binary_fill_holes(closed)
    dist = ndi.distance_transform_edt(~closed, sampling=step).astype(np.float32)

    # layer profile, box-filtered over one 2 mm sample
    fine = np.arange(0.0, 40.0, 0.05)
    edges = np.array([e for e, _ in HEAD_LAYERS])
    vals = np.array([v for _, v in HEAD_LAYERS] + [0.0])
    prof = vals[np.searchsorted(edges, fine, side="left")]
    k = int(round(step / 0.05))
    prof = np.convolve(np.pad(prof, k, mode="edge"), np.ones(k) / k, mode="same")[k:-k]
    head = np.interp(dist, fine, prof).astype(np.float32)
    envelope = dist <= HEAD_LAYERS[-1][0]

    # neck: elliptic cylinder of muscle in a 6 mm fat ring below z = -40, outside the skull
    x, y, z = (np.arange(n) * step + lo[a] for a, n in enumerate(shape))
    rx, ry, cy = 60.0, 55.0, -25.0
    r = np.sqrt((x[:, None] / rx) ** 2 + ((y[None, :] - cy) / ry) ** 2)  # (nx, ny)
    depth = (1.0 - r) * min(rx, ry)  # mm inside the ellipse (approx.)
    zfade = np.clip((-40.0 - z) / 10.0, 0.0, 1.0)  # 0 above -40, 1 below -50
    neck_val = np.where(depth > 7.5, NECK_MUSCLE, np.where(depth > 1.5, NECK_FAT, 0.6))
    neck_val = np.where(depth > 0, neck_val, 0.0)[:, :, None] * zfade[None, None, :]
    outside_skull = dist > 8.5
    head = np.where(outside_skull & (neck_val > head), neck_val, head).astype(np.float32)
    envelope |= neck_val > 0
    head[closed] = MU["csf"]

    idx = np.argwhere(envelope)
    bbox = _apply(haff, np.stack([idx.min(0) - 1, idx.max(0) + 1]).astype(float))
    return head, haff, bbox


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
# trilinear sampling


@dataclass(frozen=True)
class _Sampler:
    """Maps on one grid, prepared for fast trilinear sampling at many points.

    Same values as ``scipy.ndimage.map_coordinates(order=1, mode="constant")`` (zero
    wherever a coordinate is outside [0, n - 1]) up to float32 rounding, but the index and
    weight arithmetic is shared by all maps, and cells whose eight corners are all zero
    (air, outside the brain) are skipped. The maps are stored interleaved on the bounding
    box of their nonzero voxels with two zero layers each side, so a coordinate clamped
    into [lo - 2, hi] (stored index 0 .. dims - 2) reads only zeros beyond that box.
    """

    shape: tuple[int, int, int]  # the full source grid
    lo: np.ndarray  # (3,) source index of the first nonzero voxel of the box (stored index 2)
    hi: np.ndarray  # (3,) source index one past the last nonzero voxel
    dims: tuple[int, int, int]  # stored (padded) grid
    values: np.ndarray  # (prod(dims), m) float32
    cells: np.ndarray  # (prod(dims),) bool: some corner of the cell at this index is nonzero

    @classmethod
    def of(cls, *maps: np.ndarray) -> _Sampler:
        shape = maps[0].shape
        nonzero = np.zeros(shape, bool)
        for a in maps:
            nonzero |= a != 0
        spans = [np.flatnonzero(nonzero.any(axis=tuple({0, 1, 2} - {ax}))) for ax in range(3)]
        lo = np.array([sp[0] for sp in spans])
        hi = np.array([sp[-1] + 1 for sp in spans])
        dims = tuple(int(n) + 4 for n in hi - lo)
        # flat stored indices are formed exactly in float32 (see sample)
        assert np.prod(dims) < 2**24, "source grid too large for float32 indices"
        crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        inner = tuple(slice(2, n - 2) for n in dims)
        values = np.zeros((*dims, len(maps)), np.float32)
        for c, a in enumerate(maps):
            values[(*inner, c)] = a[crop]
        cells = np.zeros(dims, bool)
        cells[inner] = nonzero[crop]
        for ax in range(3):  # a cell (i, i + 1) is live if either end is
            a, b = [slice(None)] * 3, [slice(None)] * 3
            a[ax], b[ax] = slice(0, -1), slice(1, None)
            cells[tuple(a)] |= cells[tuple(b)]
        return cls(tuple(shape), lo, hi, dims, values.reshape(-1, len(maps)), cells.ravel())

    @property
    def n_maps(self) -> int:
        return self.values.shape[1]

    def sample(self, coords: np.ndarray) -> np.ndarray:
        """(m, n) float32 values at source indices ``coords`` ((3, n) float32, overwritten)."""
        strides = (self.dims[1] * self.dims[2], self.dims[2], 1)
        flat = np.zeros(coords.shape[1], np.float32)
        frac = []
        for c, n, lo, hi, st in zip(coords, self.shape, self.lo, self.hi, strides, strict=True):
            # outside [0, n - 1] the value is 0; where the maps reach the grid edge the
            # clamp alone would not give that, so send such points to the zero padding
            if lo == 0:
                np.copyto(c, np.float32(-2), where=c < 0)
            if hi == n:
                np.copyto(c, np.float32(n), where=c > n - 1)
            np.clip(c, np.float32(lo - 2), np.float32(hi), out=c)
            c -= np.float32(lo - 2)
            q = np.floor(c)
            frac.append(c - q)
            q *= np.float32(st)
            flat += q
        flat = flat.astype(np.intp)
        live = np.flatnonzero(self.cells[flat])
        m = self.n_maps
        out = np.zeros((m, coords.shape[1]), np.float32)
        if live.size == 0:
            return out
        base = flat[live]
        # weights repeated per map, so that every operation below runs on equal-shaped
        # contiguous (n_live, m) arrays (a broadcast (n, 1) * (n, 4) is several times slower)
        fx, fy, fz = (np.repeat(f[live], m).reshape(-1, m) for f in frac)
        s0, s1 = strides[0], strides[1]

        def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
            b -= a  # a + t (b - a), in place in b
            b *= t
            b += a
            return b

        def take(o: int) -> np.ndarray:
            return np.take(self.values, base + o, axis=0)

        c0, c1, c2, c3 = (lerp(take(o), take(o + 1), fz) for o in (0, s1, s0, s0 + s1))
        res = lerp(lerp(c0, c1, fy), lerp(c2, c3, fy), fx)
        for c in range(m):
            out[c, live] = res[:, c]
        return out


def _sample_points(maps: Sequence[np.ndarray], vox: np.ndarray) -> np.ndarray:
    """(m, n) float32 trilinear values of ``maps`` at voxel indices ``vox`` (3, n), zero
    outside the grid (``map_coordinates(order=1, mode="constant")``): a :class:`_Sampler`
    of the maps cropped to the points' neighbourhood, for a few points on large grids."""
    shape = np.array(maps[0].shape)
    out = np.zeros((len(maps), vox.shape[1]), np.float32)
    lo = np.clip(np.floor(vox.min(axis=1)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(vox.max(axis=1)).astype(int) + 2, 0, shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = [m[crop] for m in maps]
    if np.any(hi <= lo) or not any(a.any() for a in sub):
        return out
    return _Sampler.of(*sub).sample((vox - lo[:, None]).astype(np.float32))


@lru_cache(maxsize=1)
def _samplers() -> tuple[_Sampler, _Sampler]:
    """The template's brain maps (mask, GM, WM, texture) and head map, ready to sample."""
    tpl = _template()
    return _Sampler.of(tpl.mask, tpl.gm, tpl.wm, tpl.texture), _Sampler.of(tpl.head)


# ---------------------------------------------------------------------------------------
# small numerics


def _apply(aff: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    return xyz @ aff[:3, :3].T + aff[:3, 3]


def _cos_basis(n: int, k: int) -> np.ndarray:
    """(k, n) float32 cosines cos(pi a (i + 0.5) / n), a = 0..k-1, of voxel index i."""
    u = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.cos(np.pi * np.arange(k)[:, None] * u[None, :]).astype(np.float32)


def _cos_basis_at(i: np.ndarray, n: int, k: int) -> np.ndarray:
    """(m, k) cosines at continuous voxel indices i (m,)."""
    u = (np.asarray(i, float) + 0.5) / n
    return np.cos(np.pi * u[:, None] * np.arange(k)[None, :])


def _separable(coef: np.ndarray, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> np.ndarray:
    """sum_abc coef[a,b,c] bx[a,i] by[b,j] bz[c,k] as an (ni, nj, nk) float32 array."""
    t = np.tensordot(coef.astype(np.float32), bz, axes=([2], [0]))  # (a, b, nk)
    t = np.einsum("abk,bj->ajk", t, by)  # (a, nj, nk)
    out = bx.T @ t.reshape(t.shape[0], -1)
    return out.reshape(bx.shape[1], by.shape[1], bz.shape[1])


def _random_field(rng: np.random.Generator, k: int, rms: float, ncomp: int) -> np.ndarray:
    """Coefficients (ncomp, k, k, k) of a smooth random cosine field with the given RMS
    (per field, over the grid), power falling as 1 / (1 + |a|^2)^2, no constant term."""
    a = np.arange(k)
    kk = a[:, None, None] ** 2 + a[None, :, None] ** 2 + a[None, None, :] ** 2
    amp = 1.0 / (1.0 + kk)
    amp[0, 0, 0] = 0.0
    c = rng.standard_normal((ncomp, k, k, k)) * amp
    # mean square over the grid of a cosine of order > 0 is 1/2, of order 0 is 1
    w1 = np.where(a == 0, 1.0, 0.5)
    msq = w1[:, None, None] * w1[None, :, None] * w1[None, None, :]
    total = float(np.sum(c**2 * msq)) / ncomp
    return c * (rms / np.sqrt(total)) if total > 0 else c


def _rotation(deg: Sequence[float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# ---------------------------------------------------------------------------------------
# the subject


def make_subject_anatomy(
    rng: np.random.Generator, params: AnatomyParams | None = None
) -> SubjectAnatomy:
    """Draw one subject's head and image it (see the module docstring for the model)."""
    with _blas_single_thread():
        return _make_subject_anatomy(rng, params or AnatomyParams())


def _make_subject_anatomy(rng: np.random.Generator, p: AnatomyParams) -> SubjectAnatomy:
    tpl = _template()
    shape = tuple(int(s) for s in p.shape)
    vox = float(p.voxel_mm)

    # subject affine S: MNI -> world (scaling, rotation, head position)
    scale = p.population_scale * (1.0 + rng.uniform(-p.scale_jitter, p.scale_jitter, 3))
    rot = _rotation(rng.uniform(-1, 1, 3) * np.asarray(p.rotation_deg))
    trans = rng.uniform(-1, 1, 3) * np.asarray(p.translation_mm)
    s_aff = np.eye(4)
    s_aff[:3, :3] = rot @ np.diag(scale)
    s_aff[:3, 3] = trans
    m_aff = np.linalg.inv(s_aff)

    # acquisition grid, axis-aligned RAS, centred on the head as planned
    centre = _apply(s_aff, np.asarray(p.head_centre_mni, float)[None])[0]
    centre = np.round(centre + rng.uniform(-p.fov_offset_mm, p.fov_offset_mm, 3), 1)
    affine = np.diag([vox, vox, vox, 1.0])
    affine[:3, 3] = centre - vox * (np.asarray(shape) - 1) / 2.0

    # nonlinear warp (world mm, as a function of the acquisition voxel index)
    warp = _random_field(rng, _WARP_ORDER + 1, p.warp_rms_mm / np.sqrt(3.0), 3)
    orders = np.arange(_WARP_ORDER + 1)
    grads = np.array(
        [
            [
                float(np.sum(np.abs(np.moveaxis(warp[m], ax, 0)) * orders[:, None, None]))
                * np.pi
                / (shape[ax] * vox)
                for ax in range(3)
            ]
            for m in range(3)
        ]
    )
    grad_bound = float(np.sqrt(np.sum(grads**2)))  # bound on the Frobenius norm of grad d
    if grad_bound > 0.3:  # keep the warp safely invertible
        warp *= 0.3 / grad_bound
    dmax = float(np.linalg.norm(np.sum(np.abs(warp), axis=(1, 2, 3)))) + 2.0
    bases = [_cos_basis(n, _WARP_ORDER + 1) for n in shape]

    def box_of(bbox_mni: np.ndarray) -> tuple[slice, ...]:
        corners = np.array(np.meshgrid(*bbox_mni.T, indexing="ij")).reshape(3, -1).T
        ijk = _apply(np.linalg.inv(affine), _apply(s_aff, corners))
        lo = np.floor(ijk.min(0) - dmax / vox).astype(int)
        hi = np.ceil(ijk.max(0) + dmax / vox).astype(int) + 1
        lo = np.clip(lo, 0, shape)
        hi = np.clip(hi, 0, shape)
        return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))

    def pull(src: _Sampler, src_aff: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
        """(m, *box shape) float32: the maps of ``src`` (on the grid ``src_aff``, MNI mm)
        at the acquisition voxels of ``box`` through the subject transform. The source
        index of voxel (i, j, k) is affine in it plus the separable warp, i.e.
        sum_r w_r(i) P_r(j, k) with w = (bx[:, i], 1, i): one small matrix product per
        sagittal slab gives the slab's coordinates."""
        k = np.linalg.inv(src_aff) @ m_aff  # world -> src index
        lin = k[:3, :3] @ affine[:3, :3]
        off = k[:3, :3] @ affine[:3, 3] + k[:3, 3]
        ii, jj, kk = (np.arange(s.start, s.stop, dtype=float) for s in box)
        bx, by, bz = (b[:, s] for b, s in zip(bases, box, strict=True))
        wc = np.tensordot(k[:3, :3], warp, axes=(1, 0))  # (3, a, b, c): warp in src index
        warp_planes = np.einsum("xabc,bj,ck->axjk", wc, by, bz, optimize=True)
        aff_plane = lin[:, 1, None, None] * jj[:, None] + lin[:, 2, None, None] * kk
        aff_plane += off[:, None, None]
        i_plane = np.broadcast_to(lin[:, 0, None, None], aff_plane.shape)
        planes = np.concatenate([warp_planes, aff_plane[None], i_plane[None]])
        planes = planes.astype(np.float32).reshape(len(planes), -1)  # (A + 2, 3 nj nk)
        weights = np.concatenate([bx, np.ones((1, len(ii))), ii[None]]).astype(np.float32)
        out = np.empty((src.n_maps, len(ii), len(jj), len(kk)), np.float32)
        for s in range(len(ii)):
            coords = (weights[:, s] @ planes).reshape(3, -1)
            out[:, s] = src.sample(coords).reshape(src.n_maps, len(jj), len(kk))
        return out

    hbox = box_of(tpl.head_bbox_mni)
    bbox = box_of(tpl.brain_bbox_mni)
    # brain box relative to the head box
    rel = tuple(
        slice(b.start - h.start, b.stop - h.start) for b, h in zip(bbox, hbox, strict=True)
    )

    def place(a: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
        """``a`` (on ``box``) on the whole grid, zero outside the box."""
        if a.shape == shape:
            return a
        out = np.zeros(shape, a.dtype)
        out[box] = a
        return out

    # planted maps on the brain box: brain fraction, (masked) GM, WM and texture
    brain_src, head_src = _samplers()
    br_b, gm_b, wm_b, tex_b = pull(brain_src, tpl.affine, bbox)
    csf_b = br_b - gm_b
    csf_b -= wm_b
    np.clip(csf_b, 0.0, 1.0, out=csf_b)

    # the clean image: the head outside the brain, the tissue model + texture inside
    # (in place, with one scratch array: these are large)
    clean = pull(head_src, tpl.head_affine, hbox)[0]
    blend = clean[rel]
    scratch = np.subtract(np.float32(1.0), br_b)
    blend *= scratch
    for a, w in ((csf_b, MU["csf"]), (gm_b, MU["gm"]), (wm_b, MU["wm"]),
                 (tex_b, p.texture_weight * (MU["wm"] - MU["gm"]))):
        blend += np.multiply(a, np.float32(w), out=scratch)
    del scratch
    head_mask = place(clean > 0.02, hbox)

    # bias field over the whole FOV
    bcoef = _random_field(rng, _BIAS_ORDER + 1, p.bias_sd, 1)[0]
    bb = [_cos_basis(n, _BIAS_ORDER + 1) for n in shape]
    bias = _separable(bcoef, *bb)
    np.exp(bias, out=bias)

    # Rician magnitude |signal + n1 + i n2|, in place
    clean *= bias[hbox]
    clean *= np.float32(p.wm_level)
    t1 = place(clean, hbox)
    del clean
    sigma = float(p.noise_sd * p.wm_level)
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.float32(sigma)
    t1 += noise
    t1 *= t1
    rng.standard_normal(dtype=np.float32, out=noise)
    noise *= np.float32(sigma)
    noise *= noise
    t1 += noise
    del noise
    np.sqrt(t1, out=t1)

    return SubjectAnatomy(
        t1=t1,
        affine=affine,
        gm=place(gm_b, bbox),
        wm=place(wm_b, bbox),
        csf=place(csf_b, bbox),
        brain_mask=place(br_b >= 0.5, bbox),
        head_mask=head_mask,
        bias=bias,
        noise_sigma=sigma,
        subject_affine=s_aff,
        warp_coef=warp,
        params=p,
    )


def plan_mrs_voxel(
    anat: SubjectAnatomy,
    centre_mni: Sequence[float],
    size_mm: float | Sequence[float],
    angulation_deg: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """NIfTI-MRS affine of an MRS voxel planned on this subject: centred on the world
    position of ``centre_mni``, its edges aligned with the subject's head (the rotation of
    the subject affine, as an operator aligns the box to the anatomy) then angulated by
    ``angulation_deg`` (rotations about x, y, z in degrees); columns have the lengths of
    ``size_mm``."""
    rot = anat.subject_affine[:3, :3] / np.linalg.norm(anat.subject_affine[:3, :3], axis=0)
    aff = np.eye(4)
    size = np.broadcast_to(np.asarray(size_mm, float), 3)
    aff[:3, :3] = rot @ _rotation(angulation_deg) @ np.diag(size)
    aff[:3, 3] = anat.mni_to_world(np.asarray(centre_mni, float)[None])[0]
    return aff


def voxel_truth_fractions(anat: SubjectAnatomy, mrs_affine: np.ndarray, n: int = 32) -> dict:
    """Planted tissue fractions of an MRS voxel.

    Independent of ``mrsflow.segment``'s rasteriser: the voxel box (index coordinates
    [-0.5, 0.5]^3 of ``mrs_affine``) is sampled by n^3 cell-centred points, which are mapped
    to the T1 grid and trilinearly interpolated in the planted GM, WM and CSF maps. The
    fractions are normalised to GM + WM + CSF = 1 (the convention of FSL-MRS and of the
    water-scaling equations); the unnormalised brain fraction and the non-brain remainder
    are returned too (the accumbens voxel lies deep in the brain, so non-brain is ~0).
    """
    g = (np.arange(n) + 0.5) / n - 0.5
    ijk = np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T
    world = _apply(np.asarray(mrs_affine, float), ijk)
    vox = _apply(np.linalg.inv(anat.affine), world).T
    vals = [float(v.mean()) for v in _sample_points((anat.gm, anat.wm, anat.csf), vox)]
    tot = sum(vals)
    if tot <= 0:
        return {"f_gm": np.nan, "f_wm": np.nan, "f_csf": np.nan, "brain_fraction": 0.0,
                "nonbrain_fraction": 1.0}
    return {
        "f_gm": vals[0] / tot,
        "f_wm": vals[1] / tot,
        "f_csf": vals[2] / tot,
        "brain_fraction": tot,
        "nonbrain_fraction": 1.0 - tot,
    }


# ---------------------------------------------------------------------------------------
# DICOM export

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _dicom_layout(shape: Sequence[int], affine: np.ndarray, slice_axis: int):
    """Permutation/flips of the array into (slice, row, column) DICOM order, and the affine
    of that order. In-plane axes follow the usual display: rows run to the patient's
    inferior (or posterior, for axial slices), columns to the patient's left (or posterior,
    for sagittal slices); slices run towards increasing LPS coordinate of the normal."""
    lps = _LPS @ affine
    inplane = [a for a in range(3) if a != slice_axis]
    dom = {a: int(np.argmax(np.abs(lps[:3, a]))) for a in range(3)}
    # which in-plane axis runs down the rows: the one closest to S-I, else A-P (axial)
    zs = [a for a in inplane if dom[a] == 2]
    row_axis = zs[0] if zs else next((a for a in inplane if dom[a] == 1), inplane[1])
    col_axis = next(a for a in inplane if a != row_axis)
    want = {0: 1.0, 1: 1.0, 2: -1.0}  # desired sign of the dominant LPS component
    order = (slice_axis, row_axis, col_axis)
    flips = []
    for role, a in enumerate(order):
        comp = lps[dom[a], a]
        desired = 1.0 if role == 0 else want[dom[a]]
        if role == 1 and dom[a] == 1:  # axial rows run anterior -> posterior (+y LPS)
            desired = 1.0
        flips.append(np.sign(comp) != desired)
    # affine of the reordered array
    perm = np.zeros((4, 4))
    perm[3, 3] = 1.0
    for new, (a, f) in enumerate(zip(order, flips, strict=True)):
        n = shape[a]
        perm[a, new] = -1.0 if f else 1.0
        perm[a, 3] = (n - 1) if f else 0.0
    return order, flips, affine @ perm


def _name_uid(*parts: str) -> str:
    """Deterministic DICOM UID: the 2.25 arc (ISO/IEC 9834-8) with a name-based (SHA-1,
    version 5) UUID of the parts."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "mrsflow-twin/" + "/".join(parts)).int)


def _ds(value: float, digits: int = 10) -> str:
    """A DICOM decimal string (<= 16 characters)."""
    for d in range(digits, 0, -1):
        s = f"{value:.{d}g}"
        if len(s) <= 16:
            return s
    return f"{value:.1e}"


def write_t1_dicom(
    outdir: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    patient_id: str,
    study_uid_seed: int,
    series_description: str = "T1w_MPRAGE",
    series_number: int = 301,
    slice_axis: int = 0,
    repetition_time_ms: float = 8.1,
    echo_time_ms: float = 3.7,
    inversion_time_ms: float = 900.0,
    flip_angle_deg: float = 8.0,
    study_date: str | None = None,
) -> list[Path]:
    """Write ``volume`` (array with a RAS vox->world ``affine``) as a classic single-frame
    MR Image Storage series, one file per slice (``IM_0001.dcm`` ...), Philips-like tags.

    Pixels are uint16 (12 bits stored) with RescaleSlope chosen so the maximum is 4095.
    Geometry is exact: ImagePositionPatient / ImageOrientationPatient / PixelSpacing are
    derived from ``affine`` (converted to LPS), so any oblique affine round-trips through
    a converter such as dcm2niix. Everything is deterministic: UIDs are hashed from the
    seed, patient id and series, dates from the seed (no clock, no random state).
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    vol = np.asarray(volume)
    order, flips, aff = _dicom_layout(vol.shape, np.asarray(affine, float), slice_axis)
    vmax = float(np.nanmax(vol)) if vol.size else 0.0
    slope_str = _ds(max(vmax, 1e-6) / 4095.0, 8)
    slope = float(slope_str)
    # scale in the array's own (contiguous) order, in place, then reorder the uint16 pixels;
    # fmax maps NaN to 0 (and the clip +/-inf to 4095/0), as nan_to_num then clip would
    q = np.divide(vol, slope)
    np.rint(q, out=q)
    np.fmax(q, 0, out=q)
    np.minimum(q, 4095, out=q)
    pix = np.transpose(q.astype("<u2"), order)
    pix = pix[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]

    def uid(*parts: object) -> str:
        return _name_uid(str(study_uid_seed), patient_id, *map(str, parts))

    study_uid = uid("study")
    series_uid = uid("series", series_number, series_description)
    frame_uid = uid("frame-of-reference")
    if study_date is None:
        day = np.datetime64("2022-01-03") + int(study_uid_seed) % 700
        study_date = str(day).replace("-", "")
    minutes = 8 * 60 + int(study_uid_seed) % 480
    study_time = f"{minutes // 60:02d}{minutes % 60:02d}00"

    lps = _LPS @ aff
    spacing = np.linalg.norm(aff[:3, :3], axis=0)  # slice, row, column steps (mm)
    row_cos = lps[:3, 2] / spacing[2]  # direction of increasing column index
    col_cos = lps[:3, 1] / spacing[1]  # direction of increasing row index
    normal = np.cross(row_cos, col_cos)
    iop = [_ds(float(v)) for v in (*row_cos, *col_cos)]
    centre = float(np.percentile(pix, 99.5)) * slope

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _name_uid("implementation")
    meta.ImplementationVersionName = "MRSFLOW_TWIN"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = "Philips"
    ds.InstitutionName = "mrsflow twin"
    ds.ReferringPhysicianName = ""
    ds.StationName = "TWIN-MR3T"
    ds.StudyDescription = "MRS accumbens"
    ds.SeriesDescription = series_description
    ds.ProtocolName = series_description
    ds.ManufacturerModelName = "Ingenia"
    ds.SoftwareVersions = "5.7.1"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = ["GR", "IR"]
    ds.SequenceVariant = ["SK", "SP", "MP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.SliceThickness = _ds(float(spacing[0]))
    ds.RepetitionTime = _ds(repetition_time_ms)
    ds.EchoTime = _ds(echo_time_ms)
    ds.InversionTime = _ds(inversion_time_ms)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "127.8"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = "3"
    ds.SpacingBetweenSlices = _ds(float(spacing[0]))
    ds.EchoTrainLength = "1"
    ds.PixelBandwidth = "241"
    ds.ReceiveCoilName = "HEAD 32"
    ds.TransmitCoilName = "B"
    ds.FlipAngle = _ds(flip_angle_deg)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(int(study_uid_seed) % 100000)
    ds.SeriesNumber = str(series_number)
    ds.AcquisitionNumber = "1"
    ds.ImageOrientationPatient = iop
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pix.shape[1]), int(pix.shape[2])
    ds.PixelSpacing = [_ds(float(spacing[1])), _ds(float(spacing[2]))]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = _ds(round(centre / 2.0, 1))
    ds.WindowWidth = _ds(round(centre, 1))
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = slope_str
    ds.RescaleType = "normalized"

    # Only a few elements differ between slices. The rest of the file meta and of the
    # dataset is encoded once, as the runs of (tag-ordered) elements between them, and each
    # file is spliced from those runs: the same bytes as ds.save_as(path,
    # enforce_file_format=True) per slice, without re-encoding ~90 elements 192 times.
    charset = ds.SpecificCharacterSet

    def element(tag: int, vr: str, value) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_data_element(fp, DataElement(tag, vr, value), charset)
        return fp.getvalue()

    def runs(d: Dataset, cut: list[int]) -> list[bytes]:
        """Encodings of the elements of d before, between and after the tags cut."""
        assert cut == sorted(cut) and not any(t in d for t in cut)
        out = []
        for lo, hi in zip([-1, *cut], [*cut, 1 << 32], strict=True):
            run = Dataset()
            for elem in d:
                if lo < elem.tag < hi:
                    run.add(elem)
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = False, True
            write_dataset(fp, run, parent_encoding=charset)
            out.append(fp.getvalue())
        return out

    # file meta: let pydicom complete and validate it once (version, group length)
    meta.MediaStorageSOPInstanceUID = uid("instance", series_number, 0)
    write_file_meta_info(DicomBytesIO(), meta, enforce_standard=True)
    group_length, meta_sop = (tag_for_keyword(k) for k in (
        "FileMetaInformationGroupLength", "MediaStorageSOPInstanceUID"))
    del meta[group_length], meta[meta_sop]
    meta_runs = runs(meta, [group_length, meta_sop])
    per_slice = [(tag_for_keyword(k), dictionary_VR(k)) for k in (
        "SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation")]
    per_slice.append((tag_for_keyword("PixelData"), "OW"))  # OW: 16 bits allocated
    ds_runs = runs(ds, [t for t, _ in per_slice])

    paths = []
    for s in range(pix.shape[0]):
        sop = uid("instance", series_number, s)
        pos = lps[:3, :3] @ np.array([s, 0.0, 0.0]) + lps[:3, 3]
        values = (sop, str(s + 1), [_ds(float(v)) for v in pos], _ds(float(pos @ normal)),
                  pix[s].tobytes())
        meta_rest = meta_runs[1] + element(meta_sop, "UI", sop) + meta_runs[2]
        parts = [b"\x00" * 128, b"DICM", meta_runs[0],
                 element(group_length, "UL", len(meta_rest)), meta_rest, ds_runs[0]]
        for (tag, vr), value, run in zip(per_slice, values, ds_runs[1:], strict=True):
            parts += [element(tag, vr, value), run]
        path = outdir / f"IM_{s + 1:04d}.dcm"
        path.write_bytes(b"".join(parts))
        paths.append(path)
    return paths
