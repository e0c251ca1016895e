"""The FSL-MRS backend: the ``fsl_mrs`` command line (FSL-MRS 2.x), run and read back into
the output contract."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from mrsflow.basis import read_fsl_basis
from mrsflow.errors import BackendError, InputError
from mrsflow.fit.builtin import _fit_bins, _parse_baseline, _resolve_groups, estimate_noise_sd
from mrsflow.fit.contract import (
    COMBINATIONS,
    _contract,
    _finite,
    _met_entry,
    is_macromolecule,
    read_nifti_mrs,
    voigt_fwhm,
)
from mrsflow.fit.water import fit_water


# --------------------------------------------------------------------------------------------
# FSL-MRS command line (documented options of fsl_mrs 2.x: docs/user_docs/fitting_svs.rst and
# `fsl_mrs --help`)
# --------------------------------------------------------------------------------------------
def _fsl_group_entries(names: list[str], groups) -> tuple[list[str], list[str], dict]:
    """-> (--metab_groups entries, our group name per FSL group index, {group: members}).

    Default (``groups`` None): the metabolites one group and every macromolecule/lipid entry
    its own, as FSL-MRS recommends for its default MM (it warns on every fit otherwise);
    explicit ``groups`` as :func:`_resolve_groups` reads them."""
    if groups is None:
        mm = [n for n in names if is_macromolecule(n)]
        members = {"metabolites": [n for n in names if n not in set(mm)]}
        members.update({n: [n] for n in mm})
        if not members["metabolites"]:
            del members["metabolites"]
        return mm, list(members), members
    gnames, mems, _ = _resolve_groups(names, groups)
    entries = []
    order = []
    for gname, mem in zip(gnames, mems, strict=True):
        if gname == "metabolites":
            continue
        entries.append("+".join(mem))
        order.append(gname)
    # FSL-MRS: names listed get groups 1..n, all others group 0 (shifted if none are left)
    if "metabolites" in gnames:
        order = ["metabolites", *order]
    return entries, order, dict(zip(gnames, mems, strict=True))


def _fsl_baseline_arg(spec) -> str:
    kind, value, label = _parse_baseline(spec)
    if kind == "off":
        return "off"
    if kind == "poly":
        return f"poly, {int(value)}"
    word = label.split(",", 1)[1].strip()
    return f"spline, {word}"


def build_fsl_mrs_command(
    metab_nii,
    basis_dir,
    out_dir,
    *,
    water_nii=None,
    te_ms: float | None = None,
    tr_ms: float | None = None,
    tissue_json=None,
    params: dict | None = None,
    basis_names: list[str] | None = None,
    executable: str = "fsl_mrs",
) -> list[str]:
    """argv for ``fsl_mrs`` (FSL-MRS 2.x SVS wrapper), documented options only.

    ``params``: ppm_range, baseline (or baseline_order), groups, ignore, keep, combine (list of
    lists; default the four :data:`COMBINATIONS` present in the basis), algo, lorentzian,
    free_shift, internal_ref, wref_metabolite, no_rescale (default True: :func:`run_fsl_mrs`
    pre-scales the data itself), overwrite (default True), and the config's ``fsl_mrs``
    block: ``report`` (default False: FSL-MRS's HTML report is 1.7 MB per scan) and
    ``water_scaling`` (default False). The project scales by water itself
    (mrsflow.quantify), so by default FSL-MRS gets no ``--h2o``/``--TE``/``--TR``/
    ``--tissue_frac`` and runs no quantification step of its own (which fails on a spectrum
    where its reference metabolite is not fitted).
    """
    p = dict(params or {})
    fsl = dict(p.get("fsl_mrs") or {})
    if not fsl.get("water_scaling", p.get("fsl_water_scaling", False)):
        water_nii = te_ms = tr_ms = tissue_json = None
    cmd = [
        executable,
        "--data",
        str(metab_nii),
        "--basis",
        str(basis_dir),
        "--output",
        str(out_dir),
    ]
    if water_nii is not None:
        cmd += ["--h2o", str(water_nii)]
    if tissue_json is not None:
        cmd += ["--tissue_frac", str(tissue_json)]
    if te_ms is not None:
        cmd += ["--TE", f"{float(te_ms):g}"]  # ms
    if tr_ms is not None:
        cmd += ["--TR", f"{float(tr_ms) / 1000.0:g}"]  # fsl_mrs takes TR in seconds
    lo, hi = p.get("ppm_range", (0.2, 4.2))
    cmd += ["--ppmlim", f"{float(lo):g}", f"{float(hi):g}"]
    cmd += ["--baseline", _fsl_baseline_arg(p.get("baseline", p.get("baseline_order", 2)))]
    names = list(basis_names or [])
    ignore = [n for n in p.get("ignore", []) or []]
    used = [n for n in names if n not in set(ignore)]
    if used:
        entries, _, _ = _fsl_group_entries(used, p.get("groups"))
        if entries:
            cmd += ["--metab_groups", *entries]
    if ignore:
        cmd += ["--ignore", *ignore]
    if p.get("keep"):
        cmd += ["--keep", *p["keep"]]
    combine = p.get("combine")
    if combine is None:
        combine = [list(v) for v in COMBINATIONS.values() if all(x in used for x in v)]
    for comb in combine:
        cmd += ["--combine", *comb]
    algo = p.get("algo")
    if algo:
        cmd += ["--algo", str(algo)]
    if p.get("lorentzian"):
        cmd.append("--lorentzian")
    if p.get("free_shift"):
        cmd.append("--free_shift")
    if p.get("internal_ref"):
        cmd += ["--internal_ref", *p["internal_ref"]]
    if p.get("wref_metabolite"):
        cmd += ["--wref_metabolite", *np.atleast_1d(p["wref_metabolite"]).tolist()]
    if p.get("no_rescale", True):
        cmd.append("--no_rescale")
    if fsl.get("report", p.get("report", False)):
        cmd.append("--report")
    if p.get("overwrite", True):
        cmd.append("--overwrite")
    return cmd


def _write_scaled_nifti(src, dst, factor: float) -> None:
    import nibabel as nib

    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj) * factor
    hdr = img.header.copy()
    new = img.__class__(data.astype(img.get_data_dtype()), img.affine, header=hdr)
    nib.save(new, str(dst))


def _fsl_tissue_json(tissue_json, dst: Path) -> Path:
    """FSL-MRS reads {"WM": f, "GM": f, "CSF": f}; accept lower-case keys too."""
    content = json.loads(Path(tissue_json).read_text(encoding="utf-8"))
    src = content.get("fractions", content) if isinstance(content, dict) else {}
    out = {}
    for key in ("WM", "GM", "CSF"):
        for cand in (key, key.lower(), f"f_{key.lower()}"):
            if cand in src:
                out[key] = float(src[cand])
                break
        else:
            raise InputError(f"{tissue_json}: no {key} tissue fraction")
    dst.write_text(json.dumps(out) + "\n", encoding="utf-8")
    return dst


def run_fsl_mrs(
    metab_nii,
    water_nii,
    basis_dir,
    out_dir,
    *,
    te_ms: float | None,
    tr_ms: float | None,
    tissue_json=None,
    params: dict | None = None,
) -> dict:
    """Run ``fsl_mrs`` and parse its outputs into the contract (see module docstring).

    The metabolite and water NIfTI-MRS files are copied, both multiplied by the same factor k
    (100 / max|FID| of the metabolite data), and fitted with ``--no_rescale``: FSL-MRS's raw
    concentrations divided by k are then amplitudes in data units, like the builtin ones.
    """
    if shutil.which("fsl_mrs") is None:
        raise InputError("fsl_mrs is not on PATH")
    out_dir = Path(out_dir)
    work = out_dir.parent / f"{out_dir.name}_inputs"
    work.mkdir(parents=True, exist_ok=True)
    fid, dwell, f0, _ = read_nifti_mrs(metab_nii)
    k = 100.0 / float(np.max(np.abs(fid)))
    metab_s = work / "metab_scaled.nii.gz"
    _write_scaled_nifti(metab_nii, metab_s, k)
    water_s = None
    if water_nii is not None:
        water_s = work / "water_scaled.nii.gz"
        _write_scaled_nifti(water_nii, water_s, k)
    tissue = _fsl_tissue_json(tissue_json, work / "tissue_frac.json") if tissue_json else None
    basis = read_fsl_basis(basis_dir)
    p = dict(params or {})
    cmd = build_fsl_mrs_command(
        metab_s,
        basis_dir,
        out_dir,
        water_nii=water_s,
        te_ms=te_ms,
        tr_ms=tr_ms,
        tissue_json=tissue,
        params=p,
        basis_names=basis.names,
    )
    (work / "command.txt").write_text(" ".join(f"'{c}'" if " " in c else c for c in cmd) + "\n")
    # one BLAS thread in the child on purpose: the workflow runs one fit job per core
    env = {**os.environ, **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "MKL_NUM_THREADS"), "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    (work / "fsl_mrs.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    version = _fsl_mrs_version()
    if proc.returncode != 0:
        raise BackendError(f"fsl_mrs failed (exit {proc.returncode}): "
                           + _last_line(proc.stderr, "no message"))
    curve_problem = export_fit_spectra(out_dir, env)
    water = None
    if water_nii is not None:
        wfid, wdwell, wf0, _ = read_nifti_mrs(water_nii)
        water = fit_water(wfid, wdwell, wf0, ppm_range=p.get("water_ppm_range", (4.0, 5.3)))
    ignore = set(p.get("ignore", []) or [])
    used = [n for n in basis.names if n not in ignore]
    _, order, group_members = _fsl_group_entries(used, p.get("groups"))
    d = parse_fsl_mrs_output(
        out_dir,
        amplitude_scale=k,
        group_names=order,
        group_members=group_members,
        f0_mhz=f0,
        dwell_s=dwell,
        npoints=fid.size,
        ppm_range=tuple(p.get("ppm_range", (0.2, 4.2))),
        baseline=_fsl_baseline_arg(p.get("baseline", p.get("baseline_order", 2))),
        data_fid=fid,
        water=water,
        version=version,
    )
    d["extra"]["fit_curve"] = curve_problem or "results_to_spectrum"
    return d


#: Files FSL-MRS's ``results_to_spectrum`` writes into the results folder (model and baseline
#: as NIfTI-MRS FIDs, in the units of the data it fitted): ``fsl_mrs`` itself saves only CSVs
#: (and, with --report, HTML), so without them the QC page has no fitted curve or baseline.
FIT_FILE, BASELINE_FILE = "fit", "fit_baseline"


def export_fit_spectra(out_dir: Path, env: dict | None = None) -> str | None:
    """Run FSL-MRS's ``results_to_spectrum OUT --export_baseline -o OUT -f fit`` (installed
    with ``fsl_mrs``; it rebuilds the model from ``all_parameters.csv`` and ``options.txt``).
    -> None when ``fit`` and ``fit_baseline`` were written, else why not (the fit itself
    stands; its QC page then shows the data without a model)."""
    exe = shutil.which("results_to_spectrum")
    if exe is None:
        return "results_to_spectrum (FSL-MRS) not on PATH: no fitted curve or baseline"
    cmd = [exe, str(out_dir), "--export_baseline", "-o", str(out_dir), "-f", FIT_FILE]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0 or not any(Path(out_dir).glob(f"{BASELINE_FILE}.nii*")):
        return (f"results_to_spectrum failed (exit {proc.returncode}): "
                + _last_line(proc.stderr, "no baseline file written"))
    return None


def _last_line(text: str, default: str) -> str:
    """A program's last non-empty line of output (its error message), else ``default``."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else default


