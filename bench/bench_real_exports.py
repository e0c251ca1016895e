"""Accuracy on real spectra: Osprey's Philips 3 T PRESS exports through the whole workflow.

Builds the three shared exports (a folder given on the command line; default the shared one)
into one small study (bench/_osprey.py: two TE 35 spectra with the default macromolecule
model, one TE 30 spectrum with its measured MM from the metabolite-nulled scan), runs the
workflow on it (``snakemake --cores 2``, the project's defaults) and prints, per spectrum,
Glu/tCr, tNAA/tCr, Ins/tCr and tCho/tCr beside what LCModel 6.3 and FSL-MRS 2.4 report (the
folder's README), how many fall inside their range or within 10 % of the nearer, the QC
verdict and fit QC, and where the QC page of each fit is.

    python bench/bench_real_exports.py [FOLDER] [--workdir DIR] [--baseline SPEC]
                                       [--configfile YAML ...] [--backend builtin|lcmodel]

``--baseline`` overrides the config's fitting baseline (as in bench_ismrm2016.py);
``--backend lcmodel`` fits with LCModel (an executable from $MRSFLOW_LCMODEL or PATH, or the
config's fitting.lcmodel.executable through ``--configfile``): whether a miss is the fitter's
or the basis's;
``--configfile`` adds config files merged over the study's (a variant of the defaults, e.g. a
fit range or a metabolite list), so that the same comparison measures a proposed default.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from _machine import cpu_model
from _osprey import OSPREY, RATIOS, ROOT, anchors, measured_ratios, write_study
from bench_ismrm2016 import within  # the same "inside, or within 10 % of the nearer" rule


def run_study(folder: Path, workdir: Path, overlays: list[Path] = ()) -> tuple[Path, float]:
    """The study through the workflow in ``workdir`` (``overlays``: config files merged over
    the study's, in order); returns (results/, seconds)."""
    config = write_study(workdir, folder)
    snakemake = Path(sys.executable).parent / "snakemake"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(snakemake), "-s", str(ROOT / "Snakefile"), "-d", str(workdir / "run"),
         "--configfile", str(ROOT / "config" / "config.yaml"), str(config),
         *map(str, overlays), "--cores", "2"],
        capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the workflow failed on the real exports:\n{proc.stderr[-4000:]}")
    return workdir / "run" / "results", time.perf_counter() - t0


def report(measured: pd.DataFrame, table: pd.DataFrame) -> dict[str, int]:
    """Print the comparison; return {ratio: spectra inside the anchors (or 10 %)}."""
    names = list(RATIOS.values())
    print("spectrum          protocol          " + " ".join(f"{m + '/tCr':>20}" for m in names)
          + "  fitQ  QC")
    hits = dict.fromkeys(names, 0)
    for r in measured.itertuples():
        ref = table[table.spectrum == r.spectrum]
        cells = []
        for m in names:
            lo, hi = float(ref[m].min()), float(ref[m].max())
            v = getattr(r, m)
            ok = within(v, lo, hi)
            hits[m] += ok
            cells.append(f"{v:5.2f} [{lo:5.2f}-{hi:5.2f}]{'*' if ok else ' '}")
        verdict = "pass" if str(r.qc_pass) == "True" else f"excluded: {r.qc_reason}"
        print(f"{r.spectrum:17s} {r.protocol:17s} " + " ".join(f"{c:>20}" for c in cells)
              + f"  {r.fit_quality:4.2f}  {verdict}")
    print(f"inside LCModel-FSL-MRS or within 10 % (*), of {len(measured)} spectra: "
          + ", ".join(f"{m}/tCr {hits[m]}/{len(measured)}" for m in names))
    return hits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(OSPREY))
    ap.add_argument("--workdir", help="run here (kept); default: a temporary folder")
    ap.add_argument("--baseline", help="override the config's fitting baseline")
    ap.add_argument("--configfile", nargs="+", default=[],
                    help="config files merged over the study's (a variant of the defaults)")
    ap.add_argument("--backend", choices=["builtin", "lcmodel"],
                    help="override the config's fitting backend")
    a = ap.parse_args(argv)
    folder = Path(a.folder)
    if not (folder / "README.md").is_file():
        print(f"{folder}: no Osprey exports here: nothing to do")
        return 0
    with tempfile.TemporaryDirectory(prefix="mrsflow-real-") as tmp:
        work = Path(a.workdir) if a.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        overlays = [Path(c).resolve() for c in a.configfile]
        fitting = {k: v for k, v in (("baseline", a.baseline), ("backend", a.backend)) if v}
        if fitting:  # the command-line overrides, merged last
            overlays.append(work / "overrides.yaml")
            overlays[-1].write_text(yaml.safe_dump({"fitting": fitting}))
        results, seconds = run_study(folder, work, overlays)
        print(f"machine: {cpu_model()}; the workflow on 3 real spectra: {seconds:.0f} s"
              + "".join(f"; config {p.name}" for p in overlays)
              + (f" (fitting {fitting})" if fitting else ""))
        report(measured_ratios(results / "tables" / "metabolites.tsv"), anchors(folder))
        pages = sorted(str(p.relative_to(work)) for p in (results / "qc").glob("*spectra.png"))
        print("QC pages (fit, baseline, residual per spectrum): " + ", ".join(pages)
              + ("" if a.workdir else " (removed with the temporary folder; --workdir keeps)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
