"""LCModel (Provencher 1993, MRM 30:672; open source, BSD-3-Clause) as a fitting backend:
the files it reads, the control file, running it, and reading back what it writes.

Written for LCModel 6.3 from its source and manual (``$LCMODL`` control namelist on standard
input; ``$NMID`` header + time-domain data in a .RAW file; ``$BASIS1`` / ``$BASIS`` headers +
frequency-domain spectra in a .BASIS file). The small part needed is written here rather
than taken from a wrapper package, so every convention is in one place and tested on a
singlet (NAA lands at 2.01 ppm in LCModel's own output):

- time domain: LCModel's data are the complex conjugate of the project's convention (a line
  at delta ppm is ``exp(+2 pi i (delta - 4.65) f0 t)`` here); :func:`to_lcmodel` conjugates;
- basis spectra: the FFT of the FID zero-filled to ``2 N`` points, LCModel's normalisation
  (sum / sqrt(2N)), unrearranged (zero frequency first), with ``CONC = TRAMP = VOLUME = 1``:
  the amplitude LCModel reports for an entry is then the project's amplitude of that entry
  (a basis FID with fid[0] = protons), before LCModel's own water scaling.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mrsflow.errors import BackendError, InputError

ENV_VAR = "MRSFLOW_LCMODEL"


def to_lcmodel(fid: np.ndarray) -> np.ndarray:
    """A project-convention FID in LCModel's convention (conjugate)."""
    return np.conj(np.asarray(fid, dtype=complex))


def find_executable(configured: str | None = None) -> str | None:
    """The LCModel executable: the config's path, else $MRSFLOW_LCMODEL, else ``lcmodel``
    on PATH; None if none is found (a configured path that is not executable is an error)."""
    for source, value in (("fitting.lcmodel.executable", configured),
                          (f"${ENV_VAR}", os.environ.get(ENV_VAR))):
        if value:
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise InputError(f"{source} = {value}: not an executable file")
            return str(path)
    return shutil.which("lcmodel")


def _fortran_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _namelist(name: str, values: Mapping) -> str:
    """A Fortran namelist block ``$NAME ... $END`` (strings quoted, logicals T/F)."""
    lines = [f" ${name}"]
    for key, v in values.items():
        if isinstance(v, bool):
            text = "T" if v else "F"
        elif isinstance(v, str):
            text = _fortran_str(v)
        elif isinstance(v, (int, np.integer)):
            text = str(int(v))
        else:
            text = repr(float(v))
        lines.append(f" {key}={text}")
    lines.append(" $END")
    return "\n".join(lines) + "\n"


def _columns(values: np.ndarray) -> str:
    """Complex values as 'real imag' lines in FORMAT (2E16.7)."""
    v = np.asarray(values, dtype=complex)
    return "".join(f"{z.real:16.7E}{z.imag:16.7E}\n" for z in v)


def write_raw(path: Path, fid: np.ndarray, *, ident: str = "mrsflow", tramp: float = 1.0,
              volume: float = 1.0) -> Path:
    """A .RAW file: ``$NMID`` header and the time-domain points (project FID, converted)."""
    path = Path(path)
    header = _namelist("NMID", {"ID": ident[:20], "FMTDAT": "(2E16.7)", "TRAMP": tramp,
                                "VOLUME": volume})
    path.write_text(header + _columns(to_lcmodel(fid)))
    return path


def basis_spectrum(fid: np.ndarray, dwell_s: float, fwhm_hz: float = 0.0) -> np.ndarray:
    """LCModel's frequency-domain basis vector of a project-convention FID of N points,
    given the Gaussian linewidth ``fwhm_hz`` LCModel assumes basis spectra have (FWHMBA):
    FFT of the LCModel-convention FID zero-filled to 2N, divided by sqrt(2N)."""
    t = np.arange(np.asarray(fid).size) * dwell_s
    x = to_lcmodel(fid) * np.exp(-((np.pi * fwhm_hz * t) ** 2) / (4.0 * math.log(2.0)))
    z = np.zeros(2 * x.size, dtype=complex)
    z[: x.size] = x
    return np.fft.fft(z) / math.sqrt(z.size)


