"""Benchmark of the builtin preprocessing: median seconds per scan, and the machine.

Synthesizes ``--scans`` twin scans (``mrsflow.twin.spectra``; 128 MC transients x 2048 points
by default, the project's simulated basis unless ``--toy``), writes each as spec2nii would
(NIfTI-MRS (1,1,1,N,2,P), DIM_METCYCLE / DIM_DYN; classic: DIM_DYN + water reference) and
times :func:`mrsflow.preprocess.run_preprocess` end to end (read, process, write the two
NIfTI-MRS files, QC JSON, transients TSV and PNG).  Prints one JSON document.

    python bench/bench_preprocess.py [--scans 8] [--mode mc|classic] [--toy] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path)

from mrsflow import preprocess as P
from mrsflow.twin import spectra as S

DT, F0, N = 5e-4, 127.8, 2048
CONC = {
    "NAA": 12, "Cr": 5, "PCr": 3, "GPC": 1, "PCh": 0.5, "Glu": 9, "Gln": 3, "Ins": 6,
    "NAAG": 1.5, "GSH": 2, "GABA": 1.5, "Tau": 1.5, "Lac": 0.5, "Asp": 2, "sIns": 0.3, "PE": 1.5,
    "Asc": 1, "Glc": 1, "Ala": 0.3, "Gly": 0.5, "MM09": 3, "MM12": 2, "MM14": 2, "MM17": 2,
    "MM20": 4,
}


def machine() -> dict:
    cpu = cpu_model()
    import scipy

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def get_basis(toy: bool):
    if toy:
        return S.toy_basis(), {"NAA": 12.0, "Cr": 8.0, "Cho": 1.5, "Lac": 0.5, "Glc": 1.0}
    from mrsflow import basis as B

    seq = B.Sequence(F0, 15.0, 15.0, DT, N)
    fids = B.simulate_basis(seq, list(B.load_spin_systems()), list(B.load_macromolecules()))
    basis = B.Basis(list(fids), np.vstack(list(fids.values())), DT, F0, 4.65, 30.0)
    return basis, CONC


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--mode", choices=("mc", "classic"), default="mc")
    ap.add_argument("--toy", action="store_true", help="analytic toy basis instead of simulation")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    basis, amps = get_basis(args.toy)
    synth_s, prep_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in range(args.scans):
            rng = np.random.default_rng(seed)
            spec = S.ScanSpec(mode=args.mode, target_snr=float(rng.uniform(12, 25)),
                              target_linewidth_hz=float(rng.uniform(5, 9)), n_motion=3)
            t0 = time.perf_counter()
            s = S.synthesize_scan(basis, amps, 56000.0, spec, rng)
            synth_s.append(time.perf_counter() - t0)
            hdr = {"EchoTime": 0.03, "RepetitionTime": 2.0}
            water = None
            if args.mode == "mc":
                data = s.transients.reshape(-1, 2, N).transpose(2, 1, 0)[None, None, None]
                P.write_nifti_mrs(tmp / "in.nii.gz", data, DT, F0,
                                  dim_tags=("DIM_METCYCLE", "DIM_DYN", None), hdr_ext=hdr)
            else:
                P.write_nifti_mrs(tmp / "in.nii.gz", s.transients.T[None, None, None], DT, F0,
                                  dim_tags=("DIM_DYN", None, None), hdr_ext=hdr)
                water = tmp / "ref.nii.gz"
                P.write_nifti_mrs(water, s.water_ref.T[None, None, None], DT, F0,
                                  dim_tags=("DIM_DYN", None, None), hdr_ext=hdr)
            t0 = time.perf_counter()
            P.run_preprocess(tmp / "in.nii.gz", tmp / "m.nii.gz", tmp / "w.nii.gz",
                             tmp / "qc.json", tmp / "t.tsv", tmp / "s.png", mode=args.mode,
                             water_nii=water)
            prep_s.append(time.perf_counter() - t0)
    result = {
        "benchmark": "mrsflow.preprocess.run_preprocess",
        "mode": args.mode,
        "basis": "toy" if args.toy else "simulated",
        "scans": args.scans,
        "transients_per_scan": 128,
        "points": N,
        "preprocess_median_s_per_scan": round(statistics.median(prep_s), 4),
        "preprocess_first_scan_s": round(prep_s[0], 4),
        "synthesize_median_s_per_scan": round(statistics.median(synth_s), 4),
        "machine": machine(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
