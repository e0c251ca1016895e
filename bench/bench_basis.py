"""Benchmark: simulate the whole study basis (PRESS, 127.8 MHz, TE1 12 ms, TE2 18 ms,
dwell 1/2000 s, 2048 points; 21 metabolites + 9 macromolecule/lipid signals) on one core.

Prints the median wall time over ``--repeats`` runs (default 3) and the machine description.
``--compare`` additionally prints the per-metabolite correlation table against the ISMRM 2016
fitting-challenge basis (same computation as tests/test_basis.py) when that folder exists.

Usage: .venv/bin/python bench/bench_basis.py [--repeats 3] [--compare]
"""

from __future__ import annotations

import os

# one core: pin the BLAS/OpenMP pools before numpy is imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path)

from mrsflow import basis as B  # noqa: E402

STUDY = B.Sequence(f0_mhz=127.8, te1_ms=12.0, te2_ms=18.0, dwell_s=1 / 2000, npoints=2048)


def machine() -> str:
    cpu = cpu_model()
    return (
        f"{platform.platform()} | {cpu} | os.cpu_count()={os.cpu_count()} | "
        f"Python {platform.python_version()} | numpy {np.__version__} | "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )


def run_once(metabolites: list[str], macromolecules: list[str]) -> float:
    start = time.perf_counter()
    fids = B.simulate_basis(STUDY, metabolites, macromolecules)
    elapsed = time.perf_counter() - start
    assert len(fids) == len(metabolites) + len(macromolecules)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="print the ISMRM 2016 table")
    args = parser.parse_args(argv)

    metabolites = list(B.load_spin_systems())
    macromolecules = list(B.load_macromolecules())
    times = [run_once(metabolites, macromolecules) for _ in range(args.repeats)]
    print(f"machine: {machine()}")
    print(
        f"study basis: {len(metabolites)} metabolites + {len(macromolecules)} MM/lipid, "
        f"PRESS TE {STUDY.te1_ms:g}+{STUDY.te2_ms:g} ms, {STUDY.f0_mhz} MHz, "
        f"{STUDY.npoints} points, dwell {STUDY.dwell_s:g} s"
    )
    print(
        f"wall time over {args.repeats} runs: median {statistics.median(times):.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f})"
    )

    if args.compare:
        test_file = Path(__file__).resolve().parents[1] / "tests" / "test_basis.py"
        spec = importlib.util.spec_from_file_location("_mrsflow_test_basis", test_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not module.REF_DIR.is_dir():
            print(f"ISMRM 2016 reference not found at {module.REF_DIR}")
            return 0
        table, cal = module.ismrm_correlations()
        print(
            f"ISMRM 2016 reference: f0 {cal['f0_mhz']:.4f} MHz, receiver "
            f"{cal['centre_ppm']:.4f} ppm, intrinsic Lorentzian {cal['lw_hz']:.3f} Hz"
        )
        print("metabolite  r (real spectra, 0.2-4.2 ppm, +4 Hz)")
        for name, r in table.items():
            print(f"  {name:8s}  {r:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
