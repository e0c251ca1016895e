# Stage 2: metabolite basis spectra simulated from spin physics, one set per protocol of the
# study (`sequence`, named after basis.name, and any under `protocols`).


rule basis:
    output:
        json=directory("results/basis/{name}"),
        png=report(
            "results/basis/{name}.png",
            caption="../report/basis.rst",
            category="1. Methods",
            subcategory="Basis set",
        ),
    log:
        "results/logs/basis/{name}.log",
    benchmark:
        "results/benchmarks/basis/{name}.tsv"
    wildcard_constraints:
        name="|".join(re.escape(n) for n in PROTOCOLS),
    conda:
        "../../envs/basis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["basis"],
        sequence=lambda w: as_json(protocol_sequence(w.name)),
        basis=as_json(config["basis"]),
    shell:
        "python -m mrsflow basis --sequence {params.sequence:q} --basis {params.basis:q}"
        " --outdir {output.json:q} --png {output.png:q} > {log} 2>&1"
