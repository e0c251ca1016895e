# Stage 2: metabolite basis spectra simulated from spin physics, one set per protocol of the
# study (`sequence`, named after basis.name, and any under `protocols`).


rule basis:
    input:
        mm=measured_mm,
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
        mm=lambda w, input: f"--mm {shlex.quote(input.mm[0])}" if input.mm else "",
    shell:
        "python -m mrsflow basis --sequence {params.sequence:q} --basis {params.basis:q}"
        " {params.mm} --outdir {output.json:q} --png {output.png:q} > {log} 2>&1"


# A protocol's measured macromolecule spectrum (config `mm`: metabolite-nulled scans of the
# study, or an MM spectrum file), cleaned into one basis entry (mrsflow.mm).
rule mm_spectrum:
    input:
        mm_raw_inputs,
    output:
        nii="results/basis/{name}_mm.nii.gz",
        png=report(
            "results/basis/{name}_mm.png",
            caption="../report/mm.rst",
            category="1. Methods",
            subcategory="Basis set",
        ),
    log:
        "results/logs/basis/{name}_mm.log",
    benchmark:
        "results/benchmarks/basis/{name}_mm.tsv"
    wildcard_constraints:
        name="|".join(re.escape(n) for n in PROTOCOLS),
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["mm"],
        mm=lambda w: as_json(PROTOCOLS[w.name]["mm"]),
        raw_dir=RAW,
        params=as_json(PREPROCESS_PARAMS),
    shell:
        "python -m mrsflow mm-spectrum --mm {params.mm:q} --raw-dir {params.raw_dir:q}"
        " --params {params.params:q} --out {output.nii:q} --png {output.png:q} > {log} 2>&1"
