"""Tables for the ``snakemake --report``: MRSinMRS checklist, provenance, per-scan QC.

- :func:`mrsinmrs_table` fills the Minimum Reporting Standards for in vivo MRS checklist
  (MRSinMRS; Lin et al. 2021, NMR Biomed 34:e4484, Table 1: 1 hardware, 2 acquisition, 3 data
  analysis methods and outputs, 4 data quality) from the converted NIfTI-MRS headers (spec2nii
  copies the scanner's header into the JSON header extension), the config, the basis set's
  metadata, the per-scan processing/fit JSONs and the study's tables.  Each row names its
  source; items no header records say so (``n/a``) instead of guessing.
- :func:`provenance` collects software versions, the git commit of the workflow, the full
  config and SHA-256 checksums of every raw input file.  Sorted, no timestamps: two runs on the
  same inputs give byte-identical files.
- :func:`qc_scans_table` is one row per scan: SNR, linewidths, rejected transients, fit
  quality, tissue fractions and the QC verdict.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mrsflow import __version__
from mrsflow.errors import InputError

__all__ = [
    "GAMMA_1H_MHZ_PER_T",
    "MRSINMRS_COLUMNS",
    "PROVENANCE_PACKAGES",
    "QC_SCAN_COLUMNS",
    "git_commit",
    "mrsinmrs_table",
    "provenance",
    "provenance_rows",
    "qc_scans_table",
    "raw_checksums",
    "raw_files",
    "raw_inputs",
    "raw_roots",
    "run_mrsinmrs",
    "run_provenance",
    "run_qc_scans",
    "sha256_file",
    "software_versions",
    "write_html",
    "write_provenance",
]

GAMMA_1H_MHZ_PER_T = 42.577478518  # CODATA 2018, gamma_p / 2 pi
MRSINMRS_COLUMNS = ["section", "item", "value", "source"]
QC_SCAN_COLUMNS = [
    "participant_id", "group", "session", "drug", "film", "acq", "snr", "snr_lcmodel",
    "linewidth_naa_hz", "linewidth_water_hz", "n_transients", "n_rejected",
    "freq_spread_rms_hz", "phase_spread_rms_deg", "fit_backend", "fit_success", "fit_quality",
    "fit_residual_structure", "fit_residual_max_pct", "fit_baseline_excursion", "glu_crlb_pct",
    "f_gm", "f_wm", "f_csf", "qc_pass", "qc_reason", "qc_note",
]
#: python distributions whose versions are recorded (in the environment of the report job)
PROVENANCE_PACKAGES = (
    "snakemake", "numpy", "scipy", "pandas", "statsmodels", "patsy", "matplotlib", "nibabel",
    "nifti-mrs", "spec2nii", "dcm2niix", "pydicom", "nilearn", "pyyaml", "jsonschema",
)
TSV = {"sep": "\t", "index": False, "lineterminator": "\n", "na_rep": "NA"}
NA_HEADER = "n/a (not recorded in the headers)"
SECTIONS = {
    1: "1. Hardware",
    2: "2. Acquisition",
    3: "3. Data analysis methods and outputs",
    4: "4. Data quality",
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _load_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: missing (did the previous step run?)") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err


def _num(x: float, digits: int = 3) -> str:
    return "NA" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}g}"


def _mean_sd(values: Iterable[float], digits: int = 3, unit: str = "") -> str:
    v = np.asarray([float(x) for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "NA"
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
    return (f"{_num(np.mean(v), digits)} ± {_num(sd, digits)}{unit} (range "
            f"{_num(v.min(), digits)}-{_num(v.max(), digits)}{unit}, n = {len(v)})")


def _unique(values: Iterable[Any]) -> str:
    """Distinct values in order of first appearance, with counts when they differ."""
    counts: dict[str, int] = {}
    for v in values:
        key = NA_HEADER if v is None or v == "" else str(v)
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{k} ({n} scan{'s' * (n != 1)})" for k, n in counts.items())


def _row(section: int, item: str, value: Any, source: str) -> dict:
    return {"section": SECTIONS[section], "item": item, "value": str(value), "source": source}


def _header_list(value: Any) -> Any:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


# --------------------------------------------------------------------------------------------
# MRSinMRS
# --------------------------------------------------------------------------------------------


def read_headers(nifti_paths: Sequence[str | Path]) -> list[dict]:
    """Per NIfTI-MRS file: its header extension plus shape, dwell time and voxel geometry."""
    import nibabel as nib

    from mrsflow import nmrs

    out = []
    for p in nifti_paths:
        try:
            img = nib.load(str(p))
        except Exception as err:  # nibabel raises several types for corrupt files
            raise InputError(f"{p}: cannot read NIfTI-MRS ({err})") from err
        hdr = nmrs.header_extension(img)
        aff = np.asarray(img.affine, float)
        out.append({
            "path": str(p),
            "hdr": hdr,
            "shape": tuple(int(s) for s in img.shape),
            "dwell_s": nmrs.dwell_time_s(img),
            "centre_mm": aff[:3, 3].tolist(),
            "size_mm": np.linalg.norm(aff[:3, :3], axis=0).tolist(),
        })
    return out


def _transients(h: dict) -> tuple[int, str]:
    """(number of transients, description of the higher dimensions) of one file."""
    shape, hdr = h["shape"], h["hdr"]
    dims = [(hdr.get(f"dim_{i + 5}", f"dim_{i + 5}"), n) for i, n in enumerate(shape[4:])]
    n = int(np.prod([d for _, d in dims])) if dims else 1
    desc = " x ".join(f"{tag} {k}" for tag, k in dims) if dims else "pre-averaged"
    return n, desc


def _protocols(config: Mapping) -> dict:
    """{name: protocol} of the config (:func:`mrsflow.protocol.protocols`), tolerant of a
    config without ``basis`` (then ``sequence`` alone, named 'sequence')."""
    from mrsflow import protocol

    if "basis" in config and "sequence" in config:
        return protocol.protocols(config)
    seq = dict(config.get("sequence") or {})
    return {"sequence": seq} if seq else {}


def mrsinmrs_table(
    headers: Sequence[dict],
    config: Mapping,
    *,
    qc: Sequence[Mapping] = (),
    fits: Sequence[Mapping] = (),
    metabolites: pd.DataFrame | None = None,
    exclusions: pd.DataFrame | None = None,
    basis_meta: Mapping | None = None,
    reporting: Mapping | None = None,
    versions: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The MRSinMRS checklist as rows (section, item, value, source).

    ``headers``: :func:`read_headers` of the converted spectra (one per scan); ``config``: the
    workflow config (sequence, fitting, quantify, qc, segment; twin for the planned location);
    ``qc``/``fits``: the per-scan ``*_desc-qc.json`` / ``*_desc-fit.json``; ``metabolites`` and
    ``exclusions``: the study tables; ``basis_meta``: a basis JSON (its ``meta`` and ``seq``);
    ``reporting``: optional overrides of what the headers lack (voi_location; normally from
    the config's report.voi_location).
    """
    if not headers:
        raise InputError("MRSinMRS: no converted spectra given")
    reporting = dict(reporting or {})
    versions = dict(versions or {})
    hdrs = [h["hdr"] for h in headers]
    src_h = "NIfTI-MRS header extension (spec2nii, from the scanner export)"
    rows = []

    # 1. hardware
    f0 = [_header_list(h.get("SpectrometerFrequency")) for h in hdrs]
    rows.append(_row(1, "Field strength [T]",
                     _unique(None if f is None else
                             f"{round(float(f) / GAMMA_1H_MHZ_PER_T, 2):g} T ({float(f):g} MHz)"
                             for f in f0),
                     f"{src_h}: SpectrometerFrequency / {GAMMA_1H_MHZ_PER_T} MHz/T"))
    rows.append(_row(1, "Manufacturer", _unique(h.get("Manufacturer") for h in hdrs),
                     f"{src_h}: Manufacturer"))
    rows.append(_row(1, "Model", _unique(h.get("ManufacturersModelName") for h in hdrs),
                     f"{src_h}: ManufacturersModelName"))
    rows.append(_row(1, "Software version", _unique(h.get("SoftwareVersions") for h in hdrs),
                     f"{src_h}: SoftwareVersions"))
    coil = [" / ".join(str(h[k]) for k in ("TransmitCoilName", "ReceiveCoilName") if h.get(k))
            for h in hdrs]
    rows.append(_row(1, "RF coils (transmit / receive)", _unique(coil),
                     f"{src_h}: TransmitCoilName, ReceiveCoilName"))
    rows.append(_row(1, "Nucleus", _unique(_header_list(h.get("ResonantNucleus")) for h in hdrs),
                     f"{src_h}: ResonantNucleus"))
    rows.append(_row(1, "Additional hardware", NA_HEADER, src_h))

    # 2. acquisition
    bseq = (basis_meta or {}).get("seq", {})
    seq_name = str(bseq.get("sequence", "")).upper() or "n/a"
    protocol = _unique(h.get("SequenceName") or h.get("ProtocolName") for h in hdrs)
    protos = _protocols(config)
    used = _unique(((f.get("extra") or {}).get("protocol") or {}).get("name") for f in fits)
    split = "; ".join(f"{n}: TE1/TE2 {p['te1_ms']:g}/{p['te2_ms']:g} ms" for n, p in
                      protos.items() if not fits or n in used)
    rows.append(_row(2, "Pulse sequence",
                     f"{seq_name} (scanner protocol: {protocol}; basis simulated per protocol "
                     f"for {split}; scans per protocol: {used})",
                     f"{src_h}: ProtocolName; basis set metadata; config sequence/protocols "
                     "(the TE1/TE2 split of PRESS is not in the headers)"))
    centres = np.array([h["centre_mm"] for h in headers], float)
    loc = ((config.get("report") or {}).get("voi_location") or reporting.get("voi_location")
           or "not given (config report.voi_location)")
    parts = [f"{loc}; voxel centre (scanner x, y, z in mm, mean ± SD over {len(centres)} "
             "scans): " + ", ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(
                 centres.mean(0), centres.std(0, ddof=1) if len(centres) > 1 else [0.0] * 3,
                 strict=True))]
    twin_vox = (config.get("twin") or {}).get("voxel") if config.get("data", {}).get(
        "source") == "twin" else None
    if twin_vox:
        parts.append(f"planned at MNI {tuple(twin_vox['mni_centre_mm'])} mm, jitter "
                     f"{twin_vox['jitter_mm']} mm SD per session (synthetic twin)")
    rows.append(_row(2, "Volume of interest location", "; ".join(parts),
                     "NIfTI-MRS affine (qform); config report.voi_location"))
    sizes = [tuple(round(s, 1) for s in h["size_mm"]) for h in headers]
    rows.append(_row(2, "Nominal VOI size",
                     _unique(f"{s[0]:g} x {s[1]:g} x {s[2]:g} mm ({np.prod(s) / 1000:.2f} mL)"
                             for s in sizes),
                     "NIfTI-MRS pixdim 1-3 (voxel edge lengths)"))
    te = _unique(_num(1000 * h["EchoTime"], 4) + " ms" if h.get("EchoTime") is not None
                 else None for h in hdrs)
    tr = _unique(_num(1000 * h["RepetitionTime"], 5) + " ms" if h.get("RepetitionTime")
                 is not None else None for h in hdrs)
    cfg_te = ", ".join(f"{n} {_num(p['te1_ms'] + p['te2_ms'], 4)} ms" for n, p in protos.items())
    cfg_tr = ", ".join(f"{n} {_num(p['tr_ms'], 5)} ms" for n, p in protos.items())
    rows.append(_row(2, "Echo time (TE)", f"{te} (config protocols: {cfg_te})",
                     f"{src_h}: EchoTime"))
    rows.append(_row(2, "Repetition time (TR)", f"{tr} (config protocols: {cfg_tr})",
                     f"{src_h}: RepetitionTime"))
    trans = [_transients(h) for h in headers]
    raw_avg = [((f.get("extra") or {}).get("protocol") or {}).get("averages") for f in fits]
    if fits and len(raw_avg) == len(trans):  # the raw export's header says how many
        trans = [(a, "raw header") if a else t for a, t in zip(raw_avg, trans, strict=True)]
    rows.append(_row(2, "Number of transients (averages) per spectrum",
                     _unique(f"{n} ({d})" for n, d in trans),
                     "raw export header (SPAR averages x rows, RDA NumberOfAverages), else "
                     "the NIfTI-MRS data shape and dim_5-7 tags"))
    sw = [h["hdr"].get("SpectralWidth") or (1.0 / h["dwell_s"] if h["dwell_s"] else None)
          for h in headers]
    rows.append(_row(2, "Spectral width", _unique(f"{float(s):g} Hz" for s in sw),
                     f"{src_h}: SpectralWidth (else 1 / dwell time)"))
    rows.append(_row(2, "Spectral points", _unique(str(h["shape"][3]) for h in headers),
                     "NIfTI-MRS data shape (dimension 4)"))
    mc = ["DIM_METCYCLE" in [h["hdr"].get(f"dim_{i}") for i in (5, 6, 7)] for h in headers]
    ws = _unique(
        "none: metabolite cycling (non-water-suppressed; water reference from the same "
        "acquisition)" if m else "water-suppressed (method not recorded in the header); "
        "separate water reference" for m in mc)
    rows.append(_row(2, "Water suppression", ws, f"{src_h}: dim tags (DIM_METCYCLE)"))
    rows.append(_row(2, "Shimming method, reference peak and thresholds", NA_HEADER, src_h))
    rows.append(_row(2, "Triggering or motion correction",
                     "none recorded at acquisition; retrospective per-transient frequency/phase "
                     "alignment and outlier rejection (see processing)", src_h))

    # 3. data analysis methods and outputs
    fit_backends = _unique(f"{f.get('backend')} {f.get('backend_version') or ''}".strip()
                           for f in fits) if fits else "NA"
    conv = _unique(h.get("ConversionMethod") for h in hdrs)
    seg_backend = _segment_backend((config.get("segment") or {}).get("backend", "NA"))
    py = versions.get("python", platform.python_version())
    rows.append(_row(3, "Analysis software",
                     f"mrsflow {versions.get('mrsflow', __version__)} (this workflow, Python "
                     f"{py}, Snakemake {versions.get('snakemake', 'NA')}); conversion: {conv}; "
                     f"T1 conversion: dcm2niix {versions.get('dcm2niix', 'NA')}; fitting: "
                     f"{fit_backends}; segmentation backend: {seg_backend}",
                     "results/report/provenance.tsv; fit JSONs (backend, backend_version)"))
    rows.append(_row(3, "Processing steps", _processing(qc),
                     "per-scan *_desc-qc.json (mrsflow.preprocess)"))
    fcfg = config.get("fitting", {})
    n_met = len((config.get("basis") or {}).get("metabolites", []))
    n_mm = len((config.get("basis") or {}).get("macromolecules", []))
    meta = (basis_meta or {}).get("meta", {})
    rows.append(_row(3, "Fitting model and basis set",
                     f"linear combination of {n_met} simulated metabolite basis spectra + "
                     f"{n_mm} parametrised macromolecule/lipid components over "
                     f"{fcfg.get('ppm_range', 'NA')} ppm, baseline '{fcfg.get('baseline', 'NA')}'"
                     f"; basis: density-matrix simulation of {seq_name} (TE "
                     f"{bseq.get('TE', 'NA')} ms, {bseq.get('f0_MHz', 'NA')} MHz, "
                     f"{bseq.get('pulses', 'NA')}; {meta.get('SimVersion', 'NA')})",
                     "config fitting/basis; basis JSON meta/seq"))
    rows.append(_row(3, "Output measure",
                     "water-scaled concentrations in mmol/kg tissue water (conc_molal) and mM of "
                     "tissue (conc_molar); ratios to total creatine (ratio_tcr); CRLBs",
                     "results/tables/metabolites.tsv"))
    q = config.get("quantify", {})
    ref = _unique("unsuppressed water of the metabolite-cycled acquisition" if m
                  else "separate unsuppressed water reference" for m in mc)
    rows.append(_row(3, "Quantification references and assumptions",
                     f"internal water reference: {ref}; tissue and relaxation correction "
                     "(Gasparovic et al. 2006) with voxel GM/WM/CSF fractions from T1 "
                     f"segmentation ({seg_backend}); water content "
                     f"{_fmt_map(q.get('water_content'))} g/mL; water T1 "
                     f"{_fmt_map(q.get('water_t1_ms'))} ms, T2 "
                     f"{_fmt_map(q.get('water_t2_ms'))} ms; metabolite T1 "
                     f"{q.get('metabolite_t1_ms', 'NA')} ms, T2 {q.get('metabolite_t2_ms', 'NA')}"
                     " ms" + "".join(
                         f", {name} T2 {v['t2_ms']:g} ms" for name, v in
                         (q.get("metabolite_overrides") or {}).items() if "t2_ms" in v)
                     + "; metabolites assumed absent from CSF",
                     "config quantify; mrsflow.quantify"))

    # 4. data quality
    scans = _scan_rows(metabolites)
    qcfg = config.get("qc", {})
    if scans is not None and len(scans):
        ok = scans[scans["qc_pass"].astype(bool)]
        for col, label, unit, scale in (
            ("snr", "SNR (NAA height / noise SD)", "", 1.0),
            ("snr", "SNR, LCModel definition (= SNR / 2)", "", 0.5),
            ("linewidth_naa_hz", "Linewidth, NAA FWHM", " Hz", 1.0),
            ("linewidth_water_hz", "Linewidth, water FWHM", " Hz", 1.0),
        ):
            rows.append(_row(4, label,
                             f"all scans: {_mean_sd(scans[col] * scale, 3, unit)}; QC-passed: "
                             f"{_mean_sd(ok[col] * scale, 3, unit)}",
                             "results/tables/metabolites.tsv (mrsflow.qc definitions)"))
    n_ex = 0 if exclusions is None else len(exclusions)
    n_all = len(headers)
    reasons = ("; ".join(f"{r.participant_id} {r.session} {r.film}: {r.reason}"
                         for r in exclusions.itertuples()) if n_ex else "none")
    rows.append(_row(4, "Data exclusion criteria",
                     f"SNR >= {qcfg.get('snr_min', 'NA')}, NAA linewidth <= "
                     f"{qcfg.get('linewidth_naa_max_hz', 'NA')} Hz, water linewidth <= "
                     f"{qcfg.get('linewidth_water_max_hz', 'NA')} Hz, fit converged, no material "
                     f"structure in the fit residual (structure <= "
                     f"{qcfg.get('fit_residual_structure_max', 'NA')} x noise or largest "
                     f"residual <= {qcfg.get('fit_residual_max_pct', 'NA')} % of the tallest "
                     f"line; baseline excursion <= {qcfg.get('fit_baseline_excursion_max', 'NA')})"
                     f" (CRLB "
                     f"reported, not used to exclude); excluded {n_ex} of {n_all} spectra "
                     f"({reasons})", "config qc; results/tables/exclusions.tsv"))
    if metabolites is not None and len(metabolites):
        glu = metabolites[metabolites["metabolite"] == "Glu"]
        fq = [f.get("fit_quality") for f in fits]
        rows.append(_row(4, "Quality of the model fit",
                         f"Glu CRLB {_mean_sd(glu['crlb_pct'], 3, ' %')}; fit quality "
                         f"(residual SD / noise SD) {_mean_sd(fq, 3)}",
                         "results/tables/metabolites.tsv; fit JSONs"))
    rows.append(_row(4, "Sample spectrum",
                     "every processed spectrum with its fit: report category '3. Quality "
                     "control' (per scan)", "results/preprocess, results/fit PNGs"))
    return pd.DataFrame(rows, columns=MRSINMRS_COLUMNS)


