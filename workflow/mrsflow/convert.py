"""Conversion of raw scanner exports to NIfTI(-MRS): thin wrappers around
``spec2nii`` (spectra) and ``dcm2niix`` (T1 DICOM), used by the Snakemake rules.

Design:

* :func:`detect_format` identifies a raw spectroscopy file by extension *and*
  content.  Each supported vendor is one entry of ``_VENDORS`` (a sniffer plus a
  command builder); adding e.g. DICOM MRS or TWIX means adding one such entry.
* Conversions run in a private temporary directory *inside the output
  directory*; only the final files are moved into place, so a failed run leaves
  no partial output and raw inputs are only ever read.
* spec2nii 0.8.15 option facts (``spec2nii philips --help`` and
  ``spec2nii/spec2nii.py``): ``-t/--tags`` and ``-s/--shape`` take ``nargs='+'``,
  so they must not directly precede the positional ``SDAT SPAR`` arguments
  (argparse would swallow the file names); we put ``-f``/``-o``/``-j`` between
  them.  ``-s 2 N`` reshapes the SDAT rows with ``order='F'``
  (``spec2nii/Philips/philips.py::read_sdat_spar_pair``), i.e. the first tag
  varies fastest: row ``2*k + c`` -> (cycle ``c``, dynamic ``k``).

NIfTI-MRS data access: a NIfTI-MRS file stores the complex *conjugate* of the
project FID convention (see :mod:`mrsflow.vendor`).  Read spectra with
:func:`read_fids`, which returns ``conj(np.asanyarray(nib.load(p).dataobj))`` -
identical to :class:`nifti_mrs.nifti_mrs.NIFTI_MRS` indexing (``img[:]``, which
conjugates on access, as FSL-MRS does) - and pair it with :func:`ppm_axis`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrsflow.vendor import PPM_REFERENCE, RDA_BEGIN, read_spar, validate_spar

__all__ = [
    "ConversionError",
    "convert_spectrum",
    "convert_t1",
    "detect_format",
    "find_executable",
    "ppm_axis",
    "read_fids",
    "spec2nii_command",
    "validate_nifti_mrs",
    "voxel_centre_ras",
]

#: acquisition labels treated as metabolite-cycled (every transient one SDAT row)
MC_ACQ_LABELS = frozenset({"mc"})
_NII_GZ = ".nii.gz"


class ConversionError(RuntimeError):
    """A converter (spec2nii / dcm2niix) failed or produced unexpected output."""


# --------------------------------------------------------------------------------------
# executables
# --------------------------------------------------------------------------------------
def find_executable(name: str) -> str:
    """Path of ``name``: next to ``sys.executable`` (the venv) if present, else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"executable {name!r} not found next to {sys.executable} or on PATH"
        )
    return found


# --------------------------------------------------------------------------------------
# format detection (one sniffer + one command builder per vendor)
# --------------------------------------------------------------------------------------
def _sibling(path: Path, suffix: str) -> Path | None:
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


def _philips_pair(path: Path) -> tuple[Path, Path] | None:
    """(SDAT, SPAR) for either member of a Philips pair, or None."""
    ext = path.suffix.lower()
    if ext == ".sdat":
        spar = _sibling(path, ".spar")
        return (path, spar) if spar is not None else None
    if ext == ".spar":
        sdat = _sibling(path, ".sdat")
        return (sdat, path) if sdat is not None else None
    return None


def _looks_like_spar(spar: Path) -> bool:
    try:
        with spar.open("rb") as fh:
            head = fh.read(65536).decode("latin-1")
    except OSError:
        return False
    keys = set()
    for line in head.splitlines():
        line = line.strip()
        if line and not line.startswith("!") and ":" in line:
            keys.add(line.split(":", 1)[0].strip())
    return {"samples", "rows"} <= keys or {"spec_num_col", "spec_num_row"} <= keys


def _is_philips(path: Path) -> bool:
    pair = _philips_pair(path)
    if pair is None:
        return False
    sdat, spar = pair
    size = sdat.stat().st_size
    return size > 0 and size % 8 == 0 and _looks_like_spar(spar)


