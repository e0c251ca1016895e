"""Vendor raw-format writers (and minimal readers) for the synthetic twin.

What a scanner exports, written from project-convention data:

* Philips SPAR (text header) + SDAT (VAX F-float complex, one row per FID);
* Siemens RDA (text header + complex double data, one pre-averaged FID).

Conventions (fixed project-wide) - and what the vendors/standard really do
-------------------------------------------------------------------------
*Project FIDs*: a resonance at ``delta`` ppm is ``exp(+2j*pi*nu*t)`` with
``nu = (delta - 4.65) * f0_MHz`` Hz, so ``fftshift(fft(fid))`` puts it at ``+nu``
on the ascending axis ``fftshift(fftfreq(n, dwell))``.

Checked against the sources below: this is **not** what a NIfTI-MRS file
*stores*; the file stores its complex conjugate:

* NIfTI-MRS specification, Appendix A (Levitt's right-handed frame: frequency
  axis increasing left to right, deshielded/high-ppm nuclei at *negative*
  relative frequency), https://github.com/wtclarke/mrs_nifti_standard
  (``specification.MD``).
* spant (M. Wilson, NIfTI-MRS co-author) reads NIfTI-MRS unconjugated
  (``R/mrs_read_nifti.R``) and uses ``ppm = ref - Hz / f0`` (``R/mrs_data_proc.R::
  ppm.mrs_data``, ``ppm2hz``): high ppm = negative frequency in stored data.
* nifti_mrs / FSL-MRS (W. Clarke) conjugate on access
  (``nifti_mrs/nifti_mrs.py::NIFTI_MRS.__getitem__``: "swaps from the NIFTI-MRS
  ... right-handed reference frame to a left-handed one") and then use
  ``ppm = 4.65 + Hz / f0`` (``fsl_mrs/utils/misc.py::hz2ppm``, ``create_peak``).

So the project convention == ``NIFTI_MRS(path)[:]`` == ``conj(stored)`` (use
:func:`mrsflow.convert.read_fids`).  For the raw vendor files:

* Philips SDAT holds the project convention; spec2nii 0.8.15 conjugates it on read
  (``spec2nii/Philips/philips.py::read_sdat_spar_pair``: ``data = data.conj()``,
  "Move to right handed frame"; spant's ``read_sdat`` likewise returns
  ``re - 1j*im``).  :func:`write_philips` therefore stores ``fids`` unchanged.
* Siemens RDA holds the NIfTI-MRS convention; spec2nii's
  ``spec2nii/Siemens/rda.py::convert_rda`` (and spant's ``read_rda``) do not
  conjugate.  :func:`write_rda` therefore stores ``conj(fid)``.

Either way, ``spec2nii`` output satisfies ``read_fids(nii) == fids``.

*Geometry* is given in NIfTI RAS+ millimetres.  Philips (``*_off_center``) and
Siemens (``VOIPosition*``, ``RowVector`` ...) use LPS-like patient coordinates:
``x_LPS = -x_RAS``, ``y_LPS = -y_RAS``, ``z_LPS = z_RAS``.

The voxel is parameterised like the Philips SPAR: sizes and angulations in the
order **(AP, LR, CC)**.  spec2nii (``spec2nii/Philips/philips.py::
_philips_orientation`` with ``spec2nii/nifti_orientation.py::calc_affine``)
builds the RAS voxel-to-world matrix as::

    R = Rx(-lr_angulation) @ Ry(-ap_angulation) @ Rz(cc_angulation)
    affine[:3, :3] = R @ diag(lr_size, ap_size, cc_size)
    affine[:3, 3]  = (-lr_off_center, -ap_off_center, cc_off_center)

(scipy ``Rotation.from_euler('XYZ', ...)``, i.e. *intrinsic* x-y-z rotations),
so voxel axis 0 is the voxel's LR edge, axis 1 its AP edge, axis 2 its CC edge.
:meth:`VoxelGeometry.affine` reproduces exactly that matrix (written
independently here and checked against spec2nii output in the tests).  Because
``diag(-1, -1, 1)`` is itself a proper rotation, this equals the LPS rotation
``Rx(lr) @ Ry(ap) @ Rz(cc)`` (Philips' own frame) mapped to RAS.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PPM_REFERENCE",
    "SPAR_REQUIRED_KEYS",
    "VoxelGeometry",
    "philips_pair",
    "read_rda_header",
    "read_sdat",
    "read_spar",
    "siemens_inplane_rotation",
    "siemens_prs_vectors",
    "validate_spar",
    "vax_f_decode",
    "vax_f_encode",
    "write_philips",
    "write_rda",
]

#: Chemical shift (ppm) at the spectrometer frequency (water), project-wide.
PPM_REFERENCE = 4.65

# LPS <-> RAS flip (its own inverse; det = +1, i.e. a 180 degree rotation about z)
_FLIP_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------
# file pairs
# --------------------------------------------------------------------------------------
def sibling(path: Path, suffix: str) -> Path | None:
    """File next to ``path`` with the same stem and ``suffix`` (case-insensitive)."""
    for cand in (suffix.upper(), suffix.lower(), suffix.capitalize()):
        p = path.with_suffix(cand)
        if p.is_file():
            return p
    try:
        for p in path.parent.iterdir():
            if p.stem == path.stem and p.suffix.lower() == suffix.lower() and p.is_file():
                return p
    except OSError:
        pass
    return None


def philips_pair(path: Path) -> tuple[Path, Path] | None:
    """(SDAT, SPAR) for either member of a Philips pair, or None."""
    ext = path.suffix.lower()
    if ext == ".sdat":
        spar = sibling(path, ".spar")
        return (path, spar) if spar is not None else None
    if ext == ".spar":
        sdat = sibling(path, ".sdat")
        return (sdat, path) if sdat is not None else None
    return None


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def _rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"VoxelGeometry.{name} must be 3 numbers, got {value!r}") from exc
    if arr.shape != (3,):
        raise ValueError(f"VoxelGeometry.{name} must be 3 numbers, got {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"VoxelGeometry.{name} must be finite, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True)
class VoxelGeometry:
    """Single-voxel (VOI) placement, Philips-style.

    Attributes
    ----------
    centre_ras_mm:
        Voxel centre in NIfTI RAS+ world coordinates (mm).
    size_mm:
        Edge lengths (mm) in the voxel's own axes, ordered **(AP, LR, CC)** as
        the SPAR keys ``ap_size, lr_size, cc_size``.
    angulation_deg:
        Philips angulations (degrees) ordered **(AP, LR, CC)** as the SPAR keys
        ``ap_angulation, lr_angulation, cc_angulation`` (rotations about the
        patient AP, LR and CC axes; see the module docstring for the exact
        composition, which is spec2nii's).
    """

    centre_ras_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    angulation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre_ras_mm", _triple("centre_ras_mm", self.centre_ras_mm))
        object.__setattr__(self, "size_mm", _triple("size_mm", self.size_mm))
        object.__setattr__(self, "angulation_deg", _triple("angulation_deg", self.angulation_deg))
        if min(self.size_mm) <= 0:
            raise ValueError(f"VoxelGeometry.size_mm must be positive, got {self.size_mm}")

    # -- named accessors (Philips naming) -------------------------------------------
    @property
    def ap_size(self) -> float:
        return self.size_mm[0]

    @property
    def lr_size(self) -> float:
        return self.size_mm[1]

    @property
    def cc_size(self) -> float:
        return self.size_mm[2]

    @property
    def ap_angulation(self) -> float:
        return self.angulation_deg[0]

    @property
    def lr_angulation(self) -> float:
        return self.angulation_deg[1]

    @property
    def cc_angulation(self) -> float:
        return self.angulation_deg[2]

    @property
    def centre_lps_mm(self) -> tuple[float, float, float]:
        x, y, z = self.centre_ras_mm
        return (-x, -y, z)

    # -- matrices ---------------------------------------------------------------------
    def rotation_ras(self) -> np.ndarray:
        """3x3 rotation whose columns are the unit directions (RAS) of the voxel's
        LR, AP and CC edges (= NIfTI voxel axes 0, 1, 2)."""
        return (
            _rot_x(-self.lr_angulation) @ _rot_y(-self.ap_angulation) @ _rot_z(self.cc_angulation)
        )

    def rotation_lps(self) -> np.ndarray:
        """The same rotation expressed in LPS patient coordinates
        (``Rx(lr) @ Ry(ap) @ Rz(cc)``)."""
        return _FLIP_LPS_RAS @ self.rotation_ras() @ _FLIP_LPS_RAS

    def edge_vectors_ras(self) -> np.ndarray:
        """3x3 matrix whose columns are the voxel's LR, AP and CC edge vectors (mm, RAS)."""
        return self.rotation_ras() @ np.diag([self.lr_size, self.ap_size, self.cc_size])

    def affine(self) -> np.ndarray:
        """4x4 RAS voxel-to-world matrix of the 1x1x1 NIfTI whose voxel is the VOI.

        Identical to what ``spec2nii philips`` (and, with :func:`write_rda`'s
        vector choice, ``spec2nii rda``) writes; the voxel centre is
        ``affine() @ [0, 0, 0, 1]``.
        """
        out = np.eye(4)
        out[:3, :3] = self.edge_vectors_ras()
        out[:3, 3] = self.centre_ras_mm
        return out

    @classmethod
    def from_rotation(
        cls,
        centre_ras_mm: Any,
        size_mm: Any,
        rotation_ras: Any,
    ) -> VoxelGeometry:
        """Build from a RAS rotation matrix (columns: LR, AP, CC edge directions).

        Inverse of :meth:`rotation_ras` (``R = Rx(a) Ry(b) Rz(c)`` with
        ``a = -lr, b = -ap, c = cc``); at ``|ap| = 90`` deg (gimbal lock) the split
        between ``lr`` and ``cc`` is arbitrary (``cc = 0`` is chosen).
        """
        rot = np.asarray(rotation_ras, dtype=float)
        if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
            raise ValueError("rotation_ras must be a finite 3x3 matrix")
        if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6) or np.linalg.det(rot) <= 0:
            raise ValueError("rotation_ras must be a proper rotation (orthonormal, det=+1)")
        sin_b = float(np.clip(rot[0, 2], -1.0, 1.0))
        b = math.asin(sin_b)
        if abs(math.cos(b)) > 1e-9:
            a = math.atan2(-rot[1, 2], rot[2, 2])
            c = math.atan2(-rot[0, 1], rot[0, 0])
        else:  # gimbal lock
            c = 0.0
            a = math.atan2(rot[2, 1], rot[1, 1])
        ap, lr, cc = -math.degrees(b), -math.degrees(a), math.degrees(c)
        return cls(tuple(centre_ras_mm), tuple(size_mm), (ap, lr, cc))