def write_basis(path: Path, basis, *, names=None, fwhmba_ppm: float = 0.013,
                broaden: bool = True, ident: str = "mrsflow basis") -> Path:
    """A .BASIS file of ``basis`` (:class:`mrsflow.basis.Basis`, centre 4.65 ppm) entries
    ``names`` (default all), each with CONC = TRAMP = VOLUME = 1 and ISHIFT = 0.
    ``fwhmba_ppm``: the linewidth LCModel assumes the basis spectra have (FWHMBA); with
    ``broaden`` (an undamped simulated basis) they are given it as a Gaussian, otherwise
    (a basis with its own linewidth) written as they are."""
    if abs(float(basis.centre_ppm) - 4.65) > 1e-6:
        raise ValueError("write_basis needs a basis centred at 4.65 ppm")
    names = list(names or basis.names)
    n = int(basis.npoints)
    out = [_namelist("SEQPAR", {"FWHMBA": fwhmba_ppm, "HZPPPM": float(basis.f0_mhz),
                                "ECHOT": float(basis.te_ms), "SEQ": "PRESS"}),
           _namelist("BASIS1", {"IDBASI": ident[:80], "FMTBAS": "(2E16.7)",
                                "BADELT": float(basis.dwell_s), "NDATAB": 2 * n})]
    for name in names:
        fid = np.asarray(basis.fids[basis.names.index(name)])
        out.append(_namelist("BASIS", {"ID": name[:20], "METABO": name[:20], "CONC": 1.0,
                                       "TRAMP": 1.0, "VOLUME": 1.0, "ISHIFT": 0}))
        out.append(_columns(basis_spectrum(
            fid, float(basis.dwell_s), fwhmba_ppm * float(basis.f0_mhz) if broaden else 0.0)))
    Path(path).write_text("".join(out))
    return Path(path)


_BASIS_FILES: dict[str, Path] = {}


def basis_file(basis) -> Path:
    """The .BASIS file of ``basis`` (:func:`write_basis`), written once per process for each
    distinct basis (keyed by its content) into a temporary folder removed at exit: one file
    serves every spectrum of a fit job, and none is kept beside the results."""
    h = hashlib.sha256("\0".join(basis.names).encode())
    h.update(np.ascontiguousarray(basis.fids).tobytes())
    h.update(repr((float(basis.dwell_s), float(basis.f0_mhz), float(basis.te_ms))).encode())
    key = h.hexdigest()
    if key not in _BASIS_FILES or not _BASIS_FILES[key].is_file():
        folder = Path(tempfile.mkdtemp(prefix="mrsflow-lcmodel-"))
        atexit.register(shutil.rmtree, folder, True)
        _BASIS_FILES[key] = write_basis(folder / "basis.basis", basis)
    return _BASIS_FILES[key]


def file_settings(dwell_s: float, f0_mhz: float, npoints: int, basis_path: str | Path, *,
                  water: bool = True, coord: bool = True, title: str = "mrsflow") -> dict:
    """Control values naming LCModel's files in its working folder: the basis, metab.raw
    (and water.raw), fit.table, fit.ps (and fit.coord), with the data's timing."""
    out = {"TITLE": title, "DELTAT": float(dwell_s), "HZPPPM": float(f0_mhz),
           "NUNFIL": int(npoints), "FILBAS": str(basis_path), "FILRAW": "metab.raw",
           "FILTAB": "fit.table", "LTABLE": 7, "FILPS": "fit.ps"}
    if water:
        out.update(FILH2O="water.raw", DOWS=True)
    if coord:
        out.update(FILCOO="fit.coord", LCOORD=9)
    return out


def control(settings: Mapping) -> str:
    """The ``$LCMODL`` control namelist; ``settings`` in LCModel's own names (FILBAS,
    FILRAW, DELTAT, HZPPPM, NUNFIL, PPMST, PPMEND, ...)."""
    return _namelist("LCMODL", settings)


