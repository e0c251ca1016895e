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
        twin=as_json(config["twin"]),
        raw_dir=lambda w, output: Path(output[0]).parent,
    shell:
        "python -m mrsflow twin-sheets --twin {params.twin:q} --raw-dir {params.raw_dir:q} > {log} 2>&1"


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
    shell:
        "python -m mrsflow twin-template --out {output:q} > {log} 2>&1"


rule twin_participant:
    input:
        basis=BASIS_DIR,
        template="results/twin/template.npz",
    output:
        raw=directory(f"{RAW}/{{pid}}"),
        truth=expand(
            "results/twin/truth/parts/{table}.{{pid}}.tsv",
            table=["concentrations", "scans", "tissue", "transients"],
        ),
    log:
        "results/logs/twin/{pid}.log",
    benchmark:
        "results/benchmarks/twin/{pid}.tsv"
    conda:
        "../../envs/twin.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    params:
        config=as_json({k: config[k] for k in ("twin", "sequence", "quantify")}),
        raw_dir=lambda w, output: Path(output.raw).parent,
        truth_dir=lambda w, output: Path(output.truth[0]).parent,
    shell:
        "python -m mrsflow twin-participant --config {params.config:q} --participant {wildcards.pid}"
        " --raw-dir {params.raw_dir:q} --truth-dir {params.truth_dir:q}"
        " --basis-dir {input.basis:q} --template {input.template:q}"
        " > {log} 2>&1"


rule twin_truth:
    input:
        expand(
            "results/twin/truth/parts/{table}.{pid}.tsv",
            table=["concentrations", "scans", "tissue", "transients"],
            pid=PARTICIPANTS,
        ),
    output:
        expand(
            "results/twin/truth/{table}.tsv",
            table=["concentrations", "scans", "tissue", "transients"],
        ),
    log:
        "results/logs/twin/truth.log",
    benchmark:
        "results/benchmarks/twin/truth.tsv"
    conda:
        "../../envs/twin.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        out_dir=lambda w, output: Path(output[0]).parent,
    shell:
        "python -m mrsflow twin-truth --out-dir {params.out_dir:q} {input:q} > {log} 2>&1"
