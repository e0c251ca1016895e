"""The paper's figures, drawn from the workflow's tables, model outputs and spectra.

- :func:`figure1`: (a) MRS voxel placement: overlap of all participants' voxels in MNI152
  space, (b) mean processed spectrum +/- SD of the baseline scans and a typical fit,
  (c) baseline Glu by group with the Welch test;
- :func:`figure2`: craving (VAS) by film and time, per group and, in CUD, per drug, with the
  cue-induced craving contrasts of the mixed models;
- :func:`figure3`: Glu during the neutral and the cocaine film, per group and, in CUD, per
  drug, with the film and drug contrasts of the mixed models.

Every function writes a vector PDF and a 300 dpi PNG and returns the numbers it drew
(``summary``: one row per plotted condition with n, mean, SD and the 95 % CI of the mean,
t-based: mean +/- t(0.975, n - 1) SD / sqrt(n)), so tests and readers can check the drawing
against the tables. Which model feeds which panel, and which rows of its table are printed,
is declared in the config's ``figures`` block (:data:`DEFAULT_PANELS`, the paper's choices).
The rows are selected with the *same* pandas filters as the models they illustrate (the
``stats`` block of the config; defaults below mirror config/config.yaml), so only QC-passing
scans are drawn; the model results are read from ``results/stats/<model>.tsv`` and never
recomputed here. A panel whose model is not among the config's models, or was skipped by the
stats step (not estimable with these data), or whose data are empty, still draws what it has
and says why the rest is missing (``status`` in the returned dict); Fig. 1a draws the voxels
of the scans with a T1 registration, and says so when there are none.

Style: matplotlib's object API with the Agg renderer (no pyplot state), 180 mm wide, DejaVu
Sans 7 pt, the Okabe-Ito colour-blind-safe palette (Okabe & Ito 2008, "Color Universal
Design"; as recommended by Wong 2011, Nat Methods 8:441), viridis for the overlap map.
Output is deterministic: fixed PDF/PNG metadata (no dates, no software string), jitter from
seeded generators; rerunning gives byte-identical files on the same software stack.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import stats as sps

from mrsflow.errors import InputError

# Okabe-Ito palette
OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "black": "#000000",
}
COLOURS = {
    "HC": OKABE_ITO["blue"],
    "CUD": OKABE_ITO["vermillion"],
    "placebo": OKABE_ITO["vermillion"],
    "nac": OKABE_ITO["bluish_green"],
}
DRUG_LABEL = {"placebo": "placebo", "nac": "NAC"}
MM = 1.0 / 25.4  # inches per mm
WIDTH_MM = 180.0
DPI = 300
RC = {
    "font.family": "DejaVu Sans",
    "font.size": 7.0,
    "axes.titlesize": 7.0,
    "axes.labelsize": 7.0,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "lines.linewidth": 1.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF
    "ps.fonttype": 42,
    "svg.hashsalt": "mrsflow",
    "path.simplify": False,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
PNG_METADATA = {"Software": None}

#: the paper's panels: which model of the ``stats`` config, and which rows of its table, each
#: panel draws (figure -> panel -> spec; config/config.yaml's ``figures`` block holds the same).
#: fig1.baseline: its filter picks the baseline scans of (b) and the Glu of (c), its ``section``
#: / ``term`` row is the test printed in (c); fig2/fig3.group and .drug: panels (a) and (b),
#: ``contrasts`` maps each level (group or drug) to the contrast printed above its data,
#: ``footer`` lists the contrasts printed below the panel.
DEFAULT_PANELS: dict[str, dict[str, dict]] = {
    "fig1": {"baseline": {"model": "baseline_glu_welch", "section": "test", "term": "CUD - HC"}},
    "fig2": {
        "group": {
            "model": "craving_group_film_time_lmm",
            "contrasts": {"HC": "cue_craving_HC", "CUD": "cue_craving_CUD"},
            "footer": [{"contrast": "group_x_film_x_time", "label": "CUD \u2212 HC in "
                        "cue-induced craving (group \u00d7 film \u00d7 time)"}],
        },
        "drug": {
            "model": "craving_drug_film_time_cud_lmm",
            "contrasts": {"placebo": "cue_craving_placebo", "nac": "cue_craving_nac"},
            "footer": [{"contrast": "drug_x_film_x_time", "label": "NAC \u2212 placebo in "
                        "cue-induced craving (drug \u00d7 film \u00d7 time)"}],
        },
    },
    "fig3": {
        "group": {
            "model": "glu_group_film_lmm",
            "contrasts": {"HC": "film_in_HC", "CUD": "film_in_CUD"},
            "footer": [{"contrast": "group_x_film", "label": "group \u00d7 film"},
                       {"contrast": "group_at_neutral", "label": "CUD \u2212 HC, neutral film"}],
        },
        "drug": {
            "model": "glu_drug_film_cud_lmm",
            "contrasts": {"placebo": "film_in_placebo", "nac": "film_in_nac"},
            "footer": [{"contrast": "nac_vs_placebo", "label": "NAC \u2212 placebo"},
                       {"contrast": "drug_x_film", "label": "drug \u00d7 film"}],
        },
    },
}
#: the filters of the paper's models, used when no stats config is given (as in
#: config/config.yaml)
DEFAULT_FILTERS = {
    "baseline_glu_welch": "metabolite == 'Glu' and film == 'neutral' and qc_pass "
    "and drug != 'nac'",
    "glu_group_film_lmm": "metabolite == 'Glu' and qc_pass and drug != 'nac'",
    "glu_drug_film_cud_lmm": "metabolite == 'Glu' and qc_pass and group == 'CUD'",
    "craving_group_film_time_lmm": "drug != 'nac'",
    "craving_drug_film_time_cud_lmm": "group == 'CUD'",
}
#: the section of the one row of a model the data could not estimate (mrsflow.stats.SKIPPED)
SKIPPED = "skipped"
FILMS = ("neutral", "cocaine")
TIMES = ("pre", "post")
GROUPS = ("HC", "CUD")
DRUGS = ("placebo", "nac")
KEY_RE = re.compile(r"(sub-[A-Za-z0-9]+)_(ses-[A-Za-z0-9]+)_task-([A-Za-z0-9]+)_")
PEAKS = (("NAA", 2.01), ("Glu", 2.35), ("tCr", 3.03), ("tCho", 3.21), ("mI", 3.56))


# ---------------------------------------------------------------------------------------
# data helpers


def scan_key(path) -> tuple[str, str, str]:
    """(participant, session, film) from a BIDS-like file name ``sub-X_ses-Y_task-Z_...``."""
    m = KEY_RE.search(Path(path).name)
    if m is None:
        raise InputError(f"{path}: cannot read participant/session/film from the file name")
    return m.group(1), m.group(2), m.group(3)


def _as_bool(s: pd.Series) -> pd.Series:
    if s.dtype == bool:
        return s
    return s.map(lambda v: str(v).strip().lower() in ("true", "1", "yes")).astype(bool)


def read_table(path) -> pd.DataFrame:
    """A tidy table of the workflow (TSV, 'NA' for missing), qc_pass as bool."""
    try:
        df = pd.read_csv(path, sep="\t", na_values=["NA"], keep_default_na=True)
    except (OSError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: cannot read table ({err})") from err
    if "qc_pass" in df:
        df["qc_pass"] = _as_bool(df["qc_pass"])
    return df


def select(df: pd.DataFrame, expr: str) -> pd.DataFrame:
    return df.query(expr) if expr else df


def read_model(stats_dir, name: str) -> pd.DataFrame:
    path = Path(stats_dir) / f"{name}.tsv"
    try:
        return pd.read_csv(path, sep="\t", na_values=["NA"], keep_default_na=False)
    except OSError as err:
        raise InputError(f"{path}: missing model table (did the stats rule run?)") from err


class PanelModel:
    """The model a panel draws (one panel spec of :data:`DEFAULT_PANELS` / config ``figures``):
    its data filter, its result table and, when its numbers cannot be drawn, why (``status``:
    no model configured, not among the stats config's models, skipped by the stats step).

    ``models`` is the config's ``stats`` block (None: the paper's filters,
    :data:`DEFAULT_FILTERS`); the table is read from ``<stats_dir>/<model>.tsv``.
    """

    def __init__(self, where: str, spec: Mapping | None, models: Mapping | None, stats_dir):
        self.where = where
        self.spec: dict = dict(spec or {})
        self.name: str | None = self.spec.get("model") or None
        self.filter: str | None = None  # None: the panel's rows are unknown (no data drawn)
        self.table: pd.DataFrame | None = None
        self.status: str | None = None
        if self.name is None:
            self.status = f"no model configured ({where})"
            return
        if models is None:
            self.filter = DEFAULT_FILTERS.get(self.name, "")
        else:
            spec_m = next((m for m in models.get("models", []) if m.get("name") == self.name),
                          None)
            if spec_m is None:
                self.status = f"{self.name}: not among the models of the config's stats block"
                return
            self.filter = spec_m.get("filter") or ""
        self.table = read_model(stats_dir, self.name)
        skipped = self.table[self.table["section"] == SKIPPED]
        if len(skipped):
            reason = str(skipped["note"].iloc[0]) or "not estimable with these data"
            self.status = f"{self.name}: skipped ({reason})"

    def data(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``df`` the model analyses (none when its filter is unknown)."""
        return df.iloc[:0] if self.filter is None else select(df, self.filter)

    def row(self, section: str, term: str | None) -> dict | None:
        """The table's row (section, term; the first of the section if term is None), or
        None when the model was not run, was skipped or has no such row."""
        if self.table is None or self.status is not None:
            return None
        rows = self.table[self.table["section"] == section]
        if term is not None:
            rows = rows[rows["term"].astype(str) == str(term)]
        return rows.iloc[0].to_dict() if len(rows) else None

    def why(self, section: str, term: str | None) -> str:
        """Why :meth:`row` gave None."""
        if self.status is not None:
            return self.status
        return f"{self.name}: no {section} row {term!r} in its table" if term else (
            f"{self.name}: no {section} row in its table")