def run(executable: str, control_text: str, cwd: Path, timeout: float = 600.0
        ) -> subprocess.CompletedProcess:
    """Run LCModel with ``control_text`` on standard input in ``cwd``."""
    return subprocess.run([executable], input=control_text, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


_CONC_LINE = re.compile(
    r"^\s*(?P<conc>[-+0-9.Ee]+)\s+(?P<sd>\d+)%\s+(?P<rel>[-+0-9.Ee]+)\s+(?P<name>\S+)\s*$")


def parse_table(path: Path) -> dict:
    """LCModel's .table: {'metabolites': {name: {'conc', 'sd_pct', 'ratio'}}, 'fwhm_ppm',
    'snr', 'shift_ppm', 'ph0_deg', 'ph1_deg_per_ppm', 'messages': [...]}."""
    text = Path(path).read_text(errors="replace")
    out: dict = {"metabolites": {}, "messages": []}
    section = None
    for line in text.splitlines():
        if line.startswith("$$CONC"):
            section = "conc"
            continue
        if line.startswith("$$MISC"):
            section = "misc"
            continue
        if line.startswith("$$"):
            section = "other" if not line.startswith("$$DIAG") else "diag"
            continue
        if section == "conc":
            m = _CONC_LINE.match(line)
            if m:
                out["metabolites"][m["name"]] = {"conc": float(m["conc"]),
                                                 "sd_pct": float(m["sd"]),
                                                 "ratio": float(m["rel"])}
        elif section == "misc":
            m = re.search(r"FWHM\s*=\s*([-0-9.]+)\s*ppm\s+S/N\s*=\s*([-0-9.]+)", line)
            if m:
                out["fwhm_ppm"], out["snr"] = float(m[1]), float(m[2])
            m = re.search(r"Data shift\s*=\s*([-0-9.]+)\s*ppm", line)
            if m:
                out["shift_ppm"] = float(m[1])
            m = re.search(r"Ph:\s*([-0-9.]+)\s*deg\s+([-0-9.]+)\s*deg/ppm", line)
            if m:
                out["ph0_deg"], out["ph1_deg_per_ppm"] = float(m[1]), float(m[2])
        elif section == "diag" and line.strip():
            out["messages"].append(line.strip())
    return out


def parse_coord(path: Path) -> dict:
    """LCModel's .coord: the ppm axis, the phased data, the fit and the baseline over the
    analysis window (each NY points, as LCModel plots them)."""
    lines = Path(path).read_text(errors="replace").splitlines()
    out: dict = {}

    def block(start: int, n: int) -> np.ndarray:
        vals: list[float] = []
        i = start
        while len(vals) < n:
            vals += [float(v) for v in lines[i].split()]
            i += 1
        return np.array(vals[:n])

    for i, line in enumerate(lines):
        m = re.match(r"\s*(\d+)\s+points on ppm-axis = NY", line)
        if m:
            ny = int(m[1])
            out["ppm"] = block(i + 1, ny)
        elif re.match(r"\s*NY phased data points follow", line):
            out["data"] = block(i + 1, ny)
        elif re.match(r"\s*NY points of the fit to the data follow", line):
            out["fit"] = block(i + 1, ny)
        elif re.match(r"\s*NY background values follow", line):
            out["baseline"] = block(i + 1, ny)
    return out


# ---------------------------------------------------------------------------------------------
# The backend: one spectrum in, the project's output contract out (mrsflow.fit)
# ---------------------------------------------------------------------------------------------
#: control values of the paper's kind of analysis (every one can be changed in the config's
#: fitting.lcmodel.control, in LCModel's own names): water scaling with eddy-current
#: correction, every metabolite in the table, and only the project's basis entries (its MM
#: model, parametrised or measured; NSIMUL = 0: no LCModel-simulated MM/lipids on top).
#: LCModel's own tissue and relaxation factors stay neutral (WCONC = ATTH2O = ATTMET = 1):
#: the project's quantification applies them to the amplitudes (mrsflow.quantify).
DEFAULT_CONTROL = {"DOECC": True, "NEACH": 99, "NSIMUL": 0}


def fit(fid: np.ndarray, water_fid: np.ndarray | None, dwell_s: float, f0_mhz: float, basis,
        *, ppm_range, executable: str, workdir: Path, water: Mapping,
        control_values: Mapping | None = None, centre_ppm: float = 4.65
        ) -> tuple[dict, dict]:
    """Fit one processed spectrum with LCModel; returns (the output contract of
    :mod:`mrsflow.fit`, the arrays of its QC plot: ppm, data, fit, baseline).

    Amplitudes in the project's units: LCModel scales by the water reference (``DOWS``,
    WCONC = ATTH2O = ATTMET = 1 gives ``conc = 2 A / W`` for a basis entry of amplitude A and
    water area W, measured by LCModel), so ``A = conc W / 2`` with W the project's own water
    fit (``water['amplitude']``, :func:`mrsflow.fit.fit_water`). LCModel's %SD is the CRLB.
    ``noise_sd`` and the fit QC come from LCModel's plotted spectra (every second point of
    its twice zero-filled grid), which it scales like its concentrations; the noise is the
    project's estimate on the FID in those units (FFT / sqrt(2N), / (W / 2)). LCModel's own
    S/N is recorded as ``extra.snr_lcmodel`` (its definition: peak over twice the residual
    RMS), not as the contract's ``snr``, so nobody compares the two as one measure."""
    from mrsflow import qc
    from mrsflow.fit import builtin, contract

    if water_fid is None:
        raise InputError("the LCModel backend needs the water reference (water scaling)")
    if abs(centre_ppm - 4.65) > 1e-6:
        raise InputError("the LCModel backend needs spectra centred at 4.65 ppm")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("fit.*"):
        old.unlink()
    names = list(basis.names)
    write_raw(workdir / "metab.raw", fid)
    write_raw(workdir / "water.raw", water_fid)
    combos = [(c, m) for c, m in contract.COMBINATIONS.items() if all(x in names for x in m)]
    settings = {
        **file_settings(dwell_s, f0_mhz, np.asarray(fid).size, basis_file(basis)),
        "PPMST": float(max(ppm_range)), "PPMEND": float(min(ppm_range)),
        "WCONC": 1.0, "ATTH2O": 1.0, "ATTMET": 1.0, "NCOMBI": len(combos),
        **{f"CHCOMB({i})": "+".join(m) for i, (_, m) in enumerate(combos, start=1)},
    }
    if "Cr" in names and "PCr" in names:
        settings["NAMREL"] = "Cr+PCr"
    settings.update(DEFAULT_CONTROL)
    settings.update(control_values or {})
    proc = run(executable, control(settings), workdir)
    table_path = workdir / "fit.table"
    if proc.returncode != 0 or not table_path.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise BackendError(f"LCModel failed (exit {proc.returncode}): "
                           + (" | ".join(tail) or "no output"))
    table = parse_table(table_path)
    if not table["metabolites"]:
        raise BackendError("LCModel wrote no concentrations: "
                           + " | ".join(table["messages"][-5:]))
    w_amp = float(water["amplitude"])
    combo_of = {"+".join(m): c for c, m in combos}
    metabolites, combined = {}, {}
    for name, row in table["metabolites"].items():
        amp = row["conc"] * w_amp / 2.0
        entry = contract._met_entry(amp, row["sd_pct"] / 100.0 * amp if amp > 0 else math.nan)
        if name in combo_of:
            combined[combo_of[name]] = entry
        elif name in names:
            metabolites[name] = entry
    coord = parse_coord(workdir / "fit.coord") if (workdir / "fit.coord").is_file() else {}
    arrays = {"ppm": coord.get("ppm"), "data": coord.get("data"), "fit": coord.get("fit"),
              "baseline": coord.get("baseline")}
    n = int(np.asarray(fid).size)
    noise = builtin.estimate_noise_sd(fid, dwell_s, f0_mhz, centre_ppm)
    noise_sd = residual_sd = None
    fit_qc = None
    if noise and all(arrays[k] is not None for k in ("ppm", "data", "fit", "baseline")):
        # LCModel plots the data scaled like its concentrations: / (W / 2) after its FFT
        noise_sd = noise * 2.0 / (w_amp * math.sqrt(2 * n))
        sub = {k: np.asarray(v)[::2] for k, v in arrays.items()}
        resid = sub["data"] - sub["fit"]
        residual_sd = float(np.sqrt(np.mean(resid**2)))
        fit_qc = qc.fit_qc(sub["ppm"], sub["data"], sub["fit"], sub["baseline"], noise_sd)
    fwhm_hz = table.get("fwhm_ppm", math.nan) * f0_mhz
    extra = {"lcmodel_dir": str(workdir), "snr_lcmodel": table.get("snr"),
             "fwhm_lcmodel_ppm": table.get("fwhm_ppm"), "lcmodel_messages": table["messages"],
             "control": {k: v for k, v in settings.items() if not k.startswith("FIL")}}
    if fit_qc is not None:
        extra["fit_qc"] = fit_qc
    d = contract._contract(
        backend="lcmodel", backend_version=_version(table_path),
        success=True, message="parsed LCModel output", metabolites=metabolites,
        combined=combined,
        groups={"metabolites": {"members": names, "gamma_hz": math.nan, "sigma_hz": math.nan,
                                "shift_hz": table.get("shift_ppm", math.nan) * f0_mhz,
                                "linewidth_hz": fwhm_hz}},
        phi0_deg=table.get("ph0_deg"), phi1_deg_per_ppm=table.get("ph1_deg_per_ppm"),
        noise_sd=noise_sd, residual_sd=residual_sd, snr=None, ppm_range=ppm_range,
        baseline="LCModel spline", baseline_order=None, f0_mhz=float(f0_mhz),
        dwell_s=float(dwell_s), npoints=n, centre_ppm=float(centre_ppm), water=water,
        extra=extra)
    return d, arrays


def _version(table_path: Path) -> str:
    m = re.search(r"LCModel \(Version ([^)]+)\)", Path(table_path).read_text(errors="replace"))
    return f"LCModel {m[1]}" if m else "LCModel"
