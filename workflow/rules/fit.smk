# Stage 6: linear-combination fitting (builtin, or FSL-MRS where installed), one job per
# participant; its QC page shows every processed spectrum with its fit and water reference.


rule fit:
    input:
        preprocessed=f"results/{FIT_INPUT}/{{pid}}",
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


# fitting.compare: the same spectra fitted with another backend (no QC page; the tables use
# the primary backend), and the agreement of the two per metabolite (mrsflow.agreement).
rule fit_compare:
    input:
        preprocessed=f"results/{FIT_INPUT}/{{pid}}",
        segmented="results/segment/{pid}",
        bases=participant_bases,
    output:
        directory("results/fit_compare/{backend}/{pid}"),
    log:
        "results/logs/fit_compare/{backend}/{pid}.log",
    benchmark:
        "results/benchmarks/fit_compare/{backend}/{pid}.tsv"
    wildcard_constraints:
        backend="builtin|fsl_mrs|lcmodel",
    conda:
        "../../envs/fit.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=40,
    params:
        code=CODE["fit"],
        params=as_json(fit_params()),
        plan=lambda w: plan_json("fit", w.pid, w.backend),
        basis=lambda w, input: input.bases[0],
    shell:
        "python -m mrsflow fit-participant --plan {params.plan:q}"
        " --basis-dir {params.basis:q} --backend {wildcards.backend}"
        " --params {params.params:q} > {log} 2>&1"


rule fit_agreement:
    input:
        primary=participant_dirs("fit"),
        other=lambda w: [f"results/fit_compare/{w.backend}/{p}" for p in PARTICIPANTS],
    output:
        tsv="results/tables/fit_agreement_{backend}.tsv",
        png=report(
            "results/figures/fit_agreement_{backend}.png",
            caption="../report/fit_agreement.rst",
            category="2. Results",
            subcategory="Fitting backends",
            labels={"backend": "{backend}"},
        ),
    log:
        "results/logs/fit_compare/agreement_{backend}.log",
    benchmark:
        "results/benchmarks/fit_compare/agreement_{backend}.tsv"
    wildcard_constraints:
        backend="builtin|fsl_mrs|lcmodel",
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["fit"],
        primary=config["fitting"]["backend"],
        primary_fits=" ".join(shlex.quote(p) for p in all_scan_files("fit_json")),
        other_fits=lambda w: " ".join(
            shlex.quote(compare_path(p, w.backend)) for p in all_scan_files("fit_json")
        ),
        primary_benchmarks=" ".join(
            f"results/benchmarks/fit/{p}.tsv" for p in PARTICIPANTS
        ),
        other_benchmarks=lambda w: " ".join(
            f"results/benchmarks/fit_compare/{w.backend}/{p}.tsv" for p in PARTICIPANTS
        ),
    shell:
        "python -m mrsflow fit-agreement --primary {params.primary} --other {wildcards.backend}"
        " --primary-fits {params.primary_fits} --other-fits {params.other_fits}"
        " --primary-benchmarks {params.primary_benchmarks}"
        " --other-benchmarks {params.other_benchmarks}"
        " --tsv {output.tsv:q} --png {output.png:q} > {log} 2>&1"
