"""The paper's figures (mrsflow.figures) on a small synthetic study written to tmp_path.

Checks that every figure writes a PDF and a 300 dpi PNG, that the numbers drawn (returned by
the figure functions) are those of the tables (pandas recomputation), that only QC-passing
scans are drawn, that the mean spectrum is phased/referenced the project's way, that a
rerun gives byte-identical files, and that a panel whose model is skipped, renamed, not run
or without data (or without voxels) says so on the figure, which is still written.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, snakemake_with_override
from scipy import stats as sps

from mrsflow import cli, nmrs
from mrsflow import figures as FG
from mrsflow import stats as ST
from mrsflow.basis import Sequence, write_fsl_basis

F0 = 127.8
DWELL = 1.0 / 2000.0
NPTS = 1024
ACCUMBENS = np.array([-10.0, 12.0, -8.0])
# singlet-ish toy basis: (ppm, protons)
LINES = {
    "NAA": [(2.01, 3.0)],
    "Cr": [(3.03, 3.0), (3.92, 2.0)],
    "Cho": [(3.21, 9.0)],
    "Glu": [(2.35, 2.0), (2.10, 1.0), (3.75, 1.0)],
    "Ins": [(3.56, 4.0), (3.52, 2.0)],
}
CONC = {"NAA": 10.0, "Cr": 7.0, "Cho": 1.2, "Glu": 9.0, "Ins": 5.0}
N_HC, N_CUD = 4, 4
FAILED = ("sub-cud02", "ses-2", "cocaine")  # the scan failing QC
MODEL_COLUMNS = ["model", "kind", "outcome", "section", "term", "estimate", "se", "ci_low",
                 "ci_high", "statistic", "stat_type", "df", "p", "effect_size",
                 "effect_size_type", "n_obs", "n_participants", "note"]


def _basis_fid(name: str, t: np.ndarray) -> np.ndarray:
    return sum(n * np.exp(2j * np.pi * (ppm - 4.65) * F0 * t) for ppm, n in LINES[name])


def _design() -> list[dict]:
    """Scans: HC one session (drug none), CUD two (placebo, NAC), neutral + cocaine film."""
    scans = []
    for i in range(1, N_HC + 1):
        for film in FG.FILMS:
            scans.append({"participant_id": f"sub-hc{i:02d}", "group": "HC",
                          "session": "ses-1", "drug": "none", "period": 1, "film": film})
    for i in range(1, N_CUD + 1):
        drugs = ("placebo", "nac") if i % 2 else ("nac", "placebo")
        for period, drug in enumerate(drugs, start=1):
            for film in FG.FILMS:
                scans.append({"participant_id": f"sub-cud{i:02d}", "group": "CUD",
                              "session": f"ses-{period}", "drug": drug, "period": period,
                              "film": film})
    return scans


def _model_table(name: str, rows: list[tuple]) -> pd.DataFrame:
    out = []
    for section, term, est in rows:
        out.append({"model": name, "kind": "mixedlm", "outcome": "", "section": section,
                    "term": term, "estimate": est, "se": 0.5, "ci_low": est - 1.0,
                    "ci_high": est + 1.0, "statistic": est / 0.5, "stat_type": "t",
                    "df": 12.3, "p": 0.0123, "effect_size": est / 2, "effect_size_type":
                    "cohens_d", "n_obs": 10, "n_participants": 5, "note": ""})
    return pd.DataFrame(out, columns=MODEL_COLUMNS)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return build_study(tmp_path_factory.mktemp("study"))


def build_study(root: Path) -> dict:
    """Tables, model TSVs, a toy basis, spectra, fits, voxels and registrations."""
    rng = np.random.default_rng(7)
    scans = _design()
    t = np.arange(NPTS) * DWELL

    # --- tables
    met, crav = [], []
    for k, s in enumerate(scans):
        key = (s["participant_id"], s["session"], s["film"])
        glu = 9.5 - 0.6 * (s["group"] == "CUD") + 0.4 * (s["film"] == "cocaine") \
            + rng.normal(0, 0.4)
        for m, c in (("Glu", glu), ("NAA", 11.0 + rng.normal(0, 0.5))):
            met.append({**s, "metabolite": m, "conc_molal": round(c, 4),
                        "fit_quality": 1.0 + 0.01 * k, "qc_pass": key != FAILED})
        for time in FG.TIMES:
            base = 25.0 if s["group"] == "CUD" else 3.0
            rise = 15.0 if (s["group"] == "CUD" and s["film"] == "cocaine") else 0.0
            crav.append({**s, "time": time, "vas": round(float(np.clip(
                base + rise * (time == "post") + rng.normal(0, 4), 0, 100)), 1)})
    tables = root / "tables"
    tables.mkdir(exist_ok=True)
    met_df, crav_df = pd.DataFrame(met), pd.DataFrame(crav)
    met_df.to_csv(tables / "metabolites.tsv", sep="\t", index=False)
    crav_df.to_csv(tables / "craving.tsv", sep="\t", index=False)

    # --- model tables (only the rows the figures read)
    sd = root / "stats"
    sd.mkdir(exist_ok=True)
    welch = _model_table("baseline_glu_welch", [("test", "CUD - HC", -0.6)])
    welch = welch.assign(kind="welch_t", effect_size_type="hedges_g")
    welch.to_csv(sd / "baseline_glu_welch.tsv", sep="\t", index=False)
    specs = {
        "glu_group_film_lmm": ["film_in_CUD", "film_in_HC", "group_x_film", "group_at_neutral"],
        "glu_drug_film_cud_lmm": ["nac_vs_placebo", "film_in_placebo", "film_in_nac",
                                  "drug_x_film"],
        "craving_group_film_time_lmm": ["cue_craving_CUD", "cue_craving_HC",
                                        "group_x_film_x_time"],
        "craving_drug_film_time_cud_lmm": ["cue_craving_placebo", "cue_craving_nac",
                                           "drug_x_film_x_time"],
    }
    for name, terms in specs.items():
        _model_table(name, [("contrast", term, 0.1 * (i + 1)) for i, term in
                            enumerate(terms)]).to_csv(sd / f"{name}.tsv", sep="\t", index=False)

    # --- basis, spectra, fits, voxels and registrations
    seq = Sequence(f0_mhz=F0, te1_ms=12.0, te2_ms=18.0, dwell_s=DWELL, npoints=NPTS)
    basis_dir = root / "basis"
    write_fsl_basis(basis_dir, {n: _basis_fid(n, t) for n in LINES}, seq)
    voxels, spectra, fits = [], [], []
    for k, s in enumerate(scans):
        pid, ses, film = s["participant_id"], s["session"], s["film"]
        stem = f"{pid}_{ses}_task-{film}"
        # the spectrum: a phase and a frequency shift that the fit JSON reports
        phi0, shift = np.deg2rad(20.0 + 3 * k), 1.5 - 0.2 * k
        fid = sum(CONC[n] * _basis_fid(n, t) for n in LINES)
        fid = fid * np.exp(-np.pi * 5.0 * t + 2j * np.pi * shift * t + 1j * phi0)
        fid = fid + (rng.normal(0, 2.0, NPTS) + 1j * rng.normal(0, 2.0, NPTS))
        spec = root / "preprocess" / f"{stem}_desc-metab_svs.nii.gz"
        nmrs.write(spec, fid.reshape(1, 1, 1, -1), DWELL, F0)
        spectra.append(str(spec))
        fit = {"phi0_deg": float(np.rad2deg(phi0)), "phi1_deg_per_ppm": 0.0,
               "groups": {"metabolites": {"shift_hz": shift}}, "water_amplitude": 5.0e4,
               "fit_quality": 1.0 + 0.01 * k, "centre_ppm": 4.65, "f0_mhz": F0}
        fj = root / "fit" / f"{stem}_desc-fit.json"
        fj.parent.mkdir(parents=True, exist_ok=True)
        fj.write_text(json.dumps(fit))
        fits.append(str(fj))
        # registration: subject world = MNI shifted by a per-participant offset
        off = np.array([3.0, -2.0, 1.0]) * (int(pid[-2:]) % 3)  # one T1 per participant
        to_mni = np.eye(4)
        to_mni[:3, 3] = off
        xfm = root / "segment" / f"{pid}_{ses}_from-T1w_to-MNI152_xfm.json"
        xfm.parent.mkdir(parents=True, exist_ok=True)
        xfm.write_text(json.dumps({"matrix": to_mni.tolist()}))
        vox = np.diag([10.0, 12.0, 10.0, 1.0])
        vox[:3, 3] = ACCUMBENS - off + rng.normal(0, 0.5, 3)
        mrs = root / "convert" / f"{stem}_svs.nii.gz"
        nmrs.write(mrs, np.zeros((1, 1, 1, 8), complex), DWELL, F0, affine=vox)
        voxels.append((str(xfm), str(mrs)))
    return {"root": root, "met": met_df, "crav": crav_df, "stats": sd, "basis": basis_dir,
            "voxels": voxels, "spectra": spectra, "fits": fits}


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _check_files(pdf: Path, png: Path, min_height_px: int) -> None:
    assert pdf.read_bytes()[:5] == b"%PDF-"
    w, h = _png_size(png)
    assert w == pytest.approx(180 / 25.4 * 300, abs=3)  # 180 mm at 300 dpi
    assert h >= min_height_px
    assert png.stat().st_size > 50_000


def _expected(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    def agg(x):
        n = len(x)
        m, s = x.mean(), x.std(ddof=1)
        h = sps.t.ppf(0.975, n - 1) * s / np.sqrt(n)
        return pd.Series({"n": n, "mean": m, "ci_low": m - h, "ci_high": m + h})

    return df.groupby(by)[value].apply(agg).unstack()


def _compare(summary: pd.DataFrame, expected: pd.DataFrame, by: list[str]) -> None:
    got = summary.set_index(by)[["n", "mean", "ci_low", "ci_high"]].sort_index()
    exp = expected[["n", "mean", "ci_low", "ci_high"]].sort_index()
    assert list(got.index) == list(exp.index)
    np.testing.assert_allclose(got.to_numpy(float), exp.to_numpy(float), rtol=1e-10)


def _figure1(study, out: Path) -> dict:
    return FG.figure1(study["root"] / "tables" / "metabolites.tsv", study["stats"],
                      study["voxels"], study["spectra"], study["fits"], study["basis"],
                      out / "fig1.pdf", out / "fig1.png", fitting={"ppm_range": [0.2, 4.2]})


def _figure3(study, out: Path, models=None) -> dict:
    return FG.figure3(study["root"] / "tables" / "metabolites.tsv", study["stats"],
                      out / "fig3.pdf", out / "fig3.png", models=models)


@pytest.fixture(scope="module")
def fig1(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("fig1")
    return _figure1(study, out), out


@pytest.fixture(scope="module")
def fig3(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("fig3")
    return _figure3(study, out), out


def test_figure1_numbers_files_and_qc(study, fig1):
    res, out = fig1
    _check_files(out / "fig1.pdf", out / "fig1.png", 1500)
    met = study["met"]
    base = met.query("metabolite == 'Glu' and film == 'neutral' and qc_pass and drug != 'nac'")
    _compare(res["glu"], _expected(base, ["group"], "conc_molal"), ["group"])
    assert res["welch"]["estimate"] == -0.6
    # overlap: every participant has QC-passing scans; the failed scan is not drawn
    ov = res["overlap"]
    assert ov["n_participants"] == N_HC + N_CUD
    assert ov["n_scans"] == len(study["voxels"]) - 1
    assert np.linalg.norm(ov["com_mni"] - ACCUMBENS) < 1.0
    assert 0.8 < ov["peak_fraction"] <= 1.0  # jittered voxels: partial coverage at edges
    # spectra: the baseline scans (neutral; CUD placebo), typical = median fit quality
    sp = res["spectra"]
    keys = set(map(tuple, base[["participant_id", "session", "film"]].to_numpy()))
    assert set(sp["scans"]) == keys and sp["n"] == N_HC + N_CUD
    q = base.set_index(["participant_id", "session", "film"])["fit_quality"].sort_values()
    assert sp["typical"] == q.index[(len(q) - 1) // 2]
    # phased and referenced with the fit's phi0 and shift: NAA the tallest, at 2.01 ppm
    peak = sp["ppm"][int(np.argmax(sp["mean"]))]
    assert peak == pytest.approx(2.01, abs=0.01)
    assert sp["mean"].max() > 5 * abs(sp["mean"].min())  # absorptive, not dispersive


def test_figure2_numbers_and_files(study, tmp_path):
    res = FG.figure2(study["root"] / "tables" / "craving.tsv", study["stats"],
                     tmp_path / "fig2.pdf", tmp_path / "fig2.png")
    _check_files(tmp_path / "fig2.pdf", tmp_path / "fig2.png", 900)
    s = res["summary"]
    crav = study["crav"]
    a = s[s["panel"] == "a"]
    exp_a = _expected(crav.query("drug != 'nac'"), ["group", "film", "time"], "vas")
    _compare(a, exp_a, ["group", "film", "time"])
    b = s[s["panel"] == "b"]
    exp_b = _expected(crav.query("group == 'CUD'"), ["drug", "film", "time"], "vas")
    _compare(b, exp_b, ["drug", "film", "time"])


def test_figure3_numbers_qc_and_files(study, fig3):
    res, out = fig3
    _check_files(out / "fig3.pdf", out / "fig3.png", 900)
    s = res["summary"]
    met = study["met"]
    a = s[s["panel"] == "a"]
    _compare(a, _expected(met.query("metabolite == 'Glu' and qc_pass and drug != 'nac'"),
                          ["group", "film"], "conc_molal"), ["group", "film"])
    b = s[s["panel"] == "b"]
    _compare(b, _expected(met.query("metabolite == 'Glu' and qc_pass and group == 'CUD'"),
                          ["drug", "film"], "conc_molal"), ["drug", "film"])
    # the QC-failed scan (sub-cud02 ses-2 cocaine, on placebo) is not counted
    drug = met.query("participant_id == 'sub-cud02' and session == 'ses-2'")["drug"].iloc[0]
    row = b[(b["drug"] == drug) & (b["film"] == "cocaine")]
    assert int(row["n"].iloc[0]) == N_CUD - 1


def test_reruns_are_byte_identical(study, fig1, fig3, tmp_path):
    res1 = _figure1(study, tmp_path)
    res3 = _figure3(study, tmp_path)
    for name in ("fig1.pdf", "fig1.png"):
        assert (tmp_path / name).read_bytes() == (fig1[1] / name).read_bytes(), name
    for name in ("fig3.pdf", "fig3.png"):
        assert (tmp_path / name).read_bytes() == (fig3[1] / name).read_bytes(), name
    pd.testing.assert_frame_equal(res1["glu"], fig1[0]["glu"])
    pd.testing.assert_frame_equal(res3["summary"], fig3[0]["summary"])


def test_model_filters_come_from_the_stats_config(study, tmp_path):
    models = {"models": [{"name": "glu_group_film_lmm",
                          "filter": "metabolite == 'Glu' and drug != 'nac'"}]}
    res = _figure3(study, tmp_path, models=models)
    a = res["summary"].query("panel == 'a'")
    assert a["n"].sum() == len(study["met"].query("metabolite == 'Glu' and drug != 'nac'"))


def test_helpers():
    assert FG.scan_key("x/sub-cud01_ses-2_task-cocaine_svs.nii.gz") == (
        "sub-cud01", "ses-2", "cocaine")
    s = FG.mean_ci([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0
    assert s["ci_high"] - 2.0 == pytest.approx(sps.t.ppf(0.975, 2) / np.sqrt(3))
    assert FG.fmt_p(0.0004) == "p < 0.001"
    assert FG.fmt_p(0.0123) == "p = 0.012"
    assert FG.fmt_p(0.234) == "p = 0.23"


# ---------------------------------------------------------------------------------------
# panels whose model is skipped, renamed or not run, without data or without voxels

CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
SKIP_WELCH = "group=CUD has 1 observation(s); need at least 2"
SKIP_LMM = "4 observations for 4 fixed-effect coefficients; need more observations than " \
    "coefficients"


def _pdf_unescape(m: re.Match) -> bytes:
    c = m.group(1)
    return bytes([int(c, 8)]) if c[:1].isdigit() else c


def pdf_text(path: Path) -> str:
    """The text drawn in a PDF written by matplotlib: the UTF-16 strings of the TJ operators,
    one line per text object (BT ... ET), lines joined by spaces. Ligatures (fi, ff, ffi, fl)
    are glyphs of another font without a character: they read as one control character, see
    :func:`drawn`."""
    lines = []
    data = path.read_bytes()
    for m in re.finditer(rb"stream\r?\n", data):
        try:  # a zlib stream ends by itself (binary data may contain b"endstream")
            content = zlib.decompressobj().decompress(data[m.end():])
        except zlib.error:
            continue
        for block in re.findall(rb"\nBT\n(.*?)\nET\n", content, re.S):
            raw = b"".join(b"".join(re.findall(rb"\(((?:\\.|[^\\)])*)\)", tj))
                           for tj in re.findall(rb"\[(.*?)\]\s*TJ", block, re.S))
            raw = re.sub(rb"\\([0-7]{1,3}|.)", _pdf_unescape, raw, flags=re.S)
            lines.append(raw.decode("utf-16-be", errors="replace"))
    return re.sub(r"[\x00-\x1f]", "\x00", " ".join(lines))


def drawn(expected: str, text: str) -> bool:
    """Whether ``expected`` is drawn in ``text`` (:func:`pdf_text`; ligatures as one
    placeholder character)."""
    for lig in ("ffi", "ffl", "ff", "fi", "fl"):
        expected = expected.replace(lig, "\x00")
    return expected in text


def _stats_dir(study, dest: Path, skipped: dict[str, str]) -> Path:
    """The study's model tables, with those of ``skipped`` written by mrsflow.stats as
    skipped (reason)."""
    shutil.copytree(study["stats"], dest)
    specs = {m["name"]: m for m in CONFIG["stats"]["models"]}
    ST.write_tables({n: ST.skipped_table(specs[n], r) for n, r in skipped.items()}, dest)
    return dest


def test_config_figures_block_is_the_default():
    assert CONFIG["figures"] == FG.DEFAULT_PANELS


def test_skipped_models_are_named_on_the_figures_and_data_still_drawn(study, tmp_path):
    sd = _stats_dir(study, tmp_path / "stats", {
        "baseline_glu_welch": SKIP_WELCH, "glu_group_film_lmm": SKIP_LMM,
        "craving_drug_film_time_cud_lmm": "1 level(s) of 'participant_id'"})
    models, panels = CONFIG["stats"], CONFIG["figures"]
    met, crav = study["met"], study["crav"]

    r1 = FG.figure1(study["root"] / "tables" / "metabolites.tsv", sd, study["voxels"],
                    study["spectra"], study["fits"], study["basis"], tmp_path / "fig1.pdf",
                    tmp_path / "fig1.png", models=models, fitting={"ppm_range": [0.2, 4.2]},
                    panels=panels["fig1"])
    _check_files(tmp_path / "fig1.pdf", tmp_path / "fig1.png", 1500)
    assert r1["status"] == {"c": f"baseline_glu_welch: skipped ({SKIP_WELCH})"}
    assert r1["welch"] is None and r1["spectra"]["n"] == N_HC + N_CUD
    base = met.query("metabolite == 'Glu' and film == 'neutral' and qc_pass and drug != 'nac'")
    _compare(r1["glu"], _expected(base, ["group"], "conc_molal"), ["group"])
    text = pdf_text(tmp_path / "fig1.pdf")
    assert drawn(f"baseline_glu_welch: skipped ({SKIP_WELCH})", text)
    assert "Welch" not in text

    r3 = FG.figure3(study["root"] / "tables" / "metabolites.tsv", sd, tmp_path / "fig3.pdf",
                    tmp_path / "fig3.png", models=models, panels=panels["fig3"])
    _check_files(tmp_path / "fig3.pdf", tmp_path / "fig3.png", 900)
    assert r3["status"] == {"group": f"glu_group_film_lmm: skipped ({SKIP_LMM})"}
    a = r3["summary"].query("panel == 'a'")
    _compare(a, _expected(met.query("metabolite == 'Glu' and qc_pass and drug != 'nac'"),
                          ["group", "film"], "conc_molal"), ["group", "film"])
    text = pdf_text(tmp_path / "fig3.pdf")
    assert drawn(f"glu_group_film_lmm: skipped ({SKIP_LMM})", text)
    assert text.count("not available (see below)") == 2
    # panel b's model was estimated: its contrasts are printed (0.10 = nac_vs_placebo)
    assert drawn("NAC \u2212 placebo: 0.10 mmol/kg", text)

    r2 = FG.figure2(study["root"] / "tables" / "craving.tsv", sd, tmp_path / "fig2.pdf",
                    tmp_path / "fig2.png", models=models, panels=panels["fig2"])
    _check_files(tmp_path / "fig2.pdf", tmp_path / "fig2.png", 900)
    assert r2["status"] == {
        "drug": "craving_drug_film_time_cud_lmm: skipped (1 level(s) of 'participant_id')"}
    b = r2["summary"].query("panel == 'b'")
    _compare(b, _expected(crav.query("group == 'CUD'"), ["drug", "film", "time"], "vas"),
             ["drug", "film", "time"])
    assert drawn("craving_drug_film_time_cud_lmm: skipped", pdf_text(tmp_path / "fig2.pdf"))


def test_renamed_missing_and_unconfigured_models(study, tmp_path):
    """A config whose stats models are not the paper's: a renamed model drawn under its new
    name, a model not run and a panel without a model said so, a contrast that does not
    exist named."""
    sd = tmp_path / "stats"
    shutil.copytree(study["stats"], sd)
    old = pd.read_csv(sd / "craving_group_film_time_lmm.tsv", sep="\t")
    old.assign(model="craving_v2").to_csv(sd / "craving_v2.tsv", sep="\t", index=False)
    (sd / "craving_group_film_time_lmm.tsv").unlink()
    models = copy.deepcopy(CONFIG["stats"])
    for m in models["models"]:
        if m["name"] == "craving_group_film_time_lmm":
            m["name"] = "craving_v2"
    models["models"] = [m for m in models["models"]
                        if m["name"] != "craving_drug_film_time_cud_lmm"]
    panels = copy.deepcopy(CONFIG["figures"])
    panels["fig2"]["group"]["model"] = "craving_v2"

    r2 = FG.figure2(study["root"] / "tables" / "craving.tsv", sd, tmp_path / "fig2.pdf",
                    tmp_path / "fig2.png", models=models, panels=panels["fig2"])
    _check_files(tmp_path / "fig2.pdf", tmp_path / "fig2.png", 900)
    missing = ("craving_drug_film_time_cud_lmm: not among the models of the config's stats "
               "block")
    assert r2["status"] == {"drug": missing}
    s = r2["summary"]
    _compare(s[s["panel"] == "a"], _expected(study["crav"].query("drug != 'nac'"),
                                             ["group", "film", "time"], "vas"),
             ["group", "film", "time"])
    assert (s.loc[s["panel"] == "b", "n"] == 0).all()  # its rows are unknown: no data
    text = pdf_text(tmp_path / "fig2.pdf")
    assert drawn(missing, text) and drawn("no data", text)
    assert drawn("0.10 VAS", text)  # cue_craving_CUD of the renamed model

    panels["fig3"]["group"]["contrasts"]["HC"] = "film_in_hc"
    del panels["fig3"]["drug"]
    r3 = FG.figure3(study["root"] / "tables" / "metabolites.tsv", sd, tmp_path / "fig3.pdf",
                    tmp_path / "fig3.png", models=models, panels=panels["fig3"])
    assert r3["status"] == {"drug": "no model configured (figures.fig3.drug)"}
    text = pdf_text(tmp_path / "fig3.pdf")
    assert drawn("glu_group_film_lmm: no contrast row 'film_in_hc' in its table", text)
    assert drawn("no model configured (figures.fig3.drug)", text)


def test_figure1_voxels_of_some_scans_or_none(study, tmp_path):
    # voxels of the HC scans only (the CUD scans had no T1)
    hc = [v for v in study["voxels"] if "sub-hc" in v[1]]
    r = FG.figure1(study["root"] / "tables" / "metabolites.tsv", study["stats"], hc,
                   study["spectra"], study["fits"], study["basis"], tmp_path / "a.pdf",
                   tmp_path / "a.png", fitting={"ppm_range": [0.2, 4.2]})
    assert r["overlap"]["n_participants"] == N_HC and r["status"] == {}
    assert np.linalg.norm(r["overlap"]["com_mni"] - ACCUMBENS) < 1.0

    # none: through the CLI, zero --voxel-xfm/--voxel-mrs pairs
    args = ["figure1", "--metabolites", str(study["root"] / "tables" / "metabolites.tsv"),
            "--stats-dir", str(study["stats"]), "--basis-dir", str(study["basis"]),
            "--pdf", str(tmp_path / "b.pdf"), "--png", str(tmp_path / "b.png"),
            "--voxel-xfm", "--voxel-mrs", "--spectra", *study["spectra"],
            "--fits", *study["fits"], "--fitting", json.dumps({"ppm_range": [0.2, 4.2]}),
            "--models", json.dumps(CONFIG["stats"]), "--panels",
            json.dumps(CONFIG["figures"]["fig1"])]
    assert cli.main(args) == 0
    _check_files(tmp_path / "b.pdf", tmp_path / "b.png", 1500)
    text = pdf_text(tmp_path / "b.pdf")
    assert drawn("no T1: no voxel placement", text)
    assert drawn("Welch t(12.3) = \u22121.20", text)  # the other panels as usual
    bad = [*args[:args.index("--voxel-mrs")], study["voxels"][0][0], "--voxel-mrs",
           *args[args.index("--voxel-mrs") + 1:]]
    assert cli.main(bad) == 2  # an xfm without its scan


def test_figure1_without_a_configured_model(study, tmp_path):
    r = FG.figure1(study["root"] / "tables" / "metabolites.tsv", study["stats"],
                   study["voxels"][:2], study["spectra"], study["fits"], study["basis"],
                   tmp_path / "c.pdf", tmp_path / "c.png", models=CONFIG["stats"], panels={})
    why = "no model configured (figures.fig1.baseline)"
    assert r["status"] == {"b": f"no baseline scans: {why}", "c": why}
    assert r["spectra"]["n"] == 0 and (r["glu"]["n"] == 0).all()
    text = pdf_text(tmp_path / "c.pdf")
    assert drawn(f"no baseline scans: {why}", text)
    _check_files(tmp_path / "c.pdf", tmp_path / "c.png", 1500)


def test_figure_rules_take_their_models_from_the_config(tmp_path):
    """A config without the paper's model names builds the DAG (figure inputs come from the
    figures block; panels of models not run are drawn as such)."""
    override = {
        "stats": {"models": [{**next(m for m in CONFIG["stats"]["models"]
                                     if m["name"] == "baseline_glu_welch"),
                              "name": "glu_welch_v2"}]},
        "figures": {"fig1": {"baseline": {"model": "glu_welch_v2"}}},
    }
    proc = snakemake_with_override(tmp_path, override, "results/figures/fig1.pdf",
                                   "results/figures/fig2.pdf", "results/figures/fig3.pdf",
                                   "-n", "-p", "--forceall")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "results/stats/glu_welch_v2.tsv" in out
    assert "craving_group_film_time_lmm.tsv" not in out.replace('"model":"craving_group', "")
