"""Verification: every key number of a run beside the value it should have.

Two kinds of expected values:

- **synthetic twin** (``data.source: twin``): the planted ground truth in
  ``results/twin/truth/``.  :func:`run_recovery` writes ``results/twin/recovery/``:

  ``concentrations.tsv``         one row per scan x metabolite: estimated and planted
                                 concentration, error, error %, CRLB, QC verdict;
  ``concentrations_summary.tsv`` per metabolite over the QC-passed scans: N, planted and
                                 estimated means, bias %, median |error| %, Pearson r, SD of the
                                 error % and its ratio to the mean CRLB % (about 1 when CRLBs are
                                 calibrated and the fit is unbiased);
  ``tissue.tsv``                 per session: estimated (mean over the session's scans) vs planted
                                 GM/WM/CSF fractions, absolute errors, within tolerance;
  ``quality.tsv``                per scan: SNR and NAA/water linewidths estimated vs planted,
                                 relative errors, within tolerance;
  ``effects.tsv``                the config's statistical models run twice, on the recovered
                                 ``metabolites.tsv`` and on a *truth* table
                                 (:func:`truth_metabolites`: same rows and columns, planted
                                 concentrations and tissue fractions, the same QC verdicts so
                                 the same scans enter both); every
                                 descriptive / test / coefficient / contrast row with the truth
                                 estimate beside the recovered estimate and its 95 % CI
                                 (``truth_inside_ci``);
  ``recovery.png``               estimated vs planted Glu, NAA, tCr and Ins.

- **real data** (``data.source: sheets``): the values the paper reports, kept in
  ``config/verification.yaml`` (findings with direction and p, spectral quality).

:func:`build_verification` turns these into ``results/verification.tsv`` with the columns
:data:`VERIFICATION_COLUMNS` (check, value, expected, tolerance, pass, source).  Nothing is
hard-coded: values come from the run's tables, expected values from the truth (twin) or from
``config/verification.yaml`` (paper), tolerances from ``config/verification.yaml``.

A check that cannot be made with this run is *not applicable* (``pass`` = ``n/a``, the reason
in ``value``), never a crash: the model it names is not among the config's stats models, was
skipped by the stats step (not estimable with these data, e.g. a pilot study), or has no such
row; or the column it reads is absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mrsflow.errors import InputError

__all__ = [
    "COMBINATIONS",
    "NOT_APPLICABLE",
    "VERIFICATION_COLUMNS",
    "build_verification",
    "compare_effects",
    "find_row",
    "load_verification_config",
    "model_status",
    "quality_recovery",
    "recovery_summary",
    "recovery_table",
    "run_recovery",
    "run_verification",
    "tissue_recovery",
    "truth_metabolites",
    "with_combinations",
]

KEYS = ["participant_id", "session", "film"]
TISSUE_COLUMNS = ["f_gm", "f_wm", "f_csf"]
#: combined metabolites, as reported by the fit (mrsflow.fit.COMBINATIONS)
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "tCr": ("Cr", "PCr"),
    "tNAA": ("NAA", "NAAG"),
    "tCho": ("GPC", "PCh"),
    "Glx": ("Glu", "Gln"),
}
VERIFICATION_COLUMNS = ["check", "value", "expected", "tolerance", "pass", "source"]
#: the ``pass`` of a check this run cannot make (its reason is the ``value``)
NOT_APPLICABLE = "n/a"
#: the section of the one row of a model the data could not estimate (mrsflow.stats.SKIPPED)
SKIPPED = "skipped"
#: rows of the model tables whose CI is checked against the truth estimate, per model
CI_SECTIONS = ("test", "coefficient", "contrast")
PLOT_METABOLITES = ("Glu", "NAA", "tCr", "Ins")
HTML_TITLES = {
    "concentrations": "Ground-truth recovery: concentrations per scan",
    "summary": "Ground-truth recovery: concentrations per metabolite",
    "tissue": "Ground-truth recovery: tissue fractions per session",
    "quality": "Ground-truth recovery: SNR and linewidths per scan",
    "effects": "Ground-truth recovery: model estimates on recovered vs planted values",
}
TSV = {"sep": "\t", "index": False, "lineterminator": "\n", "na_rep": "NA"}
FLOAT_FORMAT = "%.6g"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A results table (identifiers as text, qc_pass as bool)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing (did the previous step run?)")
    df = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session": str, "film": str})
    if "qc_pass" in df.columns and not pd.api.types.is_bool_dtype(df["qc_pass"]):
        df["qc_pass"] = df["qc_pass"].astype(str).str.lower().isin(["true", "1", "yes"])
    return df


def load_verification_config(path: str | Path) -> dict:
    """``config/verification.yaml`` (findings, quality, twin targets), minimally validated."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: not found") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    for key in ("findings", "quality", "twin"):
        if key not in cfg:
            raise InputError(f"{path}: missing key '{key}'")
    for i, f in enumerate(cfg["findings"]):
        missing = [k for k in ("name", "model", "section", "term", "claim") if k not in f]
        if missing:
            raise InputError(f"{path}: findings[{i}] lacks {missing}")
        if f["claim"] not in ("significant", "direction", "not_significant"):
            raise InputError(
                f"{path}: findings[{i}] claim {f['claim']!r} is not one of significant, "
                "direction, not_significant"
            )
        if f["claim"] != "not_significant" and f.get("direction") not in ("positive", "negative"):
            raise InputError(f"{path}: findings[{i}] needs direction: positive|negative")
    return cfg


