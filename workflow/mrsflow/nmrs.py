"""NIfTI-MRS reading and writing in the project's FID convention.

The project convention (FSL-MRS's internal one, and what a Philips SDAT holds): a resonance at
``delta`` ppm is ``exp(+2 pi i nu t)`` with ``nu = (delta - 4.65) f0`` Hz, so
``fftshift(fft(fid))`` shows it at +nu. NIfTI-MRS files store the complex *conjugate* of this
(NIfTI-MRS specification, appendix A: high ppm at negative frequency; spec2nii conjugates
Philips SDAT on conversion; ``nifti_mrs``'s ``NIFTI_MRS.__getitem__`` conjugates on access).
Every module reads and writes spectra through :func:`read` and :func:`write`, so the
conjugation happens in exactly one place.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from mrsflow.errors import InputError

NIFTI_MRS_ECODE = 44


def header_extension(img) -> dict:
    """The NIfTI-MRS JSON header extension of a loaded image."""
    for e in img.header.extensions:
        if e.get_code() == NIFTI_MRS_ECODE:
            return json.loads(e.get_content().decode("utf-8").rstrip("\x00 "))
    raise InputError(f"{img.get_filename()}: not NIfTI-MRS (no header extension code 44)")


def dwell_time_s(img) -> float:
    """Dwell time (s) from pixdim[4], honouring the time unit of the header."""
    dwell = float(img.header["pixdim"][4])
    unit = img.header.get_xyzt_units()[1]
    return dwell * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)


def nifti_version(img) -> int:
    """1 or 2: the NIfTI version of a loaded image (written back the same way)."""
    return 1 if isinstance(img, nib.Nifti1Image) and not isinstance(img, nib.Nifti2Image) else 2


def read(path) -> tuple[np.ndarray, dict, np.ndarray, float, object]:
    """(data in the project convention, header extension, affine, dwell (s), image)."""
    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for corrupt files
        raise InputError(f"{path}: cannot read NIfTI-MRS ({err})") from err
    data = np.conj(np.asanyarray(img.dataobj))
    return data, header_extension(img), img.affine, dwell_time_s(img), img


def write(
    path,
    data: np.ndarray,
    dwell_s: float,
    f0_mhz: float,
    *,
    dim_tags=(None, None, None),
    affine: np.ndarray | None = None,
    hdr_ext: dict | None = None,
    nifti_version: int = 2,
) -> Path:
    """Write ``data`` ((1,1,1,N[,...]), project convention) as NIfTI-MRS (stored conjugated).

    ``hdr_ext``: header-extension dict (SpectrometerFrequency / ResonantNucleus default to
    ``f0_mhz`` / '1H'); ``dim_tags`` override its dim_5..7 keys when given.
    """
    from nifti_mrs.create_nmrs import gen_nifti_mrs_hdr_ext
    from nifti_mrs.hdr_ext import Hdr_Ext

    data = np.asarray(data, dtype=np.complex128)
    ext = dict(hdr_ext or {})
    ext.setdefault("SpectrometerFrequency", [float(f0_mhz)])
    ext.setdefault("ResonantNucleus", ["1H"])
    for i, tag in enumerate(dim_tags):
        if tag is not None:
            ext[f"dim_{i + 5}"] = tag
    for i in range(5, 8):  # drop dim keys beyond the data's dimensionality
        if i > data.ndim:
            for key in (f"dim_{i}", f"dim_{i}_info", f"dim_{i}_header"):
                ext.pop(key, None)
    img = gen_nifti_mrs_hdr_ext(
        np.conj(data),
        float(dwell_s),
        Hdr_Ext.from_header_ext(ext),
        affine=affine,
        nifti_version=nifti_version,
        no_conj=True,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
