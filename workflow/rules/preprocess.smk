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
        params=as_json(config["preprocess"]),
    shell:
        "python -m mrsflow preprocess-participant --plan {params.plan:q}"
        " --params {params.params:q} > {log} 2>&1"
