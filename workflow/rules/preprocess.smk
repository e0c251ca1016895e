# Stage 4: MC reconstruction or WS + reference, alignment, outlier rejection, averaging,
# eddy-current correction, residual water removal; QC (SNR, linewidths) per spectrum.
# One job per participant. Its spectra are drawn on the fit job's QC page (with the fits).


rule preprocess:
    input:
        "results/convert/{pid}",
    output:
        directory("results/preprocess/{pid}"),
    log:
        "results/logs/preprocess/{pid}.log",
    benchmark:
        "results/benchmarks/preprocess/{pid}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=800,
        runtime=10,
    params:
        code=CODE["preprocess"],
        plan=lambda w: plan_json("preprocess", w.pid),
        params=as_json(PREPROCESS_PARAMS),
    shell:
        "python -m mrsflow preprocess-participant --plan {params.plan:q}"
        " --params {params.params:q} > {log} 2>&1"


# Optional (preprocess.linewidth_matching.enabled): the scans of each session broadened to
# the broadest one's linewidth before fitting, against the BOLD narrowing of functional MRS
# (mrsflow.linewidth). One job per participant; the fit reads its spectra.
rule match_linewidth:
    input:
        "results/preprocess/{pid}",
    output:
        directory("results/linewidth/{pid}"),
    log:
        "results/logs/linewidth/{pid}.log",
    benchmark:
        "results/benchmarks/linewidth/{pid}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=800,
        runtime=10,
    params:
        code=CODE["linewidth"],
        plan=lambda w: plan_json("linewidth", w.pid),
        params=as_json(LW_MATCH_PARAMS),
    shell:
        "python -m mrsflow match-linewidth --plan {params.plan:q}"
        " --params {params.params:q} > {log} 2>&1"
