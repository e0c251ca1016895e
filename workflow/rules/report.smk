# Stage 11: report tables (MRSinMRS checklist, provenance, per-scan QC) and verification
# (twin: ground-truth recovery; real data: the paper's reported values).

from snakemake import __version__ as SNAKEMAKE_VERSION

from mrsflow.report import raw_inputs, raw_roots

# the paper's reported values and the verification tolerances, next to the config: the
# working directory's config/verification.yaml (a module deployment's copy, README: Use this
# workflow for your own study), else this repository's
VERIFICATION_YAML = str(
    next(
        p
        for p in (
            Path("config", "verification.yaml").resolve(),
            Path(PACKAGE_ROOT).parent / "config" / "verification.yaml",
        )
        if p.exists()
    )
)
RECOVERY = "results/twin/recovery"
RECOVERY_TABLES = [
    "concentrations",
    "concentrations_summary",
    "tissue",
    "quality",
    "effects",
]
REPORT_TABLE = {"category": "4. Verification"}
# the report's tables (for rule all); the recovery tables only for the twin
REPORT_OUTPUTS = (
    expand(
        "results/{table}.{ext}",
        table=[
            "verification",
            "report/mrsinmrs",
            "report/provenance",
            "report/qc_scans",
        ],
        ext=["tsv", "html"],
    )
    + ["results/report/provenance.yaml"]
    + (
        expand(f"{RECOVERY}/{{t}}.tsv", t=RECOVERY_TABLES)
        + expand(f"{RECOVERY}/{{t}}.html", t=RECOVERY_TABLES[1:])
        + [f"{RECOVERY}/recovery.png"]
        if TWIN
        else []
    )
)
VERIFICATION_INPUTS = {
    "verification": VERIFICATION_YAML,
    "all_models": "results/stats/all_models.tsv",
    "metabolites": "results/tables/metabolites.tsv",
    **({t: f"{RECOVERY}/{t}.tsv" for t in RECOVERY_TABLES} if TWIN else {}),
}
# provenance: raw inputs the rule depends on, and the folders/files it checksums
RAW_INPUTS = raw_inputs(RAW, PARTICIPANTS, SCANS, twin=TWIN)
RAW_ROOTS = raw_roots(RAW, PARTICIPANTS, SCANS, twin=TWIN)


rule twin_recovery:
    input:
        metabolites="results/tables/metabolites.tsv",
        craving="results/tables/craving.tsv",
        participants=f"{RAW}/participants.tsv",
        truth=expand(
            "results/twin/truth/{table}.tsv",
            table=["concentrations", "scans", "tissue"],
        ),
        verification=VERIFICATION_YAML,
    output:
        concentrations=f"{RECOVERY}/concentrations.tsv",
        summary=f"{RECOVERY}/concentrations_summary.tsv",
        summary_html=report(
            f"{RECOVERY}/concentrations_summary.html",
            caption="../report/recovery_concentrations.rst",
            subcategory="Ground-truth recovery",
            **REPORT_TABLE,
        ),
        tissue=f"{RECOVERY}/tissue.tsv",
        tissue_html=report(
            f"{RECOVERY}/tissue.html",
            caption="../report/recovery_tissue.rst",
            subcategory="Ground-truth recovery",
            **REPORT_TABLE,
        ),
        quality=f"{RECOVERY}/quality.tsv",
        quality_html=report(
            f"{RECOVERY}/quality.html",
            caption="../report/recovery_quality.rst",
            subcategory="Ground-truth recovery",
            **REPORT_TABLE,
        ),
        effects=f"{RECOVERY}/effects.tsv",
        effects_html=report(
            f"{RECOVERY}/effects.html",
            caption="../report/recovery_effects.rst",
            subcategory="Ground-truth recovery",
            **REPORT_TABLE,
        ),
        png=report(
            f"{RECOVERY}/recovery.png",
            caption="../report/recovery_png.rst",
            subcategory="Ground-truth recovery",
            **REPORT_TABLE,
        ),
    log:
        "results/logs/report/twin_recovery.log",
    benchmark:
        "results/benchmarks/report/twin_recovery.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=20,
    params:
        code=CODE["report"],
        stats=as_json(config["stats"]),
        truth_dir=lambda w, input: Path(input.truth[0]).parent,
    shell:
        "python -m mrsflow verify-recovery --metabolites {input.metabolites:q}"
        " --craving {input.craving:q} --participants {input.participants:q}"
        " --truth-dir {params.truth_dir:q} --stats {params.stats:q}"
        " --verification {input.verification:q} --concentrations {output.concentrations:q}"
        " --summary {output.summary:q} --tissue {output.tissue:q} --quality {output.quality:q}"
        " --effects {output.effects:q} --png {output.png:q}"
        " --summary-html {output.summary_html:q} --tissue-html {output.tissue_html:q}"
        " --quality-html {output.quality_html:q} --effects-html {output.effects_html:q}"
        " > {log} 2>&1"


