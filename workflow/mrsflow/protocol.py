"""The acquisition protocol of each scan, read from its raw file's header, and which of the
config's protocols it is.

A basis set is simulated for one protocol (field, TE and the PRESS TE1/TE2 split, spectral
width, points) and water scaling corrects relaxation with the scan's TE and TR, so a scan
fitted with another protocol's basis returns wrong numbers without any warning (a TE 50
scan fitted with a TE 30 basis reads Glu 0-2 mmol/kg). Every scan's header is therefore read
when the workflow starts (:func:`read_header`) and matched against the protocols the config
declares (:func:`protocols`: ``sequence``, named after ``basis.name``, plus any under
``protocols``); a scan that matches none stops the run, naming the file and the field
(:func:`match`). Tolerances (:data:`TOLERANCE`): TE 0.5 ms, TR 1 %, field 1 %, spectral width
0.5 %, points exact. The number of averages is recorded, not matched.

Headers: Philips SPAR (``echo_time``, ``repetition_time`` in ms, ``synthesizer_frequency`` in
Hz, ``sample_frequency``, ``samples``, ``averages`` per row x ``rows``), Siemens RDA (``TE``,
``TR`` ms, ``MRFrequency`` MHz, ``DwellTime`` us, ``VectorSize``, ``NumberOfAverages``),
NIfTI-MRS (header extension ``EchoTime``/``RepetitionTime`` in s, ``SpectrometerFrequency``
MHz, dwell ``pixdim[4]``, points ``dim[4]``; averages: the transients stored, if unaveraged).
The TE1/TE2 split of PRESS is in none of them: it comes from the config's protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from mrsflow.errors import InputError
from mrsflow.vendor import philips_pair, read_rda_header, read_spar

FIELDS = ("te_ms", "tr_ms", "field_mhz", "bandwidth_hz", "points")
LABELS = {"te_ms": "echo time", "tr_ms": "repetition time", "field_mhz": "spectrometer "
          "frequency", "bandwidth_hz": "spectral width", "points": "number of points"}
UNITS = {"te_ms": "ms", "tr_ms": "ms", "field_mhz": "MHz", "bandwidth_hz": "Hz", "points": ""}
#: (kind, tolerance): 'abs' in the field's unit, 'rel' a fraction
TOLERANCE = {"te_ms": ("abs", 0.5), "tr_ms": ("rel", 0.01), "field_mhz": ("rel", 0.01),
             "bandwidth_hz": ("rel", 0.005), "points": ("abs", 0.0)}


def protocols(config: Mapping) -> dict[str, dict]:
    """{name: protocol} of the config: ``sequence`` (named ``basis.name``) first, then the
    ``protocols`` block. A protocol has field_mhz, te1_ms, te2_ms, tr_ms, bandwidth_hz,
    points, centre_ppm (and te_ms = te1_ms + te2_ms is added)."""
    out = {config["basis"]["name"]: dict(config["sequence"])}
    for name, seq in (config.get("protocols") or {}).items():
        out[name] = dict(seq)
    for seq in out.values():
        seq["te_ms"] = float(seq["te1_ms"]) + float(seq["te2_ms"])
    return out


def _num(value, what: str, path: Path) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: header field {what} is not a number ({value!r})") from None
    if not math.isfinite(v):
        raise InputError(f"{path}: header field {what} is not finite ({value!r})")
    return v


def _philips(sdat: Path, spar: Path) -> dict:
    try:
        p = read_spar(spar)
    except ValueError as err:
        raise InputError(str(err)) from err
    missing = [k for k in ("echo_time", "repetition_time", "synthesizer_frequency",
                           "sample_frequency", "samples") if p.get(k) is None]
    if missing:
        raise InputError(f"{spar}: SPAR is missing required key(s): {', '.join(missing)}")
    rows = int(_num(p.get("rows", 1), "rows", spar))
    per_row = p.get("averages")
    return {
        "te_ms": _num(p["echo_time"], "echo_time", spar),
        "tr_ms": _num(p["repetition_time"], "repetition_time", spar),
        "field_mhz": _num(p["synthesizer_frequency"], "synthesizer_frequency", spar) / 1e6,
        "bandwidth_hz": _num(p["sample_frequency"], "sample_frequency", spar),
        "points": int(_num(p["samples"], "samples", spar)),
        "averages": rows * int(_num(per_row, "averages", spar)) if per_row else rows,
        "header": str(spar),
    }


def _rda(path: Path) -> dict:
    try:
        h, _ = read_rda_header(path)
    except ValueError as err:
        raise InputError(str(err)) from err
    missing = [k for k in ("TE", "TR", "MRFrequency", "DwellTime", "VectorSize") if k not in h]
    if missing:
        raise InputError(f"{path}: RDA header is missing {', '.join(missing)}")
    dwell_us = _num(h["DwellTime"], "DwellTime", path)
    return {
        "te_ms": _num(h["TE"], "TE", path),
        "tr_ms": _num(h["TR"], "TR", path),
        "field_mhz": _num(h["MRFrequency"], "MRFrequency", path),
        "bandwidth_hz": 1e6 / dwell_us if dwell_us > 0 else 0.0,
        "points": int(_num(h["VectorSize"], "VectorSize", path)),
        "averages": int(_num(h.get("NumberOfAverages", "nan"), "NumberOfAverages", path))
        if "NumberOfAverages" in h else None,
        "header": str(path),
    }


def _nifti_mrs(path: Path) -> dict:
    import nibabel as nib

    from mrsflow import nmrs

    try:
        img = nib.load(str(path))
        hdr = nmrs.header_extension(img)
    except (OSError, ValueError, InputError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"{path}: not a NIfTI-MRS file (no readable header extension): "
                         f"{err}") from None
    missing = [k for k in ("EchoTime", "RepetitionTime", "SpectrometerFrequency")
               if k not in hdr]
    if missing:
        raise InputError(f"{path}: NIfTI-MRS header extension is missing {', '.join(missing)} "
                         "(the workflow needs them to choose the basis and correct relaxation)")
    dwell = nmrs.dwell_time_s(img)
    shape = img.shape
    higher = math.prod(shape[4:]) if len(shape) > 4 else 1
    return {
        "te_ms": 1e3 * _num(hdr["EchoTime"], "EchoTime", path),
        "tr_ms": 1e3 * _num(hdr["RepetitionTime"], "RepetitionTime", path),
        "field_mhz": _num(hdr["SpectrometerFrequency"][0]
                          if isinstance(hdr["SpectrometerFrequency"], list)
                          else hdr["SpectrometerFrequency"], "SpectrometerFrequency", path),
        "bandwidth_hz": 1.0 / dwell if dwell > 0 else 0.0,
        "points": int(shape[3]) if len(shape) > 3 else 0,
        "averages": int(higher) if higher > 1 else None,
        "header": str(path),
    }


def is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def read_header(path: Path | str) -> dict:
    """The protocol fields of one raw spectrum (Philips SDAT/SPAR, Siemens RDA, NIfTI-MRS):
    te_ms, tr_ms, field_mhz, bandwidth_hz, points, averages (None if the header does not
    say) and ``header`` (the file read)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such spectroscopy file")
    pair = philips_pair(path)
    if pair is not None:
        return _philips(*pair)
    if path.suffix.lower() == ".rda":
        return _rda(path)
    if is_nifti(path):
        return _nifti_mrs(path)
    raise InputError(f"{path}: unknown spectroscopy file type (Philips SDAT/SPAR, Siemens RDA "
                     "or NIfTI-MRS expected)")


