"""MM leakage: how much of a *measured* macromolecule spectrum the project's default MM model
lets the metabolites take.

A metabolite-nulled (measured) MM spectrum holds no metabolites. Fitted alone with the
project's basis (the config's metabolites and parametrised MM/lipid entries) and fitting
defaults, whatever a metabolite reads is signal that an in-vivo fit gives that metabolite
because the MM model cannot represent the measured MM there. Scaled to the MM level of an
in-vivo spectrum, the readings are biases in that spectrum's units, independent of any other
fit error (the metabolite basis, the lineshape, the noise):

- ``challenge``: the ISMRM 2016 challenge's measured MM (``Mac.txt``) at the level and with
  the lineshape that the challenge-basis fit finds in each of datasets 1-10, as mM (the
  challenge's water scaling), beside that fit's value and beside the excess of the own-basis
  fit over it (how much of the own basis's error the leakage explains);
- ``osprey``: the metabolite-nulled TI 600 ms scan of Osprey's Philips TE 30 data, as the
  workflow's rule ``mm_spectrum`` made it (``--real-results``: the ``results/`` of
  ``bench_real_exports.py --workdir DIR``, i.e. ``DIR/run/results``), at the level the
  workflow's fit of the TE 30 spectrum found, as ratios to that spectrum's tCr (the units of
  the real-export comparison).

    python bench/bench_mm_leakage.py [--challenge FOLDER] [--real-results DIR]
                                     [--configfile YAML ...]

An MM model fit for spectra without a measured MM reads close to zero everywhere here.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _config import merged_config  # noqa: E402
from _ismrm2016 import (  # noqa: E402  (bench/ is on sys.path)
    CENTRE_PPM,
    DEFAULT,
    DWELL_S,
    F0_MHZ,
    challenge_basis,
    concentration,
    datasets,
)
from _machine import cpu_model  # noqa: E402
from _osprey import SEQUENCE  # noqa: E402
from bench_ismrm2016 import REPORTED, fit_default, own_basis  # noqa: E402

from mrsflow import basis as B  # noqa: E402
from mrsflow import fit as F  # noqa: E402
from mrsflow.fit.builtin import _CQ  # noqa: E402  (Gaussian FWHM G Hz: exp(-_CQ G^2 t^2))
from mrsflow.fit.contract import read_nifti_mrs  # noqa: E402


def as_fitted(fid, amplitude: float, dwell_s: float, gamma_hz: float, sigma_hz: float):
    """An MM basis FID as a fit placed it: its amplitude and its group's Lorentzian
    ``gamma_hz`` and Gaussian ``sigma_hz`` broadening (the builtin fitter's lineshape)."""
    t = np.arange(len(fid)) * dwell_s
    return amplitude * np.asarray(fid) * np.exp(-math.pi * gamma_hz * t
                                                - _CQ * sigma_hz**2 * t**2)


def leak(fid, dwell_s: float, f0_mhz: float, basis: B.Basis, fitting: dict) -> dict:
    """{name: amplitude} (basis entries and combinations) of the default fit of ``fid``."""
    d = fit_default(fid, basis, fitting, dwell_s, f0_mhz).to_dict()
    return {k: e["amplitude"] for k, e in {**d["metabolites"], **d["combined"]}.items()}


def challenge(folder: Path, cfg: dict) -> None:
    """Leakage of the challenge's measured MM per dataset 1-10 (mM)."""
    fitting = cfg["fitting"]
    ch, own = challenge_basis(folder), own_basis(cfg)
    mac = np.asarray(ch.fids[ch.names.index("MM")])
    print(f"\n== challenge: its measured MM fitted with the project's basis and defaults "
          f"({fitting['ppm_range']} ppm, '{fitting['baseline']}'), mM")
    print("dataset " + " ".join(f"{m:>24}" for m in REPORTED))
    print("        " + " ".join(f"{'leak (in-vivo; own-in)':>24}" for _ in REPORTED))
    shares = {m: [] for m in REPORTED}
    for n, (metab, water) in datasets(folder).items():
        if not 1 <= n <= 10:
            continue
        w = F.fit_water(water, DWELL_S, F0_MHZ, centre_ppm=CENTRE_PPM)["amplitude"]
        ref = fit_default(metab, ch, fitting)
        g = ref.group_names.index("macromolecules")
        mm = as_fitted(mac, ref.amplitude("MM"), DWELL_S, ref.gamma_hz[g], ref.sigma_hz[g])
        got = leak(mm, DWELL_S, F0_MHZ, own, fitting)
        mine = leak(metab, DWELL_S, F0_MHZ, own, fitting)
        cells = []
        for m in REPORTED:
            lk, inv = (concentration(x, w) for x in (got[m], ref.amplitude(m)))
            excess = concentration(mine[m], w) - inv
            shares[m].append(lk / excess if excess > 0 else math.nan)
            cells.append(f"{lk:5.2f} ({inv:5.2f}; {excess:+5.2f})")
        print(f"{n:7d} " + " ".join(f"{c:>24}" for c in cells))
    print("median leak / (own - challenge-basis) excess: " + ", ".join(
        f"{m} {np.nanmedian(v):.2f}" for m, v in shares.items()))


def osprey(results: Path, cfg: dict) -> None:
    """Leakage of the Osprey TE 30 metabolite-nulled MM spectrum, as ratios to the TE 30
    spectrum's tCr."""
    fitting = cfg["fitting"]
    mm_nii = results / "basis" / "press_te30_127p8_mm.nii.gz"
    fits = sorted((results / "fit").glob("sub-cud01/*/mrs/*_desc-fit.json"))
    if not mm_nii.is_file() or not fits:
        print(f"\n{results}: no measured MM spectrum or TE 30 fit here (run "
              "bench_real_exports.py --workdir DIR and give DIR/run/results)")
        return
    fid, dwell, f0, _ = read_nifti_mrs(mm_nii)
    fit = json.loads(fits[0].read_text())
    mm_amp = fit["metabolites"]["MM"]["amplitude"]
    tcr = fit["combined"]["tCr"]["amplitude"]
    if not mm_amp > 0:
        print(f"\n== Osprey Philips TE 30: the workflow's fit ({fits[0].name}) gave the measured "
              "MM entry no amplitude (its baseline took the MM): no level to scale by")
        return
    grp = fit["groups"].get("macromolecules", {})
    mm = as_fitted(fid, mm_amp, dwell, grp.get("gamma_hz", 0.0), grp.get("sigma_hz", 0.0))
    seq = B.Sequence(f0, SEQUENCE["te1_ms"], SEQUENCE["te2_ms"], dwell, fid.size,
                     centre_ppm=CENTRE_PPM)  # at the scan's own frequency
    got = leak(mm, dwell, f0, own_basis(cfg, seq), fitting)
    print("\n== Osprey Philips TE 30: its metabolite-nulled MM spectrum (rule mm_spectrum) "
          "fitted with the project's default basis, as ratio to the spectrum's tCr")
    in_vivo = {**fit["metabolites"], **fit["combined"]}
    print("  " + ", ".join(f"{m}/tCr {got[m] / tcr:.3f} "
                           f"(in vivo {in_vivo[m]['amplitude'] / tcr:.3f})"
                           for m in ("Glu", "tNAA", "Ins", "tCho"))
          + f"; tCr {got['tCr'] / tcr:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--challenge", default=str(DEFAULT), help="the challenge's folder")
    ap.add_argument("--real-results", help="results/ of a bench_real_exports.py run")
    ap.add_argument("--configfile", nargs="+", default=[],
                    help="config files merged over config/config.yaml")
    a = ap.parse_args(argv)
    cfg = merged_config(a.configfile)
    print(f"machine: {cpu_model()}")
    folder = Path(a.challenge)
    if (folder / "datasets_text").is_dir():
        challenge(folder, cfg)
    else:
        print(f"{folder}: no challenge data here")
    if a.real_results:
        osprey(Path(a.real_results), cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