def _segment_backend(name: str) -> str:
    """The configured segmentation backend; 'auto' with what it resolves to here."""
    if name != "auto":
        return str(name)
    try:
        from mrsflow.segment import resolve_backend

        return f"auto (resolves to {resolve_backend('auto')} in the report environment)"
    except Exception:  # resolution is informative only
        return "auto"


def _fmt_map(m: Mapping | None) -> str:
    if not m:
        return "NA"
    return "/".join(f"{v:g}" for v in m.values()) + " (" + "/".join(k.upper() for k in m) + ")"


def _scan_rows(metabolites: pd.DataFrame | None) -> pd.DataFrame | None:
    if metabolites is None or not len(metabolites):
        return None
    return metabolites.drop_duplicates(["participant_id", "session", "film"])


def _processing(qc: Sequence[Mapping]) -> str:
    """Processing steps as applied, summarised over the per-scan QC JSONs."""
    if not qc:
        return "NA (no processing records)"
    n = len(qc)
    steps = []
    modes = _unique(q.get("mode") for q in qc)
    steps.append("metabolite-cycling reconstruction (metabolite = difference, water = sum of "
                 "the inversion pair)" if modes == "mc" else f"mode {modes}")

    def applied(key: str) -> int:
        return sum(bool((q.get(key) or {}).get("applied")) for q in qc)

    al = [q.get("alignment") or {} for q in qc]
    steps.append(f"frequency/phase alignment: {_unique(a.get('method') for a in al)} "
                 f"(applied in {applied('alignment')}/{n})")
    rej = [q.get("n_rejected") for q in qc]
    z = _unique((q.get("params") or {}).get("z_thresh") for q in qc)
    steps.append(f"outlier rejection (robust z > {z}): rejected transients per scan "
                 f"{_mean_sd(rej, 3)}")
    steps.append(f"eddy-current correction with the water (Klose 1990) in {applied('ecc')}/{n}")
    steps.append(f"HLSVD residual-water removal in {applied('hlsvd')}/{n}")
    ref = _unique((q.get("referencing") or {}).get("reference") for q in qc)
    steps.append(f"frequency referencing: {ref}")
    return "; ".join(steps)


