# Stage 4: MC reconstruction or WS + reference, alignment, outlier rejection, averaging,
# eddy-current correction, residual water removal; QC (SNR, linewidths) per spectrum.


rule preprocess:
    input:
        unpack(preprocess_inputs),
    output:
        metab=f"{PRE}_desc-metab_svs.nii.gz",
        water=f"{PRE}_desc-water_svs.nii.gz",
        qc=f"{PRE}_desc-qc.json",
        transients=f"{PRE}_desc-transients.tsv",
        png=report(
            f"{PRE}_desc-proc.png",
            caption="../report/preprocess.rst",
            category="3. Quality control",
            subcategory="{pid} {ses} {film}",
            labels={
                "participant": "{pid}",
                "session": "{ses}",
                "film": "{film}",
                "figure": "spectrum",
            },
        ),
    log:
        "results/logs/preprocess/{pid}_{ses}_task-{film}.log",
    benchmark:
        "results/benchmarks/preprocess/{pid}_{ses}_task-{film}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=800,
        runtime=5,
    params:
        mode=lambda w: "mc" if scan(w).acq == "mc" else "classic",
        water=lambda w, input: (
            f"--water {input.water}" if "water" in input.keys() else ""
        ),
        params=as_json(config["preprocess"]),
    shell:
        "python -m mrsflow preprocess --mrs {input.mrs:q} {params.water} --mode {params.mode}"
        " --params {params.params:q} --metab {output.metab:q} --water-out {output.water:q}"
        " --qc {output.qc:q} --transients {output.transients:q} --png {output.png:q} > {log} 2>&1"
