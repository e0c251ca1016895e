# Stage 10: registration of each T1 to MNI152 (for the voxel-overlap map) and the paper's
# figures (mrsflow.register, mrsflow.figures).

REG = "results/register/{pid}/{ses}/anat/{pid}_{ses}_from-T1w_to-MNI152_xfm.json"
# per scan (in scan_keys() order): the registration of the T1 the scan was planned on
SCAN_REGS = [
    REG.format(pid=pid, ses=t1ses)
    for (pid, _, _), t1ses in zip(SCANS.index, SCANS.t1_session)
]


rule register:
    input:
        t1="results/convert/{pid}/{ses}/anat/{pid}_{ses}_T1w.nii.gz",
        mask=f"results/segment/{{pid}}/{{ses}}/anat/{{pid}}_{{ses}}_{SEG_MAPS['mask']}.nii.gz",
    output:
        REG,
    log:
        "results/logs/register/{pid}_{ses}.log",
    benchmark:
        "results/benchmarks/register/{pid}_{ses}.tsv"
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    shell:
        "python -m mrsflow register --t1 {input.t1:q} --mask {input.mask:q} --out {output:q}"
        " > {log} 2>&1"


rule figure1:
    input:
        metabolites="results/tables/metabolites.tsv",
        stats="results/stats/baseline_glu_welch.tsv",
        xfm=expand(REG, zip, **t1_keys()),
        mrs=expand(f"results/convert/{SCAN_STEM}_svs.nii.gz", zip, **scan_keys()),
        spectra=expand(f"{PRE}_desc-metab_svs.nii.gz", zip, **scan_keys()),
        fits=expand(f"{FIT}_desc-fit.json", zip, **scan_keys()),
        basis=basis_files(),
    output:
        pdf="results/figures/fig1.pdf",
        png=report(
            "results/figures/fig1.png",
            caption="../report/fig1.rst",
            category="1. Figures",
            labels={"figure": "1"},
        ),
    log:
        "results/logs/figures/figure1.log",
    benchmark:
        "results/benchmarks/figures/figure1.tsv"
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        stats_dir=lambda w, input: Path(input.stats).parent,
        basis_dir=lambda w, input: Path(input.basis[0]).parent,
        voxel_xfm=" ".join(shlex.quote(p) for p in SCAN_REGS),
        models=as_json(config["stats"]),
        fitting=as_json(fit_params()),
    shell:
        "python -m mrsflow figure1 --metabolites {input.metabolites:q}"
        " --stats-dir {params.stats_dir:q} --basis-dir {params.basis_dir:q}"
        " --voxel-xfm {params.voxel_xfm} --voxel-mrs {input.mrs:q}"
        " --spectra {input.spectra:q} --fits {input.fits:q}"
        " --models {params.models:q} --fitting {params.fitting:q}"
        " --pdf {output.pdf:q} --png {output.png:q} > {log} 2>&1"


rule figure2:
    input:
        craving="results/tables/craving.tsv",
        stats=expand(
            "results/stats/{model}.tsv",
            model=["craving_group_film_time_lmm", "craving_drug_film_time_cud_lmm"],
        ),
    output:
        pdf="results/figures/fig2.pdf",
        png=report(
            "results/figures/fig2.png",
            caption="../report/fig2.rst",
            category="1. Figures",
            labels={"figure": "2"},
        ),
    log:
        "results/logs/figures/figure2.log",
    benchmark:
        "results/benchmarks/figures/figure2.tsv"
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        stats_dir=lambda w, input: Path(input.stats[0]).parent,
        models=as_json(config["stats"]),
    shell:
        "python -m mrsflow figure2 --craving {input.craving:q} --stats-dir {params.stats_dir:q}"
        " --models {params.models:q} --pdf {output.pdf:q} --png {output.png:q} > {log} 2>&1"


rule figure3:
    input:
        metabolites="results/tables/metabolites.tsv",
        stats=expand(
            "results/stats/{model}.tsv",
            model=["glu_group_film_lmm", "glu_drug_film_cud_lmm"],
        ),
    output:
        pdf="results/figures/fig3.pdf",
        png=report(
            "results/figures/fig3.png",
            caption="../report/fig3.rst",
            category="1. Figures",
            labels={"figure": "3"},
        ),
    log:
        "results/logs/figures/figure3.log",
    benchmark:
        "results/benchmarks/figures/figure3.tsv"
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        stats_dir=lambda w, input: Path(input.stats[0]).parent,
        models=as_json(config["stats"]),
    shell:
        "python -m mrsflow figure3 --metabolites {input.metabolites:q}"
        " --stats-dir {params.stats_dir:q} --models {params.models:q}"
        " --pdf {output.pdf:q} --png {output.png:q} > {log} 2>&1"
