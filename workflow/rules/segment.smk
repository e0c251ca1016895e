# Stage 5: T1 -> GM/WM/CSF partial volumes and the T1 -> MNI152 affine (for Fig. 1's
# voxel-overlap map; the template is prepared once, by mni_template); each MRS voxel (from
# its NIfTI-MRS affine) rasterised on the T1 it was planned on; tissue fractions. One job
# per participant; its QC page shows every voxel placement on its T1.


rule mni_template:
    output:
        MNI_TEMPLATE,
    log:
        "results/logs/segment/mni_template.log",
    benchmark:
        "results/benchmarks/segment/mni_template.tsv"
    conda:
        "../../envs/segment.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=CODE["segment"],
    shell:
        "python -m mrsflow mni-template --out {output:q} > {log} 2>&1"


rule segment:
    input:
        converted="results/convert/{pid}",
        mni=MNI_TEMPLATE,
    output:
        directory("results/segment/{pid}"),
        page=qc_page("voxel", "voxel.rst", ext="jpg"),
    log:
        "results/logs/segment/{pid}.log",
    benchmark:
        "results/benchmarks/segment/{pid}.tsv"
    conda:
        "../../envs/segment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        code=CODE["segment"],
        backend=config["segment"]["backend"],
        plan=lambda w: plan_json("segment", w.pid),
    shell:
        "python -m mrsflow segment-participant --plan {params.plan:q}"
        " --backend {params.backend} --mni-template {input.mni:q}"
        " --page {output.page:q} > {log} 2>&1"