# --------------------------------------------------------------------------------------------
# ground-truth recovery (twin)
# --------------------------------------------------------------------------------------------


def with_combinations(conc: pd.DataFrame, value_columns: Sequence[str] = ("conc_molal",
                                                                           "conc_molar")):
    """Add the combined metabolites (tCr, tNAA, tCho, Glx) as sums of their parts, per scan
    (only where every part is present and no combined row exists yet)."""
    value_columns = [c for c in value_columns if c in conc.columns]
    extra = []
    for name, parts in COMBINATIONS.items():
        sub = conc[conc["metabolite"].isin(parts)]
        counts = sub.groupby(KEYS, sort=False)["metabolite"].nunique()
        complete = counts[counts == len(parts)].index
        if not len(complete):
            continue
        sums = sub.groupby(KEYS, sort=False)[value_columns].sum(min_count=1).loc[complete]
        sums = sums.reset_index().assign(metabolite=name)
        have = conc.loc[conc["metabolite"] == name, KEYS]
        if len(have):
            sums = sums.merge(have, on=KEYS, how="left", indicator=True)
            sums = sums[sums["_merge"] == "left_only"].drop(columns="_merge")
        extra.append(sums)
    if not extra:
        return conc.copy()
    return pd.concat([conc, *extra], ignore_index=True)[list(conc.columns)]


def truth_metabolites(
    recovered: pd.DataFrame, truth_conc: pd.DataFrame, truth_tissue: pd.DataFrame | None = None
) -> pd.DataFrame:
    """A ``metabolites.tsv`` of the truth: the recovered table's rows and columns with the
    planted concentrations (combined metabolites summed from their planted parts), the planted
    tissue fractions of the session (when ``truth_tissue`` is given) and ``ratio_tcr`` from the
    planted values. ``qc_pass`` is kept, so the same scans enter every model."""
    truth = with_combinations(truth_conc)
    cols = [c for c in ("conc_molal", "conc_molar") if c in truth.columns]
    out = recovered.drop(columns=[c for c in cols if c in recovered.columns])
    out = out.merge(
        truth[[*KEYS, "metabolite", *cols]], on=[*KEYS, "metabolite"], how="left",
        validate="many_to_one",
    )
    if truth_tissue is not None:
        tis = truth_tissue[["participant_id", "session", *TISSUE_COLUMNS]]
        out = out.drop(columns=[c for c in TISSUE_COLUMNS if c in out.columns]).merge(
            tis, on=["participant_id", "session"], how="left", validate="many_to_one"
        )
    if "ratio_tcr" in recovered.columns:
        tcr = out.loc[out["metabolite"] == "tCr", [*KEYS, "conc_molal"]].rename(
            columns={"conc_molal": "_tcr"}
        )
        out = out.merge(tcr, on=KEYS, how="left")
        out["ratio_tcr"] = out["conc_molal"] / out["_tcr"]
        out = out.drop(columns="_tcr")
    return out[[c for c in recovered.columns if c in out.columns]]


