# Stage 6: linear-combination fitting (builtin, or FSL-MRS where installed).


rule fit:
    input:
        metab=f"{PRE}_desc-metab_svs.nii.gz",
        water=f"{PRE}_desc-water_svs.nii.gz",
        tissue=f"{SEGOUT}_desc-tissue.json",
        basis=basis_files(),
    output:
        json=f"{FIT}_desc-fit.json",
        tsv=f"{FIT}_desc-fit.tsv",
        png=report(
            f"{FIT}_desc-fit.png",
            caption="../report/fit.rst",
            category="3. Quality control",
            subcategory="{pid} {ses} {film}",
            labels={
                "participant": "{pid}",
                "session": "{ses}",
                "film": "{film}",
                "figure": "fit",
            },
        ),
    log:
        "results/logs/fit/{pid}_{ses}_task-{film}.log",
    benchmark:
        "results/benchmarks/fit/{pid}_{ses}_task-{film}.tsv"
    conda:
        "../../envs/fit.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        backend=config["fitting"]["backend"],
        params=as_json(fit_params()),
        basis_dir=lambda w, input: Path(input.basis[0]).parent,
    shell:
        "python -m mrsflow fit --metab {input.metab:q} --water {input.water:q}"
        " --tissue {input.tissue:q} --basis-dir {params.basis_dir:q} --backend {params.backend}"
        " --params {params.params:q} --json {output.json:q} --tsv {output.tsv:q}"
        " --png {output.png:q} > {log} 2>&1"
