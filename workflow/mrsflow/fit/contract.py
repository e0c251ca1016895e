"""The output contract every fitting backend writes (one JSON + TSV per spectrum), and
the NIfTI-MRS reading they share."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from mrsflow import __version__
from mrsflow.errors import InputError

#: combined entries reported by both backends
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "tCr": ("Cr", "PCr"),
    "tNAA": ("NAA", "NAAG"),
    "tCho": ("GPC", "PCh"),
    "Glx": ("Glu", "Gln"),
}

#: top-level keys of the output contract (both backends, same order)
CONTRACT_KEYS = (
    "backend",
    "backend_version",
    "success",
    "message",
    "metabolites",
    "combined",
    "groups",
    "phi0_deg",
    "phi1_deg_per_ppm",
    "noise_sd",
    "residual_sd",
    "fit_quality",
    "snr",
    "ppm_range",
    "baseline",
    "baseline_order",
    "f0_mhz",
    "dwell_s",
    "npoints",
    "centre_ppm",
    "water_amplitude",
    "water_linewidth_hz",
    "water",
    "extra",
)

METABOLITE_KEYS = ("amplitude", "crlb_abs", "crlb_pct")

GROUP_KEYS = ("members", "gamma_hz", "sigma_hz", "shift_hz", "linewidth_hz")

WATER_KEYS = ("amplitude", "linewidth_hz", "shift_hz", "phase_deg", "gamma_hz", "sigma_hz")


def is_macromolecule(name: str) -> bool:
    """MM/lipid basis entries (LCModel-style names MMxx, Lipxx, FSL-MRS 'Mac')."""
    return name.startswith(("MM", "Lip", "Mac"))


def voigt_fwhm(lorentz_hz: float, gauss_hz: float) -> float:
    """Olivero & Longbothum (1977) approximation of the Voigt FWHM (accuracy ~0.02 %)."""
    lorentz_hz = abs(float(lorentz_hz))
    gauss_hz = abs(float(gauss_hz))
    return 0.5346 * lorentz_hz + math.sqrt(0.2166 * lorentz_hz**2 + gauss_hz**2)


def _met_entry(amp, crlb) -> dict:
    amp = float(amp)
    crlb = float(crlb) if crlb is not None else math.nan
    pct = 100.0 * crlb / amp if amp > 0 and math.isfinite(crlb) else math.inf
    return {"amplitude": amp, "crlb_abs": crlb, "crlb_pct": pct}


def _contract(
    *,
    backend,
    backend_version,
    success,
    message,
    metabolites,
    combined,
    groups,
    phi0_deg,
    phi1_deg_per_ppm,
    noise_sd,
    residual_sd,
    snr,
    ppm_range,
    baseline,
    baseline_order,
    f0_mhz,
    dwell_s,
    npoints,
    centre_ppm,
    water,
    extra,
) -> dict:
    """The output contract, keys in :data:`CONTRACT_KEYS` order (both backends)."""
    fq = (
        residual_sd / noise_sd
        if (noise_sd is not None and residual_sd is not None and noise_sd > 0)
        else None
    )
    wat = None
    if water is not None:
        wat = {k: water.get(k) for k in WATER_KEYS}
    out = {
        "backend": backend,
        "backend_version": backend_version,
        "success": bool(success),
        "message": str(message),
        "metabolites": metabolites,
        "combined": combined,
        "groups": groups,
        "phi0_deg": phi0_deg,
        "phi1_deg_per_ppm": phi1_deg_per_ppm,
        "noise_sd": noise_sd,
        "residual_sd": residual_sd,
        "fit_quality": fq,
        "snr": snr,
        "ppm_range": [float(ppm_range[0]), float(ppm_range[1])],
        "baseline": baseline,
        "baseline_order": baseline_order,
        "f0_mhz": f0_mhz,
        "dwell_s": dwell_s,
        "npoints": npoints,
        "centre_ppm": centre_ppm,
        "water_amplitude": None if wat is None else wat["amplitude"],
        "water_linewidth_hz": None if wat is None else wat["linewidth_hz"],
        "water": wat,
        "extra": extra,
    }
    assert tuple(out) == CONTRACT_KEYS
    return out


def _clean(obj):
    """JSON-safe copy: numpy -> python, non-finite -> None, floats to 10 significant digits."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return float(f"{v:.10g}") if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _fmt(v) -> str:
    if v is None:
        return "NA"
    v = float(v)
    return f"{v:.8g}" if math.isfinite(v) else "NA"


