"""Verification (mrsflow.verify): known-answer checks on small hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT

from mrsflow import verify
from mrsflow.errors import InputError

KEYS = ["participant_id", "session", "film"]


def _scan(i: int, group: str = "HC") -> dict:
    return {"participant_id": f"sub-{group.lower()}{i:02d}", "session": "ses-1",
            "film": "neutral", "group": group, "drug": "none" if group == "HC" else "placebo"}


def _rec_rows(truth: list[float], est: list[float], met: str, crlb: float = 4.0,
              qc: list[bool] | None = None, groups: list[str] | None = None) -> list[dict]:
    qc = qc or [True] * len(truth)
    groups = groups or ["HC"] * len(truth)
    return [{**_scan(i, g), "metabolite": met, "conc_molal": e, "crlb_pct": crlb, "qc_pass": q}
            for i, (e, q, g) in enumerate(zip(est, qc, groups, strict=True))]


def _truth_rows(truth: list[float], met: str, groups: list[str] | None = None) -> list[dict]:
    groups = groups or ["HC"] * len(truth)
    return [{**{k: _scan(i, g)[k] for k in KEYS}, "metabolite": met, "conc_molal": t,
             "conc_molar": 0.8 * t} for i, (t, g) in enumerate(zip(truth, groups, strict=True))]


# --- concentrations --------------------------------------------------------------------------


def test_with_combinations_sums_parts_per_scan():
    truth = pd.DataFrame(_truth_rows([6.0, 7.0], "Cr") + _truth_rows([4.0, 5.0], "PCr")
                         + _truth_rows([10.0, 11.0], "Glu"))
    out = verify.with_combinations(truth)
    tcr = out[out.metabolite == "tCr"].sort_values("participant_id")
    assert tcr.conc_molal.tolist() == [10.0, 12.0]
    assert tcr.conc_molar.tolist() == pytest.approx([8.0, 9.6])
    assert "Glx" not in set(out.metabolite)  # Gln missing: no Glx


def test_recovery_summary_known_bias_error_r_and_crlb_ratio():
    # A: +5 % on every scan -> bias 5 %, median |error| 5 %, r = 1, SD(error) 0
    a_true, a_est = [8.0, 10.0, 12.0, 10.0], [8.4, 10.5, 12.6, 10.5]
    # B: errors +10, -10, +5, -5 % -> bias 0, median |error| 7.5 %, SD = sqrt(250/3) %
    b_true, b_est = [10.0, 10.0, 10.0, 10.0], [11.0, 9.0, 10.5, 9.5]
    sd_b = math.sqrt(250 / 3)
    rec = pd.DataFrame(_rec_rows(a_true, a_est, "A")
                       + _rec_rows(b_true, b_est, "B", crlb=sd_b / 2)
                       # an excluded scan with a wild value must not count
                       + _rec_rows([10.0], [50.0], "C", qc=[False]))
    truth = pd.DataFrame(_truth_rows(a_true, "A") + _truth_rows(b_true, "B")
                         + _truth_rows([10.0], "C"))
    table = verify.recovery_table(rec, truth)
    assert len(table) == 9
    assert table.loc[table.metabolite == "A", "error_pct"].to_numpy() == pytest.approx([5] * 4)
    s = verify.recovery_summary(table).set_index("metabolite")
    assert list(s.index) == ["A", "B"]  # C has no QC-passed scan
    assert s.loc["A", "n"] == 4
    assert s.loc["A", "bias_pct"] == pytest.approx(5.0)
    assert s.loc["A", "median_abs_error_pct"] == pytest.approx(5.0)
    assert s.loc["A", "r"] == pytest.approx(1.0)
    assert s.loc["A", "sd_error_pct"] == pytest.approx(0.0, abs=1e-9)
    assert s.loc["B", "bias_pct"] == pytest.approx(0.0, abs=1e-12)
    assert s.loc["B", "median_abs_error_pct"] == pytest.approx(7.5)
    assert s.loc["B", "sd_error_pct"] == pytest.approx(sd_b)
    assert s.loc["B", "crlb_ratio"] == pytest.approx(2.0)
    assert math.isnan(s.loc["B", "r"])  # constant truth: r undefined


def test_truth_metabolites_keeps_rows_and_qc_and_replaces_values():
    parts = {"Cr": ([6.0, 6.5], [5.0, 7.0]), "PCr": ([4.0, 4.5], [4.5, 4.0]),
             "Glu": ([10.0, 9.0], [11.0, 8.0])}
    rec = pd.DataFrame(sum((_rec_rows(e, t, m, qc=[True, False]) for m, (t, e) in
                            parts.items()), []) + _rec_rows([9.5, 11.0], [9.5, 11.0], "tCr",
                                                            qc=[True, False]))
    rec["conc_molar"] = 1.0
    rec["ratio_tcr"] = 1.0
    for c in ("f_gm", "f_wm", "f_csf"):
        rec[c] = 0.1
    truth = pd.DataFrame(sum((_truth_rows(t, m) for m, (t, _) in parts.items()), []))
    tissue = pd.DataFrame({"participant_id": ["sub-hc00", "sub-hc01"], "session": "ses-1",
                           "f_gm": [0.5, 0.6], "f_wm": [0.4, 0.3], "f_csf": [0.1, 0.1]})
    out = verify.truth_metabolites(rec, truth, tissue)
    assert list(out.columns) == list(rec.columns)
    assert len(out) == len(rec)
    assert out.qc_pass.tolist() == rec.qc_pass.tolist()
    glu = out[out.metabolite == "Glu"].sort_values("participant_id")
    assert glu.conc_molal.tolist() == [10.0, 9.0]
    assert glu.conc_molar.tolist() == pytest.approx([8.0, 7.2])
    tcr = out[out.metabolite == "tCr"].sort_values("participant_id")
    assert tcr.conc_molal.tolist() == [10.0, 11.0]  # Cr + PCr of the truth
    assert glu.ratio_tcr.tolist() == pytest.approx([1.0, 9.0 / 11.0])
    assert glu.f_gm.tolist() == [0.5, 0.6]


# --- tissue and quality ----------------------------------------------------------------------


def test_tissue_recovery_errors_and_tolerance():
    rec = pd.DataFrame([
        {**_scan(0), "metabolite": "Glu", "f_gm": 0.50, "f_wm": 0.40, "f_csf": 0.10},
        {**_scan(0), "film": "cocaine", "metabolite": "Glu", "f_gm": 0.52, "f_wm": 0.38,
         "f_csf": 0.10},
        {**_scan(1), "metabolite": "Glu", "f_gm": 0.60, "f_wm": 0.30, "f_csf": 0.10},
    ])
    truth = pd.DataFrame({"participant_id": ["sub-hc00", "sub-hc01"], "session": "ses-1",
                          "f_gm": [0.50, 0.50], "f_wm": [0.40, 0.40], "f_csf": [0.10, 0.10]})
    t = verify.tissue_recovery(rec, truth, tol=0.05).set_index("participant_id")
    assert t.loc["sub-hc00", "f_gm_est"] == pytest.approx(0.51)  # mean of the session's scans
    assert t.loc["sub-hc00", "max_abs_error"] == pytest.approx(0.01)
    assert bool(t.loc["sub-hc00", "within_tol"])
    assert t.loc["sub-hc01", "max_abs_error"] == pytest.approx(0.10)
    assert not bool(t.loc["sub-hc01", "within_tol"])


def test_quality_recovery_relative_errors():
    rec = pd.DataFrame([{**_scan(i), "metabolite": "Glu", "qc_pass": True, "snr": s,
                         "linewidth_naa_hz": 7.0, "linewidth_water_hz": 8.0}
                        for i, s in enumerate([33.0, 40.0])])
    truth = pd.DataFrame([{**{k: _scan(i)[k] for k in KEYS}, "snr": 30.0, "linewidth_hz": 7.0,
                           "linewidth_water_hz": 10.0} for i in range(2)])
    q = verify.quality_recovery(rec, truth, tol=0.10)
    assert q.snr_rel_error.tolist() == pytest.approx([0.1, 1 / 3])
    assert q.snr_within_tol.tolist() == [True, False]
    assert q.linewidth_naa_hz_within_tol.tolist() == [True, True]
    assert q.linewidth_water_hz_rel_error.tolist() == pytest.approx([-0.2, -0.2])


# --- effects -----------------------------------------------------------------------------------


def _model_rows(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["section", "term", "estimate", "se", "ci_low", "ci_high",
                                       "p"])


def test_compare_effects_truth_inside_ci():
    rec = {"m": _model_rows([("contrast", "a", 0.4, 0.2, 0.0, 1.0, 0.05),
                             ("contrast", "b", 2.5, 0.2, 2.0, 3.0, 0.001),
                             ("variance", "icc", 0.3, np.nan, np.nan, np.nan, np.nan)])}
    tru = {"m": _model_rows([("contrast", "a", 0.5, 0.1, 0.3, 0.7, 0.01),
                             ("contrast", "b", 5.0, 0.1, 4.8, 5.2, 0.001),
                             ("variance", "icc", 0.35, np.nan, np.nan, np.nan, np.nan)])}
    e = verify.compare_effects(rec, tru).set_index("term")
    assert bool(e.loc["a", "truth_inside_ci"]) is True
    assert bool(e.loc["b", "truth_inside_ci"]) is False
    assert e.loc["icc", "truth_inside_ci"] is pd.NA
    assert e.loc["b", "difference"] == pytest.approx(-2.5)
    assert e.loc["a", "truth_estimate"] == pytest.approx(0.5)


# --- verification rows -------------------------------------------------------------------------


FINDINGS = [
    {"name": "base", "label": "base", "model": "welch", "section": "test", "term": "CUD - HC",
     "claim": "significant", "direction": "negative", "reported_p": 0.008,
     "planted": {"effect": "glu_group_d", "sign": -1}},
    {"name": "film", "label": "film", "model": "lmm", "section": "contrast",
     "term": "film_in_CUD", "claim": "significant", "direction": "positive",
     "reported_p": 0.017, "planted": {"effect": "glu_film_pct.CUD"}},
    {"name": "hc", "label": "hc", "model": "lmm", "section": "contrast", "term": "film_in_HC",
     "claim": "direction", "direction": "negative",
     "planted": {"effect": "glu_film_pct.HC"}},
    {"name": "nac", "label": "nac", "model": "nac", "section": "contrast",
     "term": "nac_vs_placebo", "claim": "not_significant", "planted": {"effect": "glu_nac_pct"}},
]
TWIN_EFFECTS = {"effects": {"glu_group_d": 0.75, "glu_film_pct": {"CUD": 5.0, "HC": -1.5},
                            "glu_nac_pct": 0.0}}
TARGETS = {"metabolite": "Glu", "r_min": 0.9, "group_mean_tol_pct": 3.0,
           "tissue_abs_tol": 0.05, "tissue_min_fraction": 0.95, "quality_tol_rel": 0.10,
           "quality_min_fraction": 0.95}
QUALITY = {"snr": {"label": "SNR", "column": "snr", "scale": 0.5, "reported_mean": 17.5,
                   "tolerance_rel": 0.2},
           "lw": {"label": "linewidth", "column": "linewidth_naa_hz", "reported_mean": 6.9,
                  "tolerance_rel": 0.2}}


def _all_models(base=(-1.0, 0.01), film=(0.5, 0.03), hc=-0.1, nac_ci=(-0.2, 0.3),
                nac_p=0.4) -> pd.DataFrame:
    return pd.DataFrame([
        {"model": "welch", "section": "test", "term": "CUD - HC", "estimate": base[0],
         "ci_low": base[0] - 1, "ci_high": base[0] + 1, "p": base[1]},
        {"model": "lmm", "section": "contrast", "term": "film_in_CUD", "estimate": film[0],
         "ci_low": 0.1, "ci_high": 0.9, "p": film[1]},
        {"model": "lmm", "section": "contrast", "term": "film_in_HC", "estimate": hc,
         "ci_low": -0.5, "ci_high": 0.3, "p": 0.6},
        {"model": "nac", "section": "contrast", "term": "nac_vs_placebo",
         "estimate": sum(nac_ci) / 2, "ci_low": nac_ci[0], "ci_high": nac_ci[1], "p": nac_p},
    ])


def _verdicts(df: pd.DataFrame) -> dict[str, str]:
    assert list(df.columns) == verify.VERIFICATION_COLUMNS
    return dict(zip(df["check"], df["pass"], strict=True))


def test_verification_sheets_against_the_paper():
    met = pd.DataFrame([{**_scan(i), "metabolite": m, "qc_pass": i < 3, "snr": 35.0 + i,
                         "linewidth_naa_hz": 7.0} for i in range(4) for m in ("Glu", "NAA")])
    vcfg = {"findings": FINDINGS, "quality": QUALITY, "twin": TARGETS, "alpha": 0.05}
    v = _verdicts(verify.build_verification("sheets", vcfg, _all_models(), met))
    assert v == {"base: direction": "pass", "base: p": "pass", "film: direction": "pass",
                 "film: p": "pass", "hc: direction": "pass", "nac: p": "pass",
                 "mean SNR (QC-passed scans, n = 3)": "pass",
                 "mean linewidth (QC-passed scans, n = 3)": "pass"}
    df = verify.build_verification("sheets", vcfg, _all_models(), met).set_index("check")
    assert float(df.loc["mean SNR (QC-passed scans, n = 3)", "value"]) == pytest.approx(18.0)
    # wrong direction, non-significant film effect, significant NAC effect, SNR too low
    met["snr"] = 20.0
    bad = _all_models(base=(1.0, 0.01), film=(0.5, 0.2), nac_p=0.01)
    v = _verdicts(verify.build_verification("sheets", vcfg, bad, met))
    assert v["base: direction"] == "fail" and v["base: p"] == "pass"
    assert v["film: p"] == "fail" and v["nac: p"] == "fail"
    assert v["mean SNR (QC-passed scans, n = 3)"] == "fail"


def _recovery(r_ok: bool = True, ci_ok: bool = True) -> dict[str, pd.DataFrame]:
    conc = pd.DataFrame({"group": ["CUD", "CUD", "HC", "HC"], "metabolite": "Glu",
                         "conc_true": [10.0, 10.0, 11.0, 11.0],
                         "conc_est": [10.2, 10.1, 11.0, 12.0], "qc_pass": True})
    summary = pd.DataFrame({"metabolite": ["Glu"], "r": [0.95 if r_ok else 0.5]})
    tissue = pd.DataFrame({"participant_id": ["a", "a", "b"], "within_tol": [True, True, True]})
    quality = pd.DataFrame({
        "snr_est": [30.0, 31.0], "snr_true": [30.0, 30.0], "snr_within_tol": [True, True],
        "linewidth_naa_hz_est": [7.0, 9.0], "linewidth_naa_hz_true": [7.0, 7.0],
        "linewidth_naa_hz_within_tol": [True, False],
    })
    effects = pd.DataFrame({"model": "lmm", "section": ["contrast", "contrast", "descriptive"],
                            "term": ["x", "y", "cell"],
                            "truth_inside_ci": pd.array([True, ci_ok, False], "boolean")})
    return {"concentrations": conc, "summary": summary, "tissue": tissue, "quality": quality,
            "effects": effects}


def test_verification_twin_against_the_planted_truth():
    vcfg = {"findings": FINDINGS, "quality": QUALITY, "twin": TARGETS}
    df = verify.build_verification("twin", vcfg, _all_models(), pd.DataFrame(),
                                   twin_config=TWIN_EFFECTS, recovery=_recovery())
    v = _verdicts(df)
    assert v["base: direction"] == "pass"
    assert v["film: direction"] == "pass" and v["hc: direction"] == "pass"
    assert v["nac: planted 0 inside 95 % CI"] == "pass"
    assert v["Glu estimated vs planted: Pearson r (QC-passed scans)"] == "pass"
    assert v["Glu group mean CUD (mmol/kg, QC-passed scans)"] == "pass"  # +1.5 %
    assert v["Glu group mean HC (mmol/kg, QC-passed scans)"] == "fail"  # +4.5 %
    assert v["tissue fractions within 0.05 of planted: % of participants (n = 2)"] == "pass"
    assert v["mean SNR (all scans, n = 2)"] == "pass"
    assert v["SNR within 10 % of planted: % of scans"] == "pass"
    assert v["mean NAA linewidth (all scans, n = 2)"] == "fail"  # +14 %
    assert v["NAA linewidth within 10 % of planted: % of scans"] == "fail"  # 50 %
    assert v["lmm: truth estimate inside the 95 % CI"] == "pass"  # descriptive rows not checked
    expected = df.set_index("check").loc["base: direction", "expected"]
    assert expected.startswith("< 0") and "-0.75" in expected

    df = verify.build_verification("twin", vcfg, _all_models(base=(0.3, 0.5),
                                                             nac_ci=(0.1, 0.5)),
                                   pd.DataFrame(), twin_config=TWIN_EFFECTS,
                                   recovery=_recovery(r_ok=False, ci_ok=False))
    v = _verdicts(df)
    assert v["base: direction"] == "fail"
    assert v["nac: planted 0 inside 95 % CI"] == "fail"
    assert v["Glu estimated vs planted: Pearson r (QC-passed scans)"] == "fail"
    assert v["lmm: truth estimate inside the 95 % CI"] == "fail"
    assert "outside: y" in df.set_index("check").loc["lmm: truth estimate inside the 95 % CI",
                                                      "tolerance"]


def test_missing_model_row_is_a_clear_error():
    with pytest.raises(InputError, match="model='welch'"):
        verify.stat_row(_all_models().iloc[1:], "welch", "test", "CUD - HC")


def test_verification_yaml_names_rows_of_the_configured_models():
    """Every finding of config/verification.yaml points at a model and contrast of the
    default config, and its planted effect exists in twin.effects."""
    vcfg = verify.load_verification_config(ROOT / "config" / "verification.yaml")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    models = {m["name"]: m for m in cfg["stats"]["models"]}
    for f in vcfg["findings"]:
        assert f["model"] in models, f
        if f["section"] == "contrast":
            assert f["term"] in [c["name"] for c in models[f["model"]]["contrasts"]], f
        verify.planted_effect(cfg["twin"], f["planted"])


def _write_recovery_inputs(tmp_path, rec: pd.DataFrame, true: list[float],
                           groups: list[str]):
    """The inputs of :func:`verify.run_recovery` for a Glu-only study: ``rec`` (given the
    constant columns the tables need) as met.tsv, the planted truth, an empty craving table
    and a one-model (Welch) stats config; returns (truth_dir, stats_cfg, outputs)."""
    for c, v in (("conc_molar", 8.0), ("snr", 30.0), ("linewidth_naa_hz", 7.0),
                 ("linewidth_water_hz", 8.0), ("f_gm", 0.5), ("f_wm", 0.4), ("f_csf", 0.1)):
        rec[c] = v
    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    pd.DataFrame(_truth_rows(true, "Glu", groups)).to_csv(
        truth_dir / "concentrations.tsv", sep="\t", index=False)
    rec[KEYS].assign(snr=30.0, linewidth_hz=7.0, linewidth_water_hz=8.0).to_csv(
        truth_dir / "scans.tsv", sep="\t", index=False)
    rec[["participant_id", "session"]].assign(f_gm=0.5, f_wm=0.4, f_csf=0.1).to_csv(
        truth_dir / "tissue.tsv", sep="\t", index=False)
    rec.to_csv(tmp_path / "met.tsv", sep="\t", index=False)
    pd.DataFrame(columns=["participant_id", "group", "session", "drug", "period", "film",
                          "time", "vas"]).to_csv(tmp_path / "crav.tsv", sep="\t", index=False)
    rec[["participant_id", "group"]].to_csv(tmp_path / "part.tsv", sep="\t", index=False)
    stats_cfg = {"models": [{"name": "welch", "kind": "welch_t", "table": "metabolites",
                             "filter": "metabolite == 'Glu' and qc_pass",
                             "outcome": "conc_molal", "by": "group"}]}
    outputs = {k: tmp_path / "rec" / f"{k}.tsv" for k in
               ("concentrations", "summary", "tissue", "quality", "effects")}
    outputs["png"] = tmp_path / "rec" / "recovery.png"
    return truth_dir, stats_cfg, outputs


def test_run_recovery_end_to_end(tmp_path):
    """run_recovery on a tiny study with one Welch model: files, truth estimate exact."""
    rng = np.random.default_rng(1)
    groups = ["CUD"] * 4 + ["HC"] * 4
    true = 10 + rng.normal(0, 0.5, 8)
    est = true * (1 + rng.normal(0, 0.01, 8))
    rec = pd.DataFrame(_rec_rows(list(true), list(est), "Glu", groups=groups))
    rec["qc_reason"] = ""
    truth_dir, stats_cfg, outputs = _write_recovery_inputs(tmp_path, rec, list(true), groups)
    out = verify.run_recovery(tmp_path / "met.tsv", tmp_path / "crav.tsv",
                              tmp_path / "part.tsv", truth_dir, stats_cfg, TARGETS, outputs)
    assert all(p.is_file() for p in outputs.values())
    test = out["effects"][out["effects"].section == "test"].iloc[0]
    x = np.asarray(true)
    assert test["truth_estimate"] == pytest.approx(x[:4].mean() - x[4:].mean())
    assert bool(test["truth_inside_ci"])
    back = verify.read_tsv(outputs["effects"])
    assert set(back.columns) >= {"estimate", "ci_low", "ci_high", "truth_estimate",
                                 "truth_inside_ci"}


# --- not applicable: models absent, skipped or without the row ----------------------------------

SKIP_REASON = "group=CUD has 1 observation(s); need at least 2"


def _pilot_models() -> pd.DataFrame:
    """The stats tables of a run where 'welch' was skipped, 'nac' is not among the config's
    models and 'lmm' has no film_in_HC row."""
    df = _all_models()
    df = df[(df.model == "lmm") & (df.term == "film_in_CUD")]
    skipped = {"model": "welch", "section": "skipped", "term": "", "estimate": np.nan,
               "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "note": SKIP_REASON}
    return pd.concat([pd.DataFrame([skipped]), df], ignore_index=True)


def test_paper_checks_not_applicable_with_the_reason():
    met = pd.DataFrame([{**_scan(i), "metabolite": "Glu", "qc_pass": True, "snr": 35.0}
                        for i in range(3)])  # no linewidth column
    vcfg = {"findings": FINDINGS, "quality": QUALITY, "twin": TARGETS, "alpha": 0.05}
    df = verify.build_verification("sheets", vcfg, _pilot_models(), met)
    v = _verdicts(df)
    assert v == {"base: direction": "n/a", "base: p": "n/a", "film: direction": "pass",
                 "film: p": "pass", "hc: direction": "n/a", "nac: p": "n/a",
                 "mean SNR (QC-passed scans, n = 3)": "pass",
                 "mean linewidth (QC-passed scans)": "n/a"}
    val = df.set_index("check")["value"]
    assert val["base: p"] == f"not applicable: welch skipped ({SKIP_REASON})"
    assert val["hc: direction"] == ("not applicable: no contrast row 'film_in_HC' in "
                                    "results/stats/lmm.tsv")
    assert val["nac: p"] == ("not applicable: nac is not among the models of the config's "
                             "stats block")
    assert val["mean linewidth (QC-passed scans)"] == (
        "not applicable: no column 'linewidth_naa_hz' in results/tables/metabolites.tsv")
    assert df.set_index("check").loc["base: p", "expected"] == "0.008 (reported)"


def test_twin_checks_not_applicable_with_the_reason():
    rec = _recovery()
    rec["effects"] = pd.concat([rec["effects"], pd.DataFrame({
        "model": ["welch", "twice"], "section": ["skipped", "contrast"], "term": ["", "z"],
        "truth_inside_ci": pd.array([pd.NA, pd.NA], "boolean")})], ignore_index=True)
    models = pd.concat([_pilot_models(), pd.DataFrame([
        {"model": "twice", "section": "contrast", "term": "z", "estimate": 1.0},
        {"model": "lmm", "section": "contrast", "term": "x", "estimate": 1.0}])])
    vcfg = {"findings": FINDINGS, "quality": QUALITY, "twin": TARGETS}
    df = verify.build_verification("twin", vcfg, models, pd.DataFrame(),
                                   twin_config=TWIN_EFFECTS, recovery=rec)
    v = _verdicts(df)
    assert v["base: direction"] == "n/a" and v["hc: direction"] == "n/a"
    assert v["nac: planted 0 inside 95 % CI"] == "n/a"
    assert v["film: direction"] == "pass"
    assert v["welch: truth estimate inside the 95 % CI"] == "n/a"
    assert v["twice: truth estimate inside the 95 % CI"] == "n/a"
    assert v["lmm: truth estimate inside the 95 % CI"] == "pass"
    assert v["Glu estimated vs planted: Pearson r (QC-passed scans)"] == "pass"
    val = df.set_index("check")["value"]
    assert val["welch: truth estimate inside the 95 % CI"] == (
        f"not applicable: welch skipped ({SKIP_REASON})")
    assert val["twice: truth estimate inside the 95 % CI"].startswith(
        "not applicable: no truth estimate (twice could not be estimated on the planted")
    assert df.set_index("check").loc["base: direction", "expected"].startswith("< 0")


def test_verification_tsv_and_html_count_not_applicable_checks(tmp_path):
    vcfg_path = tmp_path / "verification.yaml"
    vcfg_path.write_text(yaml.safe_dump({"findings": FINDINGS, "quality": QUALITY,
                                         "twin": TARGETS, "alpha": 0.05}))
    _pilot_models().to_csv(tmp_path / "all_models.tsv", sep="\t", index=False)
    pd.DataFrame([{**_scan(i), "metabolite": "Glu", "qc_pass": True, "snr": 35.0,
                   "linewidth_naa_hz": 7.0} for i in range(3)]).to_csv(
        tmp_path / "met.tsv", sep="\t", index=False)
    df = verify.run_verification("sheets", vcfg_path, tmp_path / "all_models.tsv",
                                 tmp_path / "met.tsv", tmp_path / "v.tsv",
                                 html=tmp_path / "v.html")
    back = pd.read_csv(tmp_path / "v.tsv", sep="\t", keep_default_na=False)
    assert back["pass"].tolist() == df["pass"].tolist()
    assert (back["pass"] == "n/a").sum() == 4
    assert "4 pass, 0 fail, 4 not applicable" in (tmp_path / "v.html").read_text()


def test_run_recovery_of_a_pilot_reports_skipped_models(tmp_path):
    """One participant per group: the Welch model is skipped in both runs, the recovery
    tables are written, and the effects table carries the skipped row."""
    rec = pd.DataFrame(_rec_rows([10.0, 11.0], [10.1, 10.9], "Glu", groups=["CUD", "HC"]))
    truth_dir, stats_cfg, outputs = _write_recovery_inputs(tmp_path, rec, [10.0, 11.0],
                                                           ["CUD", "HC"])
    out = verify.run_recovery(tmp_path / "met.tsv", tmp_path / "crav.tsv",
                              tmp_path / "part.tsv", truth_dir, stats_cfg, TARGETS, outputs)
    assert out["effects"]["section"].tolist() == ["skipped"]
    assert all(p.is_file() for p in outputs.values())
    with pytest.raises(InputError, match="group=CUD has 1 observation"):
        verify.run_recovery(tmp_path / "met.tsv", tmp_path / "crav.tsv", tmp_path / "part.tsv",
                            truth_dir, {**stats_cfg, "on_inestimable": "error"}, TARGETS,
                            outputs)
