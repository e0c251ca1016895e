# Stage 3: raw scanner exports -> NIfTI-MRS (spec2nii) and NIfTI (dcm2niix).


rule convert_mrs:
    input:
        raw_input("mrs"),
    output:
        "results/convert/{pid}/{ses}/mrs/{pid}_{ses}_task-{film}_svs.nii.gz",
    log:
        "results/logs/convert_mrs/{pid}_{ses}_task-{film}.log",
    benchmark:
        "results/benchmarks/convert_mrs/{pid}_{ses}_task-{film}.tsv"
    conda:
        "../../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        src=lambda w: raw_path(w, "mrs"),
        acq=lambda w: scan(w).acq,
    shell:
        "python -m mrsflow convert-mrs --src {params.src:q} --acq {params.acq}"
        " --out {output:q} > {log} 2>&1"


rule convert_mrsref:
    input:
        raw_input("water"),
    output:
        "results/convert/{pid}/{ses}/mrs/{pid}_{ses}_task-{film}_mrsref.nii.gz",
    log:
        "results/logs/convert_mrsref/{pid}_{ses}_task-{film}.log",
    benchmark:
        "results/benchmarks/convert_mrsref/{pid}_{ses}_task-{film}.tsv"
    conda:
        "../../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        src=lambda w: raw_path(w, "water"),
    shell:
        "python -m mrsflow convert-mrs --src {params.src:q} --acq ws --out {output:q} > {log} 2>&1"


rule convert_t1:
    input:
        lambda w: f"{RAW}/{w.pid}" if TWIN else t1_dicom(w),
    output:
        "results/convert/{pid}/{ses}/anat/{pid}_{ses}_T1w.nii.gz",
    log:
        "results/logs/convert_t1/{pid}_{ses}.log",
    benchmark:
        "results/benchmarks/convert_t1/{pid}_{ses}.tsv"
    conda:
        "../../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        src=t1_dicom,
    shell:
        "python -m mrsflow convert-t1 --src {params.src:q} --out {output:q} > {log} 2>&1"