def _fsl_mrs_version() -> str:
    try:
        proc = subprocess.run(
            ["fsl_mrs", "--version"], capture_output=True, text=True, check=False, timeout=60
        )
        text = (proc.stdout or proc.stderr).strip()
        return f"fsl_mrs {text}" if text else "fsl_mrs (unknown version)"
    except (OSError, subprocess.SubprocessError):
        return "fsl_mrs (unknown version)"


def _read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row for row in csv.reader(fh) if row]


def _num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _parse_fsl_concentrations(path: Path) -> dict[str, dict[str, float]]:
    """concentrations.csv (two header rows: mean/std x raw/internal/molality/molarity)."""
    rows = _read_csv_rows(path)
    if len(rows) < 3:
        raise InputError(f"{path}: too few rows")
    top, sub = rows[0], rows[1]
    cols = {}
    last = ""
    for j, (a, b) in enumerate(zip(top, sub, strict=False)):
        last = a or last
        if j == 0:
            continue
        cols[f"{last}/{b}".lower()] = j
    out = {}
    for row in rows[2:]:
        name = row[0].strip()
        if not name:
            continue
        out[name] = {key: _num(row[j]) for key, j in cols.items() if j < len(row)}
    return out


def _parse_table(path: Path, key: str) -> dict[str, dict[str, str]]:
    rows = _read_csv_rows(path)
    header = rows[0]
    j = header.index(key)
    return {r[j]: dict(zip(header, r, strict=False)) for r in rows[1:] if len(r) == len(header)}


