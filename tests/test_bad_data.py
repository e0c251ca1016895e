"""Unusable scans inside a study: each is excluded (or corrected) with its reason, and nothing
else of the study changes.

A small classic Philips twin (water-suppressed scans, each with its water reference; 2 CUD +
1 HC, 10 scans) is analysed twice in real-data mode (``data.source: sheets``): once as
generated, once with these scans damaged the way a lab's export goes wrong:

- sub-cud01 ses-1 neutral: an all-zero SDAT (the data never written) -> excluded;
- sub-cud01 ses-1 cocaine: conjugated SDATs (mirrored spectrum, and its water reference) ->
  corrected, with a note, to exactly the clean scan's numbers;
- sub-cud01 ses-2 neutral: metabolite and water files swapped in scans.tsv -> excluded;
- sub-cud01 ses-2 cocaine: its water column pointing at a copy of another scan's
  water-suppressed export -> excluded ("not water");
- sub-cud02 ses-1 neutral: a water reference with half the points -> processed, with a note;
- sub-cud02 ses-2 neutral: a byte copy of sub-cud02 ses-2 cocaine's export -> both excluded
  (which one is right cannot be told).

Both runs stop at the tables (the statistics of a 3-participant study are not the point);
every other scan's rows must be byte-identical between the runs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import BIN, ROOT, snakemake

from mrsflow.vendor import vax_f_decode, vax_f_encode

pytestmark = pytest.mark.slow
CONFIG = str(ROOT / "config" / "config.yaml")
TRACEBACK = "Traceback (most recent call last)"
TARGETS = ("results/tables/metabolites.tsv", "results/tables/exclusions.tsv")
KEY = ["participant_id", "session", "film"]


def mrs(raw: Path, pid: str, ses: str, film: str, kind: str = "svs") -> Path:
    return raw / pid / ses / "mrs" / f"{pid}_{ses}_task-{film}_{kind}.SDAT"


def conjugate(sdat: Path) -> None:
    values = vax_f_decode(sdat.read_bytes())
    values[1::2] *= -1
    sdat.write_bytes(vax_f_encode(values))


def halve_points(sdat: Path) -> None:
    """Keep the first half of the FID (same spectral width) and say so in the SPAR."""
    values = vax_f_decode(sdat.read_bytes())
    n = values.size // 2
    sdat.write_bytes(vax_f_encode(values[: n]))  # n/2 complex points
    spar = sdat.with_suffix(".SPAR")
    lines = []
    for ln in spar.read_text().splitlines(keepends=True):
        key = ln.split(":", 1)[0].strip()
        if key in ("samples", "spec_num_col", "spec_col_upper_val", "dim1_pnts"):
            ln = f"{key} : {n // 2}\n"
        elif key == "dim1_step":
            ln = f"{key} : {2 * float(ln.split(':', 1)[1]):.7g}\n"
        elif key == "dim1_t0_point":
            ln = f"{key} : {n // 4}\n"
        lines.append(ln)
    spar.write_text("".join(lines))


def damage(raw: Path) -> None:
    mrs(raw, "sub-cud01", "ses-1", "neutral").write_bytes(
        bytes(mrs(raw, "sub-cud01", "ses-1", "neutral").stat().st_size))
    for kind in ("svs", "mrsref"):  # one export path: the scan and its water reference
        conjugate(mrs(raw, "sub-cud01", "ses-1", "cocaine", kind))
    other = mrs(raw, "sub-cud02", "ses-1", "neutral")
    copy = raw / "sub-cud01" / "ses-2" / "mrs" / "sub-cud01_ses-2_task-cocaine_ref2.SDAT"
    shutil.copyfile(other, copy)
    shutil.copyfile(other.with_suffix(".SPAR"), copy.with_suffix(".SPAR"))
    halve_points(mrs(raw, "sub-cud02", "ses-1", "neutral", "mrsref"))
    for ext in (".SDAT", ".SPAR"):
        shutil.copyfile(mrs(raw, "sub-cud02", "ses-2", "cocaine").with_suffix(ext),
                        mrs(raw, "sub-cud02", "ses-2", "neutral").with_suffix(ext))
    scans = pd.read_csv(raw / "scans.tsv", sep="\t", dtype=str, keep_default_na=False)
    row = (scans.participant_id == "sub-cud01") & (scans.session == "ses-2")
    swap = row & (scans.film == "neutral")
    scans.loc[swap, ["mrs", "water"]] = scans.loc[swap, ["water", "mrs"]].to_numpy()
    scans.loc[row & (scans.film == "cocaine"), "water"] = str(copy.relative_to(raw))
    scans.to_csv(raw / "scans.tsv", sep="\t", index=False, lineterminator="\n")


def sheets_cmd(workdir: Path, raw: Path) -> list[str]:
    override = workdir.parent / f"{workdir.name}.yaml"
    override.write_text(yaml.safe_dump({"data": {"source": "sheets", "raw_dir": str(raw)}}))
    return [str(BIN / "snakemake"), *TARGETS, "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            "--configfile", CONFIG, str(override), "--cores", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_data")
    (base / "twin.yaml").write_text(yaml.safe_dump(
        {"twin": {"n_cud": 2, "n_hc": 1, "mode": "classic", "vendor": "philips"}}))
    snakemake("results/twin/raw/scans.tsv", "results/twin/truth/concentrations.tsv",
              "-s", str(ROOT / "Snakefile"), "-d",
              str(base / "twin"), "--configfile", CONFIG, str(base / "twin.yaml"),
              "--cores", "2", check=True, timeout=900)
    clean, damaged = base / "clean", base / "damaged"
    shutil.copytree(base / "twin" / "results" / "twin" / "raw", clean)
    shutil.copytree(clean, damaged)
    damage(damaged)
    # the two runs side by side, one core each
    procs = [subprocess.Popen(sheets_cmd(base / f"run_{raw.name}", raw), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for raw in (clean, damaged)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
        assert TRACEBACK not in out

    def tables(name):
        res = base / f"run_{name}" / "results" / "tables"
        # as text: rows are compared as written
        return tuple(pd.read_csv(res / f"{t}.tsv", sep="\t", dtype=str, keep_default_na=False)
                     for t in ("metabolites", "exclusions"))

    return {"clean": tables("clean"), "damaged": tables("damaged")}


def scan(df: pd.DataFrame, pid: str, ses: str, film: str) -> pd.DataFrame:
    return df[(df.participant_id == pid) & (df.session == ses) & (df.film == film)]


def test_clean_study_has_no_exclusions(runs):
    met, exc = runs["clean"]
    assert exc.empty, exc.to_string()
    assert (met.qc_pass == "True").all() and (met.qc_note == "").all()


def test_each_damaged_scan_is_excluded_with_its_reason(runs):
    met, exc = runs["damaged"]
    reasons = {tuple(r[KEY]): r.reason for _, r in exc.iterrows()}
    assert set(reasons) == {
        ("sub-cud01", "ses-1", "neutral"), ("sub-cud01", "ses-2", "neutral"),
        ("sub-cud01", "ses-2", "cocaine"), ("sub-cud02", "ses-2", "neutral"),
        ("sub-cud02", "ses-2", "cocaine")}, exc.to_string()
    assert reasons[("sub-cud01", "ses-1", "neutral")] == "all-zero data (no signal was stored)"
    assert reasons[("sub-cud01", "ses-2", "neutral")].startswith(
        "metabolite and water files appear swapped")
    assert reasons[("sub-cud01", "ses-2", "cocaine")].startswith(
        "the water reference is not water")
    for film, other in (("neutral", "cocaine"), ("cocaine", "neutral")):
        assert reasons[("sub-cud02", "ses-2", film)] == (
            f"raw data identical to sub-cud02 ses-2 {other} (one raw file listed as two scans)")
    # excluded scans stay in the table, flagged, without a concentration where not fitted
    zero = scan(met, "sub-cud01", "ses-1", "neutral")
    assert len(zero) and (zero.qc_pass == "False").all()
    assert (zero.conc_molal == "NA").all()


def test_mirrored_scan_is_corrected_to_the_clean_numbers(runs):
    clean, _ = runs["clean"]
    met, _ = runs["damaged"]
    got = scan(met, "sub-cud01", "ses-1", "cocaine")
    want = scan(clean, "sub-cud01", "ses-1", "cocaine")
    assert (got.qc_pass == "True").all()
    assert (got.qc_note == "spectrum was mirrored (conjugated FID): corrected by conjugation").all()
    cols = [c for c in met.columns if c != "qc_note"]
    pd.testing.assert_frame_equal(got[cols].reset_index(drop=True),
                                  want[cols].reset_index(drop=True))


def test_short_water_reference_is_used_with_a_note(runs):
    clean, _ = runs["clean"]
    met, _ = runs["damaged"]
    got = scan(met, "sub-cud02", "ses-1", "neutral").set_index("metabolite")
    want = scan(clean, "sub-cud02", "ses-1", "neutral").set_index("metabolite")
    assert (got.qc_pass == "True").all()
    assert (got.qc_note == "water reference has 1024 points, the metabolite scan 2048: "
                           "zero-filled").all()
    for name in ("NAA", "Glu", "Cr", "tCr"):
        assert float(got.conc_molal[name]) == pytest.approx(float(want.conc_molal[name]),
                                                            rel=0.02)


def test_every_other_scan_is_untouched(runs):
    clean, _ = runs["clean"]
    met, _ = runs["damaged"]
    touched = {("sub-cud01", "ses-1", "neutral"), ("sub-cud01", "ses-1", "cocaine"),
               ("sub-cud01", "ses-2", "neutral"), ("sub-cud01", "ses-2", "cocaine"),
               ("sub-cud02", "ses-1", "neutral"), ("sub-cud02", "ses-2", "neutral"),
               ("sub-cud02", "ses-2", "cocaine")}
    keep = ~met[KEY].apply(tuple, axis=1).isin(touched)
    keep_clean = ~clean[KEY].apply(tuple, axis=1).isin(touched)
    assert keep.sum() > 0
    pd.testing.assert_frame_equal(met[keep].reset_index(drop=True),
                                  clean[keep_clean].reset_index(drop=True))