rule verification:
    input:
        **VERIFICATION_INPUTS,
    output:
        tsv="results/verification.tsv",
        html=report(
            "results/verification.html",
            caption="../report/verification.rst",
            subcategory="Checks",
            **REPORT_TABLE,
        ),
    log:
        "results/logs/report/verification.log",
    benchmark:
        "results/benchmarks/report/verification.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=CODE["report"],
        source=config["data"]["source"],
        twin=lambda w: (
            f"--twin {shlex.quote(as_json(config.get('twin', {})))} --recovery-dir {RECOVERY}"
            if TWIN
            else ""
        ),
    shell:
        "python -m mrsflow verify --source {params.source} --verification {input.verification:q}"
        " --all-models {input.all_models:q} --metabolites {input.metabolites:q}"
        " {params.twin} --out {output.tsv:q} --html {output.html:q} > {log} 2>&1"


rule mrsinmrs:
    input:
        sheets=sheet_files(),
        converted=participant_dirs("convert"),
        preprocessed=participant_dirs("preprocess"),
        fitted=participant_dirs("fit"),
        metabolites="results/tables/metabolites.tsv",
        exclusions="results/tables/exclusions.tsv",
        bases=USED_BASES,
        verification=VERIFICATION_YAML,
    output:
        tsv="results/report/mrsinmrs.tsv",
        html=report(
            "results/report/mrsinmrs.html",
            caption="../report/mrsinmrs.rst",
            category="1. Methods",
            subcategory="Reporting standards",
        ),
    log:
        "results/logs/report/mrsinmrs.log",
    benchmark:
        "results/benchmarks/report/mrsinmrs.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["report"],
        config=as_json(
            {
                k: config.get(k, {})
                for k in (
                    "data",
                    "sequence",
                    "protocols",
                    "report",
                    "basis",
                    "twin",
                    "segment",
                    "fitting",
                    "quantify",
                    "qc",
                )
            }
        ),
        raw_dir=lambda w, input: Path(input.sheets[0]).parent,
        patterns=lambda w: as_json(
            {
                "nifti": f"results/convert/{SCAN_STEM}_svs.nii.gz",
                "qc": f"{PRE}_desc-qc.json",
                "fit": f"{FIT}_desc-fit.json",
            }
        ),
        basis_json=f"{USED_BASES[0]}/{basis_entries()[0]}.json",
        snakemake_version=SNAKEMAKE_VERSION,
    shell:
        "python -m mrsflow report-mrsinmrs --raw-dir {params.raw_dir:q}"
        " --patterns {params.patterns:q} --config {params.config:q}"
        " --metabolites {input.metabolites:q} --exclusions {input.exclusions:q}"
        " --basis {params.basis_json:q} --verification {input.verification:q}"
        " --snakemake-version {params.snakemake_version:q} --out {output.tsv:q}"
        " --html {output.html:q} > {log} 2>&1"


rule provenance:
    input:
        sheets=sheet_files(),
        raw=RAW_INPUTS,
    output:
        tsv="results/report/provenance.tsv",
        html=report(
            "results/report/provenance.html",
            caption="../report/provenance.rst",
            category="1. Methods",
            subcategory="Provenance",
        ),
        yaml="results/report/provenance.yaml",
    log:
        "results/logs/report/provenance.log",
    benchmark:
        "results/benchmarks/report/provenance.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=30,
    params:
        code=CODE["report"],
        config=as_json(config),
        raw_dir=lambda w, input: Path(input.sheets[0]).parent,
        snakemake_version=SNAKEMAKE_VERSION,
        roots=RAW_ROOTS,
    shell:
        "python -m mrsflow report-provenance --config {params.config:q}"
        " --raw-dir {params.raw_dir:q}"
        " --snakemake-version {params.snakemake_version:q} --tsv {output.tsv:q}"
        " --yaml {output.yaml:q} --html {output.html:q} {input.sheets:q} {params.roots:q}"
        " > {log} 2>&1"


rule qc_scans:
    input:
        sheets=sheet_files(),
        preprocessed=participant_dirs("preprocess"),
        fitted=participant_dirs("fit"),
        segmented=participant_dirs("segment"),
        metabolites="results/tables/metabolites.tsv",
    output:
        tsv="results/report/qc_scans.tsv",
        html=report(
            "results/report/qc_scans.html",
            caption="../report/qc_scans.rst",
            category="3. Quality control",
            subcategory="All scans",
        ),
    log:
        "results/logs/report/qc_scans.log",
    benchmark:
        "results/benchmarks/report/qc_scans.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=CODE["report"],
        raw_dir=lambda w, input: Path(input.sheets[0]).parent,
        patterns=lambda w: as_json(
            {
                "qc": f"{PRE}_desc-qc.json",
                "fit": f"{FIT}_desc-fit.json",
                "tissue": f"{SEGOUT}_desc-tissue.json",
            }
        ),
        rules=as_json(config["qc"]),
    shell:
        "python -m mrsflow report-qc-scans --raw-dir {params.raw_dir:q}"
        " --patterns {params.patterns:q} --metabolites {input.metabolites:q}"
        " --rules {params.rules:q} --out {output.tsv:q} --html {output.html:q} > {log} 2>&1"