def _combined_name(fsl_name: str) -> str | None:
    parts = set(fsl_name.split("+"))
    for cname, comp in COMBINATIONS.items():
        if parts == set(comp):
            return cname
    return None


def parse_fsl_mrs_output(
    out_dir,
    *,
    amplitude_scale: float = 1.0,
    group_names: list[str] | None = None,
    group_members: dict | None = None,
    f0_mhz: float,
    dwell_s: float,
    npoints: int,
    centre_ppm: float = 4.65,
    ppm_range=(0.2, 4.2),
    baseline: str = "poly, 2",
    data_fid: np.ndarray | None = None,
    water: dict | None = None,
    version: str = "fsl_mrs",
) -> dict:
    """Contract dict from an ``fsl_mrs`` output folder.

    Files (FSL-MRS ``FitRes.to_file``): ``concentrations.csv`` (amplitude = mean/raw, crlb_abs
    = std/raw, both divided by ``amplitude_scale``; combined entries "A+B" map to tCr/tNAA/
    tCho/Glx), ``all_parameters.csv`` (parameter, mean, std: gamma_i, sigma_i, eps_i, Phi0,
    Phi1), ``qc.csv`` (Metab, SNR, FWHM), ``summary.csv`` (fallback for %CRLB). Unit
    conversions from FSL-MRS's model exp(-(gamma + sigma^2 t + i eps) t),
    exp(-i(Phi0 + Phi1 nu)): gamma_hz = gamma/pi (Lorentzian FWHM), sigma_hz = 2 sqrt(ln 2)
    sigma/pi (Gaussian FWHM), shift_hz = -eps/(2 pi), phi0_deg = -Phi0 in degrees,
    phi1_deg_per_ppm = -Phi1 * 180/pi * f0 (FSL-MRS's own deg_per_ppm conversion).
    ``noise_sd``/``residual_sd`` are computed here from ``data_fid`` and FSL-MRS's
    ``fit.nii.gz`` (model FID) with the builtin definitions.
    """
    out_dir = Path(out_dir)
    k = float(amplitude_scale)
    metabolites, combined = {}, {}
    conc_path = out_dir / "concentrations.csv"
    summary_path = out_dir / "summary.csv"
    if conc_path.exists():
        conc = _parse_fsl_concentrations(conc_path)
        for name, vals in conc.items():
            amp = vals.get("mean/raw", math.nan) / k
            sd = vals.get("std/raw", math.nan) / k
            entry = _met_entry(amp, sd)
            cname = _combined_name(name) if "+" in name else None
            if cname:
                combined[cname] = entry
            elif "+" not in name:
                metabolites[name] = entry
    elif summary_path.exists():
        summ = _parse_table(summary_path, "Metab")
        for name, row in summ.items():
            amp = _num(row.get("Raw conc")) / k
            sd = _num(row.get("Raw CRLB")) / k
            cname = _combined_name(name) if "+" in name else None
            (combined if cname else metabolites)[cname or name] = _met_entry(amp, sd)
    else:
        raise InputError(f"{out_dir}: neither concentrations.csv nor summary.csv")
    combined = {c: combined[c] for c in COMBINATIONS if c in combined}

    params = {}
    ppath = out_dir / "all_parameters.csv"
    if ppath.exists():
        for row in _read_csv_rows(ppath)[1:]:
            params[row[0]] = _num(row[1])
    ngroups = sum(1 for key in params if key.startswith("gamma_"))
    group_names = list(group_names or [f"group{i}" for i in range(ngroups)])
    groups = {}
    for i in range(ngroups):
        gname = group_names[i] if i < len(group_names) else f"group{i}"
        gamma = params.get(f"gamma_{i}", math.nan) / math.pi
        sig = params.get(f"sigma_{i}", 0.0)
        sigma = 2.0 * math.sqrt(math.log(2.0)) * sig / math.pi
        groups[gname] = {
            "members": list((group_members or {}).get(gname, [])),
            "gamma_hz": gamma,
            "sigma_hz": sigma,
            "shift_hz": -params.get(f"eps_{i}", math.nan) / (2.0 * math.pi),
            "linewidth_hz": voigt_fwhm(gamma, sigma) if math.isfinite(gamma) else math.nan,
        }
    phi0_deg = -math.degrees(params.get("Phi0", math.nan))
    phi1 = -params.get("Phi1", math.nan) * 180.0 / math.pi * f0_mhz

    snr = math.nan
    qpath = out_dir / "qc.csv"
    if qpath.exists():
        qc = _parse_table(qpath, "Metab")
        for cand in ("NAA", "NAA+NAAG"):
            if cand in qc:
                snr = _num(qc[cand].get("SNR"))
                break

    noise_sd = residual_sd = None
    if data_fid is not None:
        noise = estimate_noise_sd(data_fid, dwell_s, f0_mhz, centre_ppm)
        noise_sd = noise
        fit_path = next(iter(sorted(out_dir.glob(f"{FIT_FILE}.nii*"))), None)
        if fit_path is not None:
            model = read_nifti_mrs(fit_path)[0] / k  # FSL-MRS writes NIfTI-MRS too
            if model.size == data_fid.size:
                idx, _, _ = _fit_bins(npoints, dwell_s, f0_mhz, centre_ppm, ppm_range)
                ydat = np.fft.fft(data_fid)[idx]
                rss = float(np.sum(np.abs(ydat - np.fft.fft(model)[idx]) ** 2))
                dof = max(2 * idx.size - len(params), 1)
                residual_sd = math.sqrt(rss / dof)
    order = None
    if baseline.startswith("poly"):
        order = int(baseline.split(",")[1])
    return _contract(
        backend="fsl_mrs",
        backend_version=version,
        success=bool(metabolites),
        message="parsed FSL-MRS output" if metabolites else "no metabolites parsed",
        metabolites=metabolites,
        combined=combined,
        groups=groups,
        phi0_deg=phi0_deg,
        phi1_deg_per_ppm=phi1,
        noise_sd=noise_sd,
        residual_sd=residual_sd,
        snr=None,
        ppm_range=ppm_range,
        baseline=baseline,
        baseline_order=order,
        f0_mhz=float(f0_mhz),
        dwell_s=float(dwell_s),
        npoints=int(npoints),
        centre_ppm=float(centre_ppm),
        water=water,
        # FSL-MRS's own SNR definition, kept apart from the project's (mrsflow.qc)
        extra={"fsl_mrs_dir": str(out_dir), "amplitude_scale": k, "snr_fsl_mrs": snr},
    )


