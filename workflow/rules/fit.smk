# Stage 6: linear-combination fitting (builtin, or FSL-MRS where installed), one job per
# participant; its QC page shows every processed spectrum with its fit and water reference.


rule fit:
    input:
        preprocessed="results/preprocess/{pid}",
        segmented="results/segment/{pid}",
        bases=participant_bases,
    output:
        directory("results/fit/{pid}"),
        page=qc_page("spectra", "spectra.rst"),
    log:
        "results/logs/fit/{pid}.log",
    benchmark:
        "results/benchmarks/fit/{pid}.tsv"
    conda:
        "../../envs/fit.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=20,
    params:
        code=CODE["fit"],
        backend=config["fitting"]["backend"],
        params=as_json(fit_params()),
        plan=lambda w: plan_json("fit", w.pid),
        basis=lambda w, input: input.bases[0],
    shell:
        "python -m mrsflow fit-participant --plan {params.plan:q}"
        " --basis-dir {params.basis:q} --backend {params.backend}"
        " --params {params.params:q} --page {output.page:q} > {log} 2>&1"
