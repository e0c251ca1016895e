"""Cue-induced glutamate without the BOLD confound: the twin with a planted linewidth change
during the cocaine film, fitted with and without linewidth matching (issue 22).

For each variant the whole twin runs once with ``preprocess.linewidth_matching.enabled:
false``, then again in the same folder with it on (Snakemake reruns matching, fitting and
everything after them; the raw data and preprocessing are shared). Printed per run: the Glu
film effect (cocaine - neutral) of ``glu_group_film_lmm`` per group, in mmol/kg and in % of
that group's neutral-film mean, with its 95 % CI, against what was planted (the truth's own
cocaine - neutral difference of the same scans); the linewidth change of
``linewidth_group_film_lmm``; the verification rows passed.

Variants (``--variants``, default all):

- ``null``: film_linewidth_hz -1.0 Hz in both groups (a deliberately large BOLD-like
  narrowing; 3 T reports are a few tenths of a Hz) and NO Glu film effect (glu_film_pct 0,
  no individual film responses); the true scan-to-scan variation is off and the SNR raised
  (mean 200) so that the artefact is not hidden by noise: what is left is the fit's response
  to the linewidth;
- ``effect``: the same with the paper's film effect planted (CUD +5 %, HC -1.5 %);
- ``default``: the default twin (no planted narrowing, study SNR): matching must not change
  the answers beyond their CIs and verification must pass both ways;
- ``reference``: ``null`` without the narrowing; with both run, the difference of their film
  effects (same noise realisation) is the linewidth artefact itself, printed at the end.

    python bench/bench_bold.py [--variants null effect default] [--workdir DIR] [--cores 2]

About 7 min for the first run of a variant and 4 min for the second on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from _config import deep_merge, merged_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

QUIET = {"glu_film_sd_pct": 0.0, "scan_sd_pct": 0.0}
HIGH_SNR = {"snr_mean": 200.0, "snr_sd": 20.0, "snr_range": [150.0, 260.0]}
VARIANTS = {
    "null": {"effects": {"film_linewidth_hz": {"CUD": -1.0, "HC": -1.0},
                         "glu_film_pct": {"CUD": 0.0, "HC": 0.0}, **QUIET},
             "quality": HIGH_SNR},
    "effect": {"effects": {"film_linewidth_hz": {"CUD": -1.0, "HC": -1.0},
                           "glu_film_pct": {"CUD": 5.0, "HC": -1.5}, **QUIET},
               "quality": HIGH_SNR},
    "default": {},
    # the null variant without the narrowing: the same noise realisation (the BOLD factor
    # draws no random numbers), so null - reference is the artefact itself, free of noise
    "reference": {"effects": {"film_linewidth_hz": {"CUD": 0.0, "HC": 0.0},
                              "glu_film_pct": {"CUD": 0.0, "HC": 0.0}, **QUIET},
                  "quality": HIGH_SNR},
}


def run(workdir: Path, twin: dict, matching: bool, cores: int) -> float:
    base = merged_config()
    override = {"twin": deep_merge(base["twin"], twin) if twin else base["twin"],
                "preprocess": {"linewidth_matching": {"enabled": matching}}}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "override.yaml").write_text(yaml.safe_dump(override))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
         "--cores", str(cores), "--configfile", str(ROOT / "config" / "config.yaml"),
         str(workdir / "override.yaml")],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def planted_film(workdir: Path) -> dict[str, float]:
    """The truth's cocaine - neutral Glu (mmol/kg) per group, CUD on placebo, the scans the
    analysis keeps (QC-passed), as the model sees it: mean over participants."""
    truth = pd.read_csv(workdir / "results/twin/truth/concentrations.tsv", sep="\t")
    meta = pd.read_csv(workdir / "results/tables/metabolites.tsv", sep="\t")
    keep = meta[(meta.metabolite == "Glu") & meta.qc_pass & (meta.drug != "nac")]
    glu = truth[truth.metabolite == "Glu"].merge(
        keep[["participant_id", "session", "film", "group"]],
        on=["participant_id", "session", "film"])
    wide = glu.pivot_table(index=["group", "participant_id"], columns="film",
                           values="conc_molal").dropna()
    return (wide["cocaine"] - wide["neutral"]).groupby(level="group").mean().to_dict()


def summarise(workdir: Path) -> list[dict]:
    stats = workdir / "results" / "stats"
    glu = pd.read_csv(stats / "glu_group_film_lmm.tsv", sep="\t")
    lw = pd.read_csv(stats / "linewidth_group_film_lmm.tsv", sep="\t")
    ver = pd.read_csv(workdir / "results" / "verification.tsv", sep="\t")
    planted = planted_film(workdir)
    rows = []
    for group in ("CUD", "HC"):
        c = glu[(glu.section == "contrast") & (glu.term == f"film_in_{group}")].iloc[0]
        mean = glu[(glu.section == "descriptive")
                   & (glu.term == f"mean[group={group}, film=neutral]")].iloc[0]["estimate"]
        lwc = lw[(lw.section == "contrast") & (lw.term == f"film_in_{group}")].iloc[0]
        pct = 100.0 / mean
        rows.append({
            "group": group, "glu_film_mM": c.estimate, "ci_low": c.ci_low, "ci_high": c.ci_high,
            "glu_film_pct": c.estimate * pct, "ci_pct": (c.ci_low * pct, c.ci_high * pct),
            "planted_mM": planted.get(group, float("nan")),
            "planted_pct": planted.get(group, float("nan")) * pct,
            "planted_in_ci": c.ci_low <= planted.get(group, float("nan")) <= c.ci_high,
            "lw_change_hz": lwc.estimate, "lw_ci": (lwc.ci_low, lwc.ci_high),
            "verification": f"{(ver['pass'] == 'pass').sum()}/{len(ver)}",
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mrsflow-bench-bold"))
    ap.add_argument("--cores", type=int, default=2)
    a = ap.parse_args()
    print(f"{'variant':8s} {'matching':8s} {'group':5s} {'Glu film effect, mM [95% CI]':34s} "
          f"{'% of Glu [CI]':22s} {'planted':16s} {'in CI':5s} {'linewidth change Hz':24s} "
          f"{'verif.':6s} {'run s':>6s}", flush=True)
    store = a.workdir / "film_effects.json"  # earlier invocations' estimates, kept
    estimates = {tuple(json.loads(k)): v for k, v in (
        json.loads(store.read_text()).items() if store.is_file() else [])}
    for name in a.variants:
        for matching in (False, True):
            wd = a.workdir / name
            secs = run(wd, VARIANTS[name], matching, a.cores)
            for r in summarise(wd):
                estimates[(name, matching, r["group"])] = float(r["glu_film_pct"])
                print(f"{name:8s} {'on' if matching else 'off':8s} {r['group']:5s} "
                      f"{r['glu_film_mM']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                      f"{'':9s} {r['glu_film_pct']:+.2f} [{r['ci_pct'][0]:+.2f}, "
                      f"{r['ci_pct'][1]:+.2f}]  {r['planted_mM']:+.3f} ({r['planted_pct']:+.2f} %)"
                      f" {'yes' if r['planted_in_ci'] else 'NO':5s} "
                      f"{r['lw_change_hz']:+.2f} [{r['lw_ci'][0]:+.2f}, {r['lw_ci'][1]:+.2f}]"
                      f"{'':6s} {r['verification']:6s} {secs:6.0f}", flush=True)
            store.write_text(json.dumps({json.dumps(k): v for k, v in estimates.items()}))
    for matching in (False, True):
        for group in ("CUD", "HC"):
            null = estimates.get(("null", matching, group))
            ref = estimates.get(("reference", matching, group))
            if null is not None and ref is not None:
                print(f"artefact of the narrowing, matching {'on' if matching else 'off'}, "
                      f"{group}: null - reference = {null - ref:+.2f} % of Glu", flush=True)


if __name__ == "__main__":
    main()
