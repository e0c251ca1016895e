"""The real Philips 3 T PRESS exports of Osprey's example data (../shared/reference/
osprey-philips-press) as one small study, shared by bench_real_exports.py and
tests/test_real_study.py.

Two TE 35 spectra without a T1 and one TE 30 spectrum with a NIfTI T1 and its
metabolite-nulled scan (the TE 30 protocol's measured macromolecule spectrum; TE 35 uses the
default MM model), one participant per group, named by absolute path where they lie
(``data.allow_outside_raw``). What LCModel 6.3 and FSL-MRS 2.4 report on them is the table
of the folder's README (ratios to tCr), read by :func:`anchors`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
OSPREY = ROOT.parent / "shared" / "reference" / "osprey-philips-press"
TE35 = "UnEdited/sub-0{n}/ses-01/mrs/sub-0{n}_ses-01_press{ref}/sub-0{n}_PRESS_35_{kind}.sdat"
MMDATA = "UnEdited_with_MM_data/sub-01/ses-01"
#: (participant, film, metabolite scan, water reference, T1, the README's name of the spectrum)
SCANS = [
    ("sub-hc01", "neutral", TE35.format(n=1, ref="", kind="act"),
     TE35.format(n=1, ref="-ref", kind="ref"), "", "UnEdited sub-01"),
    ("sub-hc01", "cocaine", TE35.format(n=2, ref="", kind="act"),
     TE35.format(n=2, ref="-ref", kind="ref"), "", "UnEdited sub-02"),
    ("sub-cud01", "neutral",
     f"{MMDATA}/mrs/sub-01_ses-01_press/sub-01_ses-01_PRESS_raw-act_noID.SDAT",
     f"{MMDATA}/mrs/sub-01_ses-01_press_ref/sub-01_ses-01_PRESS_raw-ref_noID.SDAT",
     f"{MMDATA}/anat/sub-01_ses-01_T1w_scanner-space_FSL-skull-stripped.nii.gz",
     "MM-data sub-01"),
]
SEQUENCE = {"field_mhz": 127.8, "te1_ms": 12.0, "te2_ms": 18.0, "tr_ms": 2000.0,
            "bandwidth_hz": 2000.0, "points": 2048, "centre_ppm": 4.65}
#: the README's columns -> the project's names (FSL-MRS's tNAA column is NAA alone)
RATIOS = {"Glu/tCr": "Glu", "tNAA/tCr": "tNAA", "Ins/tCr": "Ins", "tCho/tCr": "tCho"}


def write_study(base: Path, folder: Path = OSPREY) -> Path:
    """The study's raw sheets under ``base/raw`` and its config ``base/study.yaml`` (merged
    over config/config.yaml); returns the config's path."""
    raw = base / "raw"
    (raw / "phenotype").mkdir(parents=True, exist_ok=True)
    (raw / "participants.tsv").write_text(
        "participant_id\tgroup\tage\tsex\tcocaine_g_per_week\tcocaine_years\n"
        "sub-hc01\tHC\t30\tF\tn/a\tn/a\nsub-cud01\tCUD\t35\tM\t4.5\t8\n")
    (raw / "sessions.tsv").write_text("participant_id\tsession\tdrug\tperiod\n"
                                      "sub-hc01\tses-1\tnone\t1\nsub-cud01\tses-1\tplacebo\t1\n")
    lines = ["participant_id\tsession\tfilm\tacq\tmrs\twater\tt1w"]
    for pid, film, mrs, water, t1, _ in SCANS:
        lines.append("\t".join([pid, "ses-1", film, "ws", str(folder / mrs), str(folder / water),
                                str(folder / t1) if t1 else ""]))
    (raw / "scans.tsv").write_text("\n".join(lines) + "\n")
    (raw / "phenotype" / "craving.tsv").write_text(
        "participant_id\tsession\tfilm\ttime\tvas\n" + "".join(
            f"{p}\tses-1\t{f}\t{t}\t{v}\n" for p in ("sub-hc01", "sub-cud01")
            for f, t, v in (("neutral", "pre", 5), ("neutral", "post", 6),
                            ("cocaine", "pre", 5), ("cocaine", "post", 20))))
    inverted = f"{MMDATA}/mrs/sub-01_ses-01_press-inverted{{}}/" \
               "sub-01_ses-01_PRESS-Inverted_TI-600_raw-{}_noID.SDAT"
    mm_scan = {"mrs": str(folder / inverted.format("", "act")),
               "water": str(folder / inverted.format("_ref", "ref"))}
    cfg = {"data": {"source": "sheets", "raw_dir": str(raw), "allow_outside_raw": True},
           # the TE 30 protocol with its metabolite-nulled scan: a measured MM spectrum
           "sequence": {**SEQUENCE, "mm": {"scans": [mm_scan]}},
           "protocols": {"press_te35": {**SEQUENCE, "te2_ms": 23.0}},
           "report": {"voi_location": "posterior cingulate cortex"}}
    path = base / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def anchors(folder: Path = OSPREY) -> pd.DataFrame:
    """The README's table: one row per (spectrum, tool) with the ratios to tCr."""
    rows = []
    for line in (folder / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and re.match(r"(UnEdited|MM-data) sub-\d+$", cells[0]):
            rows.append({"spectrum": cells[0], "tool": cells[1],
                         **{name: float(v) for name, v in zip(RATIOS.values(), cells[2:6],
                                                               strict=True)}})
    if not rows:
        raise ValueError(f"{folder / 'README.md'}: no table of ratios found")
    return pd.DataFrame(rows)


def measured_ratios(metabolites_tsv: Path) -> pd.DataFrame:
    """Per spectrum of :data:`SCANS`: the workflow's ratios to tCr (of the fitted
    amplitudes), its QC verdict and fit-QC numbers, from results/tables/metabolites.tsv."""
    met = pd.read_csv(metabolites_tsv, sep="\t", keep_default_na=False)
    out = []
    for pid, film, *_, name in SCANS:
        rows = met[(met.participant_id == pid) & (met.film == film)].set_index("metabolite")
        out.append({"spectrum": name, **{m: float(rows.loc[m, "ratio_tcr"])
                                         for m in RATIOS.values()},
                    "protocol": rows["protocol"].iloc[0],
                    "fit_quality": float(rows["fit_quality"].iloc[0]),
                    "qc_pass": rows["qc_pass"].iloc[0], "qc_reason": rows["qc_reason"].iloc[0]})
    return pd.DataFrame(out)
