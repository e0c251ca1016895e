"""Time and memory of the builtin T1 segmentation on a twin T1 (one core).

Prints seconds (median of 3 runs, wall and CPU) and peak memory per T1 (the peak resident
set of a fresh child process per run, reset after loading the image on Linux, so it is the
peak while segmenting, including the input array) and the machine.
Targets: <= 20 s and <= 2 GB per T1. Run: .venv/bin/python bench/bench_segment.py
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import nibabel as nib, numpy as np
from mrsflow import segment as S


def vm_hwm_gb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


img = nib.load(sys.argv[1])
data = np.asarray(img.dataobj, dtype=np.float32)
try:  # reset the peak-RSS counter (Linux): the peak then belongs to segment_t1
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = vm_hwm_gb()
w0, c0 = time.perf_counter(), time.process_time()
seg = S.segment_t1(data, img.affine)
w1, c1 = time.perf_counter(), time.process_time()
print(json.dumps({"wall": w1 - w0, "cpu": c1 - c0, "peak_gb": vm_hwm_gb(),
                  "before_gb": base, "brain_ml": seg.info["brain_volume_ml"]}))
"""


def main(runs: int = 3) -> None:
    import nibabel as nib
    import numpy as np

    from mrsflow.twin import anatomy as A

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_anatomy import machine

    with tempfile.TemporaryDirectory() as tmp:
        anat = A.make_subject_anatomy(np.random.default_rng(2024))
        t1 = Path(tmp) / "t1.nii"
        nib.save(nib.Nifti1Image(anat.t1, anat.affine), t1)
        del anat
        res = []
        for _ in range(runs):
            out = subprocess.run([sys.executable, "-c", CHILD, str(t1)], check=True,
                                 capture_output=True, text=True, env=os.environ)
            res.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in res) for k in res[0]}
    print(f"machine: {machine()}")
    print(f"builtin segment_t1 on a twin T1 (192x240x256, 1 mm), median of {runs}: "
          f"{med['wall']:.2f} s wall ({med['cpu']:.2f} s CPU), peak RSS {med['peak_gb']:.2f} GB "
          f"(whole process; {med['before_gb']:.2f} GB with the image loaded), "
          f"brain mask {med['brain_ml']:.0f} ml")


if __name__ == "__main__":
    main()