def _fsl_plot_arrays(out_dir: Path, fid, dwell, f0, centre, d: dict) -> dict:
    """Data, model and baseline spectra (the latter two from :func:`export_fit_spectra`'s
    files, NaN where absent) over the fit range, phase-corrected with the reported phases,
    for :func:`plot_fit` and :func:`mrsflow.qc.fit_qc`."""

    idx, nu, ppm = _fit_bins(fid.size, dwell, f0, centre, d["ppm_range"])
    phi0 = math.radians(d["phi0_deg"]) if _finite(d["phi0_deg"]) else 0.0
    phi1 = d["phi1_deg_per_ppm"] if _finite(d["phi1_deg_per_ppm"]) else 0.0
    ph = np.exp(-1j * (phi0 + math.radians(phi1) * nu / f0))
    data = np.fft.fft(fid)[idx] * ph
    k = float(d.get("extra", {}).get("amplitude_scale", 1.0))

    def model(stem: str) -> np.ndarray:
        path = next(iter(sorted(Path(out_dir).glob(f"{stem}.nii*"))), None)
        if path is not None:
            y = read_nifti_mrs(path)[0] / k
            if y.size == fid.size:
                return np.fft.fft(y)[idx] * ph
        return np.full_like(data, np.nan)

    return {"ppm": ppm, "data": data, "fit": model(FIT_FILE), "baseline": model(BASELINE_FILE)}
