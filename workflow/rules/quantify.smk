# Stages 7-8: water-scaled, tissue- and relaxation-corrected concentrations; the tidy tables.


rule quantify:
    input:
        sheets=sheet_files(),
        fitted=participant_dirs("fit"),
        segmented=participant_dirs("segment"),
        preprocessed=participant_dirs("preprocess"),
        matched=participant_dirs("linewidth") if LW_MATCH else [],
    output:
        metabolites=report(
            "results/tables/metabolites.tsv",
            caption="../report/metabolites.rst",
            category="2. Results",
            subcategory="Tables",
        ),
        exclusions=report(
            "results/tables/exclusions.tsv",
            caption="../report/exclusions.rst",
            category="2. Results",
            subcategory="Tables",
        ),
        craving="results/tables/craving.tsv",
    log:
        "results/logs/quantify/quantify.log",
    benchmark:
        "results/benchmarks/quantify/quantify.tsv"
    conda:
        "../../envs/quantify.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["quantify"],
        config=as_json({k: config[k] for k in ("sequence", "quantify", "qc")}),
        raw_dir=lambda w, input: Path(input.sheets[0]).parent,
        patterns=lambda w: as_json(
            {
                "fit": f"{FIT}_desc-fit.json",
                "tissue": f"{SEGOUT}_desc-tissue.json",
                "qc": f"{PRE}_desc-qc.json",
                **({"linewidth": f"{LWM}_desc-linewidth.json"} if LW_MATCH else {}),
            }
        ),
    shell:
        "python -m mrsflow quantify --raw-dir {params.raw_dir:q} --config {params.config:q}"
        " --patterns {params.patterns:q} --metabolites {output.metabolites:q}"
        " --exclusions {output.exclusions:q} --craving {output.craving:q} > {log} 2>&1"
