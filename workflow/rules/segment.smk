# Stage 5: T1 -> GM/WM/CSF partial volumes; the MRS voxel's tissue fractions.


rule segment:
    input:
        "results/convert/{pid}/{ses}/anat/{pid}_{ses}_T1w.nii.gz",
    output:
        **{
            k: f"results/segment/{{pid}}/{{ses}}/anat/{{pid}}_{{ses}}_{v}.nii.gz"
            for k, v in SEG_MAPS.items()
        },
    log:
        "results/logs/segment/{pid}_{ses}.log",
    benchmark:
        "results/benchmarks/segment/{pid}_{ses}.tsv"
    conda:
        "../../envs/segment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        backend=config["segment"]["backend"],
        out_dir=lambda w, output: Path(output.gm).parent,
    shell:
        "python -m mrsflow segment --t1 {input:q} --out-dir {params.out_dir:q}"
        " --backend {params.backend} > {log} 2>&1"


rule tissue_fractions:
    input:
        unpack(tissue_inputs),
    output:
        json=f"{SEGOUT}_desc-tissue.json",
        png=report(
            f"{SEGOUT}_desc-voxel.png",
            caption="../report/voxel.rst",
            category="3. Quality control",
            subcategory="{pid} {ses} {film}",
            labels={
                "participant": "{pid}",
                "session": "{ses}",
                "film": "{film}",
                "figure": "voxel",
            },
        ),
    log:
        "results/logs/tissue_fractions/{pid}_{ses}_task-{film}.log",
    benchmark:
        "results/benchmarks/tissue_fractions/{pid}_{ses}_task-{film}.tsv"
    conda:
        "../../envs/segment.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=5,
    shell:
        "python -m mrsflow tissue-fractions --t1 {input.t1:q} --gm {input.gm:q} --wm {input.wm:q}"
        " --csf {input.csf:q} --mask {input.mask:q} --mrs {input.mrs:q}"
        " --json {output.json:q} --png {output.png:q} > {log} 2>&1"
