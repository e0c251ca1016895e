"""Reading the ISMRM 2016 fitting challenge (../shared/reference/ismrm2016-fitting-challenge),
shared by bench_ismrm2016.py and the tests.

Facts from the challenge description (README of the shared folder): PRESS TE 30 ms (TE1 11,
TE2 19 ms), ideal pulses, 123.2 MHz, 4000 Hz, 2048 points; the data files hold the
water-suppressed FID (columns 1-2) and the water FID (columns 3-4) as the complex conjugate of
the project convention; the basis files hold one FID each (conjugated likewise), with a small
reference singlet at 0 ppm, and ``Mac.txt`` is a measured macromolecule spectrum. Water
scaling: conc = 29697 mM x 1.206 x (amplitude per proton) / (water area / 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "reference" / "ismrm2016-fitting-challenge"
DWELL_S, NPOINTS, F0_MHZ, CENTRE_PPM = 0.25e-3, 2048, 123.2, 4.65
TE1_MS, TE2_MS = 11.0, 19.0
WATER_MM, METAB_RELAX = 29697.0, 1.206  # the challenge's prescribed scaling
NAMES = {"PCho": "PCh", "Mac": "MM"}  # challenge file stem -> project name
COMBINED = {"tNAA": ("NAA", "NAAG"), "tCr": ("Cr", "PCr"), "tCho": ("GPC", "PCh"),
            "Glx": ("Glu", "Gln")}
ANCHOR_NAMES = {"Glu": "Glu", "Ins": "Ins", "tNAA": "NAA+NAAG", "tCr": "Cr+PCr",
                "tCho": "GPC+PCho"}


def datasets(folder: Path = DEFAULT) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{dataset number: (metabolite FID, water FID)} in the project convention; the Cr
    water-scaling test is dataset 0."""
    out = {}
    for path in sorted((folder / "datasets_text").glob("dataset*.txt")):
        out[int(path.stem.removeprefix("dataset"))] = _pair(path)
    cr = folder / "Cr_water_scaling_text" / "Cr_10mM_test_water_scaling.txt"
    if cr.is_file():
        out[0] = _pair(cr)
    return dict(sorted(out.items()))


