"""mrsflow.stats: every model checked against a known answer (closed form, hand computation,
or an independent implementation), plus the writers and the spec errors.

Tolerances: closed-form estimates that do not depend on the variance components (balanced
designs) are checked to 1e-8; quantities that depend on the REML optimum (mixed-model SEs,
Satterthwaite df, p-values) to a relative 1e-3 — the REML optimiser stops at a gradient
tolerance, so the variance components, and with them the SEs, agree to ~1e-5 only.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mrsflow import stats

Z975 = 1.959963984540054
CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


# --------------------------------------------------------------------------------------------
# small table builders
# --------------------------------------------------------------------------------------------


def met_rows(values: dict, **const) -> pd.DataFrame:
    """metabolites-like rows: values maps (participant_id, group, film) -> Glu."""
    rows = []
    for (pid, group, film), v in values.items():
        rows.append(
            dict(participant_id=pid, group=group, session="ses-1",
                 drug="placebo" if group == "CUD" else "none", period=1, film=film,
                 metabolite="Glu", conc_molal=float(v), qc_pass=True, **const)
        )
    return pd.DataFrame(rows)


def paired_data(d_cud, d_hc, means_cud, means_hc) -> pd.DataFrame:
    """Two-film data whose per-participant film differences are exactly d_* (mean ± d/2)."""
    vals = {}
    for prefix, group, ds, ms in (("c", "CUD", d_cud, means_cud), ("h", "HC", d_hc, means_hc)):
        for i, (d, m) in enumerate(zip(ds, ms, strict=True)):
            vals[(f"{prefix}{i:02d}", group, "neutral")] = m - d / 2
            vals[(f"{prefix}{i:02d}", group, "cocaine")] = m + d / 2
    return met_rows(vals)


def row(df: pd.DataFrame, term: str) -> pd.Series:
    """The row of ``term``; a name shared by a coefficient and an ANOVA term -> coefficient."""
    sel = df[df["term"] == term]
    if len(sel) > 1:
        sel = sel[sel["section"] != "anova"]
    assert len(sel) == 1, f"{term!r} not in {list(df['term'])}"
    return sel.iloc[0]


def make_study(seed: int = 0, n_cud: int = 26, n_hc: int = 30):
    """The whole study design with planted effects (a small stand-in for the twin)."""
    rng = np.random.default_rng(seed)
    parts, met, crav = [], [], []
    for i in range(n_cud + n_hc):
        g = "CUD" if i < n_cud else "HC"
        pid = f"sub-{i + 1:03d}"
        parts.append(dict(participant_id=pid, group=g, age=float(rng.uniform(20, 55)),
                          sex="M" if rng.random() < 0.7 else "F", education_years=12.0,
                          cigarettes_per_day=5.0,
                          cocaine_g_per_week=float(rng.gamma(2, 2)) if g == "CUD" else np.nan,
                          cocaine_years=10.0 if g == "CUD" else np.nan))
        u, uc, fgm = rng.normal(0, 0.8), rng.normal(0, 10), rng.uniform(0.4, 0.6)
        if g == "CUD":
            sessions = [("nac", 1), ("placebo", 2)] if i % 2 else [("placebo", 1), ("nac", 2)]
        else:
            sessions = [("none", 1)]
        for drug, period in sessions:
            for film in ("neutral", "cocaine"):
                coc = film == "cocaine"
                glu = (10 + u - 0.6 * (g == "CUD") + 0.7 * (coc and g == "CUD")
                       - 0.4 * (coc and drug == "nac") + 0.1 * (period == 2) + rng.normal(0, 0.3))
                # the scan's linewidth: 0.5 Hz narrower during the cocaine film (BOLD-like),
                # a deterministic jitter (no random draw: the other numbers stay as they were)
                lw = 8.0 - 0.5 * coc + 0.1 * ((7 * i + 3 * period + 2 * coc) % 5 - 2)
                for m, c in (("Glu", glu), ("NAA", 12 + rng.normal())):
                    met.append(dict(participant_id=pid, group=g, session=f"ses-{period}",
                                    drug=drug, period=period, film=film, metabolite=m,
                                    conc_molal=c, conc_molar=0.8 * c, ratio_tcr=c / 8,
                                    crlb_pct=5.0, snr=30.0, linewidth_water_hz=6.0,
                                    linewidth_naa_hz=5.0, linewidth_hz=lw,
                                    linewidth_matched_hz=lw, f_gm=fgm, f_wm=0.3,
                                    f_csf=0.7 - fgm, qc_pass=True, qc_reason=""))
                pre = 20 + uc + rng.normal(0, 3)
                post = (pre + (25 if coc and g == "CUD" else 2) - (10 if coc and drug == "nac"
                                                                   else 0) + rng.normal(0, 4))
                for t, v in (("pre", pre), ("post", post)):
                    crav.append(dict(participant_id=pid, group=g, session=f"ses-{period}",
                                     drug=drug, period=period, film=film, time=t, vas=v))
    return pd.DataFrame(met), pd.DataFrame(crav), pd.DataFrame(parts)


@pytest.fixture(scope="module")
def study():
    return make_study()


# --------------------------------------------------------------------------------------------
# Welch t
# --------------------------------------------------------------------------------------------


def test_welch_matches_hand_formula_and_scipy():
    cud = [9.1, 9.8, 10.2, 8.7, 9.5, 9.0]
    hc = [10.4, 10.9, 9.9, 11.2, 10.6, 10.1, 10.8]
    vals = {(f"c{i}", "CUD", "neutral"): v for i, v in enumerate(cud)}
    vals |= {(f"h{i}", "HC", "neutral"): v for i, v in enumerate(hc)}
    spec = {"name": "w", "kind": "welch_t", "table": "metabolites",
            "filter": "film == 'neutral'", "outcome": "conc_molal", "by": "group"}
    res = stats.run_model(spec, met_rows(vals), None, None)
    t_row = row(res, "CUD - HC")

    # by hand (Welch 1947): t = (m1 - m2)/sqrt(s1²/n1 + s2²/n2), Welch-Satterthwaite df
    n1, n2 = len(cud), len(hc)
    m1, m2 = sum(cud) / n1, sum(hc) / n2
    v1 = sum((x - m1) ** 2 for x in cud) / (n1 - 1)
    v2 = sum((x - m2) ** 2 for x in hc) / (n2 - 1)
    se = math.sqrt(v1 / n1 + v2 / n2)
    df = (v1 / n1 + v2 / n2) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    t = (m1 - m2) / se
    assert t_row["estimate"] == pytest.approx(m1 - m2, abs=1e-12)
    assert t_row["se"] == pytest.approx(se, rel=1e-12)
    assert t_row["statistic"] == pytest.approx(t, rel=1e-10)
    assert t_row["df"] == pytest.approx(df, rel=1e-12)
    tc = sps.t.ppf(0.975, df)
    assert t_row["ci_low"] == pytest.approx(m1 - m2 - tc * se, rel=1e-10)
    assert t_row["ci_high"] == pytest.approx(m1 - m2 + tc * se, rel=1e-10)
    ref = sps.ttest_ind(cud, hc, equal_var=False)
    assert t_row["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert t_row["p"] == pytest.approx(ref.pvalue, rel=1e-8)
    assert t_row["p"] == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-8)
    assert t_row["stat_type"] == "t" and t_row["n_obs"] == n1 + n2

    # Hedges' g: pooled SD, J = 1 - 3/(4(n1+n2) - 9); Var(d) = (n1+n2)/(n1n2) + d²/(2(n1+n2))
    sp = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    d = (m1 - m2) / sp
    j = 1 - 3 / (4 * (n1 + n2) - 9)
    se_g = j * math.sqrt((n1 + n2) / (n1 * n2) + d**2 / (2 * (n1 + n2)))
    assert t_row["effect_size_type"] == "hedges_g"
    assert t_row["effect_size"] == pytest.approx(j * d, rel=1e-12)
    assert t_row["es_ci_low"] == pytest.approx(j * d - Z975 * se_g, rel=1e-10)
    assert t_row["es_ci_high"] == pytest.approx(j * d + Z975 * se_g, rel=1e-10)

    desc = row(res, "mean[group=CUD]")
    assert desc["estimate"] == pytest.approx(m1) and desc["sd"] == pytest.approx(math.sqrt(v1))
    assert desc["n_obs"] == n1


def test_summary_wording_follows_the_numbers(tmp_path):
    cud, hc = [9.1, 9.8, 10.2, 8.7, 9.5, 9.0], [10.4, 10.9, 9.9, 11.2, 10.6, 10.1, 10.8]
    vals = {(f"c{i}", "CUD", "neutral"): v for i, v in enumerate(cud)}
    vals |= {(f"h{i}", "HC", "neutral"): v for i, v in enumerate(hc)}
    spec = {"name": "w", "kind": "welch_t", "table": "metabolites", "outcome": "conc_molal",
            "by": "group", "label": "Baseline Glu"}
    res = {"w": stats.run_model(spec, met_rows(vals), None, None)}
    text = stats.write_summary_md(res, tmp_path / "s.md", context={"models": [spec]}).read_text()
    assert "Baseline Glu was lower in CUD (M = 9.38, SD = 0.56, n = 6) than in HC" in text
    flipped = met_rows({(p, "HC" if g == "CUD" else "CUD", f): v for (p, g, f), v in vals.items()})
    res = {"w": stats.run_model(spec, flipped, None, None)}
    text = stats.write_summary_md(res, tmp_path / "s.md", context={"models": [spec]}).read_text()
    assert "Baseline Glu was higher in CUD (M = 10.56" in text


# --------------------------------------------------------------------------------------------
# OLS / ANCOVA
# --------------------------------------------------------------------------------------------


def ancova_data(noise: float, seed: int = 3, n: int = 40):
    rng = np.random.default_rng(seed)
    pid = [f"p{i:02d}" for i in range(n)]
    group = np.where(np.arange(n) < n // 2, "CUD", "HC")
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    sex[:2], sex[-2:] = "M", "F"
    age = rng.uniform(20, 50, n)
    fgm = rng.uniform(0.4, 0.65, n)
    y = (9.0 - 0.8 * (group == "CUD") + 0.03 * age - 0.2 * (sex == "M") + 1.5 * fgm
         + noise * rng.normal(size=n))
    met = pd.DataFrame(dict(participant_id=pid, group=group, film="neutral", metabolite="Glu",
                            conc_molal=y, f_gm=fgm, qc_pass=True, drug="none"))
    part = pd.DataFrame(dict(participant_id=pid, group=group, age=age, sex=sex))
    return met, part


ANCOVA = {"name": "anc", "kind": "ols", "table": "metabolites",
          "filter": "metabolite == 'Glu' and film == 'neutral' and qc_pass",
          "formula": "conc_molal ~ group + age + sex + f_gm",
          "contrasts": [{"name": "group_adjusted", "diff": {"group": ["CUD", "HC"]}}]}


def test_ols_recovers_exact_coefficients_without_noise():
    met, part = ancova_data(noise=0.0)
    res = stats.run_model(ANCOVA, met, None, part)
    truth = {"Intercept": 9.0, "group[T.CUD]": -0.8, "age": 0.03, "sex[T.M]": -0.2, "f_gm": 1.5}
    for term, value in truth.items():
        assert row(res, term)["estimate"] == pytest.approx(value, abs=1e-9)
    assert row(res, "group_adjusted")["estimate"] == pytest.approx(-0.8, abs=1e-9)
    # centring moves only the intercept: HC, female, at mean age and mean f_gm
    res_c = stats.run_model({**ANCOVA, "center": ["age", "f_gm"]}, met, None, part)
    expect = 9.0 + 0.03 * part["age"].mean() + 1.5 * met["f_gm"].mean()
    assert row(res_c, "Intercept")["estimate"] == pytest.approx(expect, abs=1e-9)
    assert row(res_c, "group[T.CUD]")["estimate"] == pytest.approx(-0.8, abs=1e-9)


def test_ols_matches_numpy_least_squares():
    met, part = ancova_data(noise=0.4)
    res = stats.run_model({**ANCOVA, "anova": 3}, met, None, part)
    X = np.column_stack([
        np.ones(len(met)),
        (part["age"]).to_numpy(),
        met["f_gm"].to_numpy(),
        (met["group"] == "CUD").to_numpy(float),
        (part["sex"] == "M").to_numpy(float),
    ])
    y = met["conc_molal"].to_numpy()
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    dfr = len(y) - X.shape[1]
    s2 = float(np.sum((y - X @ beta) ** 2)) / dfr
    se = np.sqrt(np.diag(s2 * np.linalg.inv(X.T @ X)))
    for j, term in enumerate(["Intercept", "age", "f_gm", "group[T.CUD]", "sex[T.M]"]):
        r = row(res[res["section"] == "coefficient"], term)
        assert r["estimate"] == pytest.approx(beta[j], rel=1e-9, abs=1e-12)
        assert r["se"] == pytest.approx(se[j], rel=1e-9)
        t = beta[j] / se[j]
        assert r["statistic"] == pytest.approx(t, rel=1e-9)
        assert r["df"] == dfr
        assert r["p"] == pytest.approx(2 * sps.t.sf(abs(t), dfr), rel=1e-7)
    # a 1-df term without interactions: F = t², partial eta² = t²/(t² + df) = SS/(SS + SSE);
    # Type II and Type III coincide
    t_group = beta[3] / se[3]
    a3 = row(res[res["section"] == "anova"], "group")
    assert a3["statistic"] == pytest.approx(t_group**2, rel=1e-8)
    assert (a3["df"], a3["df2"]) == (1, dfr)
    assert a3["effect_size"] == pytest.approx(t_group**2 / (t_group**2 + dfr), rel=1e-8)
    res2 = stats.run_model({**ANCOVA, "anova": 2}, met, None, part)
    a2 = row(res2[res2["section"] == "anova"], "group")
    assert a2["statistic"] == pytest.approx(a3["statistic"], rel=1e-9)
    c = row(res, "group_adjusted")
    assert c["estimate"] == pytest.approx(beta[3], rel=1e-9)
    assert c["se"] == pytest.approx(se[3], rel=1e-9)


def test_type3_anova_tests_unweighted_marginal_means():
    """Unbalanced 2 × 2: the Type III main effect of A (sum coding) is the test of the
    unweighted marginal means, F = est² / (MSE/4 · Σ 1/n_ij), est = (μ11+μ12-μ21-μ22)/2."""
    rng = np.random.default_rng(7)
    sizes = {("CUD", "neutral"): 5, ("CUD", "cocaine"): 9, ("HC", "neutral"): 12,
             ("HC", "cocaine"): 6}
    rows = []
    k = 0
    for (g, f), n in sizes.items():
        for _ in range(n):
            rows.append(dict(participant_id=f"p{k:03d}", group=g, film=f,
                             conc_molal=10 + 0.5 * (g == "CUD") + 0.3 * (f == "cocaine")
                             + 0.4 * (g == "CUD") * (f == "cocaine") + rng.normal(0, 0.5)))
            k += 1
    met = pd.DataFrame(rows)
    spec = {"name": "t3", "kind": "ols", "table": "metabolites",
            "formula": "conc_molal ~ group * film", "anova": 3}
    res = stats.run_model(spec, met, None, None)
    cell = met.groupby(["group", "film"])["conc_molal"]
    mu, n = cell.mean(), cell.size()
    sse = float(((met["conc_molal"] - cell.transform("mean")) ** 2).sum())
    mse = sse / (len(met) - 4)
    est = (mu["CUD", "neutral"] + mu["CUD", "cocaine"] - mu["HC", "neutral"]
           - mu["HC", "cocaine"]) / 2
    f_expected = est**2 / (mse / 4 * float((1 / n).sum()))
    a = row(res[res["section"] == "anova"], "group")
    assert a["statistic"] == pytest.approx(f_expected, rel=1e-8)
    inter = row(res[res["section"] == "anova"], "group:film")
    est_i = (mu["CUD", "cocaine"] - mu["CUD", "neutral"]) - (mu["HC", "cocaine"]
                                                             - mu["HC", "neutral"])
    assert inter["statistic"] == pytest.approx(est_i**2 / (mse * float((1 / n).sum())),
                                               rel=1e-8)


# --------------------------------------------------------------------------------------------
# MixedLM: closed forms in balanced paired designs
# --------------------------------------------------------------------------------------------

LMM = {"name": "lmm", "kind": "mixedlm", "table": "metabolites",
       "filter": "metabolite == 'Glu' and qc_pass and drug != 'nac'",
       "formula": "conc_molal ~ group * film", "groups": "participant_id", "within": ["film"],
       "contrasts": [
           {"name": "film_in_CUD", "diff": {"film": ["cocaine", "neutral"]},
            "at": {"group": "CUD"}},
           {"name": "film_in_HC", "diff": {"film": ["cocaine", "neutral"]},
            "at": {"group": "HC"}},
           {"name": "group_x_film", "diff": {"group": ["CUD", "HC"],
                                             "film": ["cocaine", "neutral"]}},
       ]}


def test_mixedlm_single_group_contrast_equals_paired_t():
    rng = np.random.default_rng(11)
    n = 12
    d = 0.5 + rng.normal(0, 0.25, n)
    met = paired_data(d, [], 10 + rng.normal(0, 1.0, n), [])
    spec = {**LMM, "formula": "conc_molal ~ film",
            "contrasts": [{"name": "film", "diff": {"film": ["cocaine", "neutral"]}}]}
    res = stats.run_model(spec, met, None, None)
    c = row(res, "film")
    ref = sps.ttest_rel(d, np.zeros(n))
    assert c["estimate"] == pytest.approx(d.mean(), abs=1e-8)
    assert c["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=1e-3)
    assert c["df"] == pytest.approx(n - 1, rel=1e-3)
    assert c["stat_type"] == "t"
    assert c["statistic"] == pytest.approx(ref.statistic, rel=1e-3)
    assert c["p"] == pytest.approx(ref.pvalue, rel=1e-3)
    # statsmodels' own Wald z-test: same estimate and SE, normal reference distribution
    rz = row(stats.run_model({**spec, "inference": "z"}, met, None, None), "film")
    assert rz["stat_type"] == "z" and np.isnan(rz["df"])
    assert rz["se"] == pytest.approx(c["se"], rel=1e-9)
    assert rz["p"] == pytest.approx(2 * sps.norm.sf(abs(rz["statistic"])), rel=1e-9)
    assert rz["p"] < c["p"]  # z-tests are anti-conservative in small samples


def test_mixedlm_two_groups_equal_spread_within_group_se_is_paired_t_se():
    """Equal n and the same spread of differences in both groups: the pooled residual variance
    equals each group's, so each within-group film contrast has its paired-t SE."""
    rng = np.random.default_rng(5)
    n = 10
    dev = rng.normal(0, 0.2, n)
    d_cud, d_hc = 0.8 + dev, 0.1 + rng.permutation(dev)
    met = paired_data(d_cud, d_hc, 9.5 + rng.normal(0, 1, n), 10 + rng.normal(0, 1, n))
    res = stats.run_model(LMM, met, None, None)
    for name, d in (("film_in_CUD", d_cud), ("film_in_HC", d_hc)):
        c = row(res, name)
        assert c["estimate"] == pytest.approx(d.mean(), abs=1e-8)
        assert c["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=1e-3)
        assert c["df"] == pytest.approx(2 * n - 2, rel=1e-3)


def test_mixedlm_interaction_is_two_sample_t_on_differences():
    """Unequal n: group × film = difference of mean differences, with the pooled two-sample
    t-test of the difference scores (SE, df = n1 + n2 - 2, p); within-group contrasts use the
    pooled variance of the differences."""
    rng = np.random.default_rng(8)
    n1, n2 = 10, 13
    d_cud, d_hc = 0.8 + rng.normal(0, 0.3, n1), 0.1 + rng.normal(0, 0.2, n2)
    met = paired_data(d_cud, d_hc, 9.5 + rng.normal(0, 1, n1), 10 + rng.normal(0, 1, n2))
    between = {"name": "group_avg", "diff": {"group": ["CUD", "HC"]}}  # film averaged
    res = stats.run_model({**LMM, "contrasts": [*LMM["contrasts"], between]}, met, None, None)
    sp2 = ((n1 - 1) * d_cud.var(ddof=1) + (n2 - 1) * d_hc.var(ddof=1)) / (n1 + n2 - 2)
    # between-participant contrast = pooled two-sample t-test of the participant means
    pm = met.groupby(["participant_id", "group"])["conc_molal"].mean()
    m_cud, m_hc = pm.xs("CUD", level="group"), pm.xs("HC", level="group")
    ref_b = sps.ttest_ind(m_cud, m_hc, equal_var=True)
    gb = row(res, "group_avg")
    assert gb["estimate"] == pytest.approx(m_cud.mean() - m_hc.mean(), abs=1e-8)
    assert gb["statistic"] == pytest.approx(ref_b.statistic, rel=1e-3)
    assert gb["df"] == pytest.approx(n1 + n2 - 2, rel=1e-3)
    assert gb["p"] == pytest.approx(ref_b.pvalue, rel=1e-3)
    inter = row(res, "group_x_film")
    assert inter["estimate"] == pytest.approx(d_cud.mean() - d_hc.mean(), abs=1e-8)
    assert inter["se"] == pytest.approx(math.sqrt(sp2 * (1 / n1 + 1 / n2)), rel=1e-3)
    assert inter["df"] == pytest.approx(n1 + n2 - 2, rel=1e-3)
    ref = sps.ttest_ind(d_cud, d_hc, equal_var=True)
    assert inter["p"] == pytest.approx(ref.pvalue, rel=1e-3)
    # the treatment-coded interaction coefficient is the same quantity
    coef = row(res, "group[T.CUD]:film[T.cocaine]")
    assert coef["estimate"] == pytest.approx(inter["estimate"], abs=1e-10)
    for name, d, n in (("film_in_CUD", d_cud, n1), ("film_in_HC", d_hc, n2)):
        c = row(res, name)
        assert c["estimate"] == pytest.approx(d.mean(), abs=1e-8)
        assert c["se"] == pytest.approx(math.sqrt(sp2 / n), rel=1e-3)
    # film_in_HC is the reference-level film coefficient
    assert row(res, "film[T.cocaine]")["estimate"] == pytest.approx(d_hc.mean(), abs=1e-8)
    # the same contrast given as coefficient weights
    w = {"name": "w", "weights": {"film[T.cocaine]": 1, "group[T.CUD]:film[T.cocaine]": 1}}
    res_w = stats.run_model({**LMM, "contrasts": [w]}, met, None, None)
    assert row(res_w, "w")["estimate"] == pytest.approx(row(res, "film_in_CUD")["estimate"])
    assert row(res_w, "w")["se"] == pytest.approx(row(res, "film_in_CUD")["se"], rel=1e-9)
    # variance components: residual = half the pooled variance of the differences
    assert row(res, "var(residual)")["estimate"] == pytest.approx(sp2 / 2, rel=1e-3)


def test_mixedlm_recovers_large_simulated_effects():
    rng = np.random.default_rng(21)
    vals = {}
    truth = {"Intercept": 10.0, "group[T.CUD]": -0.6, "film[T.cocaine]": 0.05,
             "group[T.CUD]:film[T.cocaine]": 0.8}
    for i in range(56):
        g = "CUD" if i < 26 else "HC"
        u = rng.normal(0, 0.8)
        for f in ("neutral", "cocaine"):
            mu = (10 - 0.6 * (g == "CUD") + 0.05 * (f == "cocaine")
                  + 0.8 * (g == "CUD") * (f == "cocaine"))
            vals[(f"p{i:02d}", g, f)] = mu + u + rng.normal(0, 0.1)
    res = stats.run_model(LMM, met_rows(vals), None, None)
    for term, value in truth.items():
        r = row(res, term)
        assert abs(r["estimate"] - value) < 3 * r["se"], term
        if "film" in term:  # within-participant effects: residual SD 0.1 -> SE ~0.03
            assert abs(r["estimate"] - value) < 0.1, term
    assert row(res, "film_in_CUD")["estimate"] == pytest.approx(0.85, abs=0.05)
    assert row(res, "var(participant_id)")["estimate"] == pytest.approx(0.64, rel=0.4)
    assert row(res, "var(residual)")["estimate"] == pytest.approx(0.01, rel=0.4)
    assert row(res, "film_in_CUD")["p"] < 1e-10
    assert row(res, "film_in_HC")["p"] > 1e-4


# --------------------------------------------------------------------------------------------
# crossover (drug × film + period) and craving
# --------------------------------------------------------------------------------------------


def crossover_data(noise: float, n: int = 24, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        u = rng.normal(0, 1)
        order = [("placebo", 1), ("nac", 2)] if i % 2 == 0 else [("nac", 1), ("placebo", 2)]
        for drug, period in order:
            for film in ("neutral", "cocaine"):
                nac, coc = drug == "nac", film == "cocaine"
                y = (10 + u - 0.4 * nac + 0.25 * (period == 2) + 0.6 * coc - 0.3 * nac * coc
                     + noise * rng.normal())
                rows.append(dict(participant_id=f"c{i:02d}", group="CUD",
                                 session=f"ses-{period}", drug=drug, period=period, film=film,
                                 metabolite="Glu", conc_molal=y, qc_pass=True))
    return pd.DataFrame(rows)


CROSSOVER = {"name": "xo", "kind": "mixedlm", "table": "metabolites",
             "filter": "metabolite == 'Glu' and group == 'CUD'",
             "formula": "conc_molal ~ drug * film + period", "within": ["drug", "film"],
             "contrasts": [{"name": "nac_vs_placebo", "diff": {"drug": ["nac", "placebo"]}},
                           {"name": "film_in_nac", "diff": {"film": ["cocaine", "neutral"]},
                            "at": {"drug": "nac"}},
                           {"name": "period", "diff": {"period": [2, 1]}}]}


@pytest.mark.parametrize(("noise", "tol"), [(0.0, 1e-6), (0.02, 0.03)])
def test_crossover_recovers_drug_and_period_effects(noise, tol):
    res = stats.run_model(CROSSOVER, crossover_data(noise), None, None)
    truth = {"drug[T.nac]": -0.4, "period[T.2]": 0.25, "film[T.cocaine]": 0.6,
             "drug[T.nac]:film[T.cocaine]": -0.3, "nac_vs_placebo": -0.4 - 0.3 / 2,
             "film_in_nac": 0.6 - 0.3, "period": 0.25}
    for term, value in truth.items():
        assert row(res, term)["estimate"] == pytest.approx(value, abs=tol), term
    if noise:
        # balanced AB/BA crossover: within-participant residual df = N(4-1) - 4 = 68
        assert row(res, "nac_vs_placebo")["df"] == pytest.approx(3 * 24 - 4, rel=1e-3)


def craving_data(seed: int = 9, n_cud: int = 8, n_hc: int = 9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cud + n_hc):
        g = "CUD" if i < n_cud else "HC"
        u = rng.normal(0, 10)
        for film in ("neutral", "cocaine"):
            for time in ("pre", "post"):
                bump = (20 if g == "CUD" else 3) * (film == "cocaine") * (time == "post")
                rows.append(dict(participant_id=f"p{i:02d}", group=g, session="ses-1",
                                 drug="placebo" if g == "CUD" else "none", period=1,
                                 film=film, time=time, vas=30 + u + bump + rng.normal(0, 4)))
    return pd.DataFrame(rows)


def test_craving_three_way_contrast_equals_change_score_model():
    crav = craving_data()
    wide = crav.pivot_table(index=["participant_id", "group"], columns=["film", "time"],
                            values="vas")
    cue = ((wide["cocaine", "post"] - wide["cocaine", "pre"])
           - (wide["neutral", "post"] - wide["neutral", "pre"]))
    cue_cud = cue.xs("CUD", level="group").mean()
    cue_hc = cue.xs("HC", level="group").mean()
    full = {"name": "crav3", "kind": "mixedlm", "table": "craving",
            "formula": "vas ~ group * film * time", "within": ["film", "time"],
            "contrasts": [
                {"name": "cue_CUD", "diff": {"film": ["cocaine", "neutral"],
                                             "time": ["post", "pre"]}, "at": {"group": "CUD"}},
                {"name": "cue_group", "diff": {"group": ["CUD", "HC"],
                                               "film": ["cocaine", "neutral"],
                                               "time": ["post", "pre"]}}]}
    change = {"name": "crav_change", "kind": "mixedlm", "table": "craving",
              "derive": [{"name": "vas_change", "value": "vas", "over": "time",
                          "levels": ["post", "pre"],
                          "keys": ["participant_id", "session", "film"]}],
              "formula": "vas_change ~ group * film", "within": ["film"],
              "contrasts": [{"name": "film_in_CUD", "diff": {"film": ["cocaine", "neutral"]},
                             "at": {"group": "CUD"}},
                            {"name": "group_x_film", "diff": {"group": ["CUD", "HC"],
                                                              "film": ["cocaine", "neutral"]}}]}
    r3 = stats.run_model(full, None, crav, None)
    rc = stats.run_model(change, None, crav, None)
    assert row(r3, "cue_CUD")["estimate"] == pytest.approx(cue_cud, abs=1e-8)
    assert row(rc, "film_in_CUD")["estimate"] == pytest.approx(cue_cud, abs=1e-8)
    assert row(r3, "cue_group")["estimate"] == pytest.approx(cue_cud - cue_hc, abs=1e-8)
    assert row(rc, "group_x_film")["estimate"] == pytest.approx(cue_cud - cue_hc, abs=1e-8)
    # the group difference in cue reactivity is a two-sample t-test of the double differences
    ref = sps.ttest_ind(cue.xs("CUD", level="group"), cue.xs("HC", level="group"))
    assert row(rc, "group_x_film")["p"] == pytest.approx(ref.pvalue, rel=1e-3)
    # In the full model the random intercept implies compound symmetry, so the contrast uses
    # the pooled split-plot error (participant × within-cell residual within groups):
    # r = y - participant mean - (group cell mean - group mean), df = (N - 2)(4 - 1),
    # Var(cue_group) = 4 σ²_e (1/n1 + 1/n2)
    y = crav.set_index(["participant_id", "group", "film", "time"])["vas"]
    pmean = y.groupby(level="participant_id").transform("mean")
    gcell = y.groupby(level=["group", "film", "time"]).transform("mean")
    gmean = y.groupby(level="group").transform("mean")
    resid = y - pmean - gcell + gmean
    n_cud, n_hc = 8, 9
    df_e = (n_cud + n_hc - 2) * 3
    s2e = float((resid**2).sum()) / df_e
    c3 = row(r3, "cue_group")
    assert c3["se"] == pytest.approx(math.sqrt(4 * s2e * (1 / n_cud + 1 / n_hc)), rel=1e-3)
    assert c3["df"] == pytest.approx(df_e, rel=1e-3)
    assert row(r3, "var(residual)")["estimate"] == pytest.approx(s2e, rel=1e-3)


# --------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------


def test_pearson_and_spearman_against_hand_and_scipy():
    x = [2.1, 3.4, 1.0, 5.5, 4.2, 3.9, 0.5, 6.1, 2.8, 4.9]
    y = [9.0, 9.6, 8.7, 10.4, 9.1, 10.0, 8.9, 10.2, 9.7, 9.9]
    n = len(x)
    met = pd.DataFrame(dict(participant_id=[f"p{i}" for i in range(n)], group="CUD",
                            film="neutral", conc_molal=y, metabolite="Glu"))
    part = pd.DataFrame(dict(participant_id=[f"p{i}" for i in range(n)], group="CUD",
                             cocaine_g_per_week=x))
    spec = {"name": "cor", "kind": "correlation", "table": "metabolites",
            "x": "cocaine_g_per_week", "y": "conc_molal", "method": ["pearson", "spearman"]}
    res = stats.run_model(spec, met, None, part)
    p_row = row(res, "pearson(cocaine_g_per_week, conc_molal)")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    r = sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    z, se_z = math.atanh(r), 1 / math.sqrt(n - 3)
    t = r * math.sqrt((n - 2) / (1 - r**2))
    assert p_row["estimate"] == pytest.approx(r, rel=1e-12)
    assert p_row["ci_low"] == pytest.approx(math.tanh(z - Z975 * se_z), rel=1e-10)
    assert p_row["ci_high"] == pytest.approx(math.tanh(z + Z975 * se_z), rel=1e-10)
    assert p_row["p"] == pytest.approx(2 * sps.t.sf(abs(t), n - 2), rel=1e-8)
    assert (p_row["stat_type"], p_row["df"], p_row["n_obs"]) == ("r", n - 2, n)
    s_row = row(res, "spearman(cocaine_g_per_week, conc_molal)")
    ref = sps.spearmanr(x, y)
    assert s_row["estimate"] == pytest.approx(ref.statistic, rel=1e-12)
    assert s_row["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    zs, se_s = math.atanh(ref.statistic), math.sqrt(1.06 / (n - 3))  # Fieller et al. 1957
    assert s_row["ci_low"] == pytest.approx(math.tanh(zs - Z975 * se_s), rel=1e-10)
    assert s_row["effect_size_type"] == "rho"


def test_correlation_of_change_scores_across_tables(study):
    met, crav, part = study
    models = stats.load_stats_config(CONFIG)["models"]
    spec = next(m for m in models if m["name"] == "glu_change_vs_cue_craving")
    res = stats.run_model(spec, met, crav, part)
    g = met[(met.metabolite == "Glu") & (met.group == "CUD") & (met.drug == "placebo")]
    gw = g.pivot(index="participant_id", columns="film", values="conc_molal")
    x = gw["cocaine"] - gw["neutral"]
    c = crav[(crav.group == "CUD") & (crav.drug == "placebo")]
    cw = c.pivot_table(index="participant_id", columns=["film", "time"], values="vas")
    y = ((cw["cocaine", "post"] - cw["cocaine", "pre"])
         - (cw["neutral", "post"] - cw["neutral", "pre"]))
    r = np.corrcoef(x.sort_index(), y.sort_index())[0, 1]
    pr = row(res, "pearson(glu_change, craving_cue)")
    assert pr["estimate"] == pytest.approx(r, rel=1e-10)
    assert pr["n_obs"] == 26
    assert row(res, "mean[glu_change]")["estimate"] == pytest.approx(x.mean(), rel=1e-12)


# --------------------------------------------------------------------------------------------
# writers, summary.md, determinism, the example config
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_results(study):
    met, crav, part = study
    cfg = stats.load_stats_config(CONFIG)
    return cfg, stats.run_all(cfg["models"], met, crav, part, levels=cfg["levels"])


def test_example_config_runs_and_recovers_planted_effects(study_results):
    cfg, res = study_results
    assert list(res) == [m["name"] for m in cfg["models"]]
    glu = res["glu_group_film_lmm"]
    # planted: +0.7 cocaine-film Glu in CUD, 0 in HC; NAC removes 0.4 of it; -0.6 CUD baseline
    assert row(glu, "film_in_CUD")["estimate"] == pytest.approx(0.7, abs=0.2)
    assert row(glu, "film_in_HC")["estimate"] == pytest.approx(0.0, abs=0.2)
    xo = res["glu_drug_film_cud_lmm"]
    assert row(xo, "drug_x_film")["estimate"] == pytest.approx(-0.4, abs=0.2)
    crav = res["craving_change_group_film_lmm"]
    assert row(crav, "group_x_film")["estimate"] == pytest.approx(23, abs=4)
    # planted: each scan 0.5 Hz narrower during the cocaine film (jitter +-0.2 Hz)
    lw = res["linewidth_group_film_lmm"]
    for group in ("CUD", "HC"):
        assert row(lw, f"film_in_{group}")["estimate"] == pytest.approx(-0.5, abs=0.1)
    assert row(lw, "group_x_film")["estimate"] == pytest.approx(0.0, abs=0.1)
    for df in res.values():
        assert list(df.columns) == stats.COLUMNS
        assert df["model"].nunique() == 1


def test_linewidth_covariate_removes_a_linewidth_artefact_from_the_film_effect():
    """A fit artefact planted as Glu rising 0.8 mmol/kg per Hz of narrowing, and lines 0.5 Hz
    narrower during the cocaine film (scan jitter SD 0.4 Hz): the config's Glu film model
    reads the artefact as +0.4 of film effect; with the linewidth as a covariate
    (glu_group_film_lw_lmm) the planted +0.7 (CUD) and 0 (HC) come back."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(40):
        g = "CUD" if i < 20 else "HC"
        u = rng.normal(0, 0.8)
        for film in ("neutral", "cocaine"):
            coc = film == "cocaine"
            lw = 8.0 - 0.5 * coc + rng.normal(0, 0.4)
            glu = 10 + u + 0.7 * (coc and g == "CUD") - 0.8 * (lw - 8.0) + rng.normal(0, 0.1)
            rows.append(dict(participant_id=f"p{i:02d}", group=g, drug="placebo", film=film,
                             metabolite="Glu", conc_molal=glu, linewidth_hz=lw, qc_pass=True))
    met = pd.DataFrame(rows)
    cfg = stats.load_stats_config(CONFIG)
    spec = {m["name"]: m for m in cfg["models"]}
    plain = stats.run_model(spec["glu_group_film_lmm"], met, None, None, levels=cfg["levels"])
    adj = stats.run_model(spec["glu_group_film_lw_lmm"], met, None, None, levels=cfg["levels"])
    assert row(plain, "film_in_CUD")["estimate"] == pytest.approx(1.1, abs=0.1)
    assert row(plain, "film_in_HC")["estimate"] == pytest.approx(0.4, abs=0.1)
    assert row(adj, "film_in_CUD")["estimate"] == pytest.approx(0.7, abs=0.1)
    assert row(adj, "film_in_HC")["estimate"] == pytest.approx(0.0, abs=0.1)
    assert row(adj, "linewidth_hz")["estimate"] == pytest.approx(-0.8, abs=0.1)


def test_write_tables_is_deterministic_and_round_trips(study, study_results, tmp_path):
    cfg, res = study_results
    paths = stats.write_tables(res, tmp_path / "a")
    assert {p.name for p in paths} == {f"{n}.tsv" for n in res} | {"all_models.tsv"}
    all_models = pd.read_csv(tmp_path / "a" / "all_models.tsv", sep="\t")
    assert len(all_models) == sum(len(d) for d in res.values())
    back = pd.read_csv(tmp_path / "a" / "glu_group_film_lmm.tsv", sep="\t")
    orig = res["glu_group_film_lmm"]
    assert list(back["term"]) == list(orig["term"])
    np.testing.assert_allclose(back["estimate"], orig["estimate"], rtol=1e-5)
    # shuffled input rows -> byte-identical output
    met, crav, part = study
    shuffled = [t.sample(frac=1.0, random_state=1).reset_index(drop=True) for t in study]
    names = ["baseline_glu_ancova", "glu_group_film_lmm", "glu_change_vs_cue_craving"]
    sub = [m for m in cfg["models"] if m["name"] in names]
    res2 = stats.run_all(sub, *shuffled, levels=cfg["levels"])
    stats.write_tables({k: res[k] for k in names}, tmp_path / "b")
    stats.write_tables(res2, tmp_path / "c")
    for n in names:
        assert (tmp_path / "b" / f"{n}.tsv").read_bytes() == (tmp_path / "c" / f"{n}.tsv"
                                                             ).read_bytes()


def test_run_stats_from_tsv_files(study, tmp_path):
    met, crav, part = study
    for name, df in (("metabolites", met), ("craving", crav), ("participants", part)):
        df.to_csv(tmp_path / f"{name}.tsv", sep="\t", index=False)
    tables = stats.read_tables(*(tmp_path / f"{n}.tsv"
                                 for n in ("metabolites", "craving", "participants")))
    assert tables[0]["qc_pass"].dtype == bool
    cfg = stats.load_stats_config(CONFIG)
    cfg["models"] = [m for m in cfg["models"]
                     if m["name"] in ("baseline_glu_welch", "baseline_glu_vs_cocaine_use")]
    res = stats.run_stats(cfg, *tables, tmp_path / "out", tmp_path / "out" / "summary.md")
    assert set(res) == {"baseline_glu_welch", "baseline_glu_vs_cocaine_use"}
    assert (tmp_path / "out" / "all_models.tsv").exists()
    assert "Baseline Glu" in (tmp_path / "out" / "summary.md").read_text()


def _num(s: str) -> float:
    return float(s.replace("\u2212", "-").replace("−", "-"))


def test_summary_md_reports_the_table_numbers(study_results, tmp_path):
    cfg, res = study_results
    path = stats.write_summary_md(res, tmp_path / "summary.md",
                                  context={"models": cfg["models"], "labels": cfg["labels"],
                                           "units": cfg["units"]})
    text = path.read_text()
    num = r"([\u2212-]?\d*\.?\d+)"

    # Welch sentence
    welch = res["baseline_glu_welch"]
    m = re.search(rf"CUD \(M = {num}, SD = {num}, n = (\d+)\).*?HC \(M = {num}, SD = {num}, "
                  rf"n = (\d+); Welch t\({num}\) = {num}, p [=<>] {num}, Hedges' g = {num} "
                  rf"\[95 % CI {num}, {num}\]\)", text)
    assert m, text
    cud, hc, t_row = (row(welch, "mean[group=CUD]"), row(welch, "mean[group=HC]"),
                      row(welch, "CUD - HC"))
    got = [_num(v) for v in m.groups()]
    expect = [cud["estimate"], cud["sd"], cud["n_obs"], hc["estimate"], hc["sd"], hc["n_obs"],
              t_row["df"], t_row["statistic"], t_row["p"], t_row["effect_size"],
              t_row["es_ci_low"], t_row["es_ci_high"]]
    tol = [0.005, 0.005, 0, 0.005, 0.005, 0, 0.05, 0.005, 0.0005, 0.005, 0.005, 0.005]
    for g, e, tl in zip(got, expect, tol, strict=True):
        assert abs(g - e) <= tl + 1e-9, (got, expect)

    # a mixed-model contrast sentence
    c = row(res["glu_group_film_lmm"], "film_in_CUD")
    m = re.search(rf"Film effect \(cocaine − neutral\) in CUD: estimate = {num} \[95 % CI {num}, "
                  rf"{num}\], t\({num}\) = {num}, p [=<] {num}, d = {num}\.", text)
    assert m, text
    got = [_num(v) for v in m.groups()]
    expect = [c["estimate"], c["ci_low"], c["ci_high"], c["df"], c["statistic"],
              max(c["p"], 0.001), c["effect_size"]]
    for g, e in zip(got, expect, strict=True):
        assert abs(g - e) <= 0.05 + 1e-9, (got, expect)

    # the correlation sentence
    pr = row(res["glu_change_vs_cue_craving"], "pearson(glu_change, craving_cue)")
    m = re.search(rf"Pearson r = {num} \[95 % CI {num}, {num}\], p [=<>] {num}, n = (\d+)", text)
    assert m, text
    got = [_num(v) for v in m.groups()]
    expect = [pr["estimate"], pr["ci_low"], pr["ci_high"], pr["p"], pr["n_obs"]]
    for g, e, tl in zip(got, expect, [0.005, 0.005, 0.005, 0.0005, 0], strict=True):
        assert abs(g - e) <= tl + 1e-9, (got, expect)
    # every model has a section
    for name in res:
        assert f"(`{name}`)" in text


# --------------------------------------------------------------------------------------------
# bad specs and bad data
# --------------------------------------------------------------------------------------------


def test_missing_formula_column_is_named(study):
    met, crav, part = study
    spec = {**ANCOVA, "name": "bad_cov", "formula": "conc_molal ~ group + iq"}
    with pytest.raises(ValueError, match=r"model 'bad_cov'.*\['iq'\]"):
        stats.run_model(spec, met, crav, part)
    with pytest.raises(ValueError, match=r"model 'bad_cov'.*\['iq'\]"):
        stats.validate_spec(spec, met, crav, part)  # caught before any fitting


def test_participants_left_out_for_a_missing_covariate_are_named(study):
    """An optional participants.tsv column left empty (n/a) drops that participant from the
    models that need it, and the note names them and the column; the fit equals a fit
    without them."""
    met, crav, part = study
    part = part.copy()
    gone = ["sub-003", "sub-040"]
    part.loc[part.participant_id.isin(gone), "age"] = np.nan
    spec = {**ANCOVA, "filter": ANCOVA["filter"] + " and drug != 'nac'"}
    res = stats.run_model(spec, met, crav, part)
    assert all("left out for a missing value of age (sub-003, sub-040)" in n for n in res.note)
    ref = stats.run_model(spec, met[~met.participant_id.isin(gone)], crav,
                          part[~part.participant_id.isin(gone)])
    assert row(res, "group_adjusted").estimate == pytest.approx(
        row(ref, "group_adjusted").estimate, rel=1e-12)
    full = stats.run_model(spec, met, crav, study[2])
    assert not any("left out" in n for n in full.note)


def test_filter_errors_are_named(study):
    met, crav, part = study
    empty = {**ANCOVA, "name": "empty", "filter": "metabolite == 'GABA'"}
    with pytest.raises(ValueError, match=r"model 'empty'.*left no rows of table 'metabolites'"):
        stats.run_model(empty, met, crav, part)
    typo = {**ANCOVA, "name": "typo", "filter": "metabolit == 'Glu'"}
    with pytest.raises(ValueError, match=r"model 'typo'.*\['metabolit'\]"):
        stats.run_model(typo, met, crav, part)


def test_participant_with_one_film_is_named(study):
    met, crav, part = study
    met = met[~((met.participant_id == "sub-007") & (met.film == "cocaine"))]
    spec = {**LMM, "name": "paired"}
    with pytest.raises(ValueError, match=r"model 'paired'.*participant sub-007 has only "
                                         r"film=neutral \(missing film=cocaine\)"):
        stats.run_model(spec, met, crav, part)
    dropped = stats.run_model({**spec, "on_incomplete": "drop"}, met, crav, part)
    assert row(dropped, "film_in_CUD")["n_participants"] == 55
    assert "sub-007" in row(dropped, "film_in_CUD")["note"]
    # the same through a derived change score
    deriv = {"name": "glu_change", "kind": "correlation", "table": "metabolites",
             "filter": "metabolite == 'Glu' and group == 'CUD' and drug == 'placebo'",
             "derive": [{"name": "glu_change", "value": "conc_molal", "over": "film",
                         "levels": ["cocaine", "neutral"],
                         "keys": ["participant_id", "session"]}],
             "x": "cocaine_g_per_week", "y": "glu_change"}
    with pytest.raises(ValueError, match=r"model 'glu_change'.*participant_id=sub-007, "
                                         r"session=ses-\d has only film=neutral"):
        stats.run_model(deriv, met, crav, part)
    deriv["derive"][0]["on_incomplete"] = "drop"
    assert row(stats.run_model(deriv, met, crav, part), "mean[glu_change]")["n_obs"] == 25


def test_other_spec_errors(study):
    met, crav, part = study
    with pytest.raises(ValueError, match=r"model 'k'.*unknown kind 'anova'"):
        stats.run_model({"name": "k", "kind": "anova", "table": "metabolites"}, met, crav, part)
    with pytest.raises(ValueError, match=r"model 'u'.*unknown key\(s\) \['formla'\]"):
        stats.validate_spec({**ANCOVA, "name": "u", "formla": "x"})
    with pytest.raises(ValueError, match=r"model 'w2'.*participant_id=sub-001.*more than one"):
        stats.run_model({"name": "w2", "kind": "welch_t", "table": "metabolites",
                         "filter": "metabolite == 'Glu' and film == 'neutral'",
                         "outcome": "conc_molal", "by": "group"}, met, crav, part)
    with pytest.raises(ValueError, match=r"model 'dup'.*participant sub-001 has 2 rows"):
        stats.run_model({**LMM, "name": "dup", "filter": "drug != 'nac'"}, met, crav, part)
    with pytest.raises(ValueError, match=r"model 'c'.*contrast 'x'.*drug"):
        stats.run_model({**LMM, "name": "c", "contrasts": [
            {"name": "x", "diff": {"drug": ["nac", "placebo"]}}]}, met, crav, part)
    with pytest.raises(ValueError, match=r"duplicate model name"):
        stats.run_all([ANCOVA, ANCOVA], met, crav, part)
    assert issubclass(stats.ModelSpecError, ValueError)


# --------------------------------------------------------------------------------------------
# models the data cannot estimate: skipped with the reason, or an error (on_inestimable)
# --------------------------------------------------------------------------------------------

WELCH = {"name": "w", "kind": "welch_t", "table": "metabolites",
         "filter": "metabolite == 'Glu' and film == 'neutral' and qc_pass and drug != 'nac'",
         "outcome": "conc_molal", "by": "group"}


@pytest.fixture(scope="module")
def pilot():
    """One participant per group: no model of the study can be estimated."""
    return make_study(seed=3, n_cud=1, n_hc=1)


def test_pilot_study_skips_every_model_with_its_reason(pilot, tmp_path):
    cfg = stats.load_stats_config(CONFIG)
    assert cfg["on_inestimable"] == "skip"
    res = stats.run_all(cfg["models"], *pilot, levels=cfg["levels"])
    assert list(res) == [m["name"] for m in cfg["models"]]
    reasons = {}
    for name, df in res.items():
        assert list(df.columns) == stats.COLUMNS
        assert len(df) == 1 and df["section"].iloc[0] == "skipped", df
        assert df["model"].iloc[0] == name and np.isnan(df["estimate"].iloc[0])
        reasons[name] = stats.skip_reason(df)
    assert reasons["baseline_glu_welch"] == "group=CUD has 1 observation(s); need at least 2"
    assert reasons["glu_group_film_lmm"] == ("4 observations for 4 fixed-effect coefficients; "
                                             "need more observations than coefficients")
    assert reasons["craving_group_film_time_lmm"].startswith("8 observations for 8 fixed")
    assert reasons["glu_drug_film_cud_lmm"] == ("1 level(s) of 'participant_id'; need at least "
                                                "2 for a random intercept")
    assert reasons["glu_change_vs_cue_craving"].startswith("1 complete pairs; need at least 4")
    assert res["baseline_glu_vs_cocaine_use"]["kind"].iloc[0] == "correlation"
    assert res["baseline_glu_welch"]["outcome"].iloc[0] == "conc_molal"

    # the tables, all_models.tsv and summary.md say so
    out = tmp_path / "stats"
    stats.write_tables(res, out)
    back = pd.read_csv(out / "baseline_glu_welch.tsv", sep="\t")
    assert list(back.columns) == stats.COLUMNS
    assert back["section"].tolist() == ["skipped"]
    assert back["note"].iloc[0] == reasons["baseline_glu_welch"]
    all_models = pd.read_csv(out / "all_models.tsv", sep="\t")
    assert all_models["model"].tolist() == list(res)
    assert set(all_models["section"]) == {"skipped"}
    text = stats.write_summary_md(res, out / "summary.md",
                                  context={"models": cfg["models"]}).read_text()
    assert f"skipped: {len(res)} of {len(res)} models" in text
    assert ("## Baseline Glu (`baseline_glu_welch`)\n\nSkipped: not estimable with these data "
            "(group=CUD has 1 observation(s); need at least 2).") in text


def test_estimable_models_are_unchanged_beside_skipped_ones():
    """Three per group: the correlations (3 pairs) are skipped, the other models give the
    numbers they give when run alone."""
    met, crav, part = make_study(seed=4, n_cud=3, n_hc=3)
    cfg = stats.load_stats_config(CONFIG)
    res = stats.run_all(cfg["models"], met, crav, part, levels=cfg["levels"])
    skipped = {n for n, df in res.items() if stats.skip_reason(df) is not None}
    assert {"glu_change_vs_cue_craving", "baseline_glu_vs_cocaine_use"} <= skipped
    for m in cfg["models"]:
        if m["name"] in skipped:
            with pytest.raises(stats.InestimableError, match=re.escape(
                    stats.skip_reason(res[m["name"]]))):
                stats.run_model(m, met, crav, part, levels=cfg["levels"])
        else:
            alone = stats.run_model(m, met, crav, part, levels=cfg["levels"])
            pd.testing.assert_frame_equal(res[m["name"]], alone)
    assert "glu_group_film_lmm" not in skipped
    assert row(res["glu_group_film_lmm"], "film_in_CUD")["n_participants"] == 6


def test_on_inestimable_error_stops_with_the_reason(pilot, tmp_path):
    cfg = stats.load_stats_config(CONFIG)
    with pytest.raises(stats.InestimableError,
                       match=r"^model 'baseline_glu_welch': group=CUD has 1 observation\(s\); "
                             r"need at least 2 \(stats.on_inestimable: error"):
        stats.run_all(cfg["models"], *pilot, levels=cfg["levels"], on_inestimable="error")
    with pytest.raises(stats.InestimableError, match="baseline_glu_welch"):
        stats.run_stats({**cfg, "on_inestimable": "error"}, *pilot, tmp_path, tmp_path / "s.md")
    assert not (tmp_path / "all_models.tsv").exists()
    with pytest.raises(stats.ModelSpecError, match="on_inestimable must be one of"):
        stats.run_all(cfg["models"], *pilot, on_inestimable="warn")


def test_cli_reports_skipped_models_and_the_error_switch(pilot, tmp_path, capsys):
    from mrsflow import cli

    for name, df in zip(("metabolites", "craving", "participants"), pilot, strict=True):
        df.to_csv(tmp_path / f"{name}.tsv", sep="\t", index=False)
    cfg = stats.load_stats_config(CONFIG)
    cfg["models"] = [m for m in cfg["models"] if m["name"] == "baseline_glu_welch"]
    args = ["stats", "--metabolites", str(tmp_path / "metabolites.tsv"),
            "--craving", str(tmp_path / "craving.tsv"),
            "--participants", str(tmp_path / "participants.tsv"),
            "--out-dir", str(tmp_path / "out"), "--summary", str(tmp_path / "out" / "s.md")]
    import json

    assert cli.main([*args, "--stats", json.dumps(cfg)]) == 0
    err = capsys.readouterr().err
    assert err == ("mrsflow stats: model 'baseline_glu_welch' skipped: group=CUD has 1 "
                   "observation(s); need at least 2\n")
    assert cli.main([*args, "--stats", json.dumps({**cfg, "on_inestimable": "error"})]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrsflow stats: error: model 'baseline_glu_welch': group=CUD has 1 ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # too few observations in a group
        (lambda m: m[~((m.group == "CUD") & (m.participant_id != "sub-001"))],
         r"group=CUD has 1 observation\(s\)"),
        # one group only: a declared level absent from the data
        (lambda m: m[m.group == "HC"], r"'group' has only the level\(s\) \['HC'\]"),
        # no QC-passing scan
        (lambda m: m.assign(qc_pass=False), r"filter .* left no rows of table 'metabolites'"),
        # no variance
        (lambda m: m.assign(conc_molal=10.0), r"'conc_molal' does not vary within either group"),
        # no scan at all (an empty table is not a typo in the filter)
        (lambda m: m.iloc[:0], r"table 'metabolites' is empty"),
    ],
)
def test_data_insufficiency_is_inestimable(study, change, reason):
    met, crav, part = study
    with pytest.raises(stats.InestimableError, match=reason):
        stats.run_model(WELCH, change(met), crav, part)
    res = stats.run_all([WELCH], change(met), crav, part)
    assert re.search(reason, stats.skip_reason(res["w"]))


def test_other_inestimable_cases(study):
    met, crav, part = study
    hc = met[met.group == "HC"]
    # mixed model: only HC -> the group factor has one level
    with pytest.raises(stats.InestimableError, match=r"factor 'group' has only the level"):
        stats.run_model(LMM, hc, crav, part)
    # a within factor with one level
    with pytest.raises(stats.InestimableError, match=r"within-participant factor 'film'"):
        stats.run_model({**LMM, "formula": "conc_molal ~ film", "contrasts": []},
                        hc[hc.film == "neutral"], crav, part)
    # no participant complete (on_incomplete: drop)
    one_film = met[(met.group == "CUD") & (met.film == "neutral") | (met.group == "HC")
                   & (met.film == "cocaine")]
    with pytest.raises(stats.InestimableError, match="no participant has complete"):
        stats.run_model({**LMM, "formula": "conc_molal ~ film", "contrasts": [],
                         "on_incomplete": "drop"}, one_film, crav, part)
    # a contrast at a declared level the data lack: the NAC arm never ran
    no_nac = met[met.drug != "nac"]
    spec = {**CROSSOVER, "filter": "metabolite == 'Glu' and group == 'CUD'"}
    with pytest.raises(stats.InestimableError):
        stats.run_model(spec, no_nac, crav, part)
    # a filter on a declared level no row has: not a typo
    with pytest.raises(stats.InestimableError, match="left no rows"):
        stats.run_model({**WELCH, "filter": "drug == 'nac'"}, no_nac, crav, part)
    # a paired difference whose units all lack a level (on_incomplete: drop)
    deriv = {"name": "d", "kind": "correlation", "table": "metabolites",
             "filter": "metabolite == 'Glu' and group == 'CUD' and drug == 'placebo'",
             "derive": [{"name": "glu_change", "value": "conc_molal", "over": "film",
                         "levels": ["cocaine", "neutral"], "keys": ["participant_id", "session"],
                         "on_incomplete": "drop"}],
             "x": "cocaine_g_per_week", "y": "glu_change"}
    with pytest.raises(stats.InestimableError, match="no unit has both film=cocaine"):
        stats.run_model(deriv, met[met.film == "neutral"], crav, part)
    # three complete pairs only
    few = met[met.participant_id.isin(["sub-001", "sub-002", "sub-003"])]
    with pytest.raises(stats.InestimableError, match="3 complete pairs; need at least 4"):
        stats.run_model(deriv, few, crav, part)


def test_spec_errors_still_stop_a_run_that_skips(study):
    """Errors a user must fix are not 'skipped': run_all raises them with on_inestimable skip."""
    met, crav, part = study
    cases = [
        ({**WELCH, "filter": "metabolite == 'Gluu' and qc_pass"},
         r"left no rows.*metabolite is never 'Gluu' in the table \(a typo\?"),
        ({**WELCH, "filter": "metabolite == 'Glu' and drug in ['nca']"},
         r"drug is never 'nca'"),
        ({**WELCH, "outcome": "conc_molla"}, r"\['conc_molla'\] not in table"),
        ({**ANCOVA, "formula": "conc_molal ~ group +"}, r"cannot parse formula"),
        ({**LMM, "contrasts": [{"name": "x", "diff": {"film": ["cocaine", "neutrl"]}}]},
         r"contrast 'x': film='neutrl' is not a level"),
        ({**WELCH, "filter": "metabolite == 'Glu' and film == 'neutral'"}, r"more than one row"),
        ({"name": "d", "kind": "correlation", "table": "metabolites",
          "filter": "metabolite == 'Glu' and drug == 'placebo'",
          "derive": [{"name": "glu_change", "value": "conc_molal", "over": "film",
                      "levels": ["cocain", "neutral"], "keys": ["participant_id", "session"]}],
          "x": "cocaine_g_per_week", "y": "glu_change"},
         r"film is never 'cocain' in the data and not a declared level"),
    ]
    for spec, msg in cases:
        with pytest.raises(stats.ModelSpecError, match=msg) as info:
            stats.run_all([spec], met, crav, part)
        assert not isinstance(info.value, stats.InestimableError), (spec, info.value)
