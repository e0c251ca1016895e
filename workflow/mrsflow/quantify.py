"""Water-scaled, tissue- and relaxation-corrected metabolite concentrations.

The model follows Gasparovic et al. 2006 (MRM 55:1219) as summarised in the consensus of
Near et al. 2021 (NMR Biomed 34:e4257). For a voxel with tissue *volume* fractions f_t
(t in GM, WM, CSF, summing to 1) and water contents alpha_t (g water / mL tissue):

    relaxation factor            R = exp(-TE/T2) * (1 - exp(-TR/T1))
    visible water (mmol/L voxel) W = 55 510 * sum_t f_t alpha_t R_W,t
    tissue water (kg/L voxel)    w = sum_{t in GM, WM} f_t alpha_t

With the fitted metabolite amplitude A_M (the scale of a basis spectrum whose area equals the
number of protons of one molecule) and the water amplitude A_W (area of the water peak,
2 protons per molecule), the molal concentration (mmol per kg tissue water, metabolites
assumed absent from CSF) is

    c_molal = (A_M / A_W) * 2 * W / (R_M * w)

and the molar concentration (mmol per litre of tissue, GM+WM) is
c_molar = c_molal * w / (f_GM + f_WM).

The synthetic twin plants molal concentrations and derives its signals with
:func:`signal_amplitudes`, the exact inverse of :func:`concentrations`, so a perfect pipeline
recovers the planted values.

Checks (DESIGN.md, test_quantify.py): with GM/WM 60/40 %, alpha 0.78/0.65, water T2
110/80 ms, metabolite T2 160 ms, TE 30 ms and TR >> T1, W = 29 697 mM and 1/R_M = 1.206.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

WATER_MOLALITY_MM = 55_510.0  # mmol/kg, pure water
#: combined entries of the fit (mrsflow.fit.COMBINATIONS): their concentration is the sum of
#: the members' (each with its own relaxation correction)
COMBINED = {"tCr": ("Cr", "PCr"), "tNAA": ("NAA", "NAAG"), "tCho": ("GPC", "PCh"),
            "Glx": ("Glu", "Gln")}
WATER_PROTONS = 2
TISSUES = ("gm", "wm", "csf")


@dataclass(frozen=True)
class QuantParams:
    """Tissue water contents and relaxation times (ms) at 3 T.

    Defaults: water contents from Ernst, Kreis & Ross 1993 (JMR B 102:1); water T1 GM/WM from
    Wansapura et al. 1999 (JMRI 9:531) and CSF from Lu et al. 2005 (JMRI 22:13); water T2 GM/WM
    110/80 ms (Wansapura 1999) and CSF 503 ms (Piechnik et al. 2009, MRM 61:579); metabolite T1
    1400 ms (Mlynarik et al. 2001, NMR Biomed 14:325, NAA/Cr/Cho 1.3-1.5 s) and T2 160 ms,
    overridable per metabolite (the config sets measured 3 T values: NAA 226, tCr 137, tCho
    207 ms in GM, Zaaraoui et al. 2007, MRM 57:983; Glu, Gln, Ins 165 ms, Choi et al. 2010,
    ISMRM 18:3330).
    """

    water_content: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 0.78, "wm": 0.65, "csf": 0.97}
    )
    water_t1_ms: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 1331.0, "wm": 832.0, "csf": 3817.0}
    )
    water_t2_ms: Mapping[str, float] = field(
        default_factory=lambda: {"gm": 110.0, "wm": 80.0, "csf": 503.0}
    )
    metab_t1_ms: float = 1400.0
    metab_t2_ms: float = 160.0
    metab_overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping) -> QuantParams:
        """Build from the ``quantify`` block of the workflow config."""
        return cls(
            water_content=dict(cfg["water_content"]),
            water_t1_ms=dict(cfg["water_t1_ms"]),
            water_t2_ms=dict(cfg["water_t2_ms"]),
            metab_t1_ms=float(cfg["metabolite_t1_ms"]),
            metab_t2_ms=float(cfg["metabolite_t2_ms"]),
            metab_overrides={k: dict(v) for k, v in cfg.get("metabolite_overrides", {}).items()},
        )

    def metab_relaxation(self, name: str) -> tuple[float, float]:
        """(T1, T2) in ms of a metabolite."""
        o = self.metab_overrides.get(name, {})
        return float(o.get("t1_ms", self.metab_t1_ms)), float(o.get("t2_ms", self.metab_t2_ms))


def relaxation_factor(te_ms: float, tr_ms: float, t1_ms: float, t2_ms: float) -> float:
    """Signal fraction left after T2 decay over TE and T1 saturation at TR (TR = inf allowed)."""
    t1_term = 1.0 if math.isinf(tr_ms) else 1.0 - math.exp(-tr_ms / t1_ms)
    return math.exp(-te_ms / t2_ms) * t1_term


def _check_fractions(fractions: Mapping[str, float]) -> None:
    total = sum(fractions[t] for t in TISSUES)
    if any(fractions[t] < 0 for t in TISSUES) or abs(total - 1.0) > 1e-3:
        raise ValueError(f"tissue fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    if fractions["csf"] >= 1.0:
        raise ValueError("voxel is pure CSF: no tissue water to reference")


def visible_water_mM(
    fractions: Mapping[str, float], te_ms: float, tr_ms: float, p: QuantParams
) -> float:
    """Relaxation-attenuated water concentration of the voxel, mmol/L (W above)."""
    _check_fractions(fractions)
    return WATER_MOLALITY_MM * sum(
        fractions[t]
        * p.water_content[t]
        * relaxation_factor(te_ms, tr_ms, p.water_t1_ms[t], p.water_t2_ms[t])
        for t in TISSUES
    )


def tissue_water_kg_per_l(fractions: Mapping[str, float], p: QuantParams) -> float:
    """kg of GM+WM water per litre of voxel (w above)."""
    return sum(fractions[t] * p.water_content[t] for t in ("gm", "wm"))


def molal_scale(
    metabolite: str,
    fractions: Mapping[str, float],
    te_ms: float,
    tr_ms: float,
    p: QuantParams,
) -> float:
    """Factor k with c_molal = k * A_M / A_W (mmol/kg tissue water)."""
    t1, t2 = p.metab_relaxation(metabolite)
    r_m = relaxation_factor(te_ms, tr_ms, t1, t2)
    w = tissue_water_kg_per_l(fractions, p)
    return WATER_PROTONS * visible_water_mM(fractions, te_ms, tr_ms, p) / (r_m * w)


def molal_to_molar(c_molal: float, fractions: Mapping[str, float], p: QuantParams) -> float:
    """mmol/kg tissue water -> mmol/L tissue (GM+WM, CSF excluded)."""
    return c_molal * tissue_water_kg_per_l(fractions, p) / (fractions["gm"] + fractions["wm"])


def concentrations(
    amplitudes: Mapping[str, float],
    water_amplitude: float,
    fractions: Mapping[str, float],
    te_ms: float,
    tr_ms: float,
    p: QuantParams,
) -> dict[str, tuple[float, float]]:
    """{metabolite: (c_molal, c_molar)} from fitted amplitudes and the water amplitude."""
    if not water_amplitude > 0:
        raise ValueError(f"water amplitude must be positive, got {water_amplitude}")
    out = {}
    for name, a in amplitudes.items():
        molal = molal_scale(name, fractions, te_ms, tr_ms, p) * a / water_amplitude
        out[name] = (molal, molal_to_molar(molal, fractions, p))
    return out


def signal_amplitudes(
    conc_molal: Mapping[str, float],
    fractions: Mapping[str, float],
    te_ms: float,
    tr_ms: float,
    p: QuantParams,
    water_amplitude: float,
) -> dict[str, float]:
    """Inverse of :func:`concentrations`: basis amplitudes that encode ``conc_molal`` given
    a water signal of area ``water_amplitude`` (used by the synthetic twin)."""
    return {
        name: c * water_amplitude / molal_scale(name, fractions, te_ms, tr_ms, p)
        for name, c in conc_molal.items()
    }


# --- the tidy tables -------------------------------------------------------------------

METABOLITE_COLUMNS = [
    "participant_id",
    "group",
    "session",
    "drug",
    "period",
    "film",
    "metabolite",
    "conc_molal",
    "conc_molar",
    "ratio_tcr",
    "amplitude",
    "crlb_pct",
    "snr",
    "linewidth_water_hz",
    "linewidth_naa_hz",
    "linewidth_measure",
    "linewidth_hz",
    "linewidth_matched_hz",
    "linewidth_broadening_hz",
    "fit_quality",
    "f_gm",
    "f_wm",
    "f_csf",
    "tissue_source",
    "protocol",
    "te_ms",
    "tr_ms",
    "qc_pass",
    "qc_reason",
    "qc_note",
]
CRAVING_COLUMNS = ["participant_id", "group", "session", "drug", "period", "film", "time", "vas"]


def qc_verdict(qc: Mapping, fit: Mapping, rules: Mapping,
               extra: list[str] | tuple[str, ...] = ()) -> tuple[bool, str]:
    """(pass, reason) of one scan: first the physical sanity checks of preprocessing
    (``qc['sanity']['exclude']``, :mod:`mrsflow.sanity`) and any ``extra`` reasons (a raw
    file shared with another scan), then the config's QC rules. CRLB is reported but, by
    default, not used to exclude: thresholding on CRLB removes low concentrations
    preferentially and biases group means (Kreis 2016, MRM 75:15)."""
    reasons = [*qc.get("sanity", {}).get("exclude", []), *extra]
    if qc.get("usable") is False:  # not processed, not fitted: the reasons above say why
        return False, "; ".join(reasons)
    if not fit.get("success", False):
        reasons.append(f"fit failed ({fit.get('message', 'no message')})")
    snr = qc.get("snr")
    if snr is None or not math.isfinite(snr) or snr < rules["snr_min"]:
        reasons.append(f"SNR {snr:.3g} < {rules['snr_min']}" if snr is not None else "no SNR")
    for key, limit in (
        ("linewidth_naa_hz", "linewidth_naa_max_hz"),
        ("linewidth_water_hz", "linewidth_water_max_hz"),
    ):
        value = qc.get(key)
        if value is None or not math.isfinite(value) or value > rules[limit]:
            reasons.append(
                f"{key} {value:.3g} > {rules[limit]}" if value is not None else f"no {key}"
            )
    reasons.extend(fit_qc_reasons((fit.get("extra") or {}).get("fit_qc") or {}, rules))
    return (not reasons, "; ".join(reasons))


def fit_qc_reasons(fq: Mapping, rules: Mapping) -> list[str]:
    """Why a fit does not explain its spectrum (``fit['extra']['fit_qc']``,
    :func:`mrsflow.qc.fit_qc`), by the config's ``qc`` rules (a rule set to null is off):

    - structure left in the residual of the metabolite region: excluded only when it is both
      there (``residual_structure`` above ``fit_residual_structure_max``, in units of what
      noise alone gives, ~1) and material (its largest excursion above
      ``fit_residual_max_pct`` % of the tallest metabolite line). Chosen from data
      (README, Accuracy): fits that recover the truth leave 0.6-1.1 and at most 1.3 %
      (challenge spectra with the challenge's basis) or 3.5 % (the default twin's 164 scans,
      whose MM and lineshape are not the fit model's); the challenge's dataset 25, which no
      basis fits, 4.3 and 13 %;
    - a baseline that has taken up metabolite-sized signal: ``baseline_excursion`` (its
      peak-to-peak over the tallest line) above ``fit_baseline_excursion_max``.
    """
    out = []
    struct, pct = fq.get("residual_structure"), fq.get("residual_max_pct")
    s_max, p_max = rules.get("fit_residual_structure_max"), rules.get("fit_residual_max_pct")
    if (s_max is not None and p_max is not None and _finite(struct) and _finite(pct)
            and struct > s_max and pct > p_max):
        lo, hi = fq.get("region_ppm", ("", ""))
        out.append(f"fit leaves structure in the residual ({struct:.3g} x noise > {s_max}, "
                   f"largest {pct:.3g} % of the tallest line > {p_max} %, {lo}-{hi} ppm)")
    excursion, e_max = fq.get("baseline_excursion"), rules.get("fit_baseline_excursion_max")
    if e_max is not None and _finite(excursion) and excursion > e_max:
        out.append(f"fit baseline excursion {excursion:.3g} of the tallest line > {e_max}")
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def scan_rows(
    scan: Mapping,
    fit: Mapping,
    tissue: Mapping,
    qc: Mapping,
    *,
    te_ms: float,
    tr_ms: float,
    params: QuantParams,
    rules: Mapping,
    extra_reasons: list[str] | tuple[str, ...] = (),
    linewidth: Mapping | None = None,
) -> list[dict]:
    """One row per fitted metabolite (and combination) of one scan (a scan that was not
    fitted: its rows with empty concentrations, excluded with the reason). ``linewidth``:
    the scan's linewidth-matching record (:mod:`mrsflow.linewidth`; None: matching off, the
    water FWHM of preprocessing before and after, no broadening)."""
    lw = dict(linewidth or {"measure": "water", "before_hz": qc.get("linewidth_water_hz"),
                            "after_hz": qc.get("linewidth_water_hz"), "broadening_hz": 0.0})
    fractions = {"gm": float(tissue["GM"]), "wm": float(tissue["WM"]), "csf": float(tissue["CSF"])}
    ok, reason = qc_verdict(qc, fit, rules, extra_reasons)
    note = "; ".join(qc.get("sanity", {}).get("notes", []))
    proto = (fit.get("extra") or {}).get("protocol") or {}
    entries = {**fit["metabolites"], **fit.get("combined", {})}
    tcr = entries.get("tCr", {}).get("amplitude")
    amps = {name: (math.nan if e["amplitude"] is None else e["amplitude"])
            for name, e in entries.items()}
    water = fit.get("water_amplitude")
    conc = (
        concentrations(amps, water, fractions, te_ms, tr_ms, params)
        if water and water > 0
        else {n: (math.nan, math.nan) for n in amps}
    )
    # a combination (tCr = Cr + PCr, ...) is the sum of its members' concentrations, each
    # corrected with its own relaxation times
    for name, members in COMBINED.items():
        if name in conc and all(m in conc for m in members):
            conc[name] = tuple(sum(conc[m][i] for m in members) for i in (0, 1))
    rows = []
    for name, e in entries.items():
        molal, molar = conc[name]
        rows.append(
            {
                **{
                    k: scan[k]
                    for k in ("participant_id", "group", "session", "drug", "period", "film")
                },
                "metabolite": name,
                "conc_molal": molal,
                "conc_molar": molar,
                "ratio_tcr": amps[name] / tcr if tcr else math.nan,
                "amplitude": amps[name],
                "crlb_pct": e.get("crlb_pct"),
                "snr": qc.get("snr"),
                "linewidth_water_hz": qc.get("linewidth_water_hz"),
                "linewidth_naa_hz": qc.get("linewidth_naa_hz"),
                "linewidth_measure": lw.get("measure"),
                "linewidth_hz": lw.get("before_hz"),
                "linewidth_matched_hz": lw.get("after_hz"),
                "linewidth_broadening_hz": lw.get("broadening_hz"),
                "fit_quality": fit.get("fit_quality"),
                "f_gm": fractions["gm"],
                "f_wm": fractions["wm"],
                "f_csf": fractions["csf"],
                "tissue_source": (tissue.get("mrsflow") or {}).get("tissue_source", "T1"),
                "protocol": proto.get("name", ""),
                "te_ms": te_ms,
                "tr_ms": tr_ms,
                "qc_pass": ok,
                "qc_reason": reason,
                "qc_note": note,
            }
        )
    return rows