def run_mrsinmrs(
    raw_dir: str | Path,
    patterns: Mapping[str, str],
    config: Mapping,
    metabolites: str | Path,
    exclusions: str | Path,
    basis_json: str | Path,
    verification_yaml: str | Path,
    out: str | Path,
    versions: Mapping[str, str] | None = None,
    html: str | Path | None = None,
) -> pd.DataFrame:
    """Resolve every scan's files from the raw folder's sheets and write mrsinmrs.tsv (and
    its HTML rendering when ``html`` is given).
    ``patterns`` map nifti, qc, fit to templates with {pid}, {ses}, {film}."""
    keys = _scan_keys(raw_dir)
    headers = read_headers([patterns["nifti"].format(**k) for k in keys])
    qc = [_load_json(patterns["qc"].format(**k)) for k in keys]
    fits = [_load_json(patterns["fit"].format(**k)) for k in keys]
    met = _read_table(metabolites)
    exc = _read_table(exclusions)
    basis = _load_json(basis_json)
    reporting = (yaml.safe_load(Path(verification_yaml).read_text()) or {}).get("reporting", {})
    vers = dict(versions or {})
    vers.setdefault("python", platform.python_version())
    table = mrsinmrs_table(headers, config, qc=qc, fits=fits, metabolites=met, exclusions=exc,
                           basis_meta=basis, reporting=reporting, versions=vers)
    _write_text(table, out)
    if html:
        write_html(table, html, "MRSinMRS: minimum reporting standards for in vivo MRS",
                   f"{Path(out).name}; Lin et al. 2021, NMR Biomed 34:e4484")
    return table


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _dcm2niix_version() -> str:
    try:
        from mrsflow.convert import find_executable

        exe = find_executable("dcm2niix")
    except (FileNotFoundError, ImportError):
        return "not found"
    try:
        proc = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"not runnable ({err})"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else "no version output"