def _pair(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = np.loadtxt(path)
    return np.conj(d[:, 0] + 1j * d[:, 1]), np.conj(d[:, 2] + 1j * d[:, 3])


def challenge_basis(folder: Path = DEFAULT):
    """The challenge's own basis as a :class:`mrsflow.basis.Basis` (project names), the 0 ppm
    reference singlet removed from every FID (a Lorentzian line fitted at 0 ppm +- 0.1 and
    subtracted; Mac.txt, measured, has none)."""
    from scipy.optimize import least_squares

    from mrsflow.basis import Basis

    t = np.arange(NPOINTS) * DWELL_S
    names, fids = [], []
    for path in sorted((folder / "basisset_text").glob("*.txt")):
        d = np.loadtxt(path)
        fid = np.conj(d[:, 0] + 1j * d[:, 1])
        if path.stem != "Mac":
            nu0 = (0.0 - CENTRE_PPM) * F0_MHZ

            def resid(p, fid=fid, nu0=nu0):
                amp, ph, dnu, lw = p
                line = amp * np.exp(1j * ph + 2j * np.pi * (nu0 + dnu) * t - np.pi * lw * t)
                # the singlet alone: the data filtered to +-0.1 ppm around 0 ppm
                return _band(fid - line, nu0)

            p = least_squares(resid, [0.1, 0.0, 0.0, 2.0]).x
            fid = fid - p[0] * np.exp(1j * p[1] + 2j * np.pi * (nu0 + p[2]) * t - np.pi * p[3] * t)
        names.append(NAMES.get(path.stem, path.stem))
        fids.append(fid)
    return Basis(names, np.array(fids), DWELL_S, F0_MHZ, CENTRE_PPM, TE1_MS + TE2_MS,
                 meta={"source": "ISMRM 2016 fitting challenge basisset_text"})


def _band(fid: np.ndarray, nu0: float, half_width_hz: float = 12.0) -> np.ndarray:
    spec = np.fft.fftshift(np.fft.fft(fid))
    freq = np.fft.fftshift(np.fft.fftfreq(fid.size, DWELL_S))
    sel = np.abs(freq - nu0) <= half_width_hz
    return np.concatenate([spec[sel].real, spec[sel].imag])


def anchors(folder: Path = DEFAULT):
    """anchors.tsv as a DataFrame (dataset, metabolite, lcmodel_mM, fslmrs_mM, ...)."""
    import pandas as pd

    return pd.read_csv(folder / "anchors.tsv", sep="\t")


def concentration(amplitude: float, water_amplitude: float) -> float:
    """The challenge's water scaling (mM) of a fitted amplitude (per proton)."""
    return WATER_MM * METAB_RELAX * amplitude / (water_amplitude / 2.0)


#: LCModel's settings for the challenge as the anchors were made (README of the shared
#: folder: LCModel 6.3-1N, spline baseline, its own simulated lipid/MM extras and -CrCH2
#: (NSIMUL left at its default), the challenge's water scaling), and what was measured here
#: to reproduce them: the analysis window 0.2-4.2 ppm, the referencing shift limited to
#: +-0.1 ppm (SHIFMN/SHIFMX; else the Cr-only test spectrum is referenced with Cr on Cho),
#: the basis without Ace (the anchors have none), with its own names and written as it is
#: (it has its own 2 Hz linewidth: :data:`LCMODEL_CHALLENGE_BASIS`), the four combinations
#: the anchors list. The challenge's factor 1.206 is metabolite T2 attenuation,
#: 1 / exp(-30/160), so it goes to ATTMET, not ATTH2O: the concentrations are the same either
#: way, but LCModel scales its simulated lipid/MM components by the reference basis area over
#: ATTMET (LCModel.f, AREABA), so ATTMET = 1 made them 18-25 % larger than the anchors' and
#: moved dataset 25's metabolites (tCr +3.9 -> +4.0 %, but MM09-MM20 +18 % -> -2.6..-0.5 %).
LCMODEL_CHALLENGE = {"PPMST": 4.2, "PPMEND": 0.2, "WCONC": WATER_MM, "ATTH2O": 1.0,
                     "ATTMET": 1.0 / METAB_RELAX, "DOECC": False, "NEACH": 99, "NAMREL": "Cr+PCr",
                     "NCOMBI": 4, "CHCOMB(1)": "Cr+PCr", "CHCOMB(2)": "NAA+NAAG",
                     "CHCOMB(3)": "GPC+PCho", "CHCOMB(4)": "Glu+Gln",
                     "SHIFMN(1)": -0.1, "SHIFMX(1)": 0.1, "SHIFMN(2)": -0.1, "SHIFMX(2)": 0.1}
LCMODEL_CHALLENGE_BASIS = {"broaden": False}


def lcmodel_challenge(executable: str, workdir: Path, folder: Path = DEFAULT,
                      control: dict | None = None, basis_options: dict | None = None
                      ) -> dict[int, dict[str, float]]:
    """{dataset: {LCModel name: mM}} from LCModel with the challenge's basis and
    :data:`LCMODEL_CHALLENGE` (the anchors' ``lcmodel_mM`` names: Cr+PCr, NAA+NAAG, ...)."""
    from mrsflow.basis import Basis
    from mrsflow.fit import lcmodel

    b = challenge_basis(folder)
    back = {v: k for k, v in NAMES.items()}
    keep = [i for i, n in enumerate(b.names) if n != "Ace"]
    basis = Basis([back.get(b.names[i], b.names[i]) for i in keep],
                  np.array([b.fids[i] for i in keep]), b.dwell_s, b.f0_mhz, b.centre_ppm,
                  b.te_ms)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lcmodel.write_basis(workdir / "challenge.basis", basis,
                        **{**LCMODEL_CHALLENGE_BASIS, **(basis_options or {})})
    out = {}
    for n, (metab, water) in datasets(folder).items():
        lcmodel.write_raw(workdir / "metab.raw", metab)
        lcmodel.write_raw(workdir / "water.raw", water)
        settings = {**lcmodel.file_settings(DWELL_S, F0_MHZ, NPOINTS, "challenge.basis",
                                            coord=False, title=f"dataset {n}"),
                    **LCMODEL_CHALLENGE, **(control or {})}
        proc = lcmodel.run(executable, lcmodel.control(settings), workdir)
        table = workdir / "fit.table"
        if proc.returncode != 0 or not table.is_file():
            raise RuntimeError(f"LCModel failed on dataset {n}: {proc.stderr[-500:]}")
        out[n] = {k: v["conc"] for k, v in lcmodel.parse_table(table)["metabolites"].items()}
        table.unlink()
    return out
