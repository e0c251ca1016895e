"""Time one twin participant's anatomy: make_subject_anatomy + write_t1_dicom.

Prints the median seconds per participant over 3 runs (wall and CPU) and the machine.
Target: <= ~5 s on one core. Run: .venv/bin/python bench/bench_anatomy.py
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path)

from mrsflow.twin import anatomy as A  # noqa: E402


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}; {os.cpu_count()} CPUs; Python {platform.python_version()}; {platform.system()}"


def main(runs: int = 3) -> None:
    t0 = time.perf_counter()
    A._template()  # one-off per process: loading and preparing the MNI152 maps
    cache_s = time.perf_counter() - t0
    walls, cpus, makes, writes = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            w0, c0 = time.perf_counter(), time.process_time()
            anat = A.make_subject_anatomy(np.random.default_rng(1000 + run))
            w1 = time.perf_counter()
            A.write_t1_dicom(Path(tmp) / f"run{run}", anat.t1, anat.affine,
                             patient_id=f"sub-bench{run:02d}", study_uid_seed=run)
            w2, c2 = time.perf_counter(), time.process_time()
            walls.append(w2 - w0)
            cpus.append(c2 - c0)
            makes.append(w1 - w0)
            writes.append(w2 - w1)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"machine: {machine()}")
    print(f"grid: {A.AnatomyParams().shape} at {A.AnatomyParams().voxel_mm} mm")
    print(f"template cache (once per process): {cache_s:.2f} s")
    print(f"per participant, median of {runs}: {statistics.median(walls):.2f} s wall "
          f"({statistics.median(cpus):.2f} s CPU; make {statistics.median(makes):.2f} s, "
          f"DICOM {statistics.median(writes):.2f} s); peak RSS {peak_gb:.2f} GB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
