"""A pilot-sized study (one participant per group, 6 scans) through the whole DAG.

No model of the study can be estimated with one CUD and one HC participant: the run must
still finish, each model's table (and all_models.tsv, summary.md) must say it was skipped and
why, Fig. 1-3 must be written with the reason on them, and verification.tsv must mark the
checks of the skipped models as not applicable (issue 19, studies of any size).
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import ROOT, snakemake_with_override


@pytest.mark.slow
def test_pilot_twin_runs_to_figures_and_verification(tmp_path):
    override = {"twin": {"n_cud": 1, "n_hc": 1}}
    proc = snakemake_with_override(tmp_path, override, "--cores", "2", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = tmp_path / "results"
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    names = [m["name"] for m in config["stats"]["models"]]

    # statistics: every model skipped, with its reason, in its table and the others
    for name in names:
        table = pd.read_csv(res / "stats" / f"{name}.tsv", sep="\t", keep_default_na=False)
        assert table["section"].tolist() == ["skipped"], name
        assert table["model"].tolist() == [name] and table["note"].iloc[0], name
    welch = pd.read_csv(res / "stats" / "baseline_glu_welch.tsv", sep="\t")
    assert welch["note"].iloc[0] == "group=CUD has 1 observation(s); need at least 2"
    all_models = pd.read_csv(res / "stats" / "all_models.tsv", sep="\t")
    assert all_models["model"].tolist() == names
    summary = (res / "stats" / "summary.md").read_text()
    assert f"skipped: {len(names)} of {len(names)} models" in summary
    assert summary.count("Skipped: not estimable with these data (") == len(names)

    # figures: written
    for n in (1, 2, 3):
        assert (res / "figures" / f"fig{n}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (res / "figures" / f"fig{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # verification: the findings and the models' truth-in-CI checks are not applicable
    v = pd.read_csv(res / "verification.tsv", sep="\t", keep_default_na=False)
    na = v[v["pass"] == "n/a"]
    assert len(na) == 5 + len(names)
    assert na["value"].str.startswith("not applicable: ").all()
    assert set(v.loc[v["pass"] != "n/a", "pass"]) <= {"pass", "fail"}
    row = v.set_index("check").loc["Baseline Glu, CUD - HC (Welch): direction"]
    assert row["value"] == ("not applicable: baseline_glu_welch skipped (group=CUD has 1 "
                            "observation(s); need at least 2)")
    assert row["expected"].startswith("< 0 (planted")
    assert "not applicable" in (res / "verification.html").read_text()
