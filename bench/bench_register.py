"""Time the affine T1 -> MNI152 registration (mrsflow.register) on twin heads.

Prints seconds per T1 (median of 3 runs: wall and CPU, one core, template cached as in a
workflow job after its first T1), the one-off template cost, the accuracy on each head and
the machine with its load. Target: <= ~10 s per T1 on one core.
Run: .venv/bin/python bench/bench_register.py
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path)

from mrsflow import register as R  # noqa: E402
from mrsflow.twin.anatomy import make_subject_anatomy  # noqa: E402
from mrsflow.twin.design import participant_rng  # noqa: E402

ACCUMBENS_MNI = np.array([[-10.0, 12.0, -8.0]])


def machine() -> str:
    cpu = cpu_model()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}; {os.cpu_count()} CPUs; load average {load}; "
            f"Python {platform.python_version()}; {platform.system()}")


def main(runs: int = 3) -> None:
    t0 = time.perf_counter()
    R.mni_template()
    for step in R.LEVELS_MM:
        R._template_level(step)
    R._template_moments()
    cache_s = time.perf_counter() - t0
    tpl = R.mni_template()
    ijk = np.argwhere(tpl.mask[::10, ::10, ::10]).astype(float) * 10
    pts = ijk @ tpl.affine[:3, :3].T + tpl.affine[:3, 3]
    walls, cpus, jobs = [], [], []
    tmp = Path(tempfile.mkdtemp(prefix="bench_register_"))
    for run in range(runs):
        pid = f"sub-cud{run + 1:02d}"
        anat = make_subject_anatomy(participant_rng(20260, pid, "anatomy"))
        brain = anat.t1 * anat.brain_mask
        w0, c0 = time.perf_counter(), time.process_time()
        res = R.register_arrays(brain, anat.brain_mask, anat.affine)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        m = res["matrix"]
        acc = float(np.linalg.norm(R.apply(m, anat.mni_to_world(ACCUMBENS_MNI)) - ACCUMBENS_MNI))
        err = np.linalg.norm(R.apply(m, anat.mni_to_world(pts)) - pts, axis=1)
        # the whole rule job: a fresh `python -m mrsflow register` on gzipped NIfTIs
        nib.save(nib.Nifti1Image(anat.t1, anat.affine), tmp / "t1.nii.gz")
        nib.save(nib.Nifti1Image(anat.brain_mask.astype(np.uint8), anat.affine),
                 tmp / "mask.nii.gz")
        j0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mrsflow", "register", "--t1", str(tmp / "t1.nii.gz"),
                        "--mask", str(tmp / "mask.nii.gz"), "--out", str(tmp / "xfm.json")],
                       check=True)
        jobs.append(time.perf_counter() - j0)
        print(f"{pid}: {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU; NCC {res['similarity']:.3f}; "
              f"accumbens error {acc:.2f} mm; brain RMS {np.sqrt(np.mean(err**2)):.2f} mm "
              f"(max {err.max():.2f} mm, {len(pts)} points)")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"template preparation (once per process): {cache_s:.2f} s")
    print(f"per T1, median of {runs}: {statistics.median(walls):.2f} s wall "
          f"({statistics.median(cpus):.2f} s CPU); whole rule job (python -m mrsflow register, "
          f"imports, template, gzip NIfTI I/O): {statistics.median(jobs):.2f} s wall")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