def write_result(result, out_json, out_tsv) -> dict:
    """Write the contract as JSON (indent 2, fixed key order) and a TSV of amplitudes.

    TSV columns: name, kind (basis | combined), amplitude, crlb_abs, crlb_pct.
    """
    d = result.to_dict() if hasattr(result, "to_dict") else result
    d = _clean(d)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    lines = ["name\tkind\tamplitude\tcrlb_abs\tcrlb_pct"]
    for kind, key in (("basis", "metabolites"), ("combined", "combined")):
        for name, e in d[key].items():
            lines.append(
                f"{name}\t{kind}\t{_fmt(e['amplitude'])}\t{_fmt(e['crlb_abs'])}\t"
                f"{_fmt(e['crlb_pct'])}"
            )
    Path(out_tsv).parent.mkdir(parents=True, exist_ok=True)
    Path(out_tsv).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def _mrs_header_ext(img) -> dict:
    for ext in img.header.extensions:
        if ext.get_code() == 44:
            content = ext.get_content()
            if isinstance(content, bytes):
                content = content.decode("utf-8").rstrip("\x00 ")
            return json.loads(content)
    return {}


def read_nifti_mrs(path) -> tuple[np.ndarray, float, float, dict]:
    """-> (fid in the project convention, dwell_s, f0_mhz, header extension). Extra
    dimensions averaged."""
    from mrsflow import nmrs

    data, hdr, _, dwell, _ = nmrs.read(path)
    if data.ndim < 4:
        raise InputError(f"{path}: not NIfTI-MRS (needs >= 4 dimensions, got {data.shape})")
    if np.prod(data.shape[:3]) != 1:
        raise InputError(f"{path}: single-voxel data expected, got spatial shape {data.shape[:3]}")
    fids = data.reshape(data.shape[3], -1)  # spatial dims are singletons
    if fids.shape[1] > 1:
        warnings.warn(f"{path}: {fids.shape[1]} FIDs averaged for fitting", stacklevel=2)
    fid = fids.mean(axis=1).astype(complex)
    if "SpectrometerFrequency" not in hdr:
        raise InputError(f"{path}: NIfTI-MRS header extension lacks SpectrometerFrequency")
    f0 = float(np.atleast_1d(hdr["SpectrometerFrequency"])[0])
    if not (dwell > 0 and f0 > 0):
        raise InputError(f"{path}: invalid dwell time {dwell} or frequency {f0}")
    return fid, dwell, f0, hdr


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def not_fitted(reason: str, names: list[str], *, backend: str) -> dict:
    """The output contract of a scan that was not fitted (``success`` False, ``message`` the
    reason, every amplitude None): a scan with no usable data still has its fit files, and
    the tables list it as excluded with the reason."""
    empty = {"amplitude": None, "crlb_abs": None, "crlb_pct": None}
    combined = {c: dict(empty) for c, members in COMBINATIONS.items()
                if all(m in names for m in members)}
    return _contract(
        backend=backend, backend_version=f"mrsflow {__version__}", success=False,
        message=f"not fitted: {reason}", metabolites={n: dict(empty) for n in names},
        combined=combined, groups={}, phi0_deg=None, phi1_deg_per_ppm=None, noise_sd=None,
        residual_sd=None, snr=None, ppm_range=(math.nan, math.nan), baseline=None,
        baseline_order=None, f0_mhz=None, dwell_s=None, npoints=None, centre_ppm=None,
        water=None, extra={"not_fitted": reason},
    )
