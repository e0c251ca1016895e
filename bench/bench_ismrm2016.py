"""Accuracy on spectra the project did not make: the ISMRM 2016 fitting challenge.

Fits the challenge's spectra (a folder given on the command line; default the shared one)
with the builtin fitter and

- ``own``: the project's own simulated basis for the challenge's sequence (PRESS TE 11 + 19
  ms, 123.2 MHz, 4000 Hz, 2048 points; the config's metabolites and macromolecule model) and
  the config's fitting defaults: what every user gets;
- ``challenge``: the challenge's own basis (measured macromolecules, Mac.txt),

water-scales each by the challenge's formula and prints, per dataset, Glu, tNAA, tCr, Ins and
tCho beside what LCModel 6.3 and FSL-MRS 2.4 report (anchors.tsv), how many datasets fall
inside the anchors' range or within 10 % of the nearer anchor, and the Cr test (dataset 0;
exact-area answer 10.82 mM). A fit the config's QC rules exclude (a residual with material
structure, a runaway baseline: mrsflow.quantify.fit_qc_reasons) is printed with its reason
instead of numbers and counted apart, as the workflow would report it.

    python bench/bench_ismrm2016.py [FOLDER] [--basis own|challenge|both] [--baseline ...]
                                    [--configfile YAML ...] [--backend builtin|lcmodel]

``--configfile`` merges config files over config/config.yaml (as Snakemake does), so that a
proposed default (fit range, baseline, metabolite list, QC rules) is measured the same way.
``--backend lcmodel`` fits with the workflow's LCModel backend instead (the config's
fitting.lcmodel block; an executable from there, $MRSFLOW_LCMODEL or PATH): what the paper's
own fitter makes of the same basis, so that a miss can be told apart as the fitter's or the
basis's (its macromolecule model's).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _config import merged_config  # noqa: E402
from _ismrm2016 import (  # noqa: E402  (bench/ is on sys.path)
    ANCHOR_NAMES,
    CENTRE_PPM,
    DEFAULT,
    DWELL_S,
    F0_MHZ,
    NPOINTS,
    TE1_MS,
    TE2_MS,
    anchors,
    challenge_basis,
    concentration,
    datasets,
)
from _machine import cpu_model  # noqa: E402

from mrsflow import basis as B  # noqa: E402
from mrsflow import fit as F  # noqa: E402
from mrsflow import qc as Q  # noqa: E402
from mrsflow import quantify  # noqa: E402
from mrsflow.fit import lcmodel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPORTED = ("Glu", "tNAA", "tCr", "Ins", "tCho")
CR_TEST_MM = 10.82


def own_basis(cfg: dict, seq: B.Sequence | None = None) -> B.Basis:
    """The project's basis (config metabolites + macromolecules) simulated for ``seq``
    (default: the challenge's sequence)."""
    if seq is None:
        seq = B.Sequence(F0_MHZ, TE1_MS, TE2_MS, DWELL_S, NPOINTS, centre_ppm=CENTRE_PPM)
    fids = B.simulate_basis(seq, list(cfg["basis"]["metabolites"]),
                            list(cfg["basis"]["macromolecules"]))
    return B.Basis(list(fids), np.vstack(list(fids.values())), seq.dwell_s, seq.f0_mhz,
                   seq.centre_ppm, seq.te_ms)


def fit_default(fid, basis: B.Basis, fitting: dict, dwell_s: float = DWELL_S,
                f0_mhz: float = F0_MHZ):
    """The builtin fit of ``fid`` with the config's ``fitting`` block (fit range, baseline),
    as the workflow fits: a :class:`mrsflow.fit.FitResult`."""
    return F.fit_spectrum(fid, dwell_s, f0_mhz, basis, ppm_range=tuple(fitting["ppm_range"]),
                          baseline_order=fitting["baseline"], centre_ppm=CENTRE_PPM)


#: LCModel's referencing shift limited to +-0.1 ppm, as for the anchors (_ismrm2016.
#: LCMODEL_CHALLENGE: else the Cr-only test spectrum is referenced with Cr on Cho)
LCMODEL_SHIFT_LIMITS = {"SHIFMN(1)": -0.1, "SHIFMX(1)": 0.1, "SHIFMN(2)": -0.1,
                        "SHIFMX(2)": 0.1}


def fit_all(data: dict, basis: B.Basis, fitting: dict, rules: dict | None = None,
            backend: str = "builtin", lcmodel_exe: str | None = None
            ) -> dict[int, dict[str, float]]:
    """{dataset: {name: mM}} (basis entries and combinations; ``_fit_quality``, ``_fit_qc``
    and ``_excluded``, the reasons ``rules`` (the config's qc block) exclude it for) and the
    seconds per fit. ``backend`` "lcmodel": the workflow's LCModel backend
    (mrsflow.fit.lcmodel.fit, the config's fitting.lcmodel.control over its defaults, the
    referencing limits of :data:`LCMODEL_SHIFT_LIMITS`), executable ``lcmodel_exe``."""
    out, times = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-ismrm2016-") as tmp:
        for n, (metab, water) in data.items():
            t0 = time.perf_counter()
            wfit = F.fit_water(water, DWELL_S, F0_MHZ, centre_ppm=CENTRE_PPM)
            if backend == "lcmodel":
                control = {**LCMODEL_SHIFT_LIMITS,
                           **(fitting.get("lcmodel") or {}).get("control", {})}
                d, _ = lcmodel.fit(metab, water, DWELL_S, F0_MHZ, basis,
                                   ppm_range=tuple(fitting["ppm_range"]),
                                   executable=lcmodel_exe, workdir=Path(tmp), water=wfit,
                                   control_values=control, centre_ppm=CENTRE_PPM)
                fit_qc = d["extra"].get("fit_qc")
            else:
                res = fit_default(metab, basis, fitting)
                d = res.to_dict()
                fit_qc = Q.fit_qc(res.ppm, res.data, res.fit, res.baseline_spec, res.noise_sd)
            times.append(time.perf_counter() - t0)
            conc = {k: concentration(e["amplitude"], wfit["amplitude"]) for k, e in
                    {**d["metabolites"], **d["combined"]}.items()}
            conc["_fit_quality"] = d["fit_quality"]
            conc["_fit_qc"] = fit_qc
            conc["_excluded"] = quantify.fit_qc_reasons(fit_qc, rules or {})
            out[n] = conc
    return out, float(np.median(times))


def within(v: float, lo: float, hi: float, rel: float = 0.10) -> bool:
    """Inside [lo, hi], or within ``rel`` of the nearer anchor (an anchor of 0: within
    ``rel`` of the other, absolutely)."""
    if lo <= v <= hi:
        return True
    near = lo if abs(v - lo) <= abs(v - hi) else hi
    return abs(v - near) <= rel * (abs(near) if near else max(abs(hi), abs(lo)))


def report(name: str, conc: dict, anchor_table, seconds: float):
    """Print the comparison; return ({metabolite: datasets inside the anchors (or 10 %)},
    datasets, [datasets excluded by QC])."""
    a = anchor_table.set_index(["dataset", "metabolite"])
    print(f"\n== {name} basis: median {seconds:.3f} s per fit")
    print("dataset " + " ".join(f"{m:>22}" for m in REPORTED) + "   fitQ  struct  max%")
    hits = dict.fromkeys(REPORTED, 0)
    n_sets, excluded = 0, []
    for n, c in conc.items():
        if n == 0:
            continue
        n_sets += 1
        fq = c["_fit_qc"]
        qc_cols = (f"  {c['_fit_quality']:5.2f}  {fq['residual_structure']:5.2f} "
                   f"{fq['residual_max_pct']:5.1f}")
        if c["_excluded"]:
            excluded.append(n)
            print(f"{n:7d} excluded by QC: {'; '.join(c['_excluded'])}")
            continue
        cells = []
        for m in REPORTED:
            lo_hi = [a.loc[(n, ANCHOR_NAMES[m]), k] for k in ("lcmodel_mM", "fslmrs_mM")]
            lo, hi = min(lo_hi), max(lo_hi)
            v = c[m]
            ok = within(v, lo, hi)
            hits[m] += ok
            cells.append(f"{v:6.2f} [{lo:5.2f}-{hi:5.2f}]{'*' if ok else ' '}")
        print(f"{n:7d} " + " ".join(f"{x:>22}" for x in cells) + qc_cols)
    print(f"inside the anchors or within 10 % (*), of {n_sets} datasets ({len(excluded)} "
          f"excluded by QC{': ' + ', '.join(map(str, excluded)) if excluded else ''}): "
          + ", ".join(f"{m} {hits[m]}/{n_sets}" for m in REPORTED))
    if 0 in conc:
        cr = conc[0]["tCr"]
        print(f"Cr test: tCr {cr:.3f} mM (exact-area answer {CR_TEST_MM}; "
              f"{100 * (cr / CR_TEST_MM - 1):+.2f} %)")
    return hits, n_sets, excluded


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT))
    ap.add_argument("--basis", choices=["own", "challenge", "both"], default="both")
    ap.add_argument("--baseline", help="override the config's fitting baseline")
    ap.add_argument("--configfile", nargs="+", default=[],
                    help="config files merged over config/config.yaml")
    ap.add_argument("--backend", choices=["builtin", "lcmodel"], default="builtin",
                    help="the fitter (lcmodel: the config's fitting.lcmodel.executable, else "
                         "$MRSFLOW_LCMODEL, else lcmodel on PATH)")
    a = ap.parse_args(argv)
    folder = Path(a.folder)
    if not (folder / "datasets_text").is_dir():
        print(f"{folder}: no challenge data (datasets_text/) here: nothing to do")
        return 0
    cfg = merged_config(a.configfile)
    fitting = dict(cfg["fitting"])
    if a.baseline:
        fitting["baseline"] = a.baseline
    exe = None
    if a.backend == "lcmodel":
        exe = lcmodel.find_executable((fitting.get("lcmodel") or {}).get("executable"))
        if exe is None:
            print("--backend lcmodel: no LCModel executable (fitting.lcmodel.executable, "
                  "$MRSFLOW_LCMODEL or lcmodel on PATH)")
            return 2
    print(f"machine: {cpu_model()}; {a.backend}; fitting {fitting['ppm_range']} ppm, "
          + (f"LCModel control {(fitting.get('lcmodel') or {}).get('control', {})}"
             if exe else f"baseline '{fitting['baseline']}'"))
    data, table = datasets(folder), anchors(folder)
    if a.basis in ("own", "both"):
        conc, sec = fit_all(data, own_basis(cfg), fitting, cfg["qc"], a.backend, exe)
        report("own (config)", conc, table, sec)
    if a.basis in ("challenge", "both"):
        conc, sec = fit_all(data, challenge_basis(folder), fitting, cfg["qc"], a.backend, exe)
        report("challenge", conc, table, sec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