def _differs(field: str, value: float, wanted: float) -> bool:
    kind, tol = TOLERANCE[field]
    if kind == "abs":
        return abs(value - wanted) > tol
    return abs(value - wanted) > tol * abs(wanted)


def _fmt(field: str, value: float) -> str:
    text = f"{value:g}" if field != "field_mhz" else f"{value:.4g}"
    return f"{text} {UNITS[field]}".strip()


def mismatches(header: Mapping, protocol: Mapping) -> list[str]:
    """The fields in which ``header`` differs from ``protocol`` (as text), [] if it matches."""
    out = []
    for f in FIELDS:
        have, want = float(header[f]), float(protocol[f])
        if _differs(f, have, want):
            hint = ""
            if f in ("te_ms", "tr_ms") and 0 < have < 1 <= want:
                hint = " (seconds instead of ms?)"
            out.append(f"{LABELS[f]} {_fmt(f, have)}{hint} where the protocol has "
                       f"{_fmt(f, want)}")
    return out


def match(header: Mapping, protos: Mapping[str, Mapping], path: Path | str) -> str:
    """The name of the one protocol ``header`` matches; else an InputError naming the file
    and, for each protocol, the fields that differ."""
    ok = [name for name, p in protos.items() if not mismatches(header, p)]
    if len(ok) == 1:
        return ok[0]
    if len(ok) > 1:
        raise InputError(f"{path}: its header matches several protocols ({', '.join(ok)}); "
                         "make the config's protocols distinct")
    if len(protos) == 1:
        (name, p), = protos.items()
        return _raise(path, "; ".join(mismatches(header, p)) + f" ({name}, config 'sequence'); "
                      "declare each protocol of the study under 'protocols' to analyse them "
                      "together (one basis set is simulated per protocol)")
    parts = [f"{name}: " + "; ".join(mismatches(header, p)) for name, p in protos.items()]
    return _raise(path, "matches no configured protocol: " + " | ".join(parts))


def _raise(path, text: str) -> str:
    raise InputError(f"{path}: {text}")