def recovery_table(recovered: pd.DataFrame, truth_conc: pd.DataFrame) -> pd.DataFrame:
    """One row per scan x metabolite: estimated and planted molal concentration, the error
    (estimated - planted) in mmol/kg and in % of the planted value, CRLB and QC verdict."""
    truth = with_combinations(truth_conc)[[*KEYS, "metabolite", "conc_molal"]]
    design = [c for c in ("group", "drug") if c in recovered.columns]
    cols = [*KEYS, *design, "metabolite", "conc_molal", "crlb_pct", "qc_pass"]
    df = recovered[[c for c in cols if c in recovered.columns]].rename(
        columns={"conc_molal": "conc_est"}
    )
    df = df.merge(truth.rename(columns={"conc_molal": "conc_true"}), on=[*KEYS, "metabolite"],
                  how="inner", validate="one_to_one")
    df["error"] = df["conc_est"] - df["conc_true"]
    df["error_pct"] = 100.0 * df["error"] / df["conc_true"]
    order = [*KEYS, *design, "metabolite", "conc_true", "conc_est", "error", "error_pct",
             "crlb_pct", "qc_pass"]
    return df[[c for c in order if c in df.columns]].sort_values(
        [*KEYS, "metabolite"], kind="mergesort"
    ).reset_index(drop=True)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def recovery_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per metabolite over the QC-passed scans with both values:

    ``bias_pct`` = 100 mean(est - true) / mean(true) (the bias of a group mean),
    ``median_abs_error_pct`` = median |est - true| / true, ``r`` = Pearson r(est, true),
    ``sd_error_pct`` = SD of the per-scan error %, ``crlb_ratio`` = sd_error_pct / mean CRLB %.
    """
    ok = table[table["qc_pass"].astype(bool)]
    ok = ok[np.isfinite(ok["conc_est"]) & np.isfinite(ok["conc_true"])]
    rows = []
    for met, g in ok.groupby("metabolite", sort=True):
        est, true = g["conc_est"].to_numpy(float), g["conc_true"].to_numpy(float)
        err_pct = g["error_pct"].to_numpy(float)
        crlb = g["crlb_pct"].to_numpy(float) if "crlb_pct" in g else np.array([np.nan])
        crlb = crlb[np.isfinite(crlb)]
        mean_crlb = float(np.mean(crlb)) if len(crlb) else math.nan
        sd_err = float(np.std(err_pct, ddof=1)) if len(err_pct) > 1 else math.nan
        rows.append({
            "metabolite": met,
            "n": len(g),
            "mean_true": float(np.mean(true)),
            "mean_est": float(np.mean(est)),
            "bias_pct": float(100.0 * np.mean(est - true) / np.mean(true)),
            "median_abs_error_pct": float(np.median(np.abs(err_pct))),
            "r": _pearson(est, true),
            "sd_error_pct": sd_err,
            "mean_crlb_pct": mean_crlb,
            "crlb_ratio": sd_err / mean_crlb if mean_crlb and np.isfinite(mean_crlb) else math.nan,
        })
    return pd.DataFrame(rows, columns=[
        "metabolite", "n", "mean_true", "mean_est", "bias_pct", "median_abs_error_pct", "r",
        "sd_error_pct", "mean_crlb_pct", "crlb_ratio",
    ])


def _scans(recovered: pd.DataFrame) -> pd.DataFrame:
    """One row per scan of a metabolites table."""
    return recovered.drop_duplicates(KEYS).reset_index(drop=True)


def tissue_recovery(recovered: pd.DataFrame, truth_tissue: pd.DataFrame,
                    tol: float = 0.05) -> pd.DataFrame:
    """Per session: estimated (mean over the session's scans) and planted GM/WM/CSF fractions,
    absolute errors, the largest one and whether it is within ``tol``."""
    est = (_scans(recovered).groupby(["participant_id", "session"], sort=True)[TISSUE_COLUMNS]
           .mean().reset_index())
    df = est.merge(truth_tissue[["participant_id", "session", *TISSUE_COLUMNS]],
                   on=["participant_id", "session"], how="inner", suffixes=("_est", "_true"),
                   validate="one_to_one")
    for c in TISSUE_COLUMNS:
        df[f"abs_error_{c[2:]}"] = (df[f"{c}_est"] - df[f"{c}_true"]).abs()
    df["max_abs_error"] = df[[f"abs_error_{c[2:]}" for c in TISSUE_COLUMNS]].max(axis=1)
    df["within_tol"] = df["max_abs_error"] <= tol
    return df


def quality_recovery(recovered: pd.DataFrame, truth_scans: pd.DataFrame,
                     tol: float = 0.10) -> pd.DataFrame:
    """Per scan: SNR, NAA and water linewidth estimated (``mrsflow.qc`` on the processed
    spectrum) vs planted (measured with the same definitions on the generated spectrum),
    relative errors and whether each is within ``tol``."""
    pairs = {"snr": "snr", "linewidth_naa_hz": "linewidth_hz",
             "linewidth_water_hz": "linewidth_water_hz"}
    est = _scans(recovered)[[*KEYS, *[c for c in ("group", "qc_pass") if c in recovered],
                             *pairs]]
    tru = truth_scans[[*KEYS, *pairs.values()]].rename(
        columns={v: f"{k}_true" for k, v in pairs.items()}
    )
    df = est.rename(columns={k: f"{k}_est" for k in pairs}).merge(
        tru, on=KEYS, how="inner", validate="one_to_one"
    )
    for k in pairs:
        df[f"{k}_rel_error"] = (df[f"{k}_est"] - df[f"{k}_true"]) / df[f"{k}_true"]
        df[f"{k}_within_tol"] = df[f"{k}_rel_error"].abs() <= tol
    return df.sort_values(KEYS, kind="mergesort").reset_index(drop=True)


def compare_effects(recovered: Mapping[str, pd.DataFrame],
                    truth: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every model row of the recovered run beside the truth run's estimate:
    ``truth_inside_ci`` = ci_low <= truth_estimate <= ci_high (NA where a row has no CI)."""
    def stack(results: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        df = pd.concat([r.assign(model=name) for name, r in results.items()], ignore_index=True)
        df["_k"] = df.groupby(["model", "section", "term"], sort=False).cumcount()
        return df

    rec, tru = stack(recovered), stack(truth)
    keep = ["model", "section", "term", "_k", "estimate", "se", "ci_low", "ci_high", "p"]
    rec = rec[[c for c in keep if c in rec.columns]]
    tru = tru[["model", "section", "term", "_k", "estimate", "se", "p"]].rename(
        columns={"estimate": "truth_estimate", "se": "truth_se", "p": "truth_p"}
    )
    df = rec.merge(tru, on=["model", "section", "term", "_k"], how="left").drop(columns="_k")
    df["difference"] = df["estimate"] - df["truth_estimate"]
    lo, hi, t = df["ci_low"], df["ci_high"], df["truth_estimate"]
    has_ci = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(t)
    inside = pd.Series(pd.NA, index=df.index, dtype="boolean")
    inside[has_ci] = (lo[has_ci] <= t[has_ci]) & (t[has_ci] <= hi[has_ci])
    df["truth_inside_ci"] = inside
    return df


def recovery_png(table: pd.DataFrame, path: str | Path,
                 metabolites: Sequence[str] = PLOT_METABOLITES) -> Path:
    """Estimated vs planted concentration scatter per metabolite with the identity line
    (filled: QC passed; open: excluded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(8, 8))
    for ax, met in zip(axes.ravel(), metabolites, strict=False):
        g = table[table["metabolite"] == met]
        ok = g["qc_pass"].astype(bool)
        ax.scatter(g.loc[ok, "conc_true"], g.loc[ok, "conc_est"], s=16, color="C0",
                   label="QC passed")
        if (~ok).any():
            ax.scatter(g.loc[~ok, "conc_true"], g.loc[~ok, "conc_est"], s=16,
                       facecolors="none", edgecolors="C3", label="excluded")
        vals = pd.concat([g["conc_true"], g["conc_est"]]).to_numpy(float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            lo, hi = float(vals.min()), float(vals.max())
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="identity")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_aspect("equal")
        summ = recovery_summary(g)
        if len(summ):
            s = summ.iloc[0]
            ax.set_title(f"{met}: r = {s['r']:.3f}, bias {s['bias_pct']:+.1f} %, n = {s['n']}",
                         fontsize=10)
        else:
            ax.set_title(met, fontsize=10)
        ax.set_xlabel("planted (mmol/kg)")
        ax.set_ylabel("estimated (mmol/kg)")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def _write(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, float_format=FLOAT_FORMAT, **TSV)


def run_recovery(
    metabolites: str | Path,
    craving: str | Path,
    participants: str | Path,
    truth_dir: str | Path,
    stats_config: Mapping,
    targets: Mapping,
    outputs: Mapping[str, str | Path],
) -> dict[str, pd.DataFrame]:
    """The twin's recovery tables (see the module docstring). ``outputs`` maps
    concentrations, summary, tissue, quality, effects (TSV) and png to paths, and optionally
    ``<table>_html`` to HTML renderings; ``targets`` is the ``twin`` block of
    ``config/verification.yaml`` (tolerances)."""
    from mrsflow import stats
    from mrsflow.report import write_html

    truth_dir = Path(truth_dir)
    rec, crav, part = stats.read_tables(metabolites, craving, participants)
    truth_conc = read_tsv(truth_dir / "concentrations.tsv")
    truth_tissue = read_tsv(truth_dir / "tissue.tsv")
    truth_scans = read_tsv(truth_dir / "scans.tsv")

    table = recovery_table(rec, truth_conc)
    out = {
        "concentrations": table,
        "summary": recovery_summary(table),
        "tissue": tissue_recovery(rec, truth_tissue, float(targets["tissue_abs_tol"])),
        "quality": quality_recovery(rec, truth_scans, float(targets["quality_tol_rel"])),
    }
    models = list(stats_config["models"])
    levels = stats_config.get("levels")
    on_inestimable = stats_config.get("on_inestimable", "skip")
    truth_table = truth_metabolites(rec, truth_conc, truth_tissue)
    res_rec = stats.run_all(models, rec, crav, part, levels=levels,
                            on_inestimable=on_inestimable)
    res_true = stats.run_all(models, truth_table, crav, part, levels=levels,
                             on_inestimable=on_inestimable)
    out["effects"] = compare_effects(res_rec, res_true)
    for key, df in out.items():
        _write(df, outputs[key])
        if outputs.get(f"{key}_html"):
            write_html(df, outputs[f"{key}_html"], HTML_TITLES[key], Path(outputs[key]).name)
    recovery_png(table, outputs["png"])
    return out


# --------------------------------------------------------------------------------------------
# verification.tsv
# --------------------------------------------------------------------------------------------


def _check(check: str, value: Any, expected: Any, tolerance: str, passed: Any,
           source: str) -> dict:
    if passed == NOT_APPLICABLE:
        ok = NOT_APPLICABLE
    else:
        ok = None if passed is None or passed is pd.NA else bool(passed)
    return {"check": check, "value": value, "expected": expected, "tolerance": tolerance,
            "pass": ok, "source": source}


def _not_applicable(check: str, why: str, expected: Any, tolerance: str, source: str) -> dict:
    """A check this run cannot make, and why (in ``value``)."""
    return _check(check, f"not applicable: {why}", expected, tolerance, NOT_APPLICABLE, source)


def model_status(all_models: pd.DataFrame, model: str) -> str | None:
    """Why a model has no numbers in the stats tables (None: it has): not run, or skipped."""
    rows = all_models[all_models["model"] == model]
    if rows.empty:
        return f"{model} is not among the models of the config's stats block"
    skipped = rows[rows["section"] == SKIPPED]
    if len(skipped):
        note = skipped["note"].iloc[0] if "note" in skipped.columns else None
        reason = note if isinstance(note, str) and note else "not estimable with these data"
        return f"{model} skipped ({reason})"
    return None


def find_row(all_models: pd.DataFrame, model: str, section: str,
             term: str) -> tuple[pd.Series | None, str | None]:
    """(the row, None), or (None, why there is none: the model was not run or was skipped,
    or has no such row)."""
    why = model_status(all_models, model)
    if why is not None:
        return None, why
    sel = all_models[(all_models["model"] == model) & (all_models["section"] == section)
                     & (all_models["term"].astype(str) == str(term))]
    if sel.empty:
        return None, f"no {section} row {term!r} in results/stats/{model}.tsv"
    return sel.iloc[0], None


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "NA" if not math.isfinite(xf) else f"{xf:.{digits}g}"


def stat_row(all_models: pd.DataFrame, model: str, section: str, term: str) -> pd.Series:
    """The one row of a model table with this section and term (InputError if absent)."""
    sel = all_models[(all_models["model"] == model) & (all_models["section"] == section)
                     & (all_models["term"].astype(str) == str(term))]
    if sel.empty:
        raise InputError(
            f"verification: no row model={model!r} section={section!r} term={term!r} in the "
            "stats tables (check config/verification.yaml against the config's stats models)"
        )
    return sel.iloc[0]


def _direction_ok(estimate: float, direction: str) -> bool | None:
    if not math.isfinite(estimate):
        return None
    return estimate > 0 if direction == "positive" else estimate < 0


_SIGN = {"positive": "> 0", "negative": "< 0"}


def planted_effect(twin_config: Mapping, planted: Mapping) -> float:
    """``sign * twin.effects[<dotted key>]`` (e.g. glu_film_pct.CUD) of a finding."""
    node: Any = twin_config["effects"]
    for part in str(planted["effect"]).split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise InputError(f"verification: twin.effects has no {planted['effect']!r}")
        node = node[part]
    return float(planted.get("sign", 1)) * float(node)


def finding_checks_paper(findings: Sequence[Mapping], all_models: pd.DataFrame,
                         alpha: float, source: str) -> list[dict]:
    """Real data vs the paper: direction (``direction``) and significance (``significant``:
    direction and p < alpha; ``not_significant``: p >= alpha)."""
    rows = []
    for f in findings:
        r, why = find_row(all_models, f["model"], f["section"], f["term"])
        where = f"results/stats/{f['model']}.tsv ({f['section']} {f['term']})"
        label = f.get("label", f["name"])
        rep_p = f.get("reported_p")
        if r is None:
            src = f"{where} vs paper ({source})"
            if f["claim"] in ("significant", "direction"):
                d = f["direction"]
                rows.append(_not_applicable(f"{label}: direction", why,
                                            f"{_SIGN[d]} ({d}, as reported)",
                                            "sign of the estimate", src))
            if f["claim"] == "significant":
                rows.append(_not_applicable(
                    f"{label}: p", why,
                    f"{rep_p} (reported)" if rep_p is not None else f"< {alpha}",
                    f"p < {alpha}", src))
            elif f["claim"] == "not_significant":
                rows.append(_not_applicable(f"{label}: p", why, "not significant (reported)",
                                            f"p >= {alpha}", src))
            continue
        if f["claim"] in ("significant", "direction"):
            d = f["direction"]
            rows.append(_check(
                f"{label}: direction", float(r["estimate"]), f"{_SIGN[d]} ({d}, as reported)",
                "sign of the estimate", _direction_ok(float(r["estimate"]), d),
                f"{where} vs paper ({source})"))
        if f["claim"] == "significant":
            rows.append(_check(
                f"{label}: p", float(r["p"]),
                f"{rep_p} (reported)" if rep_p is not None else f"< {alpha}",
                f"p < {alpha}", float(r["p"]) < alpha if math.isfinite(r["p"]) else None,
                f"{where} vs paper ({source})"))
        elif f["claim"] == "not_significant":
            rows.append(_check(
                f"{label}: p", float(r["p"]), "not significant (reported)", f"p >= {alpha}",
                float(r["p"]) >= alpha if math.isfinite(r["p"]) else None,
                f"{where} vs paper ({source})"))
    return rows


def finding_checks_twin(findings: Sequence[Mapping], all_models: pd.DataFrame,
                        twin_config: Mapping) -> list[dict]:
    """Twin vs the planted effects: the estimate has the planted sign, or (planted 0) the
    95 % CI includes 0."""
    rows = []
    for f in findings:
        if "planted" not in f:
            continue
        r, why = find_row(all_models, f["model"], f["section"], f["term"])
        where = f"results/stats/{f['model']}.tsv ({f['section']} {f['term']})"
        label = f.get("label", f["name"])
        planted = planted_effect(twin_config, f["planted"])
        src = f"{where} vs planted twin.effects.{f['planted']['effect']}"
        if r is None:
            if planted == 0:
                rows.append(_not_applicable(f"{label}: planted 0 inside 95 % CI", why,
                                            "0 (planted)", "95 % CI includes 0", src))
            else:
                d = "positive" if planted > 0 else "negative"
                unit = f["planted"].get("unit", "")
                rows.append(_not_applicable(f"{label}: direction", why,
                                            f"{_SIGN[d]} (planted {planted:+g}{unit})",
                                            "sign of the estimate", src))
            continue
        est = float(r["estimate"])
        if planted == 0:
            lo, hi = float(r["ci_low"]), float(r["ci_high"])
            ok = (lo <= 0 <= hi) if math.isfinite(lo) and math.isfinite(hi) else None
            rows.append(_check(f"{label}: planted 0 inside 95 % CI", est, "0 (planted)",
                               f"95 % CI [{_fmt(lo)}, {_fmt(hi)}] includes 0", ok, src))
        else:
            d = "positive" if planted > 0 else "negative"
            unit = f["planted"].get("unit", "")
            rows.append(_check(f"{label}: direction", est,
                               f"{_SIGN[d]} (planted {planted:+g}{unit})",
                               "sign of the estimate", _direction_ok(est, d), src))
    return rows


def quality_checks_paper(metabolites: pd.DataFrame, quality: Mapping,
                         source: str) -> list[dict]:
    """Mean spectral quality of the QC-passed scans vs the paper's reported means."""
    scans = _scans(metabolites)
    scans = scans[scans["qc_pass"].astype(bool)]
    rows = []
    for key, q in quality.items():
        col = q["column"]
        if col not in scans.columns:
            rows.append(_not_applicable(
                f"mean {q.get('label', key)} (QC-passed scans)",
                f"no column {col!r} in results/tables/metabolites.tsv",
                f"{float(q['reported_mean']):g} (reported)",
                f"within {100 * float(q['tolerance_rel']):g} %",
                f"results/tables/metabolites.tsv {col} vs paper ({source})"))
            continue
        vals = scans[col].to_numpy(float) * float(q.get("scale", 1.0))
        vals = vals[np.isfinite(vals)]
        mean = float(np.mean(vals)) if len(vals) else math.nan
        exp = float(q["reported_mean"])
        tol = float(q["tolerance_rel"])
        ok = abs(mean - exp) <= tol * abs(exp) if math.isfinite(mean) else None
        scale = f" x {q['scale']}" if "scale" in q else ""
        rows.append(_check(
            f"mean {q.get('label', key)} (QC-passed scans, n = {len(vals)})", mean,
            f"{exp:g} (reported)", f"within {100 * tol:g} %", ok,
            f"results/tables/metabolites.tsv {col}{scale} vs paper ({source})"))
    return rows


def twin_checks(conc: pd.DataFrame, summary: pd.DataFrame, tissue: pd.DataFrame,
                quality: pd.DataFrame, effects: pd.DataFrame, targets: Mapping,
                all_models: pd.DataFrame | None = None) -> list[dict]:
    """Recovery targets of the twin: Glu r and group means, tissue fractions, SNR and
    linewidths, truth inside the CI of every model row (not applicable for a model skipped
    in the run, whose reason ``all_models`` gives, or without a truth estimate)."""
    rows = []
    met = targets.get("metabolite", "Glu")
    src_c = "results/twin/recovery/concentrations.tsv vs results/twin/truth/concentrations.tsv"
    s = summary[summary["metabolite"] == met]
    r = float(s["r"].iloc[0]) if len(s) else math.nan
    r_min = float(targets["r_min"])
    rows.append(_check(f"{met} estimated vs planted: Pearson r (QC-passed scans)", r,
                       f">= {r_min:g}", f"r >= {r_min:g}",
                       r >= r_min if math.isfinite(r) else None, src_c))
    tol_pct = float(targets["group_mean_tol_pct"])
    g = conc[(conc["metabolite"] == met) & conc["qc_pass"].astype(bool)]
    for grp, gg in g.groupby("group", sort=True):
        est, true = float(gg["conc_est"].mean()), float(gg["conc_true"].mean())
        dev = 100 * (est - true) / true
        rows.append(_check(f"{met} group mean {grp} (mmol/kg, QC-passed scans)", est,
                           true, f"within {tol_pct:g} % (deviation {dev:+.2f} %)",
                           abs(dev) <= tol_pct, src_c))
    src_t = "results/twin/recovery/tissue.tsv vs results/twin/truth/tissue.tsv"
    tol_abs = float(targets["tissue_abs_tol"])
    min_frac = float(targets["tissue_min_fraction"])
    per_part = tissue.groupby("participant_id")["within_tol"].all()
    pct = 100 * float(per_part.mean()) if len(per_part) else math.nan
    rows.append(_check(
        f"tissue fractions within {tol_abs:g} of planted: % of participants (n = "
        f"{len(per_part)})", pct, f">= {100 * min_frac:g} %",
        f"|error| <= {tol_abs:g} for GM, WM and CSF in every session",
        pct >= 100 * min_frac if math.isfinite(pct) else None, src_t))
    src_q = "results/twin/recovery/quality.tsv vs results/twin/truth/scans.tsv"
    tol_q = float(targets["quality_tol_rel"])
    min_q = float(targets["quality_min_fraction"])
    for key, label in (("snr", "SNR"), ("linewidth_naa_hz", "NAA linewidth"),
                       ("linewidth_water_hz", "water linewidth")):
        if f"{key}_est" not in quality:
            continue
        est, true = quality[f"{key}_est"].mean(), quality[f"{key}_true"].mean()
        dev = (est - true) / true
        rows.append(_check(f"mean {label} (all scans, n = {len(quality)})", float(est),
                           float(true), f"within {100 * tol_q:g} % (deviation "
                           f"{100 * dev:+.1f} %)", abs(dev) <= tol_q, src_q))
        within = quality[f"{key}_within_tol"].astype(bool)
        pct = 100 * float(within.mean()) if len(within) else math.nan
        rows.append(_check(f"{label} within {100 * tol_q:g} % of planted: % of scans", pct,
                           f">= {100 * min_q:g} %", f"per-scan |relative error| <= "
                           f"{100 * tol_q:g} %", pct >= 100 * min_q, src_q))
    src_e = "results/twin/recovery/effects.tsv (models on recovered vs on planted values)"
    for model, m_all in effects.groupby("model", sort=False):
        m = m_all[m_all["section"].isin(CI_SECTIONS) & m_all["truth_inside_ci"].notna()]
        if m.empty:
            why = model_status(all_models, model) if all_models is not None else None
            if why is None and (m_all["section"] == SKIPPED).any():
                why = f"{model} skipped (not estimable with these data)"
            if why is None and m_all["section"].isin(CI_SECTIONS).any():
                why = (f"no truth estimate ({model} could not be estimated on the planted "
                       "values)")
            if why is not None:
                rows.append(_not_applicable(f"{model}: truth estimate inside the 95 % CI",
                                            why, "all rows", "every test, coefficient and "
                                            "contrast", src_e))
            continue
        inside = m["truth_inside_ci"].astype(bool)
        bad = ", ".join(m.loc[~inside, "term"].astype(str))
        rows.append(_check(
            f"{model}: truth estimate inside the 95 % CI", f"{int(inside.sum())}/{len(m)}",
            f"{len(m)}/{len(m)}", "every test, coefficient and contrast"
            + (f" (outside: {bad})" if bad else ""), bool(inside.all()), src_e))
    return rows


def build_verification(
    source: str,
    vcfg: Mapping,
    all_models: pd.DataFrame,
    metabolites: pd.DataFrame,
    *,
    twin_config: Mapping | None = None,
    recovery: Mapping[str, pd.DataFrame] | None = None,
    vcfg_path: str = "config/verification.yaml",
) -> pd.DataFrame:
    """The rows of ``results/verification.tsv`` for ``source`` 'twin' (planted truth; needs
    ``twin_config`` and the ``recovery`` tables) or 'sheets' (the paper's values)."""
    if source == "twin":
        if twin_config is None or recovery is None:
            raise ValueError("twin verification needs the twin config and the recovery tables")
        rows = finding_checks_twin(vcfg["findings"], all_models, twin_config)
        rows += twin_checks(recovery["concentrations"], recovery["summary"],
                            recovery["tissue"], recovery["quality"], recovery["effects"],
                            vcfg["twin"], all_models)
    else:
        alpha = float(vcfg.get("alpha", 0.05))
        rows = finding_checks_paper(vcfg["findings"], all_models, alpha, vcfg_path)
        rows += quality_checks_paper(metabolites, vcfg["quality"], vcfg_path)
    df = pd.DataFrame(rows, columns=VERIFICATION_COLUMNS)
    df["value"] = df["value"].map(_fmt_value)
    df["expected"] = df["expected"].map(_fmt_value)
    df["pass"] = df["pass"].map(lambda p: p if p == NOT_APPLICABLE else (
        "NA" if p is None else ("pass" if p else "fail")))
    return df


def _fmt_value(x: Any) -> str:
    if isinstance(x, str):
        return x
    return _fmt(x, 4)


def run_verification(
    source: str,
    verification_yaml: str | Path,
    all_models: str | Path,
    metabolites: str | Path,
    out: str | Path,
    *,
    twin_config: Mapping | None = None,
    recovery_dir: str | Path | None = None,
    html: str | Path | None = None,
) -> pd.DataFrame:
    """Read the run's tables, build the checks and write ``results/verification.tsv`` (and
    its HTML rendering when ``html`` is given)."""
    vcfg = load_verification_config(verification_yaml)
    models = read_tsv(all_models)
    met = read_tsv(metabolites)
    recovery = None
    if source == "twin":
        if recovery_dir is None:
            raise ValueError("twin verification needs --recovery-dir")
        d = Path(recovery_dir)
        recovery = {k: read_tsv(d / f"{f}.tsv") for k, f in (
            ("concentrations", "concentrations"), ("summary", "concentrations_summary"),
            ("tissue", "tissue"), ("quality", "quality"), ("effects", "effects"))}
        eff = recovery["effects"]
        eff["truth_inside_ci"] = eff["truth_inside_ci"].map(
            {True: True, False: False, "True": True, "False": False}).astype("boolean")
        for key in ("tissue",):
            recovery[key]["within_tol"] = recovery[key]["within_tol"].astype(bool)
    df = build_verification(source, vcfg, models, met, twin_config=twin_config,
                            recovery=recovery,
                            vcfg_path=f"{Path(verification_yaml).parent.name}/"
                                      f"{Path(verification_yaml).name}")
    _write(df, out)
    if html:
        from mrsflow.report import write_html

        n_fail = int((df["pass"] == "fail").sum())
        n_na = int((df["pass"] == NOT_APPLICABLE).sum())
        write_html(df, html, f"Verification ({source}): {int((df['pass'] == 'pass').sum())} "
                   f"pass, {n_fail} fail" + (f", {n_na} not applicable" if n_na else ""),
                   Path(out).name)
    return df
