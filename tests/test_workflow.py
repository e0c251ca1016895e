"""The workflow as a whole: lint, formatting, and the DAG of the default config."""

from __future__ import annotations

import re
import subprocess

from conftest import BIN, ROOT, snakemake


def test_snakemake_lint_is_clean():
    proc = snakemake("--lint")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_rules_are_snakefmt_formatted():
    files = ["Snakefile", "workflow/Snakefile",
             *map(str, sorted((ROOT / "workflow" / "rules").glob("*.smk")))]
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", *files], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_rule_has_log_threads_resources_conda():
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    rules = re.split(r"^rule (\w+):", text, flags=re.M)[1:]
    assert rules, "no rules found"
    for name, body in zip(rules[::2], rules[1::2], strict=True):
        for directive in ("log:", "threads:", "resources:", "conda:"):
            if name == "all":
                continue
            assert f"    {directive}" in body, f"rule {name} lacks {directive}"


def test_default_dag_dry_run():
    proc = snakemake(
        "-n", "--forceall", "--profile", "workflow/profiles/default", "--quiet", "rules"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the default DAG builds the basis set from the config
    assert re.search(r"^basis\s+1$", proc.stdout, flags=re.M), proc.stdout


def test_linewidth_matching_puts_its_rule_between_preprocessing_and_fitting(tmp_path):
    """preprocess.linewidth_matching.enabled: one match_linewidth job per participant, the
    fits read its spectra and the tables its records; off (default): no such job."""
    from conftest import snakemake_with_override

    override = {"twin": {"n_cud": 2, "n_hc": 2},
                "preprocess": {"linewidth_matching": {"enabled": True, "measure": "naa"}}}
    proc = snakemake_with_override(tmp_path, override, "-n", "--forceall", "-p",
                                   "--quiet", "rules")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"^match_linewidth\s+4$", proc.stdout, flags=re.M), out
    proc = snakemake_with_override(tmp_path, override, "-n", "--forceall", "-p",
                                   "results/fit/sub-cud01", "results/tables/metabolites.tsv")
    out = proc.stdout + proc.stderr
    assert "results/linewidth/sub-cud01/ses-1/mrs/sub-cud01_ses-1_task-cocaine_desc-metab" \
        in out  # the fit plan names the matched spectra
    assert "_desc-linewidth.json" in out  # quantify reads the records
    override["preprocess"]["linewidth_matching"]["enabled"] = False
    proc = snakemake_with_override(tmp_path, override, "-n", "--forceall", "--quiet", "rules")
    assert proc.returncode == 0 and "match_linewidth" not in proc.stdout
