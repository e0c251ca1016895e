"""A measured macromolecule (MM) spectrum as one basis entry.

Short-TE spectra sit on a broad macromolecule background whose shape a handful of
parametrised Gaussians does not reproduce (README, Accuracy); the consensus recommendation
is to measure it (Cudalbu et al. 2021, NMR Biomed 34:e4393): a metabolite-nulled acquisition
(inversion recovery with the inversion time at the metabolites' null, e.g. TI 600 ms at
TR 2 s at 3 T) of the study's protocol, or an MM spectrum measured elsewhere for it. Either
is given per protocol in the config (``mm: {scans: [...]}`` or ``mm: {file: ...}``) and
replaces the parametrised MM entries (``MMxx``) of that protocol's basis by one entry, ``MM``
(the lipid entries stay).

Processing a metabolite-nulled scan (:func:`process_mm_scans`): conversion as for every scan
(spec2nii, or a NIfTI-MRS file as it is); preprocessing as for a water-suppressed scan with
its water reference (alignment, averaging, eddy-current correction and frequency
referencing on the water) but without the NAA referencing and phasing (an MM spectrum has no
NAA line); several scans are averaged. Cleaning (:func:`clean_mm`): the residual metabolite
singlets of an imperfect null and the noise are removed by keeping only the broad
components of an HLSVD decomposition (FWHM >= ``min_fwhm_hz``, 8 Hz by default) between 0.5
and 4.2 ppm, and the spectrum is rebuilt from them: a noiseless MM basis spectrum. MM lines
are 20-60 Hz wide at 3 T (Landheer et al. 2020, MRM 84:2327), but HLSVD represents a line
that is not Lorentzian by several components, some narrower and of other sign, so the
threshold sits below the MM widths: at 15 Hz the ISMRM 2016 challenge's measured MM lost its
structure (own metabolites fitted with it: 0-3 of 12 datasets inside the anchors; at 8 Hz 10
of 12) and Osprey's TI 600 ms scan its 3.9 ppm peak's shape (a broad positive and a narrower
negative component; fit quality of the TE 30 spectrum 2.7 at 15 Hz, 2.6 at 8); the twin's
recovery is the same with either (Glu r 0.900, bias +1.3/+1.8 %). Residual singlets of
4-6 Hz go (tests/test_mm.py).

The cleaned spectrum is scaled to FID(0) = 1: real and positive, which phases it (zero
order). Every basis spectrum starts in phase at t = 0 (the fit applies one phase to
metabolites and MM alike), and a sum of absorption lines has a real, positive FID(0); an MM
spectrum out of phase with the metabolites makes the fit give it no amplitude or distorts
the metabolites. The metabolite-nulled scan is not phased on NAA (it has none) and its eddy-
current correction on the water reference need not leave it in phase: Osprey's Philips TI
600 ms scan comes out at 84 degrees (with it unphased the TE 30 fit gave the MM no
amplitude; phased, the MM takes its part and the fit quality goes from 3.1 to 2.7); the
twin's and the ISMRM 2016 challenge's measured MM are within 1 degree of it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mrsflow.errors import InputError
from mrsflow.qc import CENTRE_PPM

MM_NAME = "MM"
MIN_FWHM_HZ = 8.0
PPM_RANGE = (0.5, 4.2)
N_COMPONENTS = 60
N_POINTS = 1024


def clean_mm(fid: np.ndarray, dwell_s: float, f0_mhz: float, *,
             min_fwhm_hz: float = MIN_FWHM_HZ, ppm_range=PPM_RANGE,
             n_components: int = N_COMPONENTS, n_points: int = N_POINTS,
             centre_ppm: float = CENTRE_PPM) -> tuple[np.ndarray, dict]:
    """The MM spectrum rebuilt from the broad HLSVD components of ``fid`` inside
    ``ppm_range``, phased and scaled to FID(0) = 1 (module docstring); returns (FID on the
    input's time axis, info)."""
    from mrsflow.preprocess import hlsvd, hlsvd_model, time_axis

    x = np.asarray(fid, dtype=complex).ravel()
    comp = hlsvd(x, dwell_s, n_components=n_components, n_points=min(n_points, x.size))
    ppm = centre_ppm + comp["freq_hz"] / f0_mhz
    fwhm = comp["damping_hz"] / np.pi
    keep = ((ppm >= min(ppm_range)) & (ppm <= max(ppm_range)) & (comp["damping_hz"] > 0)
            & (fwhm >= min_fwhm_hz))
    mm = hlsvd_model(comp, keep, time_axis(x.size, dwell_s))
    if not keep.any() or not abs(mm[0]) > 0:
        raise InputError("no broad (macromolecule) signal between "
                         f"{min(ppm_range)} and {max(ppm_range)} ppm in the MM spectrum")
    narrow = (ppm >= min(ppm_range)) & (ppm <= max(ppm_range)) & ~keep
    info = {
        "method": "HLSVD (Kung state space): the broad components kept, the spectrum rebuilt",
        "n_components": int(len(comp["poles"])),
        "kept": int(keep.sum()),
        "kept_ppm": np.round(np.sort(ppm[keep]), 3).tolist(),
        "removed_narrow_ppm": np.round(np.sort(ppm[narrow]), 3).tolist(),
        "min_fwhm_hz": min_fwhm_hz,
        "ppm_range": [float(min(ppm_range)), float(max(ppm_range))],
        "phase_correction_deg": float(-np.degrees(np.angle(mm[0]))),
    }
    return mm / mm[0], info


def _read_fid(path: Path) -> tuple[np.ndarray, float, float]:
    from mrsflow import nmrs

    data, ext, _, dwell, _ = nmrs.read(path)
    x = np.asarray(data)[0, 0, 0]
    if x.ndim > 1:  # average any higher dimension (transients)
        x = x.reshape(x.shape[0], -1).mean(axis=1)
    return x, float(dwell), float(ext["SpectrometerFrequency"][0])


def process_mm_scans(scans: list[Mapping], params: Mapping | None = None
                     ) -> tuple[np.ndarray, float, float, dict]:
    """Metabolite-nulled scans ({'mrs', 'water', 'acq'} raw files) -> the averaged,
    preprocessed MM FID, dwell (s), f0 (MHz) and what was done."""
    from mrsflow import convert, preprocess

    p = {**(params or {}), "naa_reference": False, "mirrored": "correct", "plot": False}
    fids, dwell, f0, notes = [], None, None, []
    with tempfile.TemporaryDirectory(prefix="mrsflow-mm-") as tmp:
        for i, scan in enumerate(scans):
            acq = scan.get("acq", "ws")
            nii = convert.convert_spectrum(scan["mrs"], Path(tmp, f"mm{i}_svs.nii.gz"), acq=acq)
            water = None
            if scan.get("water"):
                water = convert.convert_spectrum(scan["water"], Path(tmp, f"mm{i}_ref.nii.gz"),
                                                 acq="ws")
            mode = "mc" if acq == "mc" else "classic"
            if mode == "classic" and water is None:
                raise InputError(f"{scan['mrs']}: a water-suppressed metabolite-nulled scan needs "
                                 "its water reference (mm scans: water)")
            rows, wrows, dw, ff0, *_ = preprocess.read_inputs(nii, water, mode)
            res = preprocess.process_scan(rows, wrows, dw, ff0, mode, p)
            if res.qc.get("usable") is False:
                raise InputError(f"{scan['mrs']}: no usable data in the metabolite-nulled scan "
                                 f"({'; '.join(res.qc['sanity']['exclude'])})")
            if dwell is not None and (abs(dw - dwell) > 1e-12 or res.metab.size != fids[0].size):
                raise InputError(f"{scan['mrs']}: the metabolite-nulled scans of one protocol "
                                 "differ in dwell time or number of points")
            fids.append(res.metab)
            dwell, f0 = dw, ff0
            notes += res.qc["sanity"].get("notes", [])
    return np.mean(fids, axis=0), dwell, f0, {"scans": len(fids), "notes": notes}


def write_mm(out_nii: Path, fid: np.ndarray, dwell_s: float, f0_mhz: float, info: dict,
             png: Path | None = None, raw: np.ndarray | None = None) -> None:
    """The cleaned MM FID as NIfTI-MRS (+ its JSON of what was done, + a picture)."""
    from mrsflow import nmrs, qc, qcpage

    out_nii = Path(out_nii)
    out_nii.parent.mkdir(parents=True, exist_ok=True)
    nmrs.write(out_nii, fid.reshape(1, 1, 1, -1), dwell_s, f0_mhz)
    stem = out_nii.name.removesuffix(".nii.gz")
    (out_nii.parent / f"{stem}.json").write_text(json.dumps(info, indent=1) + "\n")
    if png is None:
        return

    def draw(fig):
        ax = fig.subplots()
        for x, label, colour in ((raw, "processed (metabolite-nulled)", "0.4"),
                                 (fid, "MM basis (broad components)", "tab:red")):
            if x is None:
                continue
            spec, ppm = qc.spectrum(x / abs(x[0]), dwell_s, f0_mhz, lb_hz=2.0)
            sel = (ppm >= 0.2) & (ppm <= 4.3)
            ax.plot(ppm[sel], spec.real[sel], lw=0.8, color=colour, label=label)
        ax.set_xlim(4.3, 0.2)
        ax.set_yticks([])
        ax.set_xlabel("chemical shift (ppm)")
        ax.legend(fontsize=8, frameon=False)
        ax.set_title("measured macromolecule spectrum", fontsize=9)

    qcpage.save_one(png, draw, width_in=8.0, height_in=3.2)


def run_mm(spec: Mapping, raw_dir: str | Path, out_nii: str | Path, png: str | Path,
           params: Mapping | None = None) -> None:
    """The ``mm`` block of one protocol -> the cleaned MM spectrum (NIfTI-MRS + JSON + PNG).
    ``file``: an MM spectrum already processed (cleaned here too); ``scans``: metabolite-nulled
    acquisitions (raw files relative to ``raw_dir``); ``min_fwhm_hz``: the narrowest HLSVD
    component kept (default :data:`MIN_FWHM_HZ`, module docstring)."""
    raw_dir = Path(raw_dir)
    if spec.get("file"):
        path = raw_dir / spec["file"]
        fid, dwell, f0 = _read_fid(path)
        source = {"file": str(path)}
    else:
        scans = [{**s, "mrs": raw_dir / s["mrs"],
                  "water": raw_dir / s["water"] if s.get("water") else None}
                 for s in spec["scans"]]
        fid, dwell, f0, source = process_mm_scans(scans, params)
    mm, info = clean_mm(fid, dwell, f0, min_fwhm_hz=float(spec.get("min_fwhm_hz", MIN_FWHM_HZ)))
    # the processed scan drawn with the cleaned spectrum's phase correction, for comparison
    raw = fid * np.exp(1j * np.radians(info["phase_correction_deg"]))
    write_mm(Path(out_nii), mm, dwell, f0, {**info, "source": source}, png=Path(png), raw=raw)
