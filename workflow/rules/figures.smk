# Stage 10: the paper's figures (mrsflow.figures).

# per scan with a T1 (in scan-table order): the T1 -> MNI registration of the T1 the scan
# was planned on (written by the segment step, see segment.smk) and its spectrum (geometry)
PLACED = [
    (xfm_file(pid, t1ses), scan_files(pid, ses, film)["svs"])
    for (pid, ses, film), t1ses in zip(SCANS.index, SCANS.t1_session)
    if t1ses
]
# config 'figures': the stats model (and rows of its table) each panel draws. A figure's
# inputs are the tables of those models the stats block runs; a panel whose model is not
# run, or was skipped, says so on the figure.
FIGURES = config.get("figures") or {}
STATS_MODELS = [m["name"] for m in config["stats"]["models"]]
FIGURE_STATS = {
    fig: [
        f"results/stats/{name}.tsv"
        for name in dict.fromkeys(
            (panel or {}).get("model") for panel in (FIGURES.get(fig) or {}).values()
        )
        if name in STATS_MODELS
    ]
    for fig in ("fig1", "fig2", "fig3")
}


rule figure1:
    input:
        metabolites="results/tables/metabolites.tsv",
        stats=FIGURE_STATS["fig1"],
        segmented=participant_dirs("segment"),
        converted=participant_dirs("convert"),
        preprocessed=participant_dirs("preprocess"),
        fitted=participant_dirs("fit"),
        bases=USED_BASES,
    output:
        pdf="results/figures/fig1.pdf",
        png=report(
            "results/figures/fig1.png",
            caption="../report/fig1.rst",
            category="2. Results",
            subcategory="Figures",
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
        code=CODE["figures"],
        stats_dir=lambda w, input: Path(input.stats[0]).parent if input.stats else ".",
        basis=lambda w, input: input.bases[0],
        voxel_xfm=" ".join(shlex.quote(x) for x, _ in PLACED),
        mrs=" ".join(shlex.quote(m) for _, m in PLACED),
        spectra=" ".join(shlex.quote(p) for p in all_scan_files("metab")),
        fits=" ".join(shlex.quote(p) for p in all_scan_files("fit_json")),
        models=as_json(config["stats"]),
        fitting=as_json(fit_params()),
        panels=as_json(FIGURES.get("fig1") or {}),
    shell:
        "python -m mrsflow figure1 --metabolites {input.metabolites:q}"
        " --stats-dir {params.stats_dir:q} --basis-dir {params.basis:q}"
        " --voxel-xfm {params.voxel_xfm} --voxel-mrs {params.mrs}"
        " --spectra {params.spectra} --fits {params.fits}"
        " --models {params.models:q} --fitting {params.fitting:q} --panels {params.panels:q}"
        " --pdf {output.pdf:q} --png {output.png:q} > {log} 2>&1"


rule figure2:
    input:
        craving="results/tables/craving.tsv",
        stats=FIGURE_STATS["fig2"],
    output:
        pdf="results/figures/fig2.pdf",
        png=report(
            "results/figures/fig2.png",
            caption="../report/fig2.rst",
            category="2. Results",
            subcategory="Figures",
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
        code=CODE["figures"],
        stats_dir=lambda w, input: Path(input.stats[0]).parent if input.stats else ".",
        models=as_json(config["stats"]),
        panels=as_json(FIGURES.get("fig2") or {}),
    shell:
        "python -m mrsflow figure2 --craving {input.craving:q} --stats-dir {params.stats_dir:q}"
        " --models {params.models:q} --panels {params.panels:q}"
        " --pdf {output.pdf:q} --png {output.png:q} > {log} 2>&1"


rule figure3:
    input:
        metabolites="results/tables/metabolites.tsv",
        stats=FIGURE_STATS["fig3"],
    output:
        pdf="results/figures/fig3.pdf",
        png=report(
            "results/figures/fig3.png",
            caption="../report/fig3.rst",
            category="2. Results",
            subcategory="Figures",
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
        code=CODE["figures"],
        stats_dir=lambda w, input: Path(input.stats[0]).parent if input.stats else ".",
        models=as_json(config["stats"]),
        panels=as_json(FIGURES.get("fig3") or {}),
    shell:
        "python -m mrsflow figure3 --metabolites {input.metabolites:q}"
        " --stats-dir {params.stats_dir:q} --models {params.models:q}"
        " --panels {params.panels:q} --pdf {output.pdf:q} --png {output.png:q} > {log} 2>&1"


# Supplementary: each scan's linewidth by film and group, before and after linewidth
# matching (functional MRS: the BOLD narrowing during the cocaine film; mrsflow.linewidth)
rule figure_s1:
    input:
        metabolites="results/tables/metabolites.tsv",
        stats=[
            f"results/stats/{m}.tsv"
            for m in STATS_MODELS
            if m == "linewidth_group_film_lmm"
        ],
    output:
        pdf="results/figures/figS1_linewidth.pdf",
        png=report(
            "results/figures/figS1_linewidth.png",
            caption="../report/figS1.rst",
            category="2. Results",
            subcategory="Figures",
            labels={"figure": "S1"},
        ),
    log:
        "results/logs/figures/figure_s1.log",
    benchmark:
        "results/benchmarks/figures/figure_s1.tsv"
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=CODE["figures"],
        stats_dir=lambda w, input: Path(input.metabolites).parents[1] / "stats",
        models=as_json(config["stats"]),
    shell:
        "python -m mrsflow figure-s1 --metabolites {input.metabolites:q}"
        " --stats-dir {params.stats_dir:q} --models {params.models:q}"
        " --pdf {output.pdf:q} --png {output.png:q} > {log} 2>&1"
