# Stage 3: raw scanner exports -> NIfTI-MRS (spec2nii) and NIfTI (dcm2niix), one job per
# participant (its T1 series and every spectrum + water reference; plan in common.smk).


rule convert:
    input:
        convert_inputs,
    output:
        directory("results/convert/{pid}"),
    log:
        "results/logs/convert/{pid}.log",
    benchmark:
        "results/benchmarks/convert/{pid}.tsv"
    conda:
        "../../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["convert"],
        plan=lambda w: plan_json("convert", w.pid),
    shell:
        "python -m mrsflow convert-participant --plan {params.plan:q} > {log} 2>&1"
