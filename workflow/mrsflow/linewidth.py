"""Linewidth matching between the scans of a session (functional MRS).

A stimulus changes the linewidth: the BOLD effect lengthens T2* during activation, so water
and metabolite lines narrow (about 0.1-0.3 Hz at 7 T for visual stimulation: Zhu & Chen
2001, MRM 46:841; Mangia et al. 2007, JCBFM 27:1055), and a linear-combination fit of a
narrower spectrum need not return the same amplitudes. Functional-MRS practice is to match
the linewidths of the conditions before fitting by broadening the narrower spectra to the
broadest (Mangia et al. 2007; Bednarik et al. 2015, JCBFM 35:601; the consensus of Mullins
2018, NeuroImage 168:199 on fMRS methods). This module does that for the scans of one
participant's session:

- measure: the FWHM (:func:`mrsflow.qc.linewidth_hz`, a pseudo-Voigt fit) of the water
  reference (``water``, default: the highest-SNR line and the one BOLD acts on most directly)
  or of a metabolite singlet of the metabolite spectrum (``naa`` 1.9-2.1 ppm, ``cr``
  2.95-3.10 ppm);
- target: the broadest scan of the session on that measure, among the scans within
  ``max_linewidth_hz`` (the workflow passes the QC limit of that line, ``qc.linewidth_*_max_hz``:
  a scan QC will exclude for its linewidth must not drag the others down to it; it is left
  as it is, and so is a scan the target cannot be reached for within ``max_broadening_hz``);
- broadening: each narrower scan's metabolite and water FIDs are multiplied by the same
  ``exp(-pi b t)`` (``lorentzian``, the shape of a T2* change) or ``exp(-(pi b t)^2 /
  (4 ln 2))`` (``gaussian``), with ``b`` (Hz) found by root finding so that the measure of
  the broadened scan equals the target (to ``tolerance_hz``). Both shapes leave the FID's
  first point, and so every line's area and the water scaling, unchanged.

:func:`run_participant` reads a participant's processed spectra, writes the matched ones and
one JSON record per scan (measure, before, target, after, broadening).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

from mrsflow import nmrs, qc
from mrsflow.errors import InputError

#: measure name -> (ppm window of the line, which spectrum it is read on)
MEASURES: dict[str, tuple[tuple[float, float], str]] = {
    "water": (qc.WATER_PPM, "water"),
    "naa": (qc.NAA_PPM, "metab"),
    "cr": ((2.95, 3.10), "metab"),
}
KINDS = ("lorentzian", "gaussian")
DEFAULTS = {"enabled": False, "measure": "water", "kind": "lorentzian", "tolerance_hz": 0.02,
            "max_broadening_hz": 10.0, "max_linewidth_hz": None}


def settings(params: dict | None) -> dict:
    """The ``preprocess.linewidth_matching`` block with defaults, checked."""
    p = {**DEFAULTS, **(params or {})}
    unknown = set(p) - set(DEFAULTS)
    if unknown:
        raise InputError(f"config 'preprocess.linewidth_matching': unknown keys {sorted(unknown)}"
                         f"; known: {sorted(DEFAULTS)}")
    if p["measure"] not in MEASURES:
        raise InputError(f"config 'preprocess.linewidth_matching.measure': {p['measure']!r} "
                         f"is not one of {sorted(MEASURES)}")
    if p["kind"] not in KINDS:
        raise InputError(f"config 'preprocess.linewidth_matching.kind': {p['kind']!r} is not "
                         f"one of {list(KINDS)}")
    return p


def broaden(fid: np.ndarray, dwell_s: float, hz: float, kind: str = "lorentzian") -> np.ndarray:
    """``fid`` broadened by ``hz`` (FWHM of the Lorentzian or Gaussian convolved with every
    line); the first point, and so every line's area, unchanged."""
    t = np.arange(fid.size) * dwell_s
    if kind == "lorentzian":
        window = np.exp(-math.pi * hz * t)
    elif kind == "gaussian":
        window = np.exp(-((math.pi * hz * t) ** 2) / (4.0 * math.log(2.0)))
    else:
        raise ValueError(f"kind must be one of {KINDS}")
    return fid * window


def measure_hz(metab: np.ndarray, water: np.ndarray | None, dwell_s: float, f0_mhz: float,
               measure: str = "water") -> float:
    """The FWHM (Hz) the matching works on (module docstring); NaN if it has no line."""
    window, which = MEASURES[measure]
    fid = water if which == "water" else metab
    if fid is None:
        return math.nan
    return float(qc.linewidth_hz(fid, dwell_s, f0_mhz, peak_ppm=window))


