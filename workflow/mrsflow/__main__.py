import os

# Every rule is single-threaded (threads: 1) and runs beside other jobs: numpy's BLAS thread
# pool would only compete with them (and costs ~0.1 s CPU to start). Users may override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from mrsflow.cli import main  # noqa: E402

raise SystemExit(main())