def _wrap(text: str, width: int = 60) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=False))


def _message(ax, text: str, *, axis_off: bool = True, width: int = 60) -> None:
    """A panel's explanation of what it cannot draw, centred in the axes."""
    if axis_off:
        ax.set_axis_off()
    ax.text(0.5, 0.5, _wrap(text, width), transform=ax.transAxes, ha="center", va="center",
            fontsize=6.5, color="0.25")


def mean_ci(x) -> dict:
    """n, mean, SD and the t-based 95 % CI of the mean of x (NaN where undefined)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(np.mean(x)) if n else math.nan
    sd = float(np.std(x, ddof=1)) if n > 1 else math.nan
    half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "p = NA"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def fmt_num(x: float, digits: int = 2) -> str:
    return "NA" if not np.isfinite(x) else f"{x:.{digits}f}".replace("-", "\u2212")


def _n_label(ns: Sequence[int]) -> str:
    lo, hi = min(ns), max(ns)
    return f"n = {lo}" if lo == hi else f"n = {lo}\u2013{hi}"


# ---------------------------------------------------------------------------------------
# drawing helpers


def _rc():
    import matplotlib

    return matplotlib.rc_context(RC)


def _new_figure(height_mm: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH_MM * MM, height_mm * MM), layout="constrained")


def save(fig, out_pdf, out_png) -> None:
    """Vector PDF + 300 dpi PNG with fixed metadata (reruns are byte-identical)."""
    for path in (out_pdf, out_png):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_pdf, format="pdf", metadata=PDF_METADATA)
    fig.savefig(out_png, format="png", dpi=DPI, metadata=PNG_METADATA)



def _sf_label(sf, letter: str, text: str = "") -> None:
    """Panel letter (bold) and an optional heading as the subfigure's left-aligned title."""
    sf.suptitle(rf"$\mathbf{{{letter}}}$   {text}", x=0.0, ha="left", fontsize=7)


