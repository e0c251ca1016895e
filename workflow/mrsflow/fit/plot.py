"""Drawing a fit: data, fit, baseline and residual (the spectra QC page's rows)."""

from __future__ import annotations

import numpy as np

from mrsflow import qcpage
from mrsflow.fit.builtin import FitResult


def draw_fit(fig, result, title: str | None = None, *, water=None) -> None:
    """Data, fit, baseline and residual (real parts, phase-corrected) over the fit range,
    ppm axis reversed, drawn into ``fig`` (a matplotlib Figure or SubFigure). ``result``: a
    :class:`FitResult` or a dict with arrays ``ppm``, ``data``, ``fit``, ``baseline``.
    ``water``: (fid, dwell_s, f0_mhz) of the processed water reference, drawn in a narrow
    panel on the right (the workflow's spectra QC page)."""
    if isinstance(result, FitResult):
        ppm, data, fitc, base = result.ppm, result.data, result.fit, result.baseline_spec
        title = title or (
            f"{result.backend}: fit quality {result.fit_quality:.2f}, SNR {result.snr:.1f}"
        )
    else:
        ppm = np.asarray(result["ppm"])
        data = np.asarray(result["data"])
        fitc = np.asarray(result["fit"])
        base = np.asarray(result.get("baseline", np.zeros_like(data)))
    has_fit = bool(np.all(np.isfinite(fitc)))
    if water is None:
        ax = fig.subplots(1, 1, gridspec_kw={"left": 0.04, "right": 0.8, "bottom": 0.17,
                                             "top": 0.9})
    else:  # fit | legend | water
        ax = fig.add_axes((0.03, 0.17, 0.62, 0.73))
        qcpage.draw_water(fig.add_axes((0.82, 0.17, 0.16, 0.73)), *water)
    ax.plot(ppm, data.real, color="0.35", lw=0.8, label="data")
    if has_fit:
        res = data.real - fitc.real
        ax.plot(ppm, fitc.real, color="tab:red", lw=1.1, label="fit")
        ax.plot(ppm, np.real(base), color="tab:blue", lw=0.9, ls="--", label="baseline")
        offset = float(np.max(data.real)) - float(np.min(res))
        ax.plot(ppm, res + offset * 1.05, color="tab:green", lw=0.7, label="residual (offset)")
    ax.set_xlim(float(np.max(ppm)), float(np.min(ppm)))
    ax.set_xlabel("chemical shift (ppm)")
    ax.set_ylabel("signal (a.u.)")
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)


def plot_fit(result, png, title: str | None = None) -> None:
    """PNG of one fit (see :func:`draw_fit`)."""
    qcpage.save_one(png, lambda f: draw_fit(f, result, title), width_in=9.0, height_in=5.0)


def draw_message(fig, title: str, text: str) -> None:
    """A QC-page row with a message instead of a fit (a scan that was not fitted)."""
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="tab:red",
            wrap=True, transform=ax.transAxes)
