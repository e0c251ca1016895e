"""Writing the twin to disk: the study's sheets, each participant's raw exports, the truth.

The three Snakemake rules of the twin call one function each:

- :func:`write_sheets`       participants.tsv, sessions.tsv, scans.tsv, phenotype/craving.tsv
- :func:`write_participants` every participant's T1 DICOM series and MRS exports
  (:func:`write_participant` each, several at a time) and the truth tables
  (:func:`merge_truth` of the participants' parts) -> results/twin/truth/*.tsv
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from mrsflow import quantify
from mrsflow.basis import is_parametrised_mm, read_fsl_basis
from mrsflow.errors import InputError
from mrsflow.twin import anatomy, macromolecules, spectra
from mrsflow.twin.design import (
    Design,
    mm_participants,
    mm_raw_paths,
    participant_rng,
    raw_paths,
    scan_sheet,
    study_design,
    t1_dicom_dir,
)
from mrsflow.vendor import VoxelGeometry, write_philips, write_rda

TSV = {"sep": "\t", "index": False, "lineterminator": "\n", "na_rep": "n/a"}


def _write_tsv(df: pd.DataFrame, path: Path, float_format: str = "%.6g") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, float_format=float_format, **TSV)


PARTICIPANT_COLUMNS = {
    "participant_id": "Participant label",
    "group": "CUD = cocaine use disorder, HC = healthy control",
    "age": "Age at first session (years)",
    "sex": "F or M",
    "education_years": "Years of education",
    "cigarettes_per_day": "Cigarettes smoked per day (0 = non-smoker)",
    "cocaine_g_per_week": "Cocaine use, grams per week (CUD only)",
    "cocaine_years": "Years of regular cocaine use",
}


def write_sheets(cfg: Mapping, raw_dir: Path, design: Design | None = None) -> None:
    """The study team's sheets for the twin (BIDS-like, n/a for missing values)."""
    design = design or study_design(cfg)
    raw_dir = Path(raw_dir)
    _write_tsv(design.participants, raw_dir / "participants.tsv")
    (raw_dir / "participants.json").write_text(
        json.dumps({k: {"Description": v} for k, v in PARTICIPANT_COLUMNS.items()}, indent=2) + "\n"
    )
    _write_tsv(design.sessions, raw_dir / "sessions.tsv")
    _write_tsv(scan_sheet(design, cfg), raw_dir / "scans.tsv")
    craving = design.craving[["participant_id", "session", "film", "time", "vas"]]
    _write_tsv(craving, raw_dir / "phenotype" / "craving.tsv")
    (raw_dir / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "Synthetic twin of an accumbal glutamate MRS study (mrsflow)",
                "BIDSVersion": "1.9.0",
                "DatasetType": "raw",
                "GeneratedBy": [{"Name": "mrsflow.twin", "Description": f"seed {cfg['seed']}"}],
            },
            indent=2,
        )
        + "\n"
    )


def merge_truth(parts: list[Path], out_dir: Path) -> None:
    """Concatenate per-participant truth parts (``<table>.<participant>.tsv``) by table."""
    out_dir = Path(out_dir)
    tables: dict[str, list[pd.DataFrame]] = {}
    for p in sorted(map(Path, parts)):
        table = p.name.split(".", 1)[0]
        tables.setdefault(table, []).append(pd.read_csv(p, sep="\t"))
    for table, frames in tables.items():
        _write_tsv(pd.concat(frames, ignore_index=True), out_dir / f"{table}.tsv")


def scan_spec(cfg: Mapping, scan, twin: Mapping) -> spectra.ScanSpec:
    """The acquisition and planted quality of one twin scan."""
    seq = cfg["sequence"]
    return spectra.ScanSpec(
        f0_mhz=float(seq["field_mhz"]),
        dwell_s=1.0 / float(seq["bandwidth_hz"]),
        npoints=int(seq["points"]),
        te_ms=float(seq["te1_ms"]) + float(seq["te2_ms"]),
        tr_s=float(seq["tr_ms"]) / 1000.0,
        n_transients=int(twin["n_transients"]),
        mode=twin["mode"],
        target_snr=float(scan.snr),
        target_linewidth_hz=float(scan.linewidth_hz),
        bold_linewidth_hz=float(getattr(scan, "bold_linewidth_hz", 0.0)),
        n_water_ref=int(twin["water_transients"]),
        **{k: tuple(v) if isinstance(v, list) else v for k, v in twin["artefacts"].items()},
    )