def software_versions(snakemake_version: str | None = None) -> dict[str, str]:
    """Versions of Python, the recorded packages (this environment), dcm2niix and mrsflow;
    ``snakemake_version`` (the Snakemake running the workflow) overrides the package lookup."""
    out = {"python": platform.python_version(), "mrsflow": __version__}
    for pkg in PROVENANCE_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    if snakemake_version:
        out["snakemake"] = snakemake_version
    out["dcm2niix (binary)"] = _dcm2niix_version()
    return dict(sorted(out.items()))


def git_commit(path: str | Path) -> str:
    """The commit of the git checkout at ``path`` (read-only ``git rev-parse``), or n/a."""
    try:
        proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "n/a (git not available)"
    return proc.stdout.strip() if proc.returncode == 0 else "n/a (not a git checkout)"


def _listed_raw_files(raw: str, scans: pd.DataFrame) -> list[Path]:
    """Every raw file the scan table's rows depend on (:func:`mrsflow.sheets.scan_raw_files`:
    a spectrum with its SPAR, the water reference, each file of a T1 series)."""
    from mrsflow.sheets import scan_raw_files

    out: set[Path] = set()
    for row in scans.reset_index().itertuples(index=False):
        for files in scan_raw_files(raw, row).values():
            out.update(files)
    return sorted(out)


