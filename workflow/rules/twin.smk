# Stage 1 (synthetic twin only): raw scanner exports of the whole study, and the truth.


rule twin_sheets:
    output:
        expand(
            f"{RAW}/{{sheet}}",
            sheet=[
                "participants.tsv",
                "participants.json",
                "sessions.tsv",
                "scans.tsv",
                "phenotype/craving.tsv",
                "dataset_description.json",
            ],
        ),
    log:
        "results/logs/twin/sheets.log",
    benchmark:
        "results/benchmarks/twin/sheets.tsv"
    conda:
        "../../envs/twin.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=CODE["twin"],
        twin=as_json(config["twin"]),
        raw_dir=lambda w, output: Path(output[0]).parent,
    shell:
        "python -m mrsflow twin-sheets --twin {params.twin:q} --raw-dir {params.raw_dir:q} > {log} 2>&1"


# The basis the twin plants its metabolites with: the `sequence` protocol's simulated spectra
# of every metabolite it plants (also those the fit's basis leaves out, e.g. Gly), never a
# measured MM (which the twin's own metabolite-nulled scans give the fit's basis).
rule twin_basis:
    output:
        basis=directory("results/twin/basis"),
        png="results/twin/basis.png",
    log:
        "results/logs/twin/basis.log",
    benchmark:
        "results/benchmarks/twin/basis.tsv"
    conda:
        "../../envs/basis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["basis"],
        sequence=as_json(protocol_sequence(BASIS_NAME)),
        basis=as_json(twin_basis_config()),
    shell:
        "python -m mrsflow basis --sequence {params.sequence:q} --basis {params.basis:q}"
        " --outdir {output.basis:q} --png {output.png:q} > {log} 2>&1"


rule twin_template:
    output:
        temp("results/twin/template.npz"),
    log:
        "results/logs/twin/template.log",
    benchmark:
        "results/benchmarks/twin_template/template.tsv"
    conda:
        "../../envs/twin.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        code=CODE["twin"],
    shell:
        "python -m mrsflow twin-template --out {output:q} > {log} 2>&1"


# One job writes every participant (the synthetic scanner session of the whole study), with
# one worker process per thread forked after the imports: generating a participant takes
# ~2.5 s, a fresh Python process with its imports ~2 s more. Each participant has its own
# random streams, so the files do not depend on the number of threads. The job also merges
# the truth tables, so it has N + 4 outputs (Snakemake matches every requested file against
# every output of the rule that makes it: a part file per participant and table made the
# DAG construction quadratic).
rule twin_participants:
    input:
        basis="results/twin/basis",
        template="results/twin/template.npz",
    output:
        raw=[directory(f"{RAW}/{pid}") for pid in PARTICIPANTS],
        truth=expand(
            "results/twin/truth/{table}.tsv",
            table=["concentrations", "scans", "tissue", "transients"],
        ),
    log:
        "results/logs/twin/participants.log",
    benchmark:
        "results/benchmarks/twin/participants.tsv"
    conda:
        "../../envs/twin.yaml"
    threads: lambda wildcards: min(8, workflow.cores)
    resources:
        mem_mb=lambda wildcards, threads: 600 + 900 * threads,
        runtime=lambda wildcards, threads: 10 + len(PARTICIPANTS) // threads,
    params:
        code=CODE["twin"],
        config=as_json({k: config[k] for k in ("twin", "sequence", "quantify")}),
        participants=PARTICIPANTS,
        raw_dir=lambda w, output: Path(output.raw[0]).parent,
        truth_dir=lambda w, output: Path(output.truth[0]).parent,
    shell:
        "python -m mrsflow twin-participants --config {params.config:q}"
        " --participant {params.participants} --workers {threads}"
        " --raw-dir {params.raw_dir:q} --truth-dir {params.truth_dir:q}"
        " --basis-dir {input.basis:q} --template {input.template:q}"
        " > {log} 2>&1"
