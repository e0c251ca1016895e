"""Benchmark of the builtin LCM fitter: median seconds per spectrum on ONE core.

Run: ``.venv/bin/python bench/bench_fit.py [--n 30]``. Fits ``n`` synthetic spectra of the
study sequence (127.8 MHz, PRESS TE 12 + 18 ms, 2048 points at 2000 Hz; 20 metabolites + 9
MM/lipid basis entries; SNR 17.5, NAA FWHM ~6.9 Hz, random shift/phase/concentrations) with
the workflow's default settings (config/config.yaml: fit range and baseline; metabolite + MM
groups) and prints the machine description and the timing. Target: <= 0.2 s per spectrum.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from _config import merged_config  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path)

from mrsflow.basis import Basis, Sequence, simulate_basis  # noqa: E402
from mrsflow.fit import fit_spectrum  # noqa: E402

METABOLITES = (
    "Ala Asc Asp Cr GABA GPC GSH Glc Gln Glu Gly Ins Lac NAA NAAG PCh PCr PE sIns Tau".split()
)
MACROMOLECULES = "MM09 MM12 MM14 MM17 MM20 Lip09 Lip13a Lip13b Lip20".split()
CONC = {
    "NAA": 12.0, "Cr": 6.0, "PCr": 4.5, "GPC": 1.2, "PCh": 0.6, "Ins": 6.5, "Glu": 10.0,
    "Gln": 3.5, "GABA": 1.5, "GSH": 2.0, "Tau": 1.5, "Asp": 2.5, "NAAG": 1.2, "Lac": 0.8,
    "sIns": 0.3, "Glc": 1.5, "Asc": 1.2, "Gly": 0.8, "PE": 1.5, "Ala": 0.5, "MM09": 3.0,
    "MM12": 2.0, "MM14": 2.5, "MM17": 1.5, "MM20": 4.0, "Lip09": 0.5, "Lip13a": 0.8,
    "Lip13b": 0.5, "Lip20": 0.5,
}  # fmt: skip
GAUSS_C = math.pi**2 / (4.0 * math.log(2.0))


def machine() -> str:
    cpu = cpu_model()
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs (benchmark uses 1 thread); "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="number of spectra (>= 20)")
    args = ap.parse_args()
    fitting = merged_config()["fitting"]
    seq = Sequence(127.8, 12.0, 18.0, 0.0005, 2048)
    fids = simulate_basis(seq, METABOLITES, MACROMOLECULES)
    basis = Basis(
        names=list(fids),
        fids=np.array(list(fids.values())),
        dwell_s=seq.dwell_s,
        f0_mhz=seq.f0_mhz,
        centre_ppm=seq.centre_ppm,
        te_ms=seq.te_ms,
    )
    t = seq.time_axis()
    rng = np.random.default_rng(2026)
    times = []
    for _ in range(max(args.n, 20)):
        amps = np.array([CONC[n] * math.exp(rng.normal(0, 0.1)) for n in basis.names])
        shift = rng.uniform(-5, 5)
        dec = np.exp(-math.pi * 3.0 * t - GAUSS_C * 5.1**2 * t * t + 2j * math.pi * shift * t)
        fid = (amps @ basis.fids) * dec * np.exp(1j * rng.uniform(-0.5, 0.5))
        height = np.max(np.fft.fft(fid).real)
        sd_t = height / 17.5 / math.sqrt(t.size)
        fid = fid + sd_t * (rng.standard_normal(t.size) + 1j * rng.standard_normal(t.size))
        t0 = time.perf_counter()
        fit_spectrum(fid, seq.dwell_s, seq.f0_mhz, basis, ppm_range=tuple(fitting["ppm_range"]),
                     baseline_order=fitting["baseline"])
        times.append(time.perf_counter() - t0)
    times = np.array(times)
    print(f"machine: {machine()}")
    print(
        f"builtin fit_spectrum: {times.size} spectra, {len(basis.names)} basis entries, "
        f"{t.size} points, {fitting['ppm_range']} ppm, baseline '{fitting['baseline']}': "
        f"median {np.median(times):.3f} s/spectrum "
        f"(min {times.min():.3f}, max {times.max():.3f}); target <= 0.2 s"
    )


if __name__ == "__main__":
    main()