def raw_inputs(raw_dir: str | Path, participants: Iterable[str], scans: pd.DataFrame, *,
               twin: bool) -> list[str]:
    """The provenance rule's raw inputs besides the sheets (what makes it rerun): for the twin
    each participant's folder (the twin job's output), for real data the raw files the scan
    table names (never a participant folder as such: a rule could claim to make it)."""
    raw = str(raw_dir).rstrip("/")
    if twin:
        return [f"{raw}/{p}" for p in participants]
    return [c.as_posix() for c in _listed_raw_files(raw, scans)]


def raw_roots(raw_dir: str | Path, participants: Iterable[str], scans: pd.DataFrame, *,
              twin: bool) -> list[str]:
    """What the provenance checksums besides the raw folder's top-level files: every
    participant's folder ``<raw_dir>/<participant_id>`` (recursively) and, for real data, any
    raw file of the scan table that lies outside those folders."""
    raw = str(raw_dir).rstrip("/")
    if twin:
        return [f"{raw}/{p}" for p in participants]
    trees = [Path(raw, p) for p in participants if Path(raw, p).is_dir()]
    extra = [c.as_posix() for c in _listed_raw_files(raw, scans)
             if not any(c.is_relative_to(t) for t in trees)]
    return [t.as_posix() for t in trees] + extra