def _jitter(n: int, seed: int, width: float = 0.16) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) - 0.5) * 2.0 * width


def _mean_bar(ax, x, s: Mapping, colour: str, marker: str = "o", size: float = 4.0) -> None:
    if not np.isfinite(s["mean"]):
        return
    err = None
    if np.isfinite(s["ci_low"]):
        err = [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
    ax.errorbar([x], [s["mean"]], yerr=err, fmt=marker, color=colour, ms=size, mfc=colour,
                mec="white", mew=0.5, elinewidth=1.2, capsize=2.0, capthick=1.0, zorder=5)


def _paired(ax, data: pd.DataFrame, value: str, cond: str, levels: Sequence, xs: Sequence,
            colour: str, id_cols: Sequence[str] = ("participant_id",)) -> list[dict]:
    """Individual lines across ``levels`` of ``cond`` (light) and means +/- 95 % CI (bold,
    connected). Returns one summary dict per level."""
    wide = data.pivot_table(index=list(id_cols), columns=cond, values=value, aggfunc="mean",
                            observed=True)
    wide = wide.reindex(columns=list(levels))
    for _, row in wide.iterrows():
        y = row.to_numpy(float)
        ok = np.isfinite(y)
        if ok.sum() >= 2:
            ax.plot(np.asarray(xs)[ok], y[ok], color=colour, alpha=0.25, lw=0.6, zorder=2)
        elif ok.sum() == 1:  # the other condition failed QC: a lone point
            ax.plot(np.asarray(xs)[ok], y[ok], "o", color=colour, alpha=0.35, ms=1.8, zorder=2)
    out = []
    means = []
    for lvl, x in zip(levels, xs, strict=True):
        s = mean_ci(wide[lvl].to_numpy(float))
        _mean_bar(ax, x, s, colour)
        means.append(s["mean"])
        out.append({cond: lvl, **s})
    ax.plot(xs, means, color=colour, lw=1.6, zorder=4)
    return out


def _set_cond_axis(ax, xs, ticklabels, groups: Sequence[tuple[float, str]]) -> None:
    ax.set_xticks(list(xs))
    ax.set_xticklabels(ticklabels)
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    for x, text in groups:
        ax.text(x, -0.13, text, transform=ax.get_xaxis_transform(), ha="center", va="top")


# ---------------------------------------------------------------------------------------
# Figure 1


def voxel_overlap(voxels: Sequence[tuple[str, str]], passing: set | None = None,
                  supersample: int = 2) -> dict:
    """Fraction of participants whose MRS voxel covers each point of the 1 mm MNI152 grid.

    ``voxels``: (registration JSON, MRS NIfTI) per scan; the voxel is the box of index
    coordinates [-0.5, 0.5]^3 of the NIfTI-MRS affine. Each template voxel is split into
    ``supersample``^3 points, mapped MNI -> subject world (inverse registration) -> MRS voxel
    index, so the map holds covered fractions. A participant with several scans contributes
    the mean of their scans' maps (weight 1 per participant). Scans not in ``passing`` (a set
    of (participant, session, film)) are skipped.
    """
    from mrsflow import register

    tpl = register.mni_template()
    shape = tpl.mask.shape
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    per_participant: dict[str, list] = {}
    centres = []
    for xfm, mrs in voxels:
        key = scan_key(mrs)
        if passing is not None and key not in passing:
            continue
        to_mni = register.read_matrix(xfm)
        try:
            vox_aff = nib.load(str(mrs)).affine
        except Exception as err:  # nibabel raises several types
            raise InputError(f"{mrs}: cannot read NIfTI-MRS header ({err})") from err
        corners = np.array(np.meshgrid(*[[-0.5, 0.5]] * 3, indexing="ij")).reshape(3, -1).T
        world = corners @ vox_aff[:3, :3].T + vox_aff[:3, 3]
        mni = register.apply(to_mni, world)
        centres.append(register.apply(to_mni, vox_aff[:3, 3][None])[0])
        ijk = register.apply(np.linalg.inv(tpl.affine), mni)
        lo = np.clip(np.floor(ijk.min(0)).astype(int) - 1, 0, shape)
        hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 2, 0, shape)
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                                    indexing="ij"), -1)
        pts = grid.reshape(-1, 1, 3) + offs[None]  # (voxels, sub-points, 3) template index
        mni_pts = register.apply(tpl.affine, pts.reshape(-1, 3))
        m = np.linalg.inv(vox_aff) @ np.linalg.inv(to_mni)  # MNI -> MRS voxel index
        idx = register.apply(m, mni_pts)
        inside = np.all(np.abs(idx) <= 0.5, axis=1).reshape(len(grid.reshape(-1, 3)), -1)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        cover = inside.mean(1).reshape(grid.shape[:3]).astype(np.float32)
        per_participant.setdefault(key[0], []).append((box, cover))  # small boxes only
    if not per_participant:
        raise InputError("no QC-passing MRS voxel to draw")
    total = np.zeros(shape, np.float32)
    for pid in sorted(per_participant):
        for box, cover in per_participant[pid]:
            total[box] += cover / np.float32(len(per_participant[pid]))
    frac = total / len(per_participant)
    w = frac.sum()
    com_ijk = np.array([(np.arange(n)[tuple(slice(None) if a == ax else None for a in range(3))]
                         * frac).sum() / w for ax, n in enumerate(shape)])
    com = register.apply(tpl.affine, com_ijk[None])[0]
    return {
        "fraction": frac,
        "affine": tpl.affine,
        "template": tpl.data,
        "n_participants": len(per_participant),
        "n_scans": int(sum(len(v) for v in per_participant.values())),
        "participants": sorted(per_participant),
        "com_mni": com,
        "centres_mni": np.asarray(centres),
        "peak_fraction": float(frac.max()),
    }


