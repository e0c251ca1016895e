"""The effect of the PRESS TE1/TE2 split (which no header records) on fitted amplitudes.

A noiseless brain-like spectrum (the concentrations of bench_fit.py, a Voigt lineshape of
3 Hz Lorentz and 4 Hz Gauss) is simulated with the study's split, TE1/TE2 = 12/18 ms at
127.8 MHz, and fitted with bases simulated for other splits of the same TE 30 ms; the
script prints each fitted amplitude's change from the correct basis's (%).

    python bench/bench_te_split.py [--te1 12 --te2 18] [--splits 15/15 9/21 18/12]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
from bench_fit import CONC, MACROMOLECULES, METABOLITES  # noqa: E402

from mrsflow.basis import Basis, Sequence, simulate_basis  # noqa: E402
from mrsflow.fit import fit_spectrum  # noqa: E402

F0, DT, N = 127.8, 5e-4, 2048
SHOWN = ("Glu", "Gln", "GABA", "GSH", "Ins", "tNAA", "tCr", "tCho")


def basis(te1: float, te2: float) -> Basis:
    fids = simulate_basis(Sequence(F0, te1, te2, DT, N), METABOLITES, MACROMOLECULES)
    return Basis(list(fids), np.vstack(list(fids.values())), DT, F0, 4.65, te1 + te2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--te1", type=float, default=12.0)
    ap.add_argument("--te2", type=float, default=18.0)
    ap.add_argument("--splits", nargs="+", default=["15/15", "9/21", "18/12"])
    a = ap.parse_args(argv)
    true = basis(a.te1, a.te2)
    t = np.arange(N) * DT
    shape = np.exp(-math.pi * 3.0 * t - (math.pi * 4.0 * t) ** 2 / (4 * math.log(2)))
    fid = sum(CONC[n] * true.fids[true.names.index(n)] for n in true.names) * shape
    ref = fit_spectrum(fid, DT, F0, true)
    print(f"data simulated with TE1/TE2 {a.te1:g}/{a.te2:g} ms; fitted amplitude change (%) "
          "with a basis of another split:")
    print("split    " + " ".join(f"{m:>7}" for m in SHOWN))
    for split in a.splits:
        te1, te2 = (float(x) for x in split.split("/"))
        r = fit_spectrum(fid, DT, F0, basis(te1, te2))
        print(f"{split:8} " + " ".join(
            f"{100 * (r.amplitude(m) / ref.amplitude(m) - 1):+7.1f}" for m in SHOWN))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