def raw_files(raw_dir: str | Path, paths: Iterable[str | Path]) -> list[Path]:
    """The raw inputs: the raw folder's top-level files (sheets and their sidecars), its
    ``phenotype/`` folder and every file under ``paths`` (participant folders or files)."""
    raw_dir = Path(raw_dir)
    files: set[Path] = set()
    if raw_dir.is_dir():
        files.update(p for p in raw_dir.iterdir() if p.is_file())
        if (raw_dir / "phenotype").is_dir():
            files.update(p for p in (raw_dir / "phenotype").rglob("*") if p.is_file())
    for p in map(Path, paths):
        if p.is_dir():
            files.update(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            files.add(p)
        else:
            raise InputError(f"{p}: raw input not found")
    return sorted(files, key=lambda p: _rel(p, raw_dir))


def _rel(p: Path, root: Path) -> str:
    try:
        return Path(p).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(p).as_posix()


def raw_checksums(raw_dir: str | Path, paths: Iterable[str | Path]) -> dict[str, str]:
    """{path relative to the raw folder: SHA-256} of :func:`raw_files`, sorted by path."""
    raw_dir = Path(raw_dir)
    return {_rel(p, raw_dir): sha256_file(p) for p in raw_files(raw_dir, paths)}


def provenance(config: Mapping, raw_dir: str | Path, paths: Iterable[str | Path],
               workflow_dir: str | Path | None = None,
               snakemake_version: str | None = None) -> dict:
    """Software versions, the git commit of ``workflow_dir`` (default: the checkout holding
    this package), the full config and raw-file checksums."""
    if workflow_dir is None:
        workflow_dir = Path(__file__).resolve().parent
    return {
        "software": software_versions(snakemake_version),
        "workflow": {"git_commit": git_commit(workflow_dir), "mrsflow": __version__},
        "config": _plain(config),
        "raw_dir": Path(raw_dir).as_posix(),
        "raw_checksums_sha256": raw_checksums(raw_dir, paths),
    }


def _plain(obj: Any) -> Any:
    """JSON-able plain types (the config as parsed from YAML/JSON)."""
    return json.loads(json.dumps(obj))


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, Mapping) and obj:
        out = []
        for k in sorted(obj):
            out += _flatten(obj[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, json.dumps(obj, sort_keys=True, ensure_ascii=False)
             if not isinstance(obj, str) else obj)]