# --------------------------------------------------------------------------------------
# VAX F-float
# --------------------------------------------------------------------------------------
# VAX F_floating (DEC VAX architecture): 32 bits = sign(1) | exponent(8, bias 128) |
# fraction(23, hidden leading bit), value = (-1)^s * 0.1f (binary) * 2^(e - 128),
# i.e. (0.5 + f / 2^24) * 2^(e - 128); e == 0 with s == 0 is zero, e == 0 with s == 1
# is the "reserved operand".  In memory it is two little-endian 16-bit words with the
# *high* word (sign, exponent, top 7 fraction bits) first - the layout spec2nii's
# ``_vax_to_ieee_single_float`` (from VeSPA) decodes.
_VAX_BIAS = 128
_VAX_MAX_EXP = 255


def vax_f_encode(values: Any) -> bytes:
    """Encode real values as VAX F-floats (4 bytes each, in order).

    Values are first rounded to IEEE float32 (round-half-even), whose 24-bit
    significand VAX F holds exactly; magnitudes below VAX's smallest normal
    (2**-128) flush to 0.  Non-finite values and magnitudes above the VAX F
    maximum (~1.7e38) raise ``ValueError``.
    """
    x = np.asarray(values)
    if np.iscomplexobj(x):
        raise ValueError("vax_f_encode takes real values; interleave real/imag first")
    x = x.astype(np.float32).astype(np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("VAX F-float cannot hold NaN or infinity")
    mant, expo = np.frexp(x)  # x = mant * 2**expo, 0.5 <= |mant| < 1 (or 0)
    vexp = expo.astype(np.int64) + _VAX_BIAS
    nonzero = mant != 0
    if np.any(nonzero & (vexp > _VAX_MAX_EXP)):
        worst = float(np.max(np.abs(x)))
        raise ValueError(f"value {worst:g} exceeds the VAX F-float range (~1.7e38)")
    zero = ~nonzero | (vexp <= 0)
    frac = np.rint(np.abs(mant) * 2.0**24).astype(np.int64) - 2**23  # 23 stored bits
    sign = np.signbit(mant).astype(np.int64)
    hi = (sign << 15) | (np.clip(vexp, 0, _VAX_MAX_EXP) << 7) | ((frac >> 16) & 0x7F)
    lo = frac & 0xFFFF
    hi[zero] = 0
    lo[zero] = 0
    words = np.empty(2 * x.size, dtype="<u2")
    words[0::2] = hi
    words[1::2] = lo
    return words.tobytes()


def vax_f_decode(buffer: bytes) -> np.ndarray:
    """Decode VAX F-floats (4 bytes each) to float64 (exact).

    The reserved operand (sign set, exponent 0) decodes to NaN.
    """
    if len(buffer) % 4:
        raise ValueError(f"VAX F buffer length {len(buffer)} is not a multiple of 4")
    words = np.frombuffer(buffer, dtype="<u2")
    hi = words[0::2].astype(np.int64)
    lo = words[1::2].astype(np.int64)
    sign = hi >> 15
    vexp = (hi >> 7) & 0xFF
    significand = (1 << 23) | ((hi & 0x7F) << 16) | lo  # 0.1f * 2^24
    val = np.ldexp(significand.astype(np.float64), (vexp - _VAX_BIAS - 24).astype(np.int32))
    val = np.where(sign == 1, -val, val)
    val = np.where(vexp == 0, np.where(sign == 1, np.nan, 0.0), val)
    return val


# --------------------------------------------------------------------------------------
# shared validation helpers
# --------------------------------------------------------------------------------------
def _positive(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return out


def _non_negative(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return out


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_fids(fids: Any, *, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(fids)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be a numeric (complex) array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        shape = "(n_rows, n_points)" if ndim == 2 else "(n_points,)"
        raise ValueError(f"{what} must have shape {shape}, got {arr.shape}")
    if arr.size == 0 or arr.shape[-1] < 2:
        raise ValueError(f"{what} needs at least 2 points per FID, got shape {arr.shape}")
    arr = arr.astype(np.complex128)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return arr


def _check_extra(extra: Mapping[str, Any] | None, protected: set[str], fmt: str) -> dict:
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise ValueError(f"extra must be a mapping of {fmt} header keys, got {type(extra)}")
    clash = sorted(k for k in extra if k in protected)
    if clash:
        raise ValueError(
            f"extra may not override {fmt} keys derived from the arguments: {clash}"
        )
    for key, value in extra.items():
        if not isinstance(key, str) or not re.fullmatch(r"[\w\[\],. ]+", key) or ":" in key:
            raise ValueError(f"invalid {fmt} header key {key!r}")
        if "\n" in str(value) or "\r" in str(value):
            raise ValueError(f"{fmt} header value for {key!r} contains a line break")
    return dict(extra)


def _num(value: float) -> str:
    """Shortest exact text for a number (integers without a decimal point)."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# --------------------------------------------------------------------------------------
# Philips SPAR / SDAT
# --------------------------------------------------------------------------------------
#: Keys ``spec2nii philips`` (0.8.15) reads unconditionally (KeyError otherwise).
SPAR_REQUIRED_KEYS: tuple[str, ...] = (
    "samples",
    "rows",
    "sample_frequency",
    "synthesizer_frequency",
    "nucleus",
    "echo_time",
    "repetition_time",
    "spectrum_inversion_time",
    "offset_frequency",
    "scan_id",
    "patient_position",
    "patient_orientation",
    "volume_selection_enable",
)
#: Further keys needed when ``volume_selection_enable`` is "yes".
SPAR_GEOMETRY_KEYS: tuple[str, ...] = (
    "ap_size",
    "lr_size",
    "cc_size",
    "ap_off_center",
    "lr_off_center",
    "cc_off_center",
    "ap_angulation",
    "lr_angulation",
    "cc_angulation",
)
_SPAR_NUMERIC = (
    "samples",
    "rows",
    "sample_frequency",
    "synthesizer_frequency",
    "echo_time",
    "repetition_time",
    "spectrum_inversion_time",
    "offset_frequency",
)
# keys spec2nii treats as strings (.lower(), string concatenation)
_SPAR_STRING_KEYS = ("scan_id", "patient_position", "patient_orientation", "nucleus")
_SPAR_PROTECTED = {
    "samples",
    "rows",
    "synthesizer_frequency",
    "sample_frequency",
    "echo_time",
    "repetition_time",
    "spectrum_echo_time",
    "averages",
    "volume_selection_enable",
    "volumes",
    "spec_num_col",
    "spec_num_row",
    "spec_col_upper_val",
    "spec_row_upper_val",
    "dim1_pnts",
    "dim1_low_val",
    "dim1_step",
    "dim1_t0_point",
    "dim2_pnts",
    *SPAR_GEOMETRY_KEYS,
}

_SPAR_BANNER = """\
!-----------------------------------------------------------------------------
!  Philips Medical Systems
!  spectroscopy parameter file (SPAR)
!  synthetic export written by mrsflow.vendor (not a real scanner)
!-----------------------------------------------------------------------------
"""


def _spar_text(key: str, value: Any) -> str:
    """Render a SPAR value the way a Philips scanner writes it."""
    if isinstance(value, bool):
        return '"yes"' if value else '"no"'
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _num(value)
    text = str(value).strip()
    if key in _SPAR_STRING_KEYS and not (len(text) >= 2 and text[0] == text[-1] == '"'):
        # spec2nii literal_eval()s every value: quote text that would otherwise
        # come back as a non-string (e.g. a numeric scan_id) or as None (empty)
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = text
        if not isinstance(parsed, str) or text == "":
            text = f'"{text}"'
    return text


def write_philips(
    stem: Path | str,
    fids: np.ndarray,
    *,
    f0_mhz: float,
    bandwidth_hz: float,
    te_ms: float,
    tr_ms: float,
    geometry: VoxelGeometry,
    n_averages_per_row: int,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.SPAR`` and ``<stem>.SDAT`` as a Philips scanner exports them.

    ``fids`` is ``(n_rows, n_points)`` complex in the project convention: one row
    per stored FID (every transient for metabolite-cycled data, with the cycle
    state alternating row by row; or a single pre-averaged row).  The SDAT holds
    ``fids`` as VAX F-floats (rows consecutive, real/imag interleaved) - Philips
    stores the project convention, i.e. the conjugate of NIfTI-MRS - so
    ``spec2nii philips`` stores ``conj(fids)`` (the NIfTI-MRS convention) and
    ``mrsflow.convert.read_fids`` returns ``fids`` (to float32 precision).

    ``synthesizer_frequency`` is written as integer Hz (``round(f0_mhz * 1e6)``),
    as the scanner does; pass ``f0_mhz`` with at most 6 decimals to round-trip.
    ``extra`` adds or overrides descriptive keys (``scan_id``, ``scan_date``,
    ``patient_name``, ``examination_name``, ``offset_frequency``, ...); keys that
    the arguments determine (sizes, timing, geometry) cannot be overridden.
    Returns ``(spar_path, sdat_path)``.
    """
    data = _check_fids(fids, ndim=2, what="fids")
    n_rows, n_points = data.shape
    f0 = _positive("f0_mhz", f0_mhz)
    bw = _positive("bandwidth_hz", bandwidth_hz)
    te = _non_negative("te_ms", te_ms)
    tr = _positive("tr_ms", tr_ms)
    nsa = _count("n_averages_per_row", n_averages_per_row)
    if not isinstance(geometry, VoxelGeometry):
        raise ValueError(f"geometry must be a VoxelGeometry, got {type(geometry)}")
    zero_rows = np.flatnonzero(~np.any(data != 0, axis=1))
    if zero_rows.size:
        # spec2nii >= 0.8.13 silently drops all-zero higher-dimension indices
        raise ValueError(f"fids rows {zero_rows.tolist()} are all zero (never exported)")
    extras = _check_extra(extra, _SPAR_PROTECTED, "SPAR")

    synth_hz = int(round(f0 * 1e6))
    g = geometry
    lr_off, ap_off, cc_off = -g.centre_ras_mm[0], -g.centre_ras_mm[1], g.centre_ras_mm[2]
    params: dict[str, Any] = {
        "examination_name": "MRS study",
        "scan_id": "WIP PRESS",
        "scan_date": datetime(2024, 1, 1, 12, 0, 0).strftime("%Y.%m.%d %H:%M:%S"),
        "patient_name": "anonymous",
        "patient_birth_date": "1900.01.01",
        "patient_position": '"head_first"',
        "patient_orientation": '"supine"',
        "samples": n_points,
        "rows": n_rows,
        "synthesizer_frequency": synth_hz,
        "offset_frequency": 0,
        "sample_frequency": bw,
        "echo_nr": 1,
        "mix_number": 1,
        "nucleus": "1H",
        "t0_mu1_direction": 0,
        "echo_time": te,
        "repetition_time": tr,
        "averages": nsa,
        "volume_selection_enable": '"yes"',
        "volumes": 1,
        "ap_size": g.ap_size,
        "lr_size": g.lr_size,
        "cc_size": g.cc_size,
        "ap_off_center": ap_off,
        "lr_off_center": lr_off,
        "cc_off_center": cc_off,
        "ap_angulation": g.ap_angulation,
        "lr_angulation": g.lr_angulation,
        "cc_angulation": g.cc_angulation,
        "volume_selection_method": 2,
        "t1_measurement_enable": '"no"',
        "t2_measurement_enable": '"no"',
        "time_series_enable": '"no"',
        "phase_encoding_enable": '"no"',
        "nr_phase_encoding_profiles": 1,
        "si_ap_off_center": ap_off,
        "si_lr_off_center": lr_off,
        "si_cc_off_center": cc_off,
        "si_ap_off_angulation": g.ap_angulation,
        "si_lr_off_angulation": g.lr_angulation,
        "si_cc_off_angulation": g.cc_angulation,
        "t0_kx_direction": 0,
        "t0_ky_direction": 0,
        "nr_of_phase_encoding_profiles_ky": 1,
        "phase_encoding_direction": '"lr"',
        "phase_encoding_fov": g.lr_size,
        "nr_of_slices_for_multislice": 1,
        "spec_data_type": "cf",
        "spec_sample_extension": "[Hz]",
        "spec_num_col": n_points,
        "spec_col_lower_val": 1,
        "spec_col_upper_val": n_points,
        "spec_col_extension": "[pt]",
        "spec_num_row": n_rows,
        "spec_row_lower_val": 1,
        "spec_row_upper_val": n_rows,
        "spec_row_extension": "[pt]",
        "num_dimensions": 2,
        "dim1_ext": "[Hz]",
        "dim1_pnts": n_points,
        "dim1_low_val": -bw / 2,
        "dim1_step": bw / n_points,
        "dim1_direction": "x",
        "dim1_t0_point": n_points // 2,
        "dim2_ext": "[pt]",
        "dim2_pnts": n_rows,
        "dim2_low_val": 1,
        "dim2_step": 1,
        "dim2_direction": "y",
        "dim2_t0_point": 1,
        "echo_acquisition": '"Echo"',
        "TSI_factor": 0,
        "spectrum_echo_time": te,
        "spectrum_inversion_time": 0,
        "image_chemical_shift": 0,
        "resp_motion_comp_technique": '"none"',
        "de_coupling": '"no"',
        "equipment_sw_verions": "5.6.1 ; 5.6.1.1 ;",  # sic: Philips' spelling
    }
    params.update(extras)

    lines = [f"{key} : {_spar_text(key, value)}" for key, value in params.items()]
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    spar_path = Path(f"{stem}.SPAR")
    sdat_path = Path(f"{stem}.SDAT")
    spar_path.write_text(_SPAR_BANNER + "\n".join(lines) + "\n", encoding="ascii")

    # Philips stores the project convention (= conjugate of NIfTI-MRS): no conjugation
    interleaved = np.empty((n_rows, 2 * n_points), dtype=np.float64)
    interleaved[:, 0::2] = data.real
    interleaved[:, 1::2] = data.imag
    sdat_path.write_bytes(vax_f_encode(interleaved))
    return spar_path, sdat_path


_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _spar_convert(text: str) -> Any:
    if text == "":
        return None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    return text


def read_spar(path: Path | str) -> dict[str, Any]:
    """Parse a SPAR file into ``{key: value}``.

    Tolerant of CRLF, blank/whitespace lines, ``!`` comments, spaces around the
    first ``:``; values become ``int``/``float`` when numeric, quoted text loses
    its quotes, empty values are ``None``.  A non-comment line without ``:``,
    an empty key, or a key repeated with a different value raises
    ``ValueError`` naming the file and line.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    out: dict[str, Any] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("!"):
            continue
        if ":" not in stripped:
            raise ValueError(f"{path}: line {lineno}: expected 'key : value', got {line!r}")
        key, value = (part.strip() for part in stripped.split(":", 1))
        if not key:
            raise ValueError(f"{path}: line {lineno}: empty key in {line!r}")
        converted = _spar_convert(value)
        if key in out and out[key] != converted:
            raise ValueError(
                f"{path}: line {lineno}: key {key!r} repeated with a different value "
                f"({out[key]!r} then {converted!r})"
            )
        out[key] = converted
    if not out:
        raise ValueError(f"{path}: no 'key : value' lines found (not a SPAR file?)")
    return out


def validate_spar(params: Mapping[str, Any], path: Path | str = "<SPAR>") -> None:
    """Check that a parsed SPAR has what ``spec2nii philips`` needs.

    Raises ``ValueError`` naming the file and the missing/invalid key(s).
    """
    missing = [k for k in SPAR_REQUIRED_KEYS if params.get(k) is None]
    if params.get("volume_selection_enable") == "yes":
        missing += [k for k in SPAR_GEOMETRY_KEYS if params.get(k) is None]
    if missing:
        raise ValueError(f"{path}: SPAR is missing required key(s): {', '.join(missing)}")
    bad = [
        k
        for k in (*_SPAR_NUMERIC, *(g for g in SPAR_GEOMETRY_KEYS if g in params))
        if isinstance(params[k], bool) or not isinstance(params[k], (int, float))
    ]
    bad += [k for k in _SPAR_STRING_KEYS if not isinstance(params[k], str)]
    bad += [k for k in ("samples", "rows") if isinstance(params[k], int) and params[k] < 1]
    if bad:
        raise ValueError(
            f"{path}: SPAR key(s) with invalid values: "
            + ", ".join(f"{k}={params[k]!r}" for k in bad)
        )


def read_sdat(path: Path | str, n_points: int, n_rows: int) -> np.ndarray:
    """Read an SDAT as stored (Philips stores the project convention).

    Returns complex128 ``(n_rows, n_points)``.  Raises ``ValueError`` naming the
    file if its size does not match or it holds VAX reserved operands.
    """
    path = Path(path)
    n_points = _count("n_points", n_points)
    n_rows = _count("n_rows", n_rows)
    raw = path.read_bytes()
    expected = n_rows * n_points * 8
    if len(raw) != expected:
        raise ValueError(
            f"{path}: SDAT has {len(raw)} bytes, expected {expected} "
            f"({n_rows} rows x {n_points} complex points x 8 bytes)"
        )
    values = vax_f_decode(raw)
    if np.any(np.isnan(values)):
        raise ValueError(f"{path}: SDAT contains VAX reserved operands (corrupt data)")
    return (values[0::2] + 1j * values[1::2]).reshape(n_rows, n_points)


# --------------------------------------------------------------------------------------
# Siemens RDA
# --------------------------------------------------------------------------------------
RDA_BEGIN = ">>> Begin of header <<<"
RDA_END = ">>> End of header <<<"


def _class_ori(normal: np.ndarray) -> int:
    """Main orientation of a slice normal (LPS): 0 sagittal, 1 coronal, 2 transverse.

    Siemens libGSL fGSLClassOri semantics (as documented by spec2nii's
    ``spec2nii/GSL/gslfunctions.py::class_ori``): the largest |component| wins,
    ties resolve transverse > coronal > sagittal.
    """
    a = np.abs(np.asarray(normal, dtype=float))
    top = a.max()
    if np.isclose(a[2], top):
        return 2
    if np.isclose(a[1], top):
        return 1
    return 0


def siemens_prs_vectors(normal: Any, inplane_rot_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """(phase, readout) unit vectors (LPS) of a Siemens slice/VOI.

    Siemens libGSL fGSLCalcPRS semantics: a default phase direction perpendicular
    to the normal, chosen by main orientation, rotated by ``-inplane_rot`` about the
    normal towards ``-readout``; ``readout = normal x phase``.
    """
    gs = np.asarray(normal, dtype=float)
    gs = gs / np.linalg.norm(gs)
    ori = _class_ori(gs)
    if ori == 2:
        gp = np.array([0.0, gs[2], -gs[1]]) / math.hypot(gs[1], gs[2])
    elif ori == 1:
        gp = np.array([gs[1], -gs[0], 0.0]) / math.hypot(gs[0], gs[1])
    else:
        gp = np.array([-gs[1], gs[0], 0.0]) / math.hypot(gs[0], gs[1])
    gr = np.cross(gs, gp)
    gp = math.cos(inplane_rot_rad) * gp - math.sin(inplane_rot_rad) * gr
    return gp, np.cross(gs, gp)


def siemens_inplane_rotation(normal: Any, phase: Any) -> float:
    """Inverse of :func:`siemens_prs_vectors`: the in-plane rotation (rad) giving ``phase``."""
    gs = np.asarray(normal, dtype=float)
    gp0, gr0 = siemens_prs_vectors(gs, 0.0)
    ph = np.asarray(phase, dtype=float)
    return math.atan2(-float(ph @ gr0), float(ph @ gp0))


_RDA_PROTECTED = {
    "TE",
    "TR",
    "DwellTime",
    "MRFrequency",
    "VectorSize",
    "NumberOfAverages",
    "SliceThickness",
    "VOIThickness",
    "VOIPhaseFOV",
    "VOIReadoutFOV",
    "VOIRotationInPlane",
    "FoVHeight",
    "FoVWidth",
    "FoV3D",
    "PixelSpacingRow",
    "PixelSpacingCol",
    "PixelSpacing3D",
    *(f"CSIMatrixSize[{i}]" for i in range(3)),
    *(f"PositionVector[{i}]" for i in range(3)),
    *(f"RowVector[{i}]" for i in range(3)),
    *(f"ColumnVector[{i}]" for i in range(3)),
    *(f"VOIPosition{a}" for a in ("Sag", "Cor", "Tra")),
    *(f"VOINormal{a}" for a in ("Sag", "Cor", "Tra")),
}


def _f6(value: float) -> str:
    text = f"{float(value):.6f}"
    return "0.000000" if text == "-0.000000" else text


def write_rda(
    path: Path | str,
    fid: np.ndarray,
    *,
    f0_mhz: float,
    bandwidth_hz: float,
    te_ms: float,
    tr_ms: float,
    geometry: VoxelGeometry,
    n_averages: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Siemens single-voxel RDA (pre-averaged FID, project convention).

    Header: ``key: value`` lines with CRLF endings between the begin/end markers
    (spec2nii's reader requires exactly that), then ``VectorSize`` complex points as
    little-endian float64 (real, imag) pairs of ``conj(fid)`` - Siemens RDA holds
    the NIfTI-MRS convention, the conjugate of the project convention - so that
    ``mrsflow.convert.read_fids`` of the spec2nii output returns ``fid``.

    Geometry mapping (LPS): ``RowVector`` = readout = voxel LR edge direction,
    ``ColumnVector`` = phase = voxel AP edge direction, ``PixelSpacingCol`` =
    ``VOIReadoutFOV`` = lr_size, ``PixelSpacingRow`` = ``VOIPhaseFOV`` = ap_size,
    ``SliceThickness`` = ``VOIThickness`` = cc_size, ``VOIPosition*`` = centre.
    ``VOINormal = ColumnVector x RowVector`` and ``VOIRotationInPlane`` (rad) are
    the consistent Siemens slice normal/in-plane rotation (libGSL convention).  With
    this choice ``spec2nii rda`` reproduces :meth:`VoxelGeometry.affine` exactly.
    ``extra`` adds/overrides descriptive keys (``PatientName``, ``ProtocolName``...).
    """
    data = _check_fids(fid, ndim=1, what="fid")
    n_points = data.shape[0]
    f0 = _positive("f0_mhz", f0_mhz)
    bw = _positive("bandwidth_hz", bandwidth_hz)
    te = _non_negative("te_ms", te_ms)
    tr = _positive("tr_ms", tr_ms)
    nsa = _count("n_averages", n_averages)
    if not isinstance(geometry, VoxelGeometry):
        raise ValueError(f"geometry must be a VoxelGeometry, got {type(geometry)}")
    extras = _check_extra(extra, _RDA_PROTECTED, "RDA")

    g = geometry
    edges_lps = _FLIP_LPS_RAS @ g.rotation_ras()
    row, col = edges_lps[:, 0], edges_lps[:, 1]
    normal = np.cross(col, row)  # Siemens slice normal; row x col is the CC edge
    inplane = siemens_inplane_rotation(normal, col)
    centre = np.asarray(g.centre_lps_mm)
    corner = centre - row * g.lr_size / 2 - col * g.ap_size / 2

    hdr: dict[str, Any] = {
        "PatientName": "anonymous",
        "PatientID": "anonymous",
        "PatientSex": "O",
        "PatientBirthDate": "19000101",
        "StudyDate": "20240101",
        "StudyTime": "120000.000000",
        "StudyDescription": "MRS study",
        "PatientAge": "000Y",
        "PatientWeight": "70.000000",
        "SeriesDate": "20240101",
        "SeriesTime": "120000.000000",
        "SeriesDescription": "svs_se",
        "ProtocolName": "svs_se",
        "PatientPosition": "HFS",
        "SeriesNumber": "1",
        "InstitutionName": "synthetic",
        "StationName": "synthetic",
        "ModelName": "Prisma",
        "DeviceSerialNumber": "00000",
        "SoftwareVersion[0]": "syngo MR XA30",
        "InstanceDate": "20240101",
        "InstanceTime": "120000.000000",
        "InstanceNumber": "1",
        "InstanceComments": "",
        "AcquisitionNumber": "1",
        "SequenceName": "*svs_se",
        "SequenceDescription": "svs_se",
        "TR": _f6(tr),
        "TE": _f6(te),
        "TM": _f6(0.0),
        "TI": _f6(0.0),
        "DwellTime": _f6(1e6 / bw),
        "EchoNumber": "0",
        "NumberOfAverages": _f6(nsa),
        "MRFrequency": _f6(f0),
        "Nucleus": "1H",
        "MagneticFieldStrength": _f6(round(f0 / 42.577478 * 2) / 2),  # nominal field
        "NumOfPhaseEncodingSteps": "1",
        "FlipAngle": _f6(90.0),
        "VectorSize": str(n_points),
        "CSIMatrixSize[0]": "1",
        "CSIMatrixSize[1]": "1",
        "CSIMatrixSize[2]": "1",
        "CSIMatrixSizeOfScan[0]": "1",
        "CSIMatrixSizeOfScan[1]": "1",
        "CSIMatrixSizeOfScan[2]": "1",
        "CSIGridShift[0]": "0",
        "CSIGridShift[1]": "0",
        "CSIGridShift[2]": "0",
        "HammingFilter": "Off",
        "FrequencyCorrection": "NO",
        "TransmitCoil": "Body",
        "TransmitRefAmplitude[1H]": _f6(250.0),
        "SliceThickness": _f6(g.cc_size),
        "PositionVector[0]": _f6(corner[0]),
        "PositionVector[1]": _f6(corner[1]),
        "PositionVector[2]": _f6(corner[2]),
        "RowVector[0]": _f6(row[0]),
        "RowVector[1]": _f6(row[1]),
        "RowVector[2]": _f6(row[2]),
        "ColumnVector[0]": _f6(col[0]),
        "ColumnVector[1]": _f6(col[1]),
        "ColumnVector[2]": _f6(col[2]),
        "VOIPositionSag": _f6(centre[0]),
        "VOIPositionCor": _f6(centre[1]),
        "VOIPositionTra": _f6(centre[2]),
        "VOIThickness": _f6(g.cc_size),
        "VOIPhaseFOV": _f6(g.ap_size),
        "VOIReadoutFOV": _f6(g.lr_size),
        "VOINormalSag": _f6(normal[0]),
        "VOINormalCor": _f6(normal[1]),
        "VOINormalTra": _f6(normal[2]),
        "VOIRotationInPlane": _f6(inplane),
        "FoVHeight": _f6(g.ap_size),
        "FoVWidth": _f6(g.lr_size),
        "FoV3D": _f6(g.cc_size),
        "PercentOfRectFoV": _f6(1.0),
        "NumberOfRows": "1",
        "NumberOfColumns": "1",
        "NumberOf3DParts": "1",
        "PixelSpacingRow": _f6(g.ap_size),
        "PixelSpacingCol": _f6(g.lr_size),
        "PixelSpacing3D": _f6(g.cc_size),
    }
    for key, value in extras.items():
        if not re.fullmatch(r"[\w\[\],]+", key):
            raise ValueError(f"invalid RDA header key {key!r} (letters, digits, _ [ ] , only)")
        hdr[key] = _num(value) if isinstance(value, (int, float)) else str(value)

    header = "\r\n".join([RDA_BEGIN, *(f"{k}: {v}" for k, v in hdr.items()), RDA_END]) + "\r\n"
    try:
        header_bytes = header.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError("RDA header values must be ASCII") from exc
    stored = np.conj(data)  # RDA holds the NIfTI-MRS convention
    interleaved = np.empty(2 * n_points, dtype="<f8")
    interleaved[0::2] = stored.real
    interleaved[1::2] = stored.imag
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header_bytes + interleaved.tobytes())
    return path


def read_rda_header(path: Path | str) -> tuple[dict[str, str], int]:
    """Parse an RDA header: ``({key: value_text}, data_offset_bytes)``.

    Raises ``ValueError`` naming the file if the begin/end markers are missing
    or a header line is not ``key: value``.
    """
    path = Path(path)
    raw = path.read_bytes()
    begin = raw.find(RDA_BEGIN.encode())
    end = raw.find(RDA_END.encode())
    if begin != 0 or end < 0:
        raise ValueError(f"{path}: not an RDA file (missing '{RDA_BEGIN}'/'{RDA_END}')")
    newline = raw.find(b"\n", end)
    offset = len(raw) if newline < 0 else newline + 1
    text = raw[len(RDA_BEGIN) : end].decode("latin-1")
    hdr: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=2):
        if not line.strip():
            continue
        if ": " not in line and not line.rstrip().endswith(":"):
            raise ValueError(f"{path}: header line {lineno}: expected 'key: value', got {line!r}")
        key, _, value = line.partition(":")
        hdr[key.strip()] = value.strip()
    return hdr, offset