def _is_rda(path: Path) -> bool:
    if path.suffix.lower() != ".rda":
        return False
    with path.open("rb") as fh:
        first = fh.readline(256)
    return RDA_BEGIN.encode() in first


def _philips_command(path: Path, out_dir: Path, out_name: str, *, acq: str,
                     n_rows: int | None, json_sidecar: bool) -> list[str]:
    pair = _philips_pair(path)
    assert pair is not None  # guaranteed by detect_format
    sdat, spar = pair
    if n_rows is None:
        params = read_spar(spar)
        validate_spar(params, spar)
        n_rows = int(params["rows"])
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise ValueError(f"{path}: n_rows must be a positive integer, got {n_rows!r}")
    if acq.lower() in MC_ACQ_LABELS:
        if n_rows < 2 or n_rows % 2:
            raise ValueError(
                f"{path}: metabolite-cycled data needs an even number (>= 2) of SDAT "
                f"rows (one per transient, cycle alternating), got {n_rows}"
            )
        shape = ["-t", "DIM_METCYCLE", "DIM_DYN", "-s", "2", str(n_rows // 2)]
    elif n_rows > 1:
        shape = ["-t", "DIM_DYN"]
    else:
        shape = []
    return [
        find_executable("spec2nii"), "philips", *shape,
        "-f", out_name, "-o", str(out_dir), *(["-j"] if json_sidecar else []),
        str(sdat), str(spar),
    ]


def _rda_command(path: Path, out_dir: Path, out_name: str, *, acq: str,
                 n_rows: int | None, json_sidecar: bool) -> list[str]:
    if acq.lower() in MC_ACQ_LABELS:
        raise ValueError(
            f"{path}: RDA holds one pre-averaged FID; metabolite-cycled (acq={acq!r}) "
            "data must be exported per transient (Philips SDAT)"
        )
    if n_rows not in (None, 1):
        raise ValueError(f"{path}: RDA holds a single FID, got n_rows={n_rows!r}")
    return [
        find_executable("spec2nii"), "rda",
        "-f", out_name, "-o", str(out_dir), *(["-j"] if json_sidecar else []),
        str(path),
    ]


@dataclass(frozen=True)
class _Vendor:
    name: str
    sniff: Callable[[Path], bool]
    command: Callable[..., list[str]]


# Add new formats here (e.g. DICOM MRS: sniff the SOP class; TWIX: the .dat header).
_VENDORS: tuple[_Vendor, ...] = (
    _Vendor("philips", _is_philips, _philips_command),
    _Vendor("rda", _is_rda, _rda_command),
)


def detect_format(path: Path | str) -> str:
    """Identify a raw spectroscopy file: ``"philips"`` (either member of a
    SPAR/SDAT pair) or ``"rda"`` (Siemens).

    Both the extension and the content must agree.  Raises ``FileNotFoundError``
    for a missing file and ``ValueError`` naming the file otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such spectroscopy file")
    for vendor in _VENDORS:
        if vendor.sniff(path):
            return vendor.name
    hint = ""
    if path.suffix.lower() in (".sdat", ".spar") and _philips_pair(path) is None:
        hint = " (Philips SPAR/SDAT pair incomplete: partner file not found)"
    elif path.suffix.lower() in (".sdat", ".spar"):
        hint = " (Philips SPAR/SDAT pair does not look valid)"
    elif path.suffix.lower() == ".rda":
        hint = f" (no '{RDA_BEGIN}' line)"
    raise ValueError(
        f"{path}: unknown spectroscopy file type{hint}; supported: "
        + ", ".join(v.name for v in _VENDORS)
    )


def _vendor(name: str) -> _Vendor:
    return next(v for v in _VENDORS if v.name == name)


def spec2nii_command(
    path: Path | str,
    out_dir: Path | str,
    out_name: str,
    *,
    acq: str,
    n_rows: int | None,
    json_sidecar: bool = True,
) -> list[str]:
    """The exact ``spec2nii`` call converting ``path`` to ``out_dir/out_name.nii.gz``.

    Philips: ``spec2nii philips [TAGS] -f NAME -o DIR -j FILE.SDAT FILE.SPAR`` with
    ``TAGS`` = ``-t DIM_METCYCLE DIM_DYN -s 2 N`` for metabolite-cycled data
    (``acq="mc"``, ``n_rows = 2N`` rows alternating cycle state), ``-t DIM_DYN``
    for other multi-row data, nothing for a single pre-averaged row.  ``n_rows``
    ``None`` reads ``rows`` from the SPAR.
    RDA: ``spec2nii rda -f NAME -o DIR -j FILE.rda``.
    ``-j`` (JSON sidecar) is omitted when ``json_sidecar`` is False.
    """
    path = Path(path)
    if not out_name or "/" in out_name or out_name.endswith((".nii", ".gz")):
        raise ValueError(f"out_name must be a bare file stem, got {out_name!r}")
    vendor = _vendor(detect_format(path))
    return vendor.command(path, Path(out_dir), out_name, acq=acq, n_rows=n_rows,
                          json_sidecar=json_sidecar)


# --------------------------------------------------------------------------------------
# running converters
# --------------------------------------------------------------------------------------
def _stem_nii_gz(out_nii: Path) -> str:
    if not out_nii.name.endswith(_NII_GZ) or len(out_nii.name) <= len(_NII_GZ):
        raise ValueError(f"{out_nii}: output must be a '<name>.nii.gz' path")
    return out_nii.name[: -len(_NII_GZ)]


def _tail(text: str, n: int = 15) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def _run(cmd: list[str], what: Path, tool: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        detail = _tail(proc.stderr) or _tail(proc.stdout) or "(no output)"
        raise ConversionError(
            f"{what}: {tool} failed (exit code {proc.returncode}).\n"
            f"command: {' '.join(cmd)}\n{detail}"
        )
    return proc


def convert_spectrum(path: Path | str, out_nii: Path | str, *, acq: str) -> Path:
    """Convert a raw spectrum (Philips SPAR/SDAT or Siemens RDA) to NIfTI-MRS.

    ``out_nii`` (``*.nii.gz``, name chosen by the caller) receives the converted
    file; spec2nii's JSON sidecar goes next to it with the same stem
    (``*.json``).  ``acq="mc"`` marks metabolite-cycled Philips data (see
    :func:`spec2nii_command`).  Raises ``ValueError`` (bad input, naming the file)
    or :class:`ConversionError` (spec2nii failed / produced no or several files;
    the message names the input and quotes spec2nii's stderr).  Inputs are only
    read; outputs are written only into ``out_nii``'s directory.
    """
    path = Path(path)
    out_nii = Path(out_nii)
    stem = _stem_nii_gz(out_nii)
    fmt = detect_format(path)
    if fmt == "philips":
        pair = _philips_pair(path)
        assert pair is not None
        validate_spar(read_spar(pair[1]), pair[1])
    out_nii.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.spec2nii-", dir=out_nii.parent))
    try:
        cmd = spec2nii_command(path, tmp, stem, acq=acq, n_rows=None)
        proc = _run(cmd, path, "spec2nii")
        produced = sorted(tmp.glob(f"*{_NII_GZ}"))
        expected = tmp / f"{stem}{_NII_GZ}"
        if produced != [expected]:
            raise ConversionError(
                f"{path}: spec2nii did not produce exactly {expected.name} "
                f"(got {[p.name for p in produced]}).\n{_tail(proc.stdout + proc.stderr)}"
            )
        validate_nifti_mrs(expected)
        sidecar = tmp / f"{stem}.json"
        if sidecar.exists():
            os.replace(sidecar, out_nii.parent / f"{stem}.json")
        os.replace(expected, out_nii)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_nii


def convert_t1(dicom_dir: Path | str, out_nii: Path | str) -> Path:
    """Convert a single DICOM series to ``out_nii`` (+ BIDS ``.json`` sidecar) with
    ``dcm2niix -z y -b y -f NAME -o DIR DICOM_DIR``.

    Raises ``ValueError`` if ``dicom_dir`` is not a directory and
    :class:`ConversionError` (naming the directory) if dcm2niix fails or does not
    produce exactly one NIfTI file.
    """
    dicom_dir = Path(dicom_dir)
    out_nii = Path(out_nii)
    stem = _stem_nii_gz(out_nii)
    if not dicom_dir.is_dir():
        raise ValueError(f"{dicom_dir}: not a directory of DICOM files")
    out_nii.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.dcm2niix-", dir=out_nii.parent))
    try:
        cmd = [find_executable("dcm2niix"), "-z", "y", "-b", "y", "-f", stem,
               "-o", str(tmp), str(dicom_dir)]
        proc = _run(cmd, dicom_dir, "dcm2niix")
        produced = sorted(tmp.glob(f"*{_NII_GZ}"))
        if len(produced) != 1:
            raise ConversionError(
                f"{dicom_dir}: dcm2niix produced {len(produced)} NIfTI files "
                f"({[p.name for p in produced]}), expected exactly 1 (one T1 series).\n"
                f"{_tail(proc.stdout + proc.stderr)}"
            )
        nii = produced[0]
        sidecar = nii.with_name(nii.name[: -len(_NII_GZ)] + ".json")
        if sidecar.exists():
            os.replace(sidecar, out_nii.parent / f"{stem}.json")
        os.replace(nii, out_nii)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_nii


# --------------------------------------------------------------------------------------
# NIfTI-MRS checks
# --------------------------------------------------------------------------------------
def validate_nifti_mrs(path: Path | str) -> None:
    """Validate with the ``nifti_mrs`` package (``nifti_mrs.validator``:
    data, NIfTI header, header extension, spectral width).

    Raises ``ValueError`` naming the file on failure.
    """
    import nibabel as nib
    from nifti_mrs import validator
    from nifti_mrs.nifti_mrs import NIFTI_MRS, NotNIFTI_MRS

    path = Path(path)
    try:
        img = NIFTI_MRS(str(path))
        validator.validate_nifti_mrs(img)
    except (NotNIFTI_MRS, validator.Error, nib.filebasedimages.ImageFileError,
            OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid NIfTI-MRS file: {exc}") from exc


def voxel_centre_ras(nifti_mrs_path: Path | str) -> np.ndarray:
    """World (RAS+ mm) coordinates of the centre of a single-voxel NIfTI-MRS:
    ``affine @ [0, 0, 0, 1]`` (NIfTI voxel coordinates refer to voxel centres)."""
    import nibabel as nib

    path = Path(nifti_mrs_path)
    img = nib.load(str(path))
    if tuple(img.shape[:3]) != (1, 1, 1):
        raise ValueError(f"{path}: not a single-voxel spectrum (spatial shape {img.shape[:3]})")
    return (img.affine @ np.array([0.0, 0.0, 0.0, 1.0]))[:3]


def read_fids(nifti_mrs_path: Path | str) -> np.ndarray:
    """FIDs of a NIfTI-MRS file in the project convention (high ppm at +Hz), full NIfTI-MRS
    shape ``(x, y, z, n_points, dim5, ...)``; see :mod:`mrsflow.nmrs`."""
    from mrsflow import nmrs

    return nmrs.read(nifti_mrs_path)[0]


def ppm_axis(nifti_mrs_path: Path | str, reference_ppm: float = PPM_REFERENCE) -> np.ndarray:
    """Chemical-shift axis (ppm, ascending) matching
    ``np.fft.fftshift(np.fft.fft(read_fids(path), axis=3), axes=3)``:
    ``reference_ppm + fftshift(fftfreq(n, dwell)) / SpectrometerFrequency``,
    from the header only (pixdim[4] dwell time, header-extension frequency)."""
    import json

    import nibabel as nib

    img = nib.load(str(nifti_mrs_path))
    ext = next((e for e in img.header.extensions if e.get_code() == 44), None)
    if ext is None:
        raise ValueError(f"{nifti_mrs_path}: no NIfTI-MRS header extension (ecode 44)")
    f0 = float(json.loads(ext.get_content())["SpectrometerFrequency"][0])
    dwell = float(img.header["pixdim"][4])
    n = int(img.shape[3])
    return reference_ppm + np.fft.fftshift(np.fft.fftfreq(n, dwell)) / f0
