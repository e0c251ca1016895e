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

import contextlib
import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrsflow.errors import InputError
from mrsflow.vendor import (
    PPM_REFERENCE,
    RDA_BEGIN,
    philips_pair,
    read_rda_header,
    read_spar,
    validate_spar,
    vax_f_decode,
)

__all__ = [
    "ConversionError",
    "convert_spectrum",
    "convert_participant",
    "check_slice_spacing",
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
# a T1 must be a volume: a 3D T1 at 1 mm has ~170-200 slices; a localiser or a broken export
# a handful
MIN_T1_SLICES = 16
_NII_GZ = ".nii.gz"


class ConversionError(InputError, RuntimeError):
    """A converter (spec2nii / dcm2niix) failed or produced unexpected output. Almost always
    caused by the raw file, so it is an :class:`~mrsflow.errors.InputError` (the CLI prints
    it as one message naming the file, without a traceback)."""


class MissingInputError(InputError, FileNotFoundError):
    """A raw file or folder named as input does not exist."""


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
    pair = philips_pair(path)
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
    pair = philips_pair(path)
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
            raise InputError(
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
        raise InputError(
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


def _is_nifti_mrs(path: Path) -> bool:
    """A NIfTI file (.nii, .nii.gz) with the NIfTI-MRS header extension (code 44): already
    converted (spec2nii's output for TWIX, GE, DICOM MRS, Bruker...; MRS-BIDS holds these)."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return False
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except (OSError, ValueError, nib.filebasedimages.ImageFileError):
        return False
    return any(e.get_code() == 44 for e in img.header.extensions)


def _no_command(path: Path, *args, **kwargs) -> list[str]:
    return []


# Add new formats here (e.g. DICOM MRS: sniff the SOP class; TWIX: the .dat header). Formats
# spec2nii reads but this list does not (TWIX, GE P-files, DICOM MRS, Bruker...) come in as
# NIfTI-MRS converted with spec2nii beforehand (README: "Other vendors").
_VENDORS: tuple[_Vendor, ...] = (
    _Vendor("philips", _is_philips, _philips_command),
    _Vendor("rda", _is_rda, _rda_command),
    _Vendor("nifti-mrs", _is_nifti_mrs, _no_command),
)


def _sdat_hint(path: Path) -> str:
    """Why a Philips pair was rejected, when the SDAT's size is the reason."""
    pair = philips_pair(path)
    if pair is None or not _looks_like_spar(pair[1]):
        return ""
    size = pair[0].stat().st_size
    if size == 0:
        return f": {pair[0].name} is empty"
    if size % 8:
        return (f": {pair[0].name} has {size} bytes, not a whole number of complex points "
                "(8 bytes each); the SDAT is truncated or corrupt")
    return ""


def _check_sdat_size(sdat: Path, spar: Path, params: dict) -> str:
    """'' if the SDAT holds samples x rows complex points (8 bytes each) as its SPAR
    (``params``, already read) declares, else the problem (a truncated SDAT, or a SPAR whose
    sample count disagrees)."""
    samples, rows = params.get("samples"), params.get("rows")
    size = sdat.stat().st_size
    expected = int(samples) * int(rows) * 8
    if size == expected:
        return ""
    return (f"{sdat} has {size} bytes but {spar.name} declares samples={samples} x "
            f"rows={rows} (x 8 bytes = {expected} bytes): the SDAT is truncated or the "
            "SPAR's sample/row count disagrees with it")


def _check_rda_size(path: Path) -> str:
    """'' if the RDA holds VectorSize x CSIMatrixSize complex doubles (16 bytes each) after
    its header, else the problem (spec2nii converts a short RDA without a word, and the
    spectrum's length is then wrong for every later step)."""
    try:
        hdr, offset = read_rda_header(path)
        n = int(float(hdr["VectorSize"]))
        voxels = 1
        for i in range(3):
            voxels *= int(float(hdr.get(f"CSIMatrixSize[{i}]", "1")))
    except (ValueError, KeyError) as err:
        return f"{path}: RDA header unreadable ({err})"
    size = path.stat().st_size - offset
    expected = n * voxels * 16
    if size == expected:
        return ""
    return (f"{path} holds {size} bytes of data but its header declares VectorSize={n} x "
            f"{voxels} voxel(s) (x 16 bytes = {expected} bytes): the RDA is truncated or its "
            "header disagrees with its data")


def detect_format(path: Path | str) -> str:
    """Identify a raw spectroscopy file: ``"philips"`` (either member of a
    SPAR/SDAT pair) or ``"rda"`` (Siemens).

    Both the extension and the content must agree.  Raises ``FileNotFoundError``
    for a missing file and ``ValueError`` naming the file otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such spectroscopy file")
    for vendor in _VENDORS:
        if vendor.sniff(path):
            return vendor.name
    hint = ""
    if path.suffix.lower() in (".sdat", ".spar") and philips_pair(path) is None:
        hint = " (Philips SPAR/SDAT pair incomplete: partner file not found)"
    elif path.suffix.lower() in (".sdat", ".spar"):
        hint = " (Philips SPAR/SDAT pair does not look valid" + _sdat_hint(path) + ")"
    elif path.suffix.lower() == ".rda":
        hint = f" (no '{RDA_BEGIN}' line)"
    elif path.name.endswith((".nii", ".nii.gz")):
        hint = " (a NIfTI file without the NIfTI-MRS header extension)"
    raise InputError(
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


_SPEC2NII_LOCK = threading.Lock()


def read_sdat_vectorised(filename: str | os.PathLike, samples: int, rows: int) -> np.ndarray:
    """Bit-for-bit what spec2nii's ``Philips.philips.read_sdat`` returns, decoded with numpy.

    spec2nii (0.8.x) decodes SDAT VAX F-floats in a Python loop (its
    ``_vax_to_ieee_single_float``, ~1 s per 1 MB file, most of a participant's
    conversion time). Same semantics here: the floats are exact in float64
    (:func:`mrsflow.vendor.vax_f_decode`), exponent 0 gives 0 (spec2nii maps the
    reserved operand to 0 too), trailing bytes / an unpaired float are dropped, each
    (real, imag) pair is rounded to complex64, and the result is reshaped
    ``(rows, samples)`` then transposed and squeezed; a size mismatch raises the same
    ``ValueError`` from ``numpy.reshape``. ``tests/test_convert.py`` checks equality
    with spec2nii's own function.
    """
    raw = Path(filename).read_bytes()
    values = vax_f_decode(raw[: len(raw) // 4 * 4])
    values[np.isnan(values)] = 0.0
    n = values.size // 2
    data = np.empty(n, dtype=np.complex64)
    data.real = values[0 : 2 * n : 2]
    data.imag = values[1 : 2 * n : 2]
    return np.reshape(data, (rows, samples)).T.squeeze()


@contextlib.contextmanager
def _vectorised_sdat_reader():
    """Let spec2nii read SDAT data through :func:`read_sdat_vectorised` for the duration
    (only if its ``read_sdat(filename, samples, rows)`` is the function we replicate;
    otherwise spec2nii runs unchanged). Everything else - SPAR parsing, orientation,
    header extension, NIfTI-MRS writing - is spec2nii's own code."""
    import inspect

    from spec2nii.Philips import philips

    original = getattr(philips, "read_sdat", None)
    expected = ["filename", "samples", "rows"]
    if original is None or list(inspect.signature(original).parameters) != expected:
        yield
        return
    philips.read_sdat = read_sdat_vectorised
    try:
        yield
    finally:
        philips.read_sdat = original


def _run_spec2nii(cmd: list[str], what: Path) -> str:
    """Run spec2nii's own command-line entry point in this process with ``cmd[1:]`` as its
    arguments (the same code the ``spec2nii`` executable runs, without a second Python
    start-up and import per file: ~1.5 s saved per spectrum; SDAT floats decoded by
    :func:`read_sdat_vectorised`, ~1 s more per Philips spectrum). Returns what it printed;
    raises :class:`ConversionError` naming ``what`` and quoting spec2nii's last words."""
    from spec2nii.spec2nii import main as spec2nii_main

    out = io.StringIO()
    code, detail = 0, ""
    # spec2nii reads sys.argv and prints: both process-global, so one call at a time
    with _SPEC2NII_LOCK:
        argv, sys.argv = sys.argv, ["spec2nii", *cmd[1:]]
        try:
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(out),
                _vectorised_sdat_reader(),
            ):
                spec2nii_main()
        except SystemExit as err:  # argparse and spec2nii's own checks exit
            code = err.code if isinstance(err.code, int) else 1
        except Exception as err:  # noqa: BLE001 - any failure of the converter is the file's
            code, detail = 1, f"{type(err).__name__}: {err}"
        finally:
            sys.argv = argv
    if code:
        detail = "\n".join(x for x in (_tail(out.getvalue()), detail) if x) or "(no output)"
        raise ConversionError(
            f"{what}: spec2nii failed (exit code {code}).\n"
            f"command: {' '.join(cmd)}\n{detail}"
        )
    return out.getvalue()


def _fresh_tmpdir(parent: Path, prefix: str) -> Path:
    """A private temporary directory for one conversion; leftovers of the same conversion
    from a killed earlier run (one job owns each output name) are removed first."""
    for stale in parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


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
    if fmt == "nifti-mrs":
        return _copy_nifti_mrs(path, out_nii)
    size_problem = ""
    if fmt == "philips":
        pair = philips_pair(path)
        assert pair is not None
        try:
            params = read_spar(pair[1])
            validate_spar(params, pair[1])
        except ValueError as err:  # vendor's parser names the SPAR and the key
            raise InputError(str(err)) from err
        size_problem = _check_sdat_size(*pair, params)
    elif fmt == "rda":
        problem = _check_rda_size(path)
        if problem:
            raise InputError(problem)
    out_nii.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmpdir(out_nii.parent, f".{stem}.spec2nii-")
    try:
        cmd = spec2nii_command(path, tmp, stem, acq=acq, n_rows=None)
        try:
            printed = _run_spec2nii(cmd, path)
        except ConversionError as err:
            if not size_problem:
                raise
            # say what it means, then spec2nii's own last word (a numpy reshape error)
            lines = str(err).splitlines()
            raise ConversionError(f"{lines[0].rstrip('.')}: {size_problem}\n"
                                  f"spec2nii said: {lines[-1].strip()}") from err
        if size_problem:  # spec2nii accepted it: never convert a mis-sized SDAT silently
            raise InputError(size_problem)
        produced = sorted(tmp.glob(f"*{_NII_GZ}"))
        expected = tmp / f"{stem}{_NII_GZ}"
        if produced != [expected]:
            raise ConversionError(
                f"{path}: spec2nii did not produce exactly {expected.name} "
                f"(got {[p.name for p in produced]}).\n{_tail(printed)}"
            )
        validate_nifti_mrs(expected)
        sidecar = tmp / f"{stem}.json"
        if sidecar.exists():
            os.replace(sidecar, out_nii.parent / f"{stem}.json")
        os.replace(expected, out_nii)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_nii


def _copy_nifti_mrs(path: Path, out_nii: Path) -> Path:
    """An already converted NIfTI-MRS file, validated (``nifti_mrs.validator``) and copied
    unchanged (a ``.nii`` is gzipped); its data and header extension are what spec2nii
    wrote for it, so everything downstream is as for the vendor file."""
    try:
        validate_nifti_mrs(path)
    except ValueError as err:
        raise InputError(str(err)) from err
    return _copy_gzipped(path, out_nii)


def _copy_gzipped(src: Path, out_nii: Path) -> Path:
    """``src`` (.nii or .nii.gz) as the gzipped ``out_nii``: copied byte for byte, or gzipped
    (level 1) if it is a plain ``.nii``; written beside as a ``.part`` file and renamed, so an
    interrupted copy never leaves a complete-looking output."""
    out_nii.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_nii.with_name(f".{out_nii.name}.part")
    if src.name.endswith(".gz"):
        shutil.copyfile(src, tmp)
    else:
        with open(src, "rb") as fin, gzip.open(tmp, "wb", compresslevel=1) as fout:
            shutil.copyfileobj(fin, fout)
    os.replace(tmp, out_nii)
    return out_nii


def convert_t1(src: Path | str, out_nii: Path | str) -> Path:
    """A T1 to ``out_nii``: a DICOM series folder with dcm2niix (:func:`convert_t1_dicom`),
    or a NIfTI file (.nii, .nii.gz), used in its own world coordinates
    (:func:`copy_t1_nifti`)."""
    src = Path(src)
    if src.is_file() and src.name.endswith((".nii", ".nii.gz")):
        return copy_t1_nifti(src, out_nii)
    return convert_t1_dicom(src, out_nii)


def copy_t1_nifti(src: Path | str, out_nii: Path | str) -> Path:
    """A NIfTI T1 checked (one 3D volume, at least :data:`MIN_T1_SLICES` slices along every
    axis, a finite invertible affine) and copied byte for byte as ``out_nii`` (a ``.nii`` is
    gzipped): its own voxels and affine, so the MRS voxel lands where the scanner put it. A
    BIDS JSON sidecar beside it is copied too."""
    import nibabel as nib

    src, out_nii = Path(src), Path(out_nii)
    try:
        img = nib.load(str(src))
        shape = img.shape
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"{src}: not a readable NIfTI T1 ({err})") from None
    spatial = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(spatial) != 3:
        raise InputError(f"{src}: a T1 must be one 3D volume, this NIfTI has shape {shape}")
    if min(spatial) < MIN_T1_SLICES:
        raise InputError(f"{src}: the T1 has only {min(spatial)} slice(s) along one axis "
                         f"(shape {shape}); segmentation needs a 3D T1 (at least "
                         f"{MIN_T1_SLICES} slices)")
    aff = img.affine
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-6:
        raise InputError(f"{src}: the T1's affine is not a valid voxel-to-world transform")
    _copy_gzipped(src, out_nii)
    stem = src.name[: -len(".nii.gz")] if src.name.endswith(".nii.gz") else src.name[:-4]
    sidecar = src.with_name(f"{stem}.json")
    if sidecar.is_file():
        shutil.copyfile(sidecar, out_nii.parent / f"{_stem_nii_gz(out_nii)}.json")
    return out_nii


def convert_t1_dicom(dicom_dir: Path | str, out_nii: Path | str) -> Path:
    """Convert a single DICOM series to ``out_nii`` (+ BIDS ``.json`` sidecar) with
    ``dcm2niix -1 -z y -b y -f NAME -o DIR DICOM_DIR``. ``-1`` is gzip level 1 (dcm2niix's
    fastest; default 6): for a 1 mm head, half the time (0.6 s instead of 1.2 s) for a file
    a third larger, and the later reads decompress faster; the voxels are the same.

    Raises ``ValueError`` if ``dicom_dir`` is not a directory and
    :class:`ConversionError` (naming the directory) if dcm2niix fails or does not
    produce exactly one NIfTI file.
    """
    dicom_dir = Path(dicom_dir)
    out_nii = Path(out_nii)
    stem = _stem_nii_gz(out_nii)
    if not dicom_dir.is_dir():
        if not dicom_dir.exists():
            raise MissingInputError(f"{dicom_dir}: not a directory of DICOM files (not found)")
        raise InputError(f"{dicom_dir}: not a directory of DICOM files")
    n_slices = check_slice_spacing(dicom_dir)
    if 0 < n_slices < MIN_T1_SLICES:
        raise InputError(
            f"{dicom_dir}: the T1 series has only {n_slices} slice(s); segmentation and the "
            f"voxel's tissue fractions need a 3D T1 (at least {MIN_T1_SLICES} slices)")
    out_nii.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmpdir(out_nii.parent, f".{stem}.dcm2niix-")
    try:
        cmd = [find_executable("dcm2niix"), "-1", "-z", "y", "-b", "y", "-f", stem,
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


def convert_participant(plan: dict) -> None:
    """The convert step of one participant: ``plan["t1"]`` (src DICOM folder, out NIfTI) with
    dcm2niix, then ``plan["mrs"]`` (src raw file, acq, out NIfTI-MRS) with spec2nii, in one
    process. Stops at the first bad file with an error naming it."""
    for item in plan.get("t1", []):
        convert_t1(item["src"], item["out"])
        print(f"dcm2niix: {item['src']} -> {item['out']}", flush=True)
    for item in plan.get("mrs", []):
        convert_spectrum(item["src"], item["out"], acq=item["acq"])
        print(f"spec2nii: {item['src']} -> {item['out']}", flush=True)


def check_slice_spacing(dicom_dir: Path | str, rel_tol: float = 0.05) -> int:
    """Check that a single-frame DICOM series has no missing slice before converting it
    (dcm2niix converts a series with a gap, warning only, into a volume whose slice
    spacing is wrong for part of the brain).

    Slice positions (``ImagePositionPatient`` along the slice normal) must be equally
    spaced within ``rel_tol`` of the median step, and ``InstanceNumber`` must have no
    holes. Raises :class:`~mrsflow.errors.InputError` naming the series folder and where
    the gap is; returns the number of slices. Files that are not DICOM images (or
    multi-frame/enhanced objects without per-file positions) are left to dcm2niix.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    dicom_dir = Path(dicom_dir)
    series: dict[str, list[tuple[float, int | None, str]]] = {}
    for f in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            continue
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            continue
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        inst = ds.get("InstanceNumber")
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(
            (float(np.asarray(ipp, float) @ normal), int(inst) if inst is not None else None,
             f.name)
        )
    n_total = 0
    for slices in series.values():
        slices.sort()
        n_total += len(slices)
        if len(slices) < 3:
            continue
        pos = np.array([s[0] for s in slices])
        steps = np.diff(pos)
        step = float(np.median(steps))
        if step <= 0 or np.any(np.isclose(steps, 0.0, atol=1e-3)):
            dup = next(i for i, d in enumerate(steps) if abs(d) <= 1e-3)
            raise InputError(
                f"{dicom_dir}: DICOM series has two slices at the same position "
                f"({slices[dup][2]} and {slices[dup + 1][2]}); duplicated or mixed series"
            )
        bad = np.flatnonzero(np.abs(steps - step) > rel_tol * step)
        if len(bad):
            i = int(bad[0])
            missing = round(float(steps[i]) / step) - 1
            what = (f"{missing} missing slice(s)" if missing >= 1
                    else "unequally spaced slices")
            raise InputError(
                f"{dicom_dir}: DICOM series has {what}: slice positions are not equally "
                f"spaced (step {steps[i]:.3g} mm between {slices[i][2]} and "
                f"{slices[i + 1][2]}, expected {step:.3g} mm; {len(bad)} irregular "
                f"gap(s) in {len(slices)} slices); re-export the complete series"
            )
        numbers = sorted(s[1] for s in slices if s[1] is not None)
        if len(numbers) == len(slices):
            holes = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            if holes:
                raise InputError(
                    f"{dicom_dir}: DICOM series is missing instance number(s) "
                    f"{holes[:10]} (between {numbers[0]} and {numbers[-1]}); re-export "
                    "the complete series"
                )
    return n_total


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