def provenance_rows(prov: Mapping) -> pd.DataFrame:
    """The provenance as (kind, name, value) rows: software, workflow, config (flattened),
    checksum."""
    rows = [("software", k, v) for k, v in sorted(prov["software"].items())]
    rows += [("workflow", k, v) for k, v in sorted(prov["workflow"].items())]
    rows += [("config", k, v) for k, v in _flatten(prov["config"])]
    rows.append(("raw", "raw_dir", prov["raw_dir"]))
    rows += [("sha256", k, v) for k, v in sorted(prov["raw_checksums_sha256"].items())]
    return pd.DataFrame(rows, columns=["kind", "name", "value"])


def write_provenance(prov: Mapping, tsv: str | Path, yaml_path: str | Path,
                     html: str | Path | None = None) -> None:
    rows = provenance_rows(prov)
    _write_text(rows, tsv)
    if html:
        write_html(rows, html, "Provenance", f"{Path(tsv).name}; full config and checksums "
                   f"also in {Path(yaml_path).name}")
    Path(yaml_path).parent.mkdir(parents=True, exist_ok=True)
    Path(yaml_path).write_text(
        yaml.safe_dump(_plain(prov), sort_keys=True, allow_unicode=True, width=100),
        encoding="utf-8",
    )


def run_provenance(config: Mapping, raw_dir: str | Path, paths: Sequence[str | Path],
                   workflow_dir: str | Path | None, tsv: str | Path, yaml_path: str | Path,
                   snakemake_version: str | None = None, html: str | Path | None = None) -> dict:
    prov = provenance(config, raw_dir, paths, workflow_dir, snakemake_version)
    write_provenance(prov, tsv, yaml_path, html)
    return prov


# --------------------------------------------------------------------------------------------
# per-scan QC
# --------------------------------------------------------------------------------------------