def broadening_to(metab, water, dwell_s, f0_mhz, target_hz: float, p: dict,
                  before: float | None = None) -> float:
    """The broadening b (Hz) after which the scan's measure equals ``target_hz``
    (``before``: the scan's measure, if already known)."""
    if before is None:
        before = measure_hz(metab, water, dwell_s, f0_mhz, p["measure"])
    if not target_hz - before > p["tolerance_hz"]:
        return 0.0

    def err(b: float) -> float:
        w = None if water is None else broaden(water, dwell_s, b, p["kind"])
        m = broaden(metab, dwell_s, b, p["kind"])
        return measure_hz(m, w, dwell_s, f0_mhz, p["measure"]) - target_hz

    hi = float(p["max_broadening_hz"])
    if err(hi) < 0:
        raise InputError(f"linewidth matching: {hi} Hz of broadening does not reach the "
                         f"target {target_hz:.2f} Hz (from {before:.2f} Hz)")
    return float(brentq(err, 0.0, hi, xtol=p["tolerance_hz"] / 4))


def match_session(scans: list[dict], dwell_s: float, f0_mhz: float, p: dict) -> list[dict]:
    """Match the scans of one session. ``scans``: dicts with ``metab`` and ``water`` FIDs
    (``water`` may be None). -> per scan a record (measure, before, target, broadening,
    after, kind) and the matched ``metab``/``water`` FIDs. A scan whose measure is not
    finite keeps its spectrum and is named in ``note``; with fewer than two measurable scans,
    or matching off (``enabled`` false), nothing is broadened."""
    before = [measure_hz(s["metab"], s["water"], dwell_s, f0_mhz, p["measure"]) for s in scans]
    limit = math.inf if p["max_linewidth_hz"] is None else float(p["max_linewidth_hz"])
    ok = [b for b in before if math.isfinite(b) and b <= limit]
    target = max(ok) if len(ok) >= 2 and p["enabled"] else math.nan
    out = []
    for s, lw in zip(scans, before, strict=True):
        rec = {"measure": p["measure"], "kind": p["kind"], "before_hz": lw, "target_hz": target,
               "broadening_hz": 0.0, "note": ""}
        metab, water = s["metab"], s["water"]
        if not math.isfinite(lw):
            rec["note"] = f"no {p['measure']} line measured: spectrum left as it is"
        elif lw > limit:
            rec["note"] = (f"{p['measure']} FWHM {lw:.2f} Hz above max_linewidth_hz {limit:g}: "
                           "neither target nor broadened")
        elif math.isfinite(target):
            try:
                b = broadening_to(metab, water, dwell_s, f0_mhz, target, p, before=lw)
            except InputError as err:
                b, rec["note"] = 0.0, f"{err}: spectrum left as it is"
            if b > 0:
                metab = broaden(metab, dwell_s, b, p["kind"])
                water = None if water is None else broaden(water, dwell_s, b, p["kind"])
            rec["broadening_hz"] = b
        elif not p["enabled"]:
            rec["note"] = "linewidth matching off"
        else:
            rec["note"] = "fewer than two measurable scans in the session: nothing to match"
        rec["after_hz"] = (measure_hz(metab, water, dwell_s, f0_mhz, p["measure"])
                           if rec["broadening_hz"] > 0 else lw)
        out.append({**rec, "metab": metab, "water": water})
    return out


def _read(path):
    data, ext, affine, dwell, img = nmrs.read(path)
    return data.reshape(-1), ext, affine, dwell, img


def run_participant(plan: list[dict], params: dict | None) -> list[dict]:
    """Match every session of one participant. ``plan``: one dict per scan with
    ``session``, ``metab``, ``water`` (processed NIfTI-MRS), ``metab_out``, ``water_out``
    and ``record`` (JSON) paths. Matching off (``enabled: false``): the spectra are copied
    unchanged and the records say so."""
    p = settings(params)
    sessions: dict[str, list[dict]] = {}
    for item in plan:
        sessions.setdefault(item["session"], []).append(item)
    records = []
    for items in sessions.values():
        loaded = []
        for it in items:
            metab, ext, affine, dwell, img = _read(it["metab"])
            water, wext, _, _, _ = _read(it["water"]) if it.get("water") else (None,) * 5
            f0 = float(ext["SpectrometerFrequency"][0])
            loaded.append({"metab": metab, "water": water, "ext": ext, "wext": wext,
                           "affine": affine, "dwell": dwell, "f0": f0,
                           "nver": nmrs.nifti_version(img)})
        matched = match_session(loaded, loaded[0]["dwell"], loaded[0]["f0"], p)
        for it, s, m in zip(items, loaded, matched, strict=True):
            n = m["metab"].size
            nmrs.write(it["metab_out"], m["metab"].reshape(1, 1, 1, n), s["dwell"], s["f0"],
                       affine=s["affine"], hdr_ext=s["ext"], nifti_version=s["nver"])
            if m["water"] is not None:
                nmrs.write(it["water_out"], m["water"].reshape(1, 1, 1, n), s["dwell"],
                           s["f0"], affine=s["affine"], hdr_ext=s["wext"],
                           nifti_version=s["nver"])
            rec = {k: v for k, v in m.items() if k not in ("metab", "water")}
            rec.update(enabled=bool(p["enabled"]), session=it["session"],
                       scan=Path(it["metab"]).name)
            Path(it["record"]).parent.mkdir(parents=True, exist_ok=True)
            Path(it["record"]).write_text(
                json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                            for k, v in rec.items()}, indent=1, sort_keys=True) + "\n",
                encoding="utf-8")
            records.append(rec)
    return records
