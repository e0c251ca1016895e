"""Running a backend on files: one spectrum (:func:`run_fit`) or a participant's spectra
with its QC page (:func:`run_participant`); a backend failing on a spectrum makes that scan
not fitted, never a crash."""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from mrsflow import qc, qcpage
from mrsflow.basis import Basis, read_fsl_basis
from mrsflow.errors import BackendError, InputError
from mrsflow.fit import lcmodel
from mrsflow.fit.builtin import fit_spectrum
from mrsflow.fit.contract import _finite, not_fitted, read_nifti_mrs, write_result
from mrsflow.fit.fsl_mrs import _fsl_plot_arrays, run_fsl_mrs
from mrsflow.fit.plot import draw_fit, draw_message, plot_fit
from mrsflow.fit.water import fit_water


def backend_available(name: str, lcmodel_executable: str | None = None) -> bool:
    """'builtin' always; 'fsl_mrs' when the ``fsl_mrs`` executable is on PATH; 'lcmodel' when
    :func:`mrsflow.fit.lcmodel.find_executable` finds one (config path, $MRSFLOW_LCMODEL, PATH)."""
    if name == "builtin":
        return True
    if name == "fsl_mrs":
        return shutil.which("fsl_mrs") is not None
    if name == "lcmodel":
        return lcmodel.find_executable(lcmodel_executable) is not None
    return False


def resolve_backend(name: str, lcmodel_executable: str | None = None) -> str:
    """'auto' -> 'fsl_mrs' when available else 'builtin'; others checked ('auto' never picks
    LCModel: it is asked for by name)."""
    if name == "auto":
        return "fsl_mrs" if backend_available("fsl_mrs") else "builtin"
    if name not in ("builtin", "fsl_mrs", "lcmodel"):
        raise InputError(f"unknown fitting backend {name!r} (builtin, fsl_mrs, lcmodel, auto)")
    if not backend_available(name, lcmodel_executable):
        where = ("no LCModel executable: set fitting.lcmodel.executable or $"
                 f"{lcmodel.ENV_VAR}, or put lcmodel on PATH (README, LCModel)"
                 if name == "lcmodel" else "fsl_mrs not on PATH")
        raise InputError(f"fitting backend {name!r} is not available ({where})")
    return name


def _run_lcmodel(fid, dwell, f0, basis, water_nii, out_json, out_tsv, p: dict,
                 centre: float):
    """:func:`_run_fit` with LCModel (mrsflow.fit.lcmodel): its files in ``<json stem>_lcmodel/``
    beside the fit JSON; LCModel failing on this spectrum makes it a scan that was not fitted
    (excluded with LCModel's message), never a crash of the run."""
    lcm = p.get("lcmodel") or {}
    water, wfid = None, None
    if water_nii is not None:
        wfid, wdwell, wf0, _ = read_nifti_mrs(water_nii)
        water = fit_water(wfid, wdwell, wf0, ppm_range=tuple(p.get("water_ppm_range", (4.0, 5.3))),
                          centre_ppm=centre)
    workdir = Path(out_json).parent / f"{Path(out_json).name.removesuffix('.json')}_lcmodel"
    try:
        d, arrays = lcmodel.fit(
            fid, wfid, dwell, f0, basis, ppm_range=tuple(p.get("ppm_range", (0.2, 4.2))),
            executable=lcmodel.find_executable(lcm.get("executable")), workdir=workdir,
            water=water, control_values=lcm.get("control"), centre_ppm=centre)
    except (BackendError, InputError) as err:
        d, arrays = not_fitted(str(err), list(basis.names), backend="lcmodel"), None
    if p.get("protocol"):
        d.setdefault("extra", {})["protocol"] = p["protocol"]
    return write_result(d, out_json, out_tsv), arrays


def run_fit(
    metab_nii,
    water_nii,
    basis_dir,
    out_json,
    out_tsv,
    out_png,
    *,
    backend: str = "builtin",
    params: dict | None = None,
    tissue_json=None,
) -> dict:
    """Fit one NIfTI-MRS spectrum (+ water reference) and write JSON, TSV and (if
    ``out_png`` is given) PNG.

    ``params`` (all optional): ppm_range, baseline (or baseline_order), groups, ignore,
    noise_regions, max_shift_hz, water_ppm_range, te_ms, tr_ms (fsl_mrs), and any
    :func:`build_fsl_mrs_command` option. Returns the contract dict as written.
    """
    d, plottable = _run_fit(metab_nii, water_nii, basis_dir, out_json, out_tsv,
                            backend=backend, params=params, tissue_json=tissue_json)
    if out_png is not None and plottable is not None:
        plot_fit(plottable, out_png)
    return d