def write_participants(
    cfg: Mapping,
    participant_ids: Sequence[str],
    raw_dir: Path,
    truth_dir: Path,
    basis_dir: Path,
    *,
    workers: int = 1,
) -> None:
    """:func:`write_participant` for each of ``participant_ids``, ``workers`` at a time, then
    the truth tables ``truth_dir/<table>.tsv`` merged from their parts (:func:`merge_truth`;
    the parts are written to a scratch folder inside ``truth_dir`` and removed).

    The worker processes are forked from this one after the modules they use are imported
    (and the MNI template cache, if one was loaded, is in memory), so each participant
    costs only its own generation (~2.5 s) instead of a fresh interpreter's start-up and
    imports as well (~2 s more). The files are the same whatever ``workers`` is: each
    participant draws from its own random streams. Where ``fork`` is unavailable (macOS,
    Windows) the participants are written one after another.
    """
    ids = list(participant_ids)
    truth_dir = Path(truth_dir)
    parts_dir = truth_dir / ".parts"
    shutil.rmtree(parts_dir, ignore_errors=True)  # leftovers of an interrupted run
    job = functools.partial(_write_one, cfg, raw_dir=Path(raw_dir), truth_dir=parts_dir,
                            basis_dir=Path(basis_dir))
    workers = max(1, min(int(workers), len(ids)))
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        for pid in ids:
            print(job(pid), flush=True)
    else:
        import pydicom  # noqa: F401 - imported here once, before the fork, not per worker
        import scipy.ndimage  # noqa: F401
        import scipy.optimize  # noqa: F401

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for line in pool.imap_unordered(job, ids):
                print(line, flush=True)
    merge_truth(sorted(parts_dir.glob("*.tsv")), truth_dir)
    shutil.rmtree(parts_dir)


def _write_one(cfg: Mapping, participant_id: str, *, raw_dir: Path, truth_dir: Path,
               basis_dir: Path) -> str:
    t0 = time.perf_counter()
    write_participant(cfg, participant_id, raw_dir, truth_dir, basis_dir)
    return f"wrote {participant_id} in {time.perf_counter() - t0:.2f} s"