def _draw_overlap(sf, ov: dict, half_mm: float = 45.0):
    """Three orthogonal slices through the overlap's centre of mass (+/- half_mm around
    it) in the subfigure ``sf``, and a colour bar."""
    from matplotlib import colormaps

    aff = ov["affine"]
    inv = np.linalg.inv(aff)
    ijk = np.rint(inv[:3, :3] @ ov["com_mni"] + inv[:3, 3]).astype(int)
    com = aff[:3, :3] @ ijk + aff[:3, 3]  # the slice positions actually drawn
    vox = np.diag(aff)[:3]
    org = aff[:3, 3]
    planes = [
        (0, (1, 2), ("y (mm)", "z (mm)"), f"sagittal, x = {fmt_num(com[0], 0)} mm", ("P", "A")),
        (1, (0, 2), ("x (mm)", "z (mm)"), f"coronal, y = {fmt_num(com[1], 0)} mm", ("L", "R")),
        (2, (0, 1), ("x (mm)", "y (mm)"), f"axial, z = {fmt_num(com[2], 0)} mm", ("L", "R")),
    ]
    axes = sf.subplots(1, 3)
    im = None
    for ax, (fixed, (h, v), labels, title, sides) in zip(axes, planes, strict=True):
        sl = [slice(None)] * 3
        sl[fixed] = ijk[fixed]
        t = ov["template"][tuple(sl)].T  # rows: the vertical axis
        f = ov["fraction"][tuple(sl)].T
        ext = [org[h] - vox[h] / 2, org[h] + vox[h] * (t.shape[1] - 0.5),
               org[v] - vox[v] / 2, org[v] + vox[v] * (t.shape[0] - 0.5)]
        ax.imshow(t, cmap="gray", origin="lower", extent=ext, vmin=0, vmax=1,
                  interpolation="nearest")
        im = ax.imshow(np.ma.masked_less(f * 100.0, 0.5), cmap=colormaps["viridis"],
                       origin="lower", extent=ext, vmin=0, vmax=100, interpolation="nearest")
        ax.set_xlim(com[h] - half_mm, com[h] + half_mm)
        ax.set_ylim(com[v] - half_mm, com[v] + half_mm)
        ax.set_aspect("equal")
        ax.set_xlabel(labels[0], labelpad=1)
        ax.set_ylabel(labels[1], labelpad=0)
        ax.set_title(title, pad=2)
        for side, (xa, ha) in zip(sides, ((0.04, "left"), (0.96, "right")), strict=True):
            ax.text(xa, 0.96, side, transform=ax.transAxes, color="white", ha=ha, va="top",
                    fontsize=7, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_visible(True)
    cb = sf.colorbar(im, ax=list(axes), shrink=0.9, aspect=15, pad=0.02)
    cb.set_label("voxel overlap (% of participants)")
    cb.outline.set_linewidth(0.5)
    return axes


def _scan_spectrum(nii, fit: Mapping, grid_ppm: np.ndarray) -> np.ndarray:
    """Real part of a processed spectrum, corrected with the fit's zero- and first-order
    phase and its metabolite frequency shift, divided by the fitted water amplitude,
    interpolated onto ``grid_ppm``."""
    from mrsflow import nmrs

    data, hdr, _, dwell, _ = nmrs.read(nii)
    fid = np.asarray(data).reshape(data.shape[3] if data.ndim >= 4 else data.shape[-1], -1)
    fid = fid.mean(axis=1)
    f0 = float(np.atleast_1d(hdr.get("SpectrometerFrequency", [fit.get("f0_mhz")]))[0])
    centre = float(fit.get("centre_ppm") or 4.65)
    n = fid.size
    nu = np.fft.fftshift(np.fft.fftfreq(n, dwell))
    tau = float(fit.get("phi1_deg_per_ppm") or 0.0) / (360.0 * f0)  # s
    phi0 = math.radians(float(fit.get("phi0_deg") or 0.0))
    groups = fit.get("groups") or {}
    shift = float(next(iter(groups.values()))["shift_hz"]) if groups else 0.0
    spec = np.fft.fftshift(np.fft.fft(fid)) * np.exp(-1j * (phi0 + 2 * np.pi * nu * tau))
    # frequency referencing: undo the fitted shift (the spectrum at nu + shift goes to nu)
    spec = np.interp(nu + shift, nu, spec.real)
    water = fit.get("water_amplitude")
    if not water or not np.isfinite(water) or water <= 0:
        raise InputError(f"{nii}: its fit has no water amplitude to scale by")
    ppm = centre + nu / f0
    return np.interp(grid_ppm, ppm, spec / float(water))


def _typical_fit(nii, fit: Mapping, basis_dir, fitting: Mapping):
    """Refit the scan with the builtin fitter to draw its model (same settings and basis set
    as its fit); returns ppm, data, fit, baseline (real parts, divided by the water
    amplitude)."""
    from mrsflow import fit as fitmod
    from mrsflow.basis import read_fsl_basis

    fid, dwell, f0, _ = fitmod.read_nifti_mrs(nii)
    # the basis set the scan was fitted with (its protocol's), as its fit JSON records it
    own = ((fit.get("extra") or {}).get("inputs") or {}).get("basis")
    if own and Path(own).is_dir():
        basis_dir = own
    res = fitmod.fit_spectrum(
        fid, dwell, f0, read_fsl_basis(basis_dir),
        ppm_range=tuple(fitting.get("ppm_range", (0.2, 4.2))),
        baseline_order=fitting.get("baseline", fitting.get("baseline_order", 2)),
        groups=fitting.get("groups"),
        centre_ppm=float(fitting.get("centre_ppm", 4.65)),
        ignore=fitting.get("ignore"),
    )
    w = float(fit["water_amplitude"])
    order = np.argsort(res.ppm)
    return {
        "ppm": res.ppm[order],
        "data": res.data.real[order] / w,
        "fit": res.fit.real[order] / w,
        "baseline": np.real(res.baseline_spec)[order] / w,
        "fit_quality": float(res.fit_quality),
    }


def figure1(
    metabolites,
    stats_dir,
    voxels: Sequence[tuple[str, str]],
    spectra: Sequence[str],
    fits: Sequence[str],
    basis_dir,
    out_pdf,
    out_png,
    *,
    models: Mapping | None = None,
    fitting: Mapping | None = None,
    panels: Mapping | None = None,
) -> dict:
    """Figure 1: voxel overlap in MNI space, mean baseline spectrum and a typical fit,
    baseline Glu by group. Returns the plotted numbers (see the module docstring) and, per
    panel that could not draw everything, why (``status``).

    ``voxels`` may cover some scans or none (a scan without a T1 has no T1 -> MNI
    registration); ``panels`` is the config's ``figures.fig1`` (default
    :data:`DEFAULT_PANELS`)."""
    table = read_table(metabolites)
    fitting = dict(fitting or {})
    panels = DEFAULT_PANELS["fig1"] if panels is None else panels
    pm = PanelModel("figures.fig1.baseline", panels.get("baseline"), models, stats_dir)
    status: dict[str, str] = {}
    keys = ["participant_id", "session", "film"]
    passing = set(map(tuple, table.loc[table["qc_pass"], keys].drop_duplicates().to_numpy()))
    ov = None
    if not voxels:
        status["a"] = "no T1: no voxel placement"
    elif not any(scan_key(mrs) in passing for _, mrs in voxels):
        status["a"] = (f"no voxel placement: none of the {len(voxels)} scan(s) with a T1 "
                       "passed QC")
    else:
        ov = voxel_overlap(voxels, passing)

    # (b) baseline scans: those of the baseline Glu model (neutral film, CUD placebo + HC)
    base = pm.data(table)
    base_keys = set(map(tuple, base[keys].to_numpy()))
    fit_by_key = {scan_key(p): p for p in fits}
    spec_by_key = {scan_key(p): p for p in spectra}
    chosen = sorted(k for k in base_keys if k in fit_by_key and k in spec_by_key)
    lo, hi = sorted(fitting.get("ppm_range", (0.2, 4.2)))
    grid = np.linspace(lo, hi, 801)
    specs, typical, tfit = np.zeros((0, grid.size)), None, None
    if chosen:
        fit_json = {k: json.loads(Path(fit_by_key[k]).read_text()) for k in chosen}
        specs = np.array([_scan_spectrum(spec_by_key[k], fit_json[k], grid) for k in chosen])
        quality = np.array([float(fit_json[k].get("fit_quality") or np.nan) for k in chosen])
        order = np.argsort(np.where(np.isfinite(quality), quality, np.inf), kind="stable")
        typical = chosen[int(order[(np.isfinite(quality).sum() - 1) // 2])]
        tfit = _typical_fit(spec_by_key[typical], fit_json[typical], basis_dir, fitting)
    elif pm.filter is None:
        status["b"] = f"no baseline scans: {pm.status}"
    else:
        status["b"] = (f"no processed spectrum and fit of a baseline scan (the scans of "
                       f"{pm.name}: {len(base_keys)})")
    group_of = base.drop_duplicates("participant_id").set_index("participant_id")["group"]
    n_by_group = {g: sum(group_of.get(k[0]) == g for k in chosen) for g in GROUPS}

    # (c) baseline Glu by group and the test of the configured row
    section = pm.spec.get("section", "test")
    test = pm.row(section, pm.spec.get("term"))
    if test is None:
        status["c"] = pm.why(section, pm.spec.get("term"))
    elif base.empty:
        status["c"] = f"no data: the filter of {pm.name} selects no scan"
    glu_rows = []

    with _rc():
        fig = _new_figure(170.0)
        sf_a, sf_bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.3], hspace=0.02)
        if ov is not None:
            _draw_overlap(sf_a, ov)
            n_by_g = {g: sum(_group_in(table, p) == g for p in ov["participants"])
                      for g in GROUPS}
            sf_a.suptitle(
                r"$\mathbf{a}$   "
                f"MRS voxel placement in MNI152 space: {ov['n_participants']} participant"
                f"{'s' * (ov['n_participants'] != 1)} (HC {n_by_g['HC']}, CUD {n_by_g['CUD']}), "
                f"{ov['n_scans']} QC-passing scan{'s' * (ov['n_scans'] != 1)}; "
                f"centre of mass ({', '.join(fmt_num(v, 1) for v in ov['com_mni'])}) mm",
                x=0.0, ha="left", fontsize=7)
        else:
            _message(sf_a.subplots(), status["a"])
            sf_a.suptitle(r"$\mathbf{a}$   MRS voxel placement in MNI152 space", x=0.0,
                          ha="left", fontsize=7)

        sf_b, sf_c = sf_bottom.subfigures(1, 2, width_ratios=[1.8, 1.0], wspace=0.02)
        if tfit is not None:
            ax_m, ax_f = sf_b.subplots(2, 1, sharex=True, height_ratios=[1.0, 1.3])
        else:
            ax_b = sf_b.subplots()
        _sf_label(sf_b, "b")
        _sf_label(sf_c, "c")
        scale = 1e3
        if tfit is not None:
            _draw_spectra(ax_m, ax_f, specs, grid, tfit, scale, typical, n_by_group, (lo, hi))
        else:
            _message(ax_b, status["b"])

        ax_c = sf_c.subplots()
        for i, g in enumerate(GROUPS):
            vals = base.loc[base["group"] == g, "conc_molal"].to_numpy(float)
            xj = i + _jitter(len(vals), seed=100 + i)
            ax_c.plot(xj - 0.12, vals, "o", color=COLOURS[g], alpha=0.55, ms=2.6, mew=0,
                      zorder=3)
            s = mean_ci(vals)
            _mean_bar(ax_c, i + 0.28, s, COLOURS[g], size=4.5)
            glu_rows.append({"group": g, **s})
        ax_c.set_xticks(range(len(GROUPS)))
        ax_c.set_xticklabels([f"{g}\n(n = {r['n']})" for g, r in zip(GROUPS, glu_rows,
                                                                    strict=True)])
        ax_c.set_xlim(-0.6, len(GROUPS) - 0.4)
        ax_c.set_ylabel("baseline Glu (mmol/kg)")
        allv = np.r_[base["conc_molal"].to_numpy(float),
                     [r[k] for r in glu_rows for k in ("ci_low", "ci_high")]]
        _ylim(ax_c, allv, head=0.5)
        if test is not None:
            ax_c.text(0.5, 0.98, _test_text(test), transform=ax_c.transAxes, ha="center",
                      va="top", fontsize=6.3)
        if "c" in status:
            ax_c.text(0.5, 0.98, _wrap(status["c"], 36), transform=ax_c.transAxes,
                      ha="center", va="top", fontsize=6.3, color="0.25")
        ax_c.set_title("mean \u00b1 95 % CI; points: participants", pad=2)
        save(fig, out_pdf, out_png)

    keep = ("term", "estimate", "ci_low", "ci_high", "statistic", "df", "p", "effect_size")
    return {
        "glu": pd.DataFrame(glu_rows),
        "welch": None if test is None else {k: test[k] for k in keep},
        "overlap": None if ov is None else {
            k: ov[k] for k in ("n_participants", "n_scans", "com_mni", "peak_fraction",
                               "participants")},
        "spectra": {"n": len(chosen), "scans": chosen, "typical": typical,
                    "scaling": "divided by the fitted water amplitude",
                    "mean": specs.mean(0) if len(specs) else np.full(grid.size, np.nan),
                    "ppm": grid},
        "status": status,
    }


#: how a test row's statistic and effect size are named on a figure
ES_LABEL = {"hedges_g": "Hedges' g", "cohens_d": "d", "partial_eta2": "partial \u03b7\u00b2",
            "r": "r", "rho": "\u03c1", "standardized_beta": "\u03b2"}


def _test_text(test: Mapping) -> str:
    """Panel 1c's four lines: difference, 95 % CI, test statistic and p, effect size."""
    term = str(test["term"]).replace(" - ", " \u2212 ")
    st = test.get("stat_type") or "t"
    if test.get("kind") == "welch_t":
        stat = f"Welch t({test['df']:.1f})"
    elif st == "t" and np.isfinite(test.get("df", np.nan)):
        stat = f"t({test['df']:.1f})"
    else:
        stat = st
    es = ES_LABEL.get(test.get("effect_size_type"), "effect size")
    return (f"{term}: {fmt_num(test['estimate'])} mmol/kg\n"
            f"95 % CI [{fmt_num(test['ci_low'])}, {fmt_num(test['ci_high'])}]\n"
            f"{stat} = {fmt_num(test['statistic'])}, {fmt_p(test['p'])}\n"
            f"{es} = {fmt_num(test.get('effect_size'))}")


def _draw_spectra(ax_m, ax_f, specs, grid, tfit, scale, typical, n_by_group, ppm_range):
    """Panel 1b: mean +/- SD of the baseline spectra (top), the typical fit (bottom)."""
    lo, hi = ppm_range
    mean = specs.mean(0) * scale
    sd = specs.std(0, ddof=1) * scale if len(specs) > 1 else np.zeros_like(mean)
    ax_m.fill_between(grid, mean - sd, mean + sd, color="0.72", lw=0, label="\u00b1 SD")
    ax_m.plot(grid, mean, color="black", lw=0.7, label="mean")
    ax_m.set_ylabel("signal / water\n(\u00d710\u207b\u00b3)")
    ax_m.legend(loc="upper left", frameon=False, handlelength=1.2)
    ax_m.set_title(
        f"mean of the baseline scans (neutral film; CUD placebo session), n = {len(specs)} "
        f"(HC {n_by_group['HC']}, CUD {n_by_group['CUD']})", loc="left", pad=2)
    top = float(np.max(mean + sd))
    for name, ppm in PEAKS:
        j = int(np.argmin(np.abs(grid - ppm)))
        ax_m.text(ppm, (mean + sd)[j] + 0.04 * top, name, ha="center", va="bottom",
                  fontsize=6)
    ax_m.set_ylim(min(0.0, float(np.min(mean - sd))) - 0.05 * top, top * 1.25)

    tp = tfit["ppm"]
    data, model, bl = (tfit[k] * scale for k in ("data", "fit", "baseline"))
    resid = data - model
    ax_f.plot(tp, data, color="0.45", lw=0.7, label="data")
    ax_f.plot(tp, model, color=OKABE_ITO["vermillion"], lw=0.8, label="fit")
    ax_f.plot(tp, bl, color=OKABE_ITO["blue"], lw=0.7, ls="--", label="baseline")
    off = float(np.min(np.minimum(data, bl))) - float(np.max(resid)) - 0.05 * top
    ax_f.plot(tp, resid + off, color="0.2", lw=0.6, label="residual")
    ax_f.axhline(off, color="0.7", lw=0.4, zorder=0)
    ax_f.set_xlim(hi, lo)
    ax_f.set_xlabel("chemical shift (ppm)")
    ax_f.set_ylabel("signal / water\n(\u00d710\u207b\u00b3)")
    ax_f.legend(loc="upper left", frameon=False, ncols=2, handlelength=1.2,
                columnspacing=1.0)
    ymax = float(np.max(np.r_[data, model]))
    ax_f.set_ylim(off + float(np.min(resid)) - 0.05 * top, ymax * 1.15)
    ax_f.set_title(f"typical fit: {typical[0]} {typical[1]} {typical[2]} film "
                   f"(median fit quality, {tfit['fit_quality']:.2f})", loc="left", pad=2)


def _group_in(table: pd.DataFrame, pid: str) -> str | None:
    g = table.loc[table["participant_id"] == pid, "group"]
    return None if g.empty else str(g.iloc[0])


# ---------------------------------------------------------------------------------------
# Figures 2 and 3: within-participant designs


def _paired_blocks(ax, data: pd.DataFrame, value: str, block_col: str, blocks: Sequence,
                   cond_col: str, cond_levels: Sequence, colours: Mapping | str,
                   starts: Sequence[float], step: float = 1.0) -> list[dict]:
    """For each block (e.g. group), participant lines across the conditions (e.g. films) and
    the condition means +/- 95 % CI; returns one summary row per block and condition."""
    rows = []
    for b, x0 in zip(blocks, starts, strict=True):
        colour = colours if isinstance(colours, str) else colours[b]
        sub = data[data[block_col] == b]
        xs = [x0 + step * i for i in range(len(cond_levels))]
        for r in _paired(ax, sub, value, cond_col, cond_levels, xs, colour):
            rows.append({block_col: b, **r})
    return rows


def _ylim(ax, values, head: float = 0.45, lo_floor: float | None = None,
          hi_cap: float | None = None) -> None:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    span = (hi - lo) or 1.0
    bottom = lo - 0.06 * span
    top = hi + head * span
    if lo_floor is not None:
        bottom = max(bottom, lo_floor)
    if hi_cap is not None:
        top = min(top, hi_cap)
    ax.set_ylim(bottom, top)


def _contrast_lines(row: Mapping, unit: str, digits: int = 2) -> str:
    """Two-line contrast text: estimate [CI] / test, p."""
    stat = row.get("stat_type") or "t"
    df = row.get("df")
    stat_s = f"{stat}({df:.1f})" if stat == "t" and np.isfinite(df) else stat
    return (f"{fmt_num(row['estimate'], digits)} {unit} [{fmt_num(row['ci_low'], digits)}, "
            f"{fmt_num(row['ci_high'], digits)}]\n"
            f"{stat_s} = {fmt_num(row['statistic'], 2)}, {fmt_p(row['p'])}")


def _level_text(pm: PanelModel, level, unit: str) -> str:
    """The contrast printed for one level (group or drug) of a panel, or why there is none."""
    name = (pm.spec.get("contrasts") or {}).get(level)
    row = pm.row("contrast", name) if name else None
    if row is not None:
        return _contrast_lines(row, unit)
    if pm.status is not None:
        return "not available (see below)"
    if name is None:
        return _wrap(f"no contrast configured for {level} ({pm.where}.contrasts)", 36)
    return _wrap(pm.why("contrast", name), 36)


def _footer(pm: PanelModel, unit: str, sep: str) -> str:
    """The panel's footer: each configured contrast (label, sep, one-line result), or the
    reason the model's numbers are not drawn."""
    if pm.status is not None:
        return _wrap(pm.status, 70)
    lines = []
    for f in pm.spec.get("footer") or []:
        row = pm.row("contrast", f["contrast"])
        text = (_contrast_lines(row, unit).replace("\n", ", ") if row is not None
                else pm.why("contrast", f["contrast"]))
        lines.append(f"{f.get('label', f['contrast'])}:{sep}{text}")
    return "\n".join(lines)


def figure2(craving, stats_dir, out_pdf, out_png, *, models: Mapping | None = None,
            panels: Mapping | None = None) -> dict:
    """Figure 2: craving (VAS 0-100) before and after each film, (a) HC vs CUD (placebo
    session), (b) CUD on placebo vs NAC; participant lines, means +/- 95 % CI, and the
    cue-induced craving contrasts of the two craving mixed models (``panels``: the config's
    ``figures.fig2``, default :data:`DEFAULT_PANELS`). A panel whose model is not run or was
    skipped draws its data and says why its numbers are missing (``status``)."""
    df = read_table(craving)
    df["vas"] = pd.to_numeric(df["vas"], errors="coerce")
    panels = DEFAULT_PANELS["fig2"] if panels is None else panels
    pms = {key: PanelModel(f"figures.fig2.{key}", panels.get(key), models, stats_dir)
           for key in ("group", "drug")}
    grp, drg = pms["group"].data(df), pms["drug"].data(df)
    layout = [
        ("a", pms["group"], grp, "group", GROUPS, {"HC": "HC", "CUD": "CUD, placebo session"},
         "Craving by group, film and time"),
        ("b", pms["drug"], drg, "drug", DRUGS, {"placebo": "CUD on placebo", "nac": "CUD on NAC"},
         "Craving by drug, film and time in CUD"),
    ]
    xs_film = {"neutral": 0.0, "cocaine": 2.6}
    rows = []
    vas = np.r_[grp["vas"].to_numpy(float), drg["vas"].to_numpy(float)]
    vmax = float(np.nanmax(vas)) if np.isfinite(vas).any() else 0.0
    top = min(100.0, max(20.0, vmax * 1.05)) + 3.0
    with _rc():
        fig = _new_figure(88.0)
        subs = fig.subfigures(1, 2, wspace=0.02)
        for sf, (letter, pm, data, col, levels, titles, heading) in zip(
            subs, layout, strict=True
        ):
            axs = sf.subplots(1, 2, sharey=True)
            for k, (ax, lvl) in enumerate(zip(axs, levels, strict=True)):
                sub = data[data[col] == lvl]
                colour = COLOURS[lvl]
                r = _paired_blocks(ax, sub, "vas", "film", FILMS, "time", TIMES, colour,
                                   [xs_film[f] for f in FILMS])
                for x in r:
                    rows.append({"panel": letter, col: lvl, **x})
                ns = [x["n"] for x in r]
                ax.set_title(f"{titles[lvl]} ({_n_label(ns)})\ncue-induced craving:\n"
                             + _level_text(pm, lvl, "VAS"), fontsize=6.3, pad=3)
                ticks = [xs_film[f] + i for f in FILMS for i in range(len(TIMES))]
                _set_cond_axis(ax, ticks, list(TIMES) * len(FILMS),
                               [(xs_film[f] + 0.5, f"{f} film") for f in FILMS])
                ax.set_ylim(-3.0, top)
                if sub.empty:
                    _message(ax, "no data", axis_off=False)
                if k == 0:
                    ax.set_ylabel("craving (VAS, 0\u2013100)")
                else:
                    ax.tick_params(labelleft=False)
            _sf_label(sf, letter, heading)
            sf.supxlabel(_footer(pm, "VAS", "\n"), fontsize=6.3)
        save(fig, out_pdf, out_png)
    summary = pd.DataFrame(rows)
    return {"summary": summary, "status": {k: pm.status for k, pm in pms.items() if pm.status}}


def _film_panel(ax, data: pd.DataFrame, value: str, col: str, levels: Sequence,
                titles: Mapping, starts: Sequence[float], ylim_values: np.ndarray,
                pm: PanelModel | None, unit: str) -> list[dict]:
    """One within-participant panel over the two films per level of ``col`` (group or drug):
    participant lines and means +/- 95 % CI (:func:`_paired_blocks`), the films and levels
    (with their n) on the x axis, and above each level its film contrast from ``pm`` (none
    when ``pm`` is None); returns the summary rows."""
    r = _paired_blocks(ax, data, value, col, levels, "film", FILMS, COLOURS, starts)
    ticks = [s + i for s in starts for i in range(len(FILMS))]
    labels = []
    for lvl, s0 in zip(levels, starts, strict=True):
        ns = [x["n"] for x in r if x[col] == lvl]
        labels.append((s0 + 0.5, f"{titles[lvl]}\n({_n_label(ns)})"))
    _set_cond_axis(ax, ticks, list(FILMS) * len(levels), labels)
    _ylim(ax, np.r_[ylim_values, [x[k] for x in r for k in ("ci_low", "ci_high")]], head=0.5)
    if pm is not None:
        for lvl, s0 in zip(levels, starts, strict=True):
            ax.text(s0 + 0.5, 0.99, "cocaine \u2212 neutral:\n" + _level_text(pm, lvl, unit),
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=6.0,
                    color=COLOURS[lvl])
    if data.empty:
        _message(ax, "no data", axis_off=False)
    return r


def figure3(metabolites, stats_dir, out_pdf, out_png, *, models: Mapping | None = None,
            panels: Mapping | None = None) -> dict:
    """Figure 3: Glu (mmol/kg) during the neutral and the cocaine film, (a) by group (CUD on
    the placebo session, HC), (b) in CUD by drug; participant lines, means +/- 95 % CI and
    the film and drug contrasts of the two Glu mixed models (``panels``: the config's
    ``figures.fig3``, default :data:`DEFAULT_PANELS`). A panel whose model is not run or was
    skipped draws its data and says why its numbers are missing (``status``)."""
    table = read_table(metabolites)
    panels = DEFAULT_PANELS["fig3"] if panels is None else panels
    pms = {key: PanelModel(f"figures.fig3.{key}", panels.get(key), models, stats_dir)
           for key in ("group", "drug")}
    starts = (0.0, 2.6)
    layout = [
        ("a", pms["group"], "group", GROUPS, {"HC": "HC", "CUD": "CUD, placebo session"},
         "Glu by group and film"),
        ("b", pms["drug"], "drug", DRUGS, {"placebo": "CUD on placebo", "nac": "CUD on NAC"},
         "Glu by drug and film in CUD"),
    ]
    rows = []
    with _rc():
        fig = _new_figure(95.0)
        for sf, (letter, pm, col, levels, titles, heading) in zip(
            fig.subfigures(1, 2, wspace=0.03), layout, strict=True
        ):
            data = pm.data(table)
            ax = sf.subplots()
            r = _film_panel(ax, data, "conc_molal", col, levels, titles, starts,
                            data["conc_molal"].to_numpy(float), pm, "mmol/kg")
            rows.extend({"panel": letter, **x} for x in r)
            ax.set_ylabel("Glu (mmol/kg)")
            _sf_label(sf, letter, heading)
            sf.supxlabel(_footer(pm, "mmol/kg", " "), fontsize=6.0)
        save(fig, out_pdf, out_png)
    return {"summary": pd.DataFrame(rows),
            "status": {k: pm.status for k, pm in pms.items() if pm.status}}


# ---------------------------------------------------------------------------------------
# Supplementary figure S1: linewidth by film and group (functional MRS, mrsflow.linewidth)

LINEWIDTH_MODEL = "linewidth_group_film_lmm"


def figure_s1(metabolites, stats_dir, out_pdf, out_png, *, models: Mapping | None = None
              ) -> dict:
    """Figure S1: each scan's linewidth (the matching measure's FWHM, Hz) during the neutral
    and the cocaine film by group (CUD on the placebo session, HC), (a) as acquired and (b)
    as fitted (after linewidth matching; equal to (a) when matching is off); participant
    lines, means +/- 95 % CI, and (a) the film contrasts of the linewidth mixed model
    (:data:`LINEWIDTH_MODEL`), or why they are missing."""
    table = read_table(metabolites)
    pm = PanelModel("figure S1", {"model": LINEWIDTH_MODEL,
                                  "contrasts": {"CUD": "film_in_CUD", "HC": "film_in_HC"}},
                    models, stats_dir)
    if pm.filter is None:  # the model is not run: the paper's analysis set all the same
        pm.filter = "metabolite == 'Glu' and qc_pass and drug != 'nac'"
    data = pm.data(table)
    measure = str(data["linewidth_measure"].dropna().iloc[0]) if len(data) else "water"
    starts = (0.0, 2.6)
    titles = {"HC": "HC", "CUD": "CUD, placebo session"}
    rows = []
    with _rc():
        fig = _new_figure(90.0)
        panels = [("a", "linewidth_hz", "As acquired (before matching)", True),
                  ("b", "linewidth_matched_hz", "As fitted (after matching)", False)]
        values = np.r_[data["linewidth_hz"].to_numpy(float),
                       data["linewidth_matched_hz"].to_numpy(float)]
        for sf, (letter, col, heading, contrasts) in zip(
            fig.subfigures(1, 2, wspace=0.03), panels, strict=True
        ):
            ax = sf.subplots()
            r = _film_panel(ax, data, col, "group", GROUPS, titles, starts, values,
                            pm if contrasts else None, "Hz")
            rows.extend({"panel": letter, "value": col, **x} for x in r)
            ax.set_ylabel(f"linewidth, {measure} FWHM (Hz)")
            _sf_label(sf, letter, heading)
        save(fig, out_pdf, out_png)
    return {"summary": pd.DataFrame(rows), "status": {"a": pm.status} if pm.status else {}}
