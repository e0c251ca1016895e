"""Command-line entry points called by the Snakemake rules (one subcommand per step).

Each subcommand parses paths and JSON-encoded config blocks, imports only the stage module it
needs (so a job pays for its own imports only) and calls one function of that module.
Errors that concern the user's data are raised as :class:`mrsflow.errors.InputError` and
printed as one clear line naming the file; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mrsflow.errors import InputError


def _json(text: str):
    return json.loads(text)


def _basis(a: argparse.Namespace) -> None:
    from mrsflow import basis

    basis.run_basis({**a.sequence, **a.basis}, Path(a.outdir), Path(a.png),
                    mm_nii=Path(a.mm) if a.mm else None)


def _mm_spectrum(a: argparse.Namespace) -> None:
    from mrsflow import mm

    mm.run_mm(a.mm, a.raw_dir, a.out, a.png, params=a.params)


def _twin_sheets(a: argparse.Namespace) -> None:
    from mrsflow.twin import generate

    generate.write_sheets(a.twin, Path(a.raw_dir))


def _twin_template(a: argparse.Namespace) -> None:
    from mrsflow.twin import anatomy

    anatomy.write_template_cache(Path(a.out))


def _twin_participants(a: argparse.Namespace) -> None:
    from mrsflow.twin import anatomy, generate

    if a.template:
        anatomy.use_template_cache(Path(a.template))
    generate.write_participants(
        a.config, a.participant, Path(a.raw_dir), Path(a.truth_dir), Path(a.basis_dir),
        workers=a.workers,
    )


def _convert_mrs(a: argparse.Namespace) -> None:
    from mrsflow import convert

    convert.convert_spectrum(Path(a.src), Path(a.out), acq=a.acq)


def _convert_t1(a: argparse.Namespace) -> None:
    from mrsflow import convert

    convert.convert_t1(Path(a.src), Path(a.out))


def _preprocess(a: argparse.Namespace) -> None:
    from mrsflow import preprocess

    preprocess.run_preprocess(
        Path(a.mrs), Path(a.metab), Path(a.water_out), Path(a.qc), Path(a.transients),
        Path(a.png), mode=a.mode, water_nii=Path(a.water) if a.water else None, params=a.params,
    )


def _segment(a: argparse.Namespace) -> None:
    from mrsflow import segment

    segment.run_segment(Path(a.t1), Path(a.out_dir), backend=a.backend)


def _tissue_fractions(a: argparse.Namespace) -> None:
    from mrsflow import segment

    seg = {"GM": Path(a.gm), "WM": Path(a.wm), "CSF": Path(a.csf), "mask": Path(a.mask)}
    segment.run_voxel_fractions(Path(a.t1), seg, Path(a.mrs), Path(a.json), Path(a.png))


def _fit(a: argparse.Namespace) -> None:
    from mrsflow import fit

    fit.run_fit(
        Path(a.metab), Path(a.water), Path(a.basis_dir), Path(a.json), Path(a.tsv),
        Path(a.png), backend=a.backend, params=a.params, tissue_json=Path(a.tissue),
    )


def _convert_participant(a: argparse.Namespace) -> None:
    from mrsflow import convert

    convert.convert_participant(a.plan)


def _segment_participant(a: argparse.Namespace) -> None:
    from mrsflow import segment

    if a.mni_template:
        from mrsflow import register

        register.use_prepared_template(Path(a.mni_template))
    segment.run_participant(a.plan, Path(a.page), backend=a.backend)


def _mni_template(a: argparse.Namespace) -> None:
    from mrsflow import register

    register.write_prepared_template(Path(a.out))


def _match_linewidth(a: argparse.Namespace) -> None:
    from mrsflow import linewidth

    for rec in linewidth.run_participant(a.plan, a.params):
        print(f"{rec['scan']}: {rec['measure']} {rec['before_hz']:.2f} -> {rec['after_hz']:.2f}"
              f" Hz (target {rec['target_hz']:.2f}, {rec['kind']} {rec['broadening_hz']:.2f} Hz)"
              f" {rec['note']}", flush=True)


def _preprocess_participant(a: argparse.Namespace) -> None:
    from mrsflow import preprocess

    preprocess.run_participant(a.plan, Path(a.page) if a.page else None, params=a.params)


def _fit_participant(a: argparse.Namespace) -> None:
    from mrsflow import fit

    fit.run_participant(a.plan, Path(a.basis_dir), Path(a.page) if a.page else None,
                        backend=a.backend, params=a.params)


def _fit_agreement(a: argparse.Namespace) -> None:
    from mrsflow import agreement

    agreement.run(a.primary_fits, a.other_fits, primary=a.primary, other=a.other, tsv=a.tsv,
                  png=a.png, benchmarks=(a.primary_benchmarks, a.other_benchmarks))


def _quantify(a: argparse.Namespace) -> None:
    from mrsflow import collect

    tables = collect.build_tables(Path(a.raw_dir), a.config, a.patterns)
    collect.write_tables(
        tables,
        {"metabolites": a.metabolites, "exclusions": a.exclusions, "craving": a.craving},
    )


def _stats(a: argparse.Namespace) -> None:
    from mrsflow import stats

    met, crav, part = stats.read_tables(a.metabolites, a.craving, a.participants)
    results = stats.run_stats(a.stats, met, crav, part, Path(a.out_dir), Path(a.summary))
    for name, table in results.items():  # into the rule's log
        reason = stats.skip_reason(table)
        if reason is not None:
            print(f"mrsflow stats: model '{name}' skipped: {reason}", file=sys.stderr)


def _verify_recovery(a: argparse.Namespace) -> None:
    from mrsflow import verify

    targets = verify.load_verification_config(a.verification)["twin"]
    outputs = {"concentrations": a.concentrations, "summary": a.summary, "tissue": a.tissue,
               "quality": a.quality, "effects": a.effects, "png": a.png}
    outputs.update({f"{k}_html": getattr(a, f"{k}_html") for k in
                    ("summary", "tissue", "quality", "effects")})
    verify.run_recovery(a.metabolites, a.craving, a.participants, a.truth_dir, a.stats,
                        targets, outputs)


def _verify(a: argparse.Namespace) -> None:
    from mrsflow import verify

    verify.run_verification(a.source, a.verification, a.all_models, a.metabolites, a.out,
                            twin_config=a.twin, recovery_dir=a.recovery_dir, html=a.html)


def _report_mrsinmrs(a: argparse.Namespace) -> None:
    from mrsflow import report

    versions = report.software_versions(a.snakemake_version)
    report.run_mrsinmrs(a.raw_dir, a.patterns, a.config, a.metabolites, a.exclusions, a.basis,
                        a.verification, a.out, versions=versions, html=a.html)


def _report_provenance(a: argparse.Namespace) -> None:
    from mrsflow import report

    report.run_provenance(a.config, a.raw_dir, a.paths, a.workflow_dir, a.tsv, a.yaml,
                          snakemake_version=a.snakemake_version, html=a.html)


def _report_qc_scans(a: argparse.Namespace) -> None:
    from mrsflow import report

    report.run_qc_scans(a.raw_dir, a.patterns, a.metabolites, a.out, rules=a.rules,
                        html=a.html)


def _register(a: argparse.Namespace) -> None:
    from mrsflow import register

    register.run_register(Path(a.t1), Path(a.mask), Path(a.out))


def _figure1(a: argparse.Namespace) -> None:
    from mrsflow import figures

    if len(a.voxel_xfm) != len(a.voxel_mrs):
        raise InputError("--voxel-xfm and --voxel-mrs must pair up (same length)")
    figures.figure1(
        Path(a.metabolites), Path(a.stats_dir), list(zip(a.voxel_xfm, a.voxel_mrs, strict=True)),
        a.spectra, a.fits, Path(a.basis_dir), Path(a.pdf), Path(a.png), models=a.models,
        fitting=a.fitting, panels=a.panels,
    )


def _figure2(a: argparse.Namespace) -> None:
    from mrsflow import figures

    figures.figure2(Path(a.craving), Path(a.stats_dir), Path(a.pdf), Path(a.png),
                    models=a.models, panels=a.panels)


def _figure3(a: argparse.Namespace) -> None:
    from mrsflow import figures

    figures.figure3(Path(a.metabolites), Path(a.stats_dir), Path(a.pdf), Path(a.png),
                    models=a.models, panels=a.panels)


def _figure_s1(a: argparse.Namespace) -> None:
    from mrsflow import figures

    figures.figure_s1(Path(a.metabolites), Path(a.stats_dir), Path(a.pdf), Path(a.png),
                      models=a.models)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mrsflow", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("basis", help="simulate the basis set (FSL-MRS JSON) and its PNG")
    p.add_argument("--sequence", type=_json, required=True, help="config 'sequence' as JSON")
    p.add_argument("--basis", type=_json, required=True, help="config 'basis' as JSON")
    p.add_argument("--outdir", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--mm", help="a measured MM spectrum (NIfTI-MRS, from mm-spectrum)")
    p.set_defaults(func=_basis)

    p = sub.add_parser("mm-spectrum",
                       help="a protocol's measured MM spectrum (metabolite-nulled scans or file)")
    p.add_argument("--mm", type=_json, required=True, help="the protocol's 'mm' block as JSON")
    p.add_argument("--raw-dir", required=True)
    p.add_argument("--params", type=_json, default={}, help="config 'preprocess' as JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--png", required=True)
    p.set_defaults(func=_mm_spectrum)

    p = sub.add_parser("twin-sheets", help="write the twin's sheets (participants, sessions...)")
    p.add_argument("--twin", type=_json, required=True, help="config 'twin' as JSON")
    p.add_argument("--raw-dir", required=True)
    p.set_defaults(func=_twin_sheets)

    p = sub.add_parser("twin-participants", help="write twin participants' raw exports")
    p.add_argument("--config", type=_json, required=True, help="twin, sequence, quantify")
    p.add_argument("--participant", required=True, nargs="+", help="participant IDs")
    p.add_argument("--workers", type=int, default=1, help="participants written at a time")
    p.add_argument("--raw-dir", required=True)
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--basis-dir", required=True)
    p.add_argument("--template", help="prepared MNI template (twin-template); else built here")
    p.set_defaults(func=_twin_participants)

    p = sub.add_parser("twin-template", help="prepare the twin's MNI template once (.npz)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_twin_template)

    p = sub.add_parser("convert-mrs", help="spec2nii: a raw spectroscopy file -> NIfTI-MRS")
    p.add_argument("--src", required=True)
    p.add_argument("--acq", required=True, choices=["mc", "ws"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=_convert_mrs)

    p = sub.add_parser("convert-t1", help="dcm2niix: a T1 DICOM series -> NIfTI")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_convert_t1)

    p = sub.add_parser("preprocess", help="NIfTI-MRS -> processed metabolite + water spectra, QC")
    p.add_argument("--mrs", required=True)
    p.add_argument("--water", help="separate water reference (classic mode)")
    p.add_argument("--mode", required=True, choices=["mc", "classic"])
    p.add_argument("--params", type=_json, default={}, help="config 'preprocess' as JSON")
    for name in ("--metab", "--water-out", "--qc", "--transients", "--png"):
        p.add_argument(name, required=True)
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("segment", help="T1 -> GM/WM/CSF partial-volume maps")
    p.add_argument("--t1", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--backend", default="auto", choices=["auto", "builtin", "fsl_fast"])
    p.set_defaults(func=_segment)

    p = sub.add_parser("tissue-fractions", help="tissue fractions of an MRS voxel")
    for name in ("--t1", "--gm", "--wm", "--csf", "--mask", "--mrs", "--json", "--png"):
        p.add_argument(name, required=True)
    p.set_defaults(func=_tissue_fractions)

    p = sub.add_parser("fit", help="linear-combination fit of one processed spectrum")
    for name in ("--metab", "--water", "--tissue", "--basis-dir", "--json", "--tsv", "--png"):
        p.add_argument(name, required=True)
    p.add_argument("--backend", default="auto", choices=["auto", "builtin", "fsl_mrs", "lcmodel"])
    p.add_argument("--params", type=_json, default={}, help="config 'fitting' as JSON")
    p.set_defaults(func=_fit)

    # one participant per process (the workflow's jobs): the plan lists each scan's paths
    p = sub.add_parser("convert-participant", help="convert one participant's T1s and spectra")
    p.add_argument("--plan", type=_json, required=True, help="JSON: t1 and mrs lists")
    p.set_defaults(func=_convert_participant)

    p = sub.add_parser("segment-participant",
                       help="segment one participant's T1s; tissue fractions of every voxel")
    p.add_argument("--plan", type=_json, required=True, help="JSON: t1 and voxels lists")
    p.add_argument("--backend", default="auto", choices=["auto", "builtin", "fsl_fast"])
    p.add_argument("--page", required=True, help="QC page (PNG/JPEG): every voxel on its T1")
    p.add_argument("--mni-template", help="the MNI template prepared by mni-template (.npz)")
    p.set_defaults(func=_segment_participant)

    p = sub.add_parser("mni-template", help="prepare the MNI template for registration (.npz)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_mni_template)

    p = sub.add_parser("preprocess-participant", help="preprocess every scan of a participant")
    p.add_argument("--plan", type=_json, required=True, help="JSON: a list, one dict per scan")
    p.add_argument("--params", type=_json, default={}, help="config 'preprocess' as JSON")
    p.add_argument("--page", help="optional QC page (PNG): every processed spectrum")
    p.set_defaults(func=_preprocess_participant)

    p = sub.add_parser("match-linewidth",
                       help="match the linewidths of the scans of each of a participant's sessions")
    p.add_argument("--plan", type=_json, required=True, help="JSON: a list, one dict per scan")
    p.add_argument("--params", type=_json, default={},
                   help="config 'preprocess.linewidth_matching' as JSON")
    p.set_defaults(func=_match_linewidth)

    p = sub.add_parser("fit-participant", help="fit every processed spectrum of a participant")
    p.add_argument("--plan", type=_json, required=True, help="JSON: a list, one dict per scan")
    p.add_argument("--basis-dir", required=True)
    p.add_argument("--backend", default="auto", choices=["auto", "builtin", "fsl_mrs", "lcmodel"])
    p.add_argument("--params", type=_json, default={}, help="config 'fitting' as JSON")
    p.add_argument("--page", default=None,
                   help="QC page (PNG): every processed spectrum with its fit and water")
    p.set_defaults(func=_fit_participant)

    p = sub.add_parser("fit-agreement", help="two fitting backends on the same spectra")
    p.add_argument("--primary", required=True)
    p.add_argument("--other", required=True)
    for name in ("--primary-fits", "--other-fits", "--primary-benchmarks",
                 "--other-benchmarks"):
        p.add_argument(name, nargs="*", default=[])
    p.add_argument("--tsv", required=True)
    p.add_argument("--png", required=True)
    p.set_defaults(func=_fit_agreement)

    p = sub.add_parser("quantify", help="concentrations and the study's tidy tables")
    p.add_argument("--raw-dir", required=True)
    p.add_argument("--config", type=_json, required=True, help="sequence, quantify, qc")
    p.add_argument("--patterns", type=_json, required=True, help="fit/tissue/qc path templates")
    for name in ("--metabolites", "--exclusions", "--craving"):
        p.add_argument(name, required=True)
    p.set_defaults(func=_quantify)

    p = sub.add_parser("stats", help="the study's statistical models and summary.md")
    p.add_argument("--stats", type=_json, required=True, help="config 'stats' as JSON")
    for name in ("--metabolites", "--craving", "--participants", "--out-dir", "--summary"):
        p.add_argument(name, required=True)
    p.set_defaults(func=_stats)

    p = sub.add_parser("verify-recovery", help="twin: estimated vs planted values and effects")
    for name in ("--metabolites", "--craving", "--participants", "--truth-dir", "--verification",
                 "--concentrations", "--summary", "--tissue", "--quality", "--effects", "--png"):
        p.add_argument(name, required=True)
    p.add_argument("--stats", type=_json, required=True, help="config 'stats' as JSON")
    for name in ("--summary-html", "--tissue-html", "--quality-html", "--effects-html"):
        p.add_argument(name, help="HTML rendering of the table")
    p.set_defaults(func=_verify_recovery)

    p = sub.add_parser("verify", help="results/verification.tsv: key numbers vs expected")
    p.add_argument("--source", required=True, choices=["twin", "sheets"])
    for name in ("--verification", "--all-models", "--metabolites", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--twin", type=_json, help="config 'twin' as JSON (source twin)")
    p.add_argument("--recovery-dir", help="results/twin/recovery (source twin)")
    p.add_argument("--html", help="HTML rendering of the table")
    p.set_defaults(func=_verify)

    p = sub.add_parser("report-mrsinmrs", help="the MRSinMRS reporting table")
    for name in ("--raw-dir", "--metabolites", "--exclusions", "--basis", "--verification",
                 "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--patterns", type=_json, required=True, help="nifti/qc/fit path templates")
    p.add_argument("--config", type=_json, required=True, help="config blocks as JSON")
    p.add_argument("--snakemake-version")
    p.add_argument("--html", help="HTML rendering of the table")
    p.set_defaults(func=_report_mrsinmrs)

    p = sub.add_parser("report-provenance", help="versions, config and raw-file checksums")
    p.add_argument("--config", type=_json, required=True, help="the full config as JSON")
    for name in ("--raw-dir", "--tsv", "--yaml"):
        p.add_argument(name, required=True)
    p.add_argument("--workflow-dir", help="git checkout to read the commit of (default: the"
                   " one holding this package)")
    p.add_argument("--snakemake-version")
    p.add_argument("--html", help="HTML rendering of the table")
    p.add_argument("paths", nargs="*", help="raw files and folders to checksum")
    p.set_defaults(func=_report_provenance)

    p = sub.add_parser("report-qc-scans", help="one row of QC numbers per scan")
    for name in ("--raw-dir", "--metabolites", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--patterns", type=_json, required=True, help="qc/fit/tissue path templates")
    p.add_argument("--rules", type=_json, help="config 'qc' as JSON")
    p.add_argument("--html", help="HTML rendering of the table")
    p.set_defaults(func=_report_qc_scans)

    p = sub.add_parser("register", help="affine T1 -> MNI152 registration (brain-extracted)")
    for name in ("--t1", "--mask", "--out"):
        p.add_argument(name, required=True)
    p.set_defaults(func=_register)

    p = sub.add_parser("figure1", help="Fig. 1: voxel overlap, spectra, baseline Glu")
    for name in ("--metabolites", "--stats-dir", "--basis-dir", "--pdf", "--png"):
        p.add_argument(name, required=True)
    p.add_argument("--voxel-xfm", nargs="*", default=[],
                   help="T1 -> MNI registrations, one per scan with a T1 (none: no T1)")
    p.add_argument("--voxel-mrs", nargs="*", default=[],
                   help="the NIfTI-MRS of those scans, in the same order")
    for name in ("--spectra", "--fits"):
        p.add_argument(name, nargs="*", default=[])
    p.add_argument("--models", type=_json, default=None, help="config 'stats' as JSON")
    p.add_argument("--fitting", type=_json, default={}, help="fit parameters as JSON")
    p.add_argument("--panels", type=_json, default=None,
                   help="config 'figures.fig1' as JSON (default: the paper's)")
    p.set_defaults(func=_figure1)

    p = sub.add_parser("figure2", help="Fig. 2: craving by film and time, group and drug")
    for name in ("--craving", "--stats-dir", "--pdf", "--png"):
        p.add_argument(name, required=True)
    p.add_argument("--models", type=_json, default=None, help="config 'stats' as JSON")
    p.add_argument("--panels", type=_json, default=None,
                   help="config 'figures.fig2' as JSON (default: the paper's)")
    p.set_defaults(func=_figure2)

    p = sub.add_parser("figure3", help="Fig. 3: Glu by film, group and drug")
    for name in ("--metabolites", "--stats-dir", "--pdf", "--png"):
        p.add_argument(name, required=True)
    p.add_argument("--models", type=_json, default=None, help="config 'stats' as JSON")
    p.add_argument("--panels", type=_json, default=None,
                   help="config 'figures.fig3' as JSON (default: the paper's)")
    p.set_defaults(func=_figure3)

    p = sub.add_parser("figure-s1", help="Fig. S1: linewidth by film and group")
    for name in ("--metabolites", "--stats-dir", "--pdf", "--png"):
        p.add_argument(name, required=True)
    p.add_argument("--models", type=_json, default=None, help="config 'stats' as JSON")
    p.set_defaults(func=_figure_s1)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as err:
        print(f"mrsflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