def write_participant(
    cfg: Mapping, participant_id: str, raw_dir: Path, truth_dir: Path, basis_dir: Path
) -> None:
    """One participant's raw exports (T1 DICOM series, MRS files) and truth parts.

    Randomness comes from :func:`participant_rng` streams keyed by the participant (and scan),
    so the files do not depend on which other participants are generated.
    """
    twin, seq = cfg["twin"], cfg["sequence"]
    if twin["vendor"] == "siemens" and twin["mode"] != "classic":
        raise InputError(
            "config twin: the Siemens RDA writer exports pre-averaged data; "
            "use twin.mode: classic with twin.vendor: siemens"
        )
    design = study_design(twin)
    scans = design.scans[design.scans.participant_id == participant_id]
    if scans.empty:
        raise InputError(f"config twin: no participant {participant_id} in the design")
    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    seed = int(twin["seed"])
    te_ms = float(seq["te1_ms"]) + float(seq["te2_ms"])
    tr_ms = float(seq["tr_ms"])
    qp = quantify.QuantParams.from_config(cfg["quantify"])
    basis = read_fsl_basis(basis_dir)
    mm_cfg = twin.get("macromolecules") or {"model": "basis"}
    independent_mm = mm_cfg["model"] != "basis"
    if independent_mm:  # this participant's MM: level and each peak's share
        rng_mm = participant_rng(seed, participant_id, "macromolecules")
        mm_level = float(mm_cfg["relative_area"]) * max(0.3, rng_mm.normal(1.0, mm_cfg["sd"]))
        mm_peaks = macromolecules.mm_peaks(rng_mm, float(mm_cfg["peak_sd"]))
        mm_fid0 = {n: float(np.real(f[0])) for n, f in zip(basis.names, basis.fids, strict=True)
                   if is_parametrised_mm(n)}
    first_scan = None  # session 1's first scan: what a metabolite-nulled scan shares with it

    anat = anatomy.make_subject_anatomy(participant_rng(seed, participant_id, "anatomy"))
    anatomy.write_t1_dicom(
        raw_dir / t1_dicom_dir(participant_id),
        anat.t1,
        anat.affine,
        patient_id=participant_id,
        study_uid_seed=seed,
    )

    conc = design.concentrations.set_index(["participant_id", "session", "film"])
    vox = twin["voxel"]
    truth: dict[str, list[dict]] = {
        "scans": [],
        "transients": [],
        "concentrations": [],
        "tissue": [],
    }
    geometry_of_session: dict[str, VoxelGeometry] = {}
    for scan in scans.itertuples():
        key = {"participant_id": participant_id, "session": scan.session, "film": scan.film}
        if scan.session not in geometry_of_session:
            geom = plan_voxel(anat, (scan.voxel_mni_x, scan.voxel_mni_y, scan.voxel_mni_z), vox)
            geometry_of_session[scan.session] = geom
            frac = anatomy.voxel_truth_fractions(anat, geom.affine())
            truth["tissue"].append(
                {
                    "participant_id": participant_id,
                    "session": scan.session,
                    "f_gm": frac["f_gm"],
                    "f_wm": frac["f_wm"],
                    "f_csf": frac["f_csf"],
                    "voxel_x": geom.centre_ras_mm[0],
                    "voxel_y": geom.centre_ras_mm[1],
                    "voxel_z": geom.centre_ras_mm[2],
                }
            )
        geom = geometry_of_session[scan.session]
        frac = next(
            {t: r[f"f_{t}"] for t in quantify.TISSUES}
            for r in truth["tissue"]
            if r["session"] == scan.session
        )
        molal = conc.loc[(participant_id, scan.session, scan.film)]
        molal = dict(zip(molal.metabolite, molal.conc_molal, strict=True))
        water_amplitude = quantify.visible_water_mM(frac, te_ms, tr_ms, qp)
        amps = quantify.signal_amplitudes(molal, frac, te_ms, tr_ms, qp, water_amplitude)
        mm_amps = quantify.signal_amplitudes(
            twin["macromolecules_molal"], frac, te_ms, tr_ms, qp, water_amplitude
        )
        background, mm_area = None, float("nan")
        if independent_mm:
            # the same total area as the parametrised MM entries at macromolecules_molal,
            # x this participant's level; no basis MM or lipid entry is planted
            mm_area = mm_level * sum(mm_amps[n] * f0 for n, f0 in mm_fid0.items()
                                     if n in mm_amps)
            background = macromolecules.mm_background(
                np.arange(int(seq["points"])) / float(seq["bandwidth_hz"]),
                float(seq["field_mhz"]), te_ms, mm_area, mm_peaks)
        else:
            amps.update(mm_amps)
        spec = scan_spec(cfg, scan, twin)
        rng = participant_rng(seed, participant_id, f"{scan.session}/{scan.film}")
        synth = spectra.synthesize_scan(basis, amps, water_amplitude, spec, rng, background)
        if first_scan is None and scan.session == "ses-1":
            first_scan = {"basis": basis, "amps": amps, "background": background, "spec": spec,
                          "water_amplitude": water_amplitude, "geometry": geom,
                          "width_hz": synth.params["width_hz"], "noise_sd": synth.noise_sd}
        paths = raw_paths(
            participant_id, scan.session, scan.film, mode=twin["mode"], vendor=twin["vendor"]
        )
        synth = _write_scan(raw_dir, paths, synth, geom, seq, twin)
        truth["scans"].append(
            {
                **key,
                "mode": twin["mode"],
                "vendor": twin["vendor"],
                **spectra.realized_quality(synth),
                "snr_target": synth.snr_planted,
                "linewidth_target_hz": synth.linewidth_planted_hz,
                "n_transients": synth.n_rows,
                "noise_sd": synth.noise_sd,
                "motion_rows": ";".join(map(str, np.flatnonzero(synth.motion))),
                "water_amplitude": water_amplitude,
                "mm_model": mm_cfg["model"],
                "mm_level": mm_level if independent_mm else 1.0,
                "mm_area": mm_area,
                "lineshape": spec.lineshape,
                "eddy_residual_fraction": spec.eddy_residual_fraction,
                "bold_linewidth_hz": spec.bold_linewidth_hz,
            }
        )
        for row in range(synth.n_rows):
            truth["transients"].append(
                {
                    **key,
                    "row": row,
                    "pair": int(synth.pair[row]),
                    "cycle": int(synth.cycle[row]),
                    "freq_hz": float(synth.freq_hz[row]),
                    "phase_deg": float(synth.phase_deg[row]),
                    "motion": bool(synth.motion[row]),
                }
            )
        for met, c in molal.items():
            truth["concentrations"].append(
                {
                    **key,
                    "metabolite": met,
                    "conc_molal": c,
                    "conc_molar": quantify.molal_to_molar(c, frac, qp),
                }
            )
    if participant_id in mm_participants(twin) and first_scan is not None:
        _write_mm_scan(raw_dir, participant_id, first_scan, mm_cfg, seq, twin,
                       participant_rng(seed, participant_id, "mm-nulled"))
    for table, records in truth.items():
        _write_tsv(pd.DataFrame(records), truth_dir / f"{table}.{participant_id}.tsv")