def qc_scans_table(
    scans: pd.DataFrame,
    qc: Sequence[Mapping],
    fits: Sequence[Mapping],
    tissue: Sequence[Mapping],
    metabolites: pd.DataFrame | None,
    rules: Mapping | None = None,
) -> pd.DataFrame:
    """One row per scan (``scans`` rows, in order) with its QC numbers and verdict. The verdict
    comes from ``metabolites.tsv``; for a scan without rows there it is recomputed with
    :func:`mrsflow.quantify.qc_verdict` and ``rules`` (the config's qc block)."""
    from mrsflow import quantify

    verdicts = {}
    glu_crlb = {}
    if metabolites is not None and len(metabolites):
        for r in metabolites.drop_duplicates(["participant_id", "session", "film"]).itertuples():
            verdicts[(r.participant_id, r.session, r.film)] = (bool(r.qc_pass), r.qc_reason)
        for r in metabolites[metabolites["metabolite"] == "Glu"].itertuples():
            glu_crlb[(r.participant_id, r.session, r.film)] = r.crlb_pct
    rows = []
    for s, q, f, t in zip(scans.to_dict("records"), qc, fits, tissue, strict=True):
        key = (s["participant_id"], s["session"], s["film"])
        if key in verdicts:
            ok, reason = verdicts[key]
        elif rules is not None:
            ok, reason = quantify.qc_verdict(q, f, rules)
        else:
            ok, reason = None, "no verdict"
        al = q.get("alignment") or {}
        fq = (f.get("extra") or {}).get("fit_qc") or {}
        snr = q.get("snr")
        rows.append({
            **{k: s.get(k) for k in ("participant_id", "group", "session", "drug", "film",
                                     "acq")},
            "snr": snr,
            "snr_lcmodel": snr / 2 if snr is not None else None,
            "linewidth_naa_hz": q.get("linewidth_naa_hz"),
            "linewidth_water_hz": q.get("linewidth_water_hz"),
            "n_transients": q.get("n_transients"),
            "n_rejected": q.get("n_rejected"),
            "freq_spread_rms_hz": al.get("freq_spread_rms_hz"),
            "phase_spread_rms_deg": al.get("phase_spread_rms_deg"),
            "fit_backend": f.get("backend"),
            "fit_success": f.get("success"),
            "fit_quality": f.get("fit_quality"),
            **{f"fit_{k}": fq.get(k) for k in ("residual_structure", "residual_max_pct",
                                               "baseline_excursion")},
            "glu_crlb_pct": glu_crlb.get(key),
            "f_gm": t.get("GM"),
            "f_wm": t.get("WM"),
            "f_csf": t.get("CSF"),
            "qc_pass": ok,
            "qc_reason": reason if isinstance(reason, str) else "",
            "qc_note": "; ".join((q.get("sanity") or {}).get("notes", [])),
        })
    return pd.DataFrame(rows, columns=QC_SCAN_COLUMNS)


def run_qc_scans(raw_dir: str | Path, patterns: Mapping[str, str], metabolites: str | Path,
                 out: str | Path, rules: Mapping | None = None,
                 html: str | Path | None = None) -> pd.DataFrame:
    """``patterns`` map qc, fit, tissue to templates with {pid}, {ses}, {film}."""
    from mrsflow.sheets import load_study

    scans = load_study(Path(raw_dir), check_files=False).scans.sort_values(
        ["participant_id", "session", "film"], kind="mergesort")
    keys = [{"pid": r.participant_id, "ses": r.session, "film": r.film}
            for r in scans.itertuples()]
    qc = [_load_json(patterns["qc"].format(**k)) for k in keys]
    fits = [_load_json(patterns["fit"].format(**k)) for k in keys]
    tissue = [_load_json(patterns["tissue"].format(**k)) for k in keys]
    table = qc_scans_table(scans, qc, fits, tissue, _read_table(metabolites), rules)
    _write(table, out)
    if html:
        write_html(table, html, "Quality control of every scan", Path(out).name)
    return table


# --------------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------------


def _scan_keys(raw_dir: str | Path) -> list[dict]:
    from mrsflow.sheets import load_study

    scans = load_study(Path(raw_dir), check_files=False).scans.sort_values(
        ["participant_id", "session", "film"], kind="mergesort")
    return [{"pid": r.participant_id, "ses": r.session, "film": r.film}
            for r in scans.itertuples()]


def _read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing (did the previous step run?)")
    df = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session": str})
    if "qc_pass" in df.columns and not pd.api.types.is_bool_dtype(df["qc_pass"]):
        df["qc_pass"] = df["qc_pass"].astype(str).str.lower().isin(["true", "1", "yes"])
    return df


def _write(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, float_format="%.6g", **TSV)


_HTML_STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:8px}"
    "table{border-collapse:collapse}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
    "th{background:#eee;position:sticky;top:0}"
    "td.pass{background:#d9f2d9}td.fail{background:#f8d0d0}"
)


def write_html(df: pd.DataFrame, path: str | Path, title: str, note: str = "") -> Path:
    """A table as a standalone HTML page (``snakemake --report`` shows HTML inline but offers
    TSV files only for download); ``pass``/``fail`` cells are coloured. Deterministic."""
    import html

    body = df.to_html(index=False, na_rep="NA", border=0, escape=True,
                      float_format=lambda x: f"{x:.4g}")
    body = body.replace("<td>pass</td>", '<td class="pass">pass</td>').replace(
        "<td>fail</td>", '<td class="fail">fail</td>')
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_HTML_STYLE}</style></head><body>\n<h3>{html.escape(title)}</h3>\n"
            + (f"<p>{html.escape(note)}</p>\n" if note else "") + body + "\n</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _write_text(df: pd.DataFrame, path: str | Path) -> None:
    """A table of strings as TSV without CSV quoting (tabs and newlines become spaces), so
    JSON values and quotes read back verbatim."""
    def clean(v: Any) -> str:
        return " ".join(str(v).replace("\t", " ").splitlines())

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(df.columns)]
    lines += ["\t".join(clean(v) for v in row) for row in df.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
