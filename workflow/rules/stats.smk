# Stage 9: the study's statistical models (config 'stats'), with statsmodels.


rule stats:
    input:
        metabolites="results/tables/metabolites.tsv",
        craving="results/tables/craving.tsv",
        participants=f"{RAW}/participants.tsv",
    output:
        tables=expand(
            "results/stats/{model}.tsv",
            model=[m["name"] for m in config["stats"]["models"]] + ["all_models"],
        ),
        summary=report(
            "results/stats/summary.md",
            caption="../report/summary.rst",
            category="2. Results",
            subcategory="Statistics",
        ),
    log:
        "results/logs/stats/stats.log",
    benchmark:
        "results/benchmarks/stats/stats.tsv"
    conda:
        "../../envs/stats.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["stats"],
        stats=as_json(config["stats"]),
        out_dir=lambda w, output: Path(output.summary).parent,
    shell:
        "python -m mrsflow stats --stats {params.stats:q} --metabolites {input.metabolites:q}"
        " --craving {input.craving:q} --participants {input.participants:q}"
        " --out-dir {params.out_dir:q} --summary {output.summary:q} > {log} 2>&1"