def _write_mm_scan(raw_dir: Path, participant_id: str, first: Mapping, mm_cfg: Mapping,
                   seq: Mapping, twin: Mapping, rng: np.random.Generator) -> None:
    """The participant's metabolite-nulled acquisition (session 1, centred on the same voxel
    but ``volume_ratio`` times its volume, as MM are usually measured where a small voxel
    gives too little signal; the lineshape and the noise per transient of that session's
    first scan; water-suppressed with its own water reference): metabolites at their
    inversion-recovery residual (T1 drawn in 1.2-1.5 s), the planted MM at its
    (:mod:`mrsflow.twin.macromolecules`)."""
    ti, tr = float(mm_cfg["ti_ms"]), float(seq["tr_ms"])
    gain = float(mm_cfg["volume_ratio"])  # a larger voxel: more signal, the same noise
    nulled, _ = macromolecules.nulled_amplitudes(
        {k: gain * v for k, v in first["amps"].items()}, rng, ti, tr)
    background = gain * first["background"] * float(
        macromolecules.nulling_factor(macromolecules.MM_T1_S, ti, tr))
    spec = replace(first["spec"], mode="classic",
                           n_transients=int(mm_cfg["nulled_transients"]))
    synth = spectra.synthesize_scan(first["basis"], nulled,
                                    gain * first["water_amplitude"], spec, rng, background,
                                    width_hz=first["width_hz"], noise_sd_row=first["noise_sd"])
    _write_scan(raw_dir, mm_raw_paths(participant_id, vendor=twin["vendor"]), synth,
                first["geometry"], seq, {**twin, "mode": "classic"})


def plan_voxel(anat, centre_mni, vox: Mapping) -> VoxelGeometry:
    """The MRS voxel as the operator plans it on this head: centred on the (jittered) MNI
    target, edges aligned with the head and angulated by ``vox['angulation_deg']`` (AP, LR,
    CC, Philips order, relative to the head). Returned in the scanner's own terms, i.e. what
    the SPAR geometry carries; centre rounded to 0.01 mm as the scanner exports it."""
    ap, lr, cc = (float(v) for v in vox["size_mm"])
    a_ap, a_lr, a_cc = (float(v) for v in vox["angulation_deg"])
    aff = anatomy.plan_mrs_voxel(anat, centre_mni, (lr, ap, cc), (a_lr, a_ap, a_cc))
    rot = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    return VoxelGeometry.from_rotation(np.round(aff[:3, 3], 2), (ap, lr, cc), rot)


def _write_scan(
    raw_dir: Path, paths: dict, synth, geom: VoxelGeometry, seq: Mapping, twin: Mapping
) -> spectra.ScanSynthesis:
    """The scanner's export of one scan: MC rows, or scanner-averaged WS + water reference.
    Returns the synthesis whose planted quality describes the exported data."""
    common = {
        "f0_mhz": float(seq["field_mhz"]),
        "bandwidth_hz": float(seq["bandwidth_hz"]),
        "te_ms": float(seq["te1_ms"]) + float(seq["te2_ms"]),
        "tr_ms": float(seq["tr_ms"]),
        "geometry": geom,
    }
    mrs = raw_dir / paths["mrs"]
    mrs.parent.mkdir(parents=True, exist_ok=True)
    if twin["mode"] == "mc":
        write_philips(mrs.with_suffix(""), synth.transients, n_averages_per_row=1, **common)
        return synth
    avg = spectra.scanner_average(synth)
    ws, ref = avg.transients[0], avg.water_ref[0]
    n_ws, n_ref = synth.n_rows, synth.water_ref.shape[0]
    water = raw_dir / paths["water"]
    if twin["vendor"] == "philips":
        write_philips(mrs.with_suffix(""), ws[None], n_averages_per_row=n_ws, **common)
        write_philips(water.with_suffix(""), ref[None], n_averages_per_row=n_ref, **common)
    else:
        write_rda(mrs, ws, n_averages=n_ws, **common)
        write_rda(water, ref, n_averages=n_ref, **common)
    return avg
