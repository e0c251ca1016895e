"""The paper's figures (mrsflow.figures) on a small synthetic study written to tmp_path.

Checks that every figure writes a PDF and a 300 dpi PNG, that the numbers drawn (returned by
the figure functions) are those of the tables (pandas recomputation), that only QC-passing
scans are drawn, that the mean spectrum is phased/referenced the project's way, and that a
rerun gives byte-identical files.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mrsflow import figures as FG
from mrsflow import nmrs
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