def run_participant(plan: list[dict], basis_dir, png, *, backend: str = "builtin",
                    params: dict | None = None) -> None:
    """The fit step of one participant: :func:`run_fit` for every scan of ``plan`` (dicts
    with metab, water, tissue, json, tsv, label and optionally qc, the preprocessing QC
    JSON) in one process (the basis set is read once), then the participant's spectra QC
    page: a row per scan with the fit (data, fit, baseline, residual), the processed water
    and, in the title, the preprocessing QC (SNR, linewidths) and the fit quality. A scan
    whose preprocessing found no usable data (QC ``usable`` false) is not fitted
    (:func:`not_fitted`)."""
    rows = []
    bases: dict[str, Basis] = {}  # read once per protocol's basis set
    for item in plan:
        name = item.get("label") or Path(item["metab"]).name
        item_basis = str(item.get("basis") or basis_dir)
        if item_basis not in bases:
            bases[item_basis] = read_fsl_basis(item_basis)
        basis = bases[item_basis]
        q = _read_json(item["qc"]) if item.get("qc") else None
        scan_params = dict(params or {})
        proto = item.get("protocol")
        if proto:  # the scan's own TE/TR (FSL-MRS takes them; recorded in the fit JSON)
            scan_params.update(te_ms=proto["te_ms"], tr_ms=proto["tr_ms"], protocol=proto)
        if q is not None and q.get("usable") is False:
            reason = "; ".join(q["sanity"]["exclude"])
            res = not_fitted(reason, list(basis.names), backend=backend)
            if proto:
                res["extra"]["protocol"] = proto
            d = write_result(res, item["json"], item["tsv"])
            print(f"not fitted {item['metab']}: {reason}", flush=True)
            rows.append(functools.partial(draw_message, title=qcpage.qc_title(name, q),
                                          text=f"not fitted: {reason}"))
            continue
        t0 = time.perf_counter()
        d, plottable = _run_fit(item["metab"], item["water"], item_basis, item["json"],
                                item["tsv"], backend=backend, params=scan_params,
                                tissue_json=item["tissue"], basis=basis)
        print(f"fitted {item['metab']} in {time.perf_counter() - t0:.3f} s: {d['message']}",
              flush=True)
        if png is None:
            continue
        fq = "n/a" if d["fit_quality"] is None else f"{d['fit_quality']:.2f}"
        title = f"{name}: {d['backend']} fit quality {fq}"
        if q is not None:
            title = f"{qcpage.qc_title(name, q)}; {title.split(': ', 1)[1]}"
        water = read_nifti_mrs(item["water"])[:3] if item.get("water") else None
        if plottable is None:  # the backend failed on it: excluded with its message
            rows.append(functools.partial(draw_message, title=title, text=d["message"]))
        else:
            rows.append(functools.partial(draw_fit, result=plottable, title=title, water=water))
    if png is not None:
        qcpage.save_rows(png, rows, width_in=9.0, row_height_in=3.0)


def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the QC JSON ({err})") from err


def _run_fit(metab_nii, water_nii, basis_dir, out_json, out_tsv, *, backend, params,
             tissue_json, basis: Basis | None = None):
    """Fit and write JSON + TSV; returns (contract dict, what to plot: the FitResult or,
    for FSL-MRS, a dict of arrays rebuilt from its outputs). ``basis``: the basis set of
    ``basis_dir`` if already read."""
    p = dict(params or {})
    lcm = p.get("lcmodel") or {}
    backend = resolve_backend(backend, lcm.get("executable"))
    fid, dwell, f0, hdr = read_nifti_mrs(metab_nii)
    basis = read_fsl_basis(basis_dir) if basis is None else basis
    centre = float(p.get("centre_ppm", 4.65))
    if backend == "lcmodel":
        return _run_lcmodel(fid, dwell, f0, basis, water_nii, out_json, out_tsv, p, centre)
    if backend == "fsl_mrs":
        te = p.get("te_ms", basis.te_ms if math.isfinite(basis.te_ms) else None)
        tr = p.get("tr_ms")
        out_dir = Path(out_json).parent / f"{Path(out_json).stem}_fsl_mrs"
        try:
            d = run_fsl_mrs(
                metab_nii,
                water_nii,
                basis_dir,
                out_dir,
                te_ms=te,
                tr_ms=tr,
                tissue_json=tissue_json,
                params=p,
            )
        except BackendError as err:  # that scan is excluded with FSL-MRS's message
            d = not_fitted(str(err), list(basis.names), backend="fsl_mrs")
            if p.get("protocol"):
                d["extra"]["protocol"] = p["protocol"]
            return write_result(d, out_json, out_tsv), None
        if p.get("protocol"):
            d.setdefault("extra", {})["protocol"] = p["protocol"]
        arrays = _fsl_plot_arrays(out_dir, fid, dwell, f0, centre, d)
        curves = all(np.all(np.isfinite(arrays[key])) for key in ("fit", "baseline"))
        if _finite(d.get("noise_sd")) and curves:
            d.setdefault("extra", {})["fit_qc"] = qc.fit_qc(
                arrays["ppm"], arrays["data"], arrays["fit"], arrays["baseline"],
                float(d["noise_sd"]))
        d = write_result(d, out_json, out_tsv)
        return d, arrays
    res = fit_spectrum(
        fid,
        dwell,
        f0,
        basis,
        ppm_range=tuple(p.get("ppm_range", (0.2, 4.2))),
        baseline_order=p.get("baseline", p.get("baseline_order", 2)),
        groups=p.get("groups"),
        centre_ppm=centre,
        ignore=p.get("ignore"),
        noise_regions=p.get("noise_regions"),
        max_shift_hz=float(p.get("max_shift_hz", 30.0)),
    )
    if water_nii is not None:
        wfid, wdwell, wf0, _ = read_nifti_mrs(water_nii)
        res.water = fit_water(
            wfid,
            wdwell,
            wf0,
            ppm_range=tuple(p.get("water_ppm_range", (4.0, 5.3))),
            centre_ppm=centre,
        )
    if p.get("protocol"):
        res.extra["protocol"] = p["protocol"]
    # does the model leave only noise? (mrsflow.qc.fit_qc; the QC rules read it)
    res.extra["fit_qc"] = qc.fit_qc(res.ppm, res.data, res.fit, res.baseline_spec,
                                    res.noise_sd)
    res.extra["inputs"] = {
        "metab": str(metab_nii),
        "water": None if water_nii is None else str(water_nii),
        "basis": str(basis_dir),
        "tissue_json": None if tissue_json is None else str(tissue_json),
    }
    d = write_result(res, out_json, out_tsv)
    return d, res
