"""Bad input stops with one clear message (file + problem), never a traceback.

Each case runs the real entry point a rule job runs (``python -m mrsflow <step>``), or, for
what is checked when the workflow starts (sheets, config), ``snakemake -n`` in real-data mode
on a small hand-made raw folder. Every input error must exit with code 2, print
``mrsflow <step>: error: <file>: <problem>`` and no Python traceback. Scans that a study
would keep going without (pure noise) are covered by the full run in ``test_robustness.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import ROOT, snakemake

from mrsflow import nmrs
from mrsflow.twin.anatomy import write_t1_dicom
from mrsflow.vendor import VoxelGeometry, write_philips

TRACEBACK = "Traceback (most recent call last)"
F0, BW, N_POINTS, N_ROWS = 127.8, 2000.0, 256, 4
GEOM = VoxelGeometry((-10.0, 12.0, -8.0), (10.0, 12.0, 10.0), (0.0, 15.0, 0.0))


def mrsflow_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the CLI exactly as a rule does (PYTHONPATH=workflow, a fresh interpreter)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    return subprocess.run([sys.executable, "-m", "mrsflow", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_input_error(proc: subprocess.CompletedProcess, step: str, *fragments: str) -> str:
    """Exit code 2, one 'mrsflow <step>: error:' line, each fragment in it, no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit code {proc.returncode}, expected 2:\n{out}"
    assert TRACEBACK not in out, out
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"mrsflow {step}: error: ")]
    assert len(errors) == 1, out
    for frag in fragments:
        assert frag in errors[0], f"{frag!r} not in the error line {errors[0]!r}"
    return errors[0]


# ---------------------------------------------------------------------------- spectra
@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """A small metabolite-cycled Philips export: (SPAR, SDAT), 4 rows x 256 points."""
    t = np.arange(N_POINTS) / BW
    fid = np.exp((2j * np.pi * 60.0 - 1 / 0.05) * t) + 0.2 * np.exp((-2j * np.pi * 250 - 20) * t)
    rows = np.stack([fid * (1 if r % 2 == 0 else -1) for r in range(N_ROWS)])
    return write_philips(tmp_path / "raw" / "sub-01_svs", rows, f0_mhz=F0, bandwidth_hz=BW,
                         te_ms=30, tr_ms=2000, geometry=GEOM, n_averages_per_row=1)


def test_good_pair_converts(pair, tmp_path):
    """The fixture itself is fine: the errors below are due to the damage done to it."""
    spar, sdat = pair
    out = tmp_path / "out" / "x_svs.nii.gz"
    proc = mrsflow_cli("convert-mrs", "--src", sdat, "--acq", "mc", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert nib.load(out).shape[3:5] == (N_POINTS, 2)


def test_truncated_sdat_whole_rows(pair, tmp_path):
    spar, sdat = pair
    sdat.write_bytes(sdat.read_bytes()[: (N_ROWS - 1) * N_POINTS * 8])  # last row lost
    out = tmp_path / "out" / "x_svs.nii.gz"
    line = assert_input_error(
        mrsflow_cli("convert-mrs", "--src", sdat, "--acq", "mc", "--out", out), "convert-mrs",
        str(sdat), f"has {(N_ROWS - 1) * N_POINTS * 8} bytes",
        f"samples={N_POINTS} x rows={N_ROWS}", "truncated",
    )
    assert spar.name in line
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial output


def test_truncated_sdat_mid_point(pair, tmp_path):
    """Cut inside a complex point: not even a whole number of 8-byte points."""
    spar, sdat = pair
    sdat.write_bytes(sdat.read_bytes()[:-3])
    assert_input_error(
        mrsflow_cli("convert-mrs", "--src", sdat, "--acq", "mc", "--out",
                    tmp_path / "out" / "x_svs.nii.gz"), "convert-mrs",
        str(sdat), "not a whole number of complex points", "truncated",
    )


@pytest.mark.parametrize("key", ["samples", "synthesizer_frequency", "echo_time"])
def test_spar_missing_key(pair, tmp_path, key):
    spar, sdat = pair
    lines = spar.read_text().splitlines(keepends=True)
    spar.write_text("".join(ln for ln in lines if not ln.startswith(f"{key} :")))
    assert_input_error(
        mrsflow_cli("convert-mrs", "--src", sdat, "--acq", "mc", "--out",
                    tmp_path / "out" / "x_svs.nii.gz"), "convert-mrs",
        str(spar), f"SPAR is missing required key(s): {key}",
    )


def test_spar_sample_count_disagrees_with_sdat(pair, tmp_path):
    spar, sdat = pair
    text = spar.read_text().replace(f"samples : {N_POINTS}\n", f"samples : {2 * N_POINTS}\n")
    assert f"samples : {2 * N_POINTS}" in text
    spar.write_text(text)
    line = assert_input_error(
        mrsflow_cli("convert-mrs", "--src", sdat, "--acq", "mc", "--out",
                    tmp_path / "out" / "x_svs.nii.gz"), "convert-mrs",
        str(sdat), f"has {N_ROWS * N_POINTS * 8} bytes",
        f"declares samples={2 * N_POINTS} x rows={N_ROWS}", "disagrees",
    )
    assert spar.name in line


def test_unknown_file_type(tmp_path):
    junk = tmp_path / "scan.dat"
    junk.write_bytes(b"\x00\x01" * 512)
    assert_input_error(
        mrsflow_cli("convert-mrs", "--src", junk, "--acq", "ws", "--out",
                    tmp_path / "out" / "x_svs.nii.gz"), "convert-mrs",
        str(junk), "unknown spectroscopy file type", "supported: philips, rda",
    )
    lonely = tmp_path / "lonely.SDAT"  # a SDAT without its SPAR
    lonely.write_bytes(b"\x00" * 64)
    assert_input_error(
        mrsflow_cli("convert-mrs", "--src", lonely, "--acq", "ws", "--out",
                    tmp_path / "out" / "y_svs.nii.gz"), "convert-mrs",
        str(lonely), "partner file not found",
    )


def test_missing_spectrum_file(tmp_path):
    gone = tmp_path / "gone.SDAT"
    assert_input_error(
        mrsflow_cli("convert-mrs", "--src", gone, "--acq", "mc", "--out",
                    tmp_path / "out" / "x_svs.nii.gz"), "convert-mrs",
        str(gone), "no such spectroscopy file",
    )


def test_classic_scan_without_water_reference(tmp_path):
    """A water-suppressed scan reaching preprocessing without its water reference."""
    fid = np.exp(-np.arange(N_POINTS) / 50.0).astype(complex)
    mrs = nmrs.write(tmp_path / "ws_svs.nii.gz", fid.reshape(1, 1, 1, N_POINTS), 1 / BW, F0)
    outs = {k: tmp_path / "pre" / f"x_{k}" for k in
            ("metab.nii.gz", "water.nii.gz", "qc.json", "transients.tsv", "proc.png")}
    proc = mrsflow_cli(
        "preprocess", "--mrs", mrs, "--mode", "classic", "--metab", outs["metab.nii.gz"],
        "--water-out", outs["water.nii.gz"], "--qc", outs["qc.json"],
        "--transients", outs["transients.tsv"], "--png", outs["proc.png"])
    assert_input_error(proc, "preprocess", str(mrs), "needs the water reference")
    assert not any(p.exists() for p in outs.values())


# ---------------------------------------------------------------------------- T1 DICOM
@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory) -> Path:
    """A small head-like T1 series (one file per slice, 20 sagittal slices)."""
    folder = tmp_path_factory.mktemp("dicom") / "sub-01_ses-1_T1w"
    shape = (20, 40, 36)
    ijk = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((ijk - centre) / (np.array(shape)[:, None, None, None] / 2.4)) ** 2).sum(0))
    vol = np.where(r < 1, 800.0 + 200.0 * (r < 0.6), 20.0)
    affine = np.diag([2.0, 1.5, 1.5, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) * np.diag(affine)[:3] / 2
    write_t1_dicom(folder, vol, affine, patient_id="sub-01", study_uid_seed=5)
    assert len(list(folder.iterdir())) == shape[0]
    return folder


def test_complete_dicom_series_converts(dicom_series, tmp_path):
    out = tmp_path / "anat" / "sub-01_ses-1_T1w.nii.gz"
    proc = mrsflow_cli("convert-t1", "--src", dicom_series, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert 20 in nib.load(out).shape


@pytest.mark.parametrize("gone", ["IM_0008.dcm", "IM_0002.dcm"])
def test_dicom_series_with_missing_slice(dicom_series, tmp_path, gone):
    """dcm2niix would convert the gap (with a warning) into a wrongly spaced volume."""
    broken = tmp_path / dicom_series.name
    broken.mkdir()
    for f in dicom_series.iterdir():
        if f.name != gone:
            (broken / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "anat" / "sub-01_ses-1_T1w.nii.gz"
    line = assert_input_error(
        mrsflow_cli("convert-t1", "--src", broken, "--out", out), "convert-t1",
        str(broken), "1 missing slice(s)", "not equally spaced",
    )
    before, after = f"IM_{int(gone[3:7]) - 1:04d}.dcm", f"IM_{int(gone[3:7]) + 1:04d}.dcm"
    assert before in line and after in line  # where the gap is
    assert not out.exists()


def test_t1_folder_missing(tmp_path):
    gone = tmp_path / "sub-01_ses-1_T1w"
    assert_input_error(
        mrsflow_cli("convert-t1", "--src", gone, "--out", tmp_path / "a" / "x_T1w.nii.gz"),
        "convert-t1", str(gone), "not a directory of DICOM files",
    )


# ---------------------------------------------------------------------------- voxel placement
def test_mrs_voxel_outside_the_brain(tmp_path):
    """A T1 whose geometry does not contain the MRS voxel: the tissue step names both files."""
    shape, aff = (40, 48, 40), np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -np.array(shape) + 1.0  # centred on the origin
    ijk = np.indices(shape).astype(float)
    r = np.sqrt(sum(((ijk[i] - (shape[i] - 1) / 2) / (shape[i] / 3)) ** 2 for i in range(3)))
    brain = r < 1
    gm = np.where(brain & (r > 0.7), 1.0, 0.0)
    wm = np.where(brain & (r <= 0.7), 1.0, 0.0)
    maps = {"t1": 100.0 * brain, "gm": gm, "wm": wm, "csf": np.zeros(shape),
            "mask": brain.astype(np.uint8)}
    paths = {}
    for k, v in maps.items():
        paths[k] = tmp_path / f"sub-01_{k}.nii.gz"
        nib.save(nib.Nifti1Image(v.astype(np.uint8 if k == "mask" else np.float32), aff),
                 paths[k])
    args = ["--t1", paths["t1"], "--gm", paths["gm"], "--wm", paths["wm"],
            "--csf", paths["csf"], "--mask", paths["mask"]]

    def voxel(centre) -> Path:
        geom = VoxelGeometry(centre, (10.0, 12.0, 10.0), (0.0, 0.0, 0.0))
        out = tmp_path / f"svs_{centre[0]:+.0f}.nii.gz"
        nmrs.write(out, np.ones((1, 1, 1, 16), complex), 1 / BW, F0, affine=geom.affine())
        return out

    inside = voxel((0.0, 0.0, 0.0))
    proc = mrsflow_cli("tissue-fractions", *args, "--mrs", inside,
                       "--json", tmp_path / "in.json", "--png", tmp_path / "in.png")
    assert proc.returncode == 0, proc.stderr

    outside = voxel((0.0, 0.0, 33.0))  # above the brain, inside the T1's field of view
    proc = mrsflow_cli("tissue-fractions", *args, "--mrs", outside,
                       "--json", tmp_path / "out.json", "--png", tmp_path / "out.png")
    assert_input_error(proc, "tissue-fractions", str(outside), str(paths["t1"]),
                       "outside the brain")
    assert not (tmp_path / "out.json").exists()


# ---------------------------------------------------------------------------- sheets, config
SHEETS = {
    "participants.tsv": "participant_id\tgroup\tage\tsex\n"
                        "sub-01\tCUD\t30\tM\nsub-02\tHC\t31\tF\n",
    "sessions.tsv": "participant_id\tsession\tdrug\tperiod\n"
                    "sub-01\tses-1\tplacebo\t1\nsub-02\tses-1\tnone\t1\n",
    "phenotype/craving.tsv": "participant_id\tsession\tfilm\ttime\tvas\n" + "".join(
        f"{p}\tses-1\t{f}\t{t}\t10\n" for p in ("sub-01", "sub-02")
        for f in ("neutral", "cocaine") for t in ("pre", "post")),
}
SCANS_HEADER = "participant_id\tsession\tfilm\tacq\tmrs\twater\tt1w\n"


def scan_line(pid: str, film: str, acq: str = "mc", water: str = "", mrs: str | None = None):
    mrs = mrs or f"{pid}/mrs/{pid}_{film}.SDAT"
    return f"{pid}\tses-1\t{film}\t{acq}\t{mrs}\t{water}\t{pid}/anat/T1w\n"


GOOD_SCANS = [scan_line(p, f) for p in ("sub-01", "sub-02") for f in ("neutral", "cocaine")]


def tiny_export(stem: Path, te_ms: float = 30.0, n_points: int = 2048) -> None:
    """A valid one-row Philips export of the configured protocol (TE 30 ms, TR 2 s, 127.8 MHz,
    2000 Hz, 2048 points): what the start-up reads is its SPAR header."""
    fid = np.exp(-np.arange(n_points) / 100.0).astype(complex)
    write_philips(stem, fid[None, :], f0_mhz=F0, bandwidth_hz=BW, te_ms=te_ms, tr_ms=2000,
                  geometry=GEOM, n_averages_per_row=64)


def raw_folder(root: Path, scans: list[str], participants: str | None = None) -> Path:
    """A raw folder with the sheets and small but valid files: enough to build the DAG."""
    raw = root / "raw"
    for name, text in SHEETS.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_text(text)
    if participants is not None:
        (raw / "participants.tsv").write_text(participants)
    (raw / "scans.tsv").write_text(SCANS_HEADER + "".join(scans))
    for pid in ("sub-01", "sub-02"):
        (raw / pid / "anat" / "T1w").mkdir(parents=True, exist_ok=True)
        (raw / pid / "anat" / "T1w" / "IM_0001.dcm").touch()
        (raw / pid / "mrs").mkdir(parents=True, exist_ok=True)
        for film in ("neutral", "cocaine"):
            tiny_export(raw / pid / "mrs" / f"{pid}_{film}")
        tiny_export(raw / pid / "mrs" / f"{pid}_water")
    return raw


def dry_run(root: Path, raw: Path | None, extra: dict | None = None, *, commands=False):
    """Dry run on ``raw`` (``commands``: print the shell commands instead of the rule
    summary)."""
    cfg = dict(extra or {})
    if raw is not None:
        cfg["data"] = {"source": "sheets", "raw_dir": str(raw)}
    override = root / "override.yaml"
    override.write_text(yaml.safe_dump(cfg))
    return snakemake("-s", str(ROOT / "Snakefile"), "-d", str(root / "run"), "--configfile",
                     str(ROOT / "config" / "config.yaml"), str(override), "-n",
                     *(("-p",) if commands else ("--quiet", "rules")), timeout=300)


def planned_spectrum_conversions(stdout: str) -> int:
    """How many spectra the dry run's convert jobs will convert (their plans' mrs items)."""
    return len(re.findall(r'"acq":"(?:mc|ws)","out":"[^"]+_svs\.nii\.gz"', stdout))


def assert_start_error(proc, *fragments: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert TRACEBACK not in out, out
    for frag in fragments:
        assert frag in out, f"{frag!r} not in:\n{out}"
    return out


def test_sheets_dry_run_baseline(tmp_path):
    """The hand-made raw folder is valid, so each failure below is due to its one defect."""
    proc = dry_run(tmp_path, raw_folder(tmp_path, GOOD_SCANS), commands=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^convert\s+2$", proc.stdout, flags=re.M), proc.stdout  # participants
    assert planned_spectrum_conversions(proc.stdout) == 4, proc.stdout


def test_sheet_names_missing_file(tmp_path):
    scans = [*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", mrs="sub-02/mrs/typo.SDAT")]
    raw = raw_folder(tmp_path, scans)
    assert_start_error(dry_run(tmp_path, raw), f"{raw / 'scans.tsv'}, line 5",
                       f"mrs file {raw / 'sub-02/mrs/typo.SDAT'} does not exist")


def test_sheet_acq_ws_without_water(tmp_path):
    scans = [*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", acq="ws")]
    raw = raw_folder(tmp_path, scans)
    assert_start_error(dry_run(tmp_path, raw), f"{raw / 'scans.tsv'}, line 5",
                       "acq=ws needs a water reference file in column 'water'")


def test_sheet_water_reference_does_not_exist(tmp_path):
    scans = [*GOOD_SCANS[:-1],
             scan_line("sub-02", "cocaine", acq="ws", water="sub-02/mrs/sub-02_wref.SDAT")]
    raw = raw_folder(tmp_path, scans)
    assert_start_error(dry_run(tmp_path, raw), f"{raw / 'scans.tsv'}, line 5",
                       f"water file {raw / 'sub-02/mrs/sub-02_wref.SDAT'} does not exist")


def test_sheet_duplicate_participant(tmp_path):
    raw = raw_folder(tmp_path, GOOD_SCANS,
                     participants=SHEETS["participants.tsv"] + "sub-01\tHC\t44\tF\n")
    assert_start_error(dry_run(tmp_path, raw), f"{raw / 'participants.tsv'}",
                       "duplicate rows for participant_id=sub-01 (lines [2, 4])")


def test_participant_with_one_film_is_kept_in_the_scan_table(tmp_path):
    """Decision: a participant scanned during one film only is valid input. The scan is
    processed and reported; the paired analyses leave that participant out and name them in
    the note column (config: on_incomplete: drop; checked on real tables in
    test_robustness.py::test_participant_with_one_film_is_dropped_from_paired_models)."""
    proc = dry_run(tmp_path, raw_folder(tmp_path, GOOD_SCANS[:-1]), commands=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert planned_spectrum_conversions(proc.stdout) == 3, proc.stdout


@pytest.mark.parametrize(("override", "key"), [
    ({"fiting": {"backend": "builtin"}}, "'fiting' was unexpected"),
    ({"qc": {"snr_minn": 3.0}}, "'snr_minn' was unexpected"),
    ({"segment": {"backend": "fsl-fast"}}, "'fsl-fast' is not one of"),
])
def test_config_key_misspelled(tmp_path, override, key):
    assert_start_error(dry_run(tmp_path, None, override), "Error validating config file", key)


# ---------------------------------------------------------------------------- sheets (2)
def _sheet(raw: Path, name: str, text: str) -> None:
    (raw / name).write_text(text)


def _one_error_line(proc) -> str:
    """The start-up error: exactly one 'mrsflow: error:' line, exit code 2, no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert TRACEBACK not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mrsflow: error: ")]
    assert len(lines) == 1, out
    return lines[0]


CRAVING = "participant_id\tsession\tfilm\ttime\tvas\n"


@pytest.mark.parametrize(("name", "text", "fragments"), [
    # a craving row whose session is not in sessions.tsv (was dropped silently by a merge)
    ("phenotype/craving.tsv", CRAVING + "sub-01\tses-9\tneutral\tpre\t10\n",
     ["craving.tsv, line 2, column session", "session ses-9 of sub-01 is not in sessions.tsv"]),
    # VAS NaN / empty: required numbers
    ("phenotype/craving.tsv", CRAVING + "sub-01\tses-1\tneutral\tpre\tNaN\n",
     ["craving.tsv, line 2, column vas", "missing value 'NaN'; vas is required"]),
    ("phenotype/craving.tsv", CRAVING + "sub-01\tses-1\tneutral\tpre\t\n",
     ["craving.tsv, line 2, column vas", "missing value ''"]),
    ("phenotype/craving.tsv", CRAVING + "sub-01\tses-1\tneutral\tpre\tinf\n",
     ["craving.tsv, line 2, column vas", "'inf' is not a finite number"]),
    # an HC on NAC; a CUD without drug
    ("sessions.tsv", "participant_id\tsession\tdrug\tperiod\n"
                     "sub-01\tses-1\tplacebo\t1\nsub-02\tses-1\tnac\t1\n",
     ["sessions.tsv, line 3, column drug", "sub-02 is in group HC", "not 'nac'"]),
    ("sessions.tsv", "participant_id\tsession\tdrug\tperiod\n"
                     "sub-01\tses-1\tnone\t1\nsub-02\tses-1\tnone\t1\n",
     ["sessions.tsv, line 2, column drug", "sub-01 is in group CUD", "nac or placebo"]),
    # a CUD with both sessions in period 1 (and one with placebo twice)
    ("sessions.tsv", "participant_id\tsession\tdrug\tperiod\n"
                     "sub-01\tses-1\tplacebo\t1\nsub-01\tses-2\tnac\t1\nsub-02\tses-1\tnone\t1\n",
     ["sessions.tsv, lines [2, 3], column period", "sub-01 has 2 sessions with period '1'"]),
    ("sessions.tsv", "participant_id\tsession\tdrug\tperiod\n"
                     "sub-01\tses-1\tplacebo\t1\nsub-01\tses-2\tplacebo\t2\nsub-02\tses-1\tnone\t1\n",
     ["sessions.tsv, lines [2, 3], column drug", "distinct drugs"]),
    # a non-numeric period
    ("sessions.tsv", "participant_id\tsession\tdrug\tperiod\n"
                     "sub-01\tses-1\tplacebo\tfirst\nsub-02\tses-1\tnone\t1\n",
     ["sessions.tsv, line 2, column period", "'first' is not of type 'integer'"]),
])
def test_sheet_inconsistency_stops_with_sheet_line_and_column(tmp_path, name, text, fragments):
    raw = raw_folder(tmp_path, GOOD_SCANS)
    _sheet(raw, name, text)
    line = _one_error_line(dry_run(tmp_path, raw))
    assert str(raw / name) in line
    for frag in fragments:
        assert frag in line, line


@pytest.mark.parametrize(("scans", "fragments"), [
    # a path that leaves the raw folder, an absolute path
    ([*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", mrs="../../other/x.SDAT")],
     ["scans.tsv, line 5, column mrs", "'../../other/x.SDAT' leaves the raw folder",
      "data.allow_outside_raw"]),
    ([*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", mrs="/data/other/x.SDAT")],
     ["scans.tsv, line 5, column mrs", "is an absolute path"]),
    # the same SDAT listed for both films
    ([*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", mrs="sub-02/mrs/sub-02_neutral.SDAT")],
     ["scans.tsv, line 5, column mrs", "already used on line 4 (column mrs)",
      "one raw file cannot be two scans' data"]),
    # the water column pointing at the metabolite file of the same row
    ([*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", acq="ws",
                                  water="sub-02/mrs/sub-02_cocaine.SDAT")],
     ["scans.tsv, line 5, column water", "already used on line 5 (column mrs)"]),
    # an MC scan with a water reference
    ([*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", water="sub-02/mrs/sub-02_water.SDAT")],
     ["scans.tsv, line 5, column water", "acq=mc scans take their water from the same"]),
])
def test_scan_table_problems_stop_naming_line_and_column(tmp_path, scans, fragments):
    raw = raw_folder(tmp_path, scans)
    line = _one_error_line(dry_run(tmp_path, raw))
    for frag in fragments:
        assert frag in line, line


def test_absolute_paths_only_with_the_switch(tmp_path):
    """data.allow_outside_raw: true lets the sheets name files anywhere (absolute or ../)."""
    raw = raw_folder(tmp_path, GOOD_SCANS)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    tiny_export(outside / "x")
    scans = [*GOOD_SCANS[:-1], scan_line("sub-02", "cocaine", mrs=str(outside / "x.SDAT"))]
    (raw / "scans.tsv").write_text(SCANS_HEADER + "".join(scans))
    _one_error_line(dry_run(tmp_path, raw))
    proc = dry_run(tmp_path, None, {"data": {"source": "sheets", "raw_dir": str(raw),
                                             "allow_outside_raw": True}}, commands=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(outside / "x.SDAT") in proc.stdout  # converted from where it is, no '//'
    assert "//" not in re.sub(r"https?://", "", proc.stdout)


def test_bids_missing_values_in_optional_columns_are_accepted(tmp_path):
    """n/a (BIDS), NaN and empty mean missing in every optional participants.tsv column
    (the analyses that need the value name who they left out: test_stats)."""
    raw = raw_folder(tmp_path, GOOD_SCANS, participants=(
        "participant_id\tgroup\tage\tsex\tcocaine_g_per_week\tcocaine_years\teducation_years\n"
        "sub-01\tCUD\t\tn/a\t5.5\tn/a\tNaN\nsub-02\tHC\tn/a\tF\tn/a\tn/a\t\n"))
    proc = dry_run(tmp_path, raw)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_raw_folder_inside_results_or_containing_the_workdir_is_refused(tmp_path):
    run = tmp_path / "run"
    raw = raw_folder(run / "results", GOOD_SCANS)  # <run>/results/raw
    line = _one_error_line(dry_run(tmp_path, raw))
    assert "lies inside results/" in line
    outer = raw_folder(tmp_path / "study", GOOD_SCANS)
    proc = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(outer / "analysis"),
                     "--configfile", str(ROOT / "config" / "config.yaml"), "-n",
                     "--config", f"data={{'source': 'sheets', 'raw_dir': '{outer}'}}")
    line = _one_error_line(proc)
    assert "contains the working directory" in line


def test_twin_writes_only_under_results(tmp_path):
    line = _one_error_line(dry_run(tmp_path, None, {"data": {"source": "twin",
                                                            "raw_dir": str(tmp_path / "x")}}))
    assert "the synthetic twin writes its raw exports under results/ only" in line


@pytest.mark.parametrize(("override", "key"), [
    ({"preprocess": {"z_thresh": "high"}}, "'high' is not of type 'number'"),
    ({"preprocess": {"hlsvd_ppm": [4.45]}}, "is too short"),
    ({"preprocess": {"mirrored": "ignore"}}, "'ignore' is not one of"),
])
def test_config_values_are_typed(tmp_path, override, key):
    assert_start_error(dry_run(tmp_path, None, override), "Error validating config file", key)


def test_preprocess_schema_covers_every_parameter():
    """Every preprocessing parameter can be set in the config, and each is typed; so can
    every linewidth-matching setting (its own block)."""
    from mrsflow import linewidth, preprocess

    schema = yaml.safe_load((ROOT / "config" / "schemas" / "config.schema.yaml").read_text())
    props = dict(schema["properties"]["preprocess"]["properties"])
    assert schema["properties"]["preprocess"]["additionalProperties"] is False
    matching = props.pop("linewidth_matching")
    assert set(props) == set(preprocess.DEFAULTS) - {"timestamp"}
    assert all(("type" in v or "enum" in v or "$ref" in v) for v in props.values())
    assert matching["additionalProperties"] is False
    assert set(matching["properties"]) == set(linewidth.DEFAULTS)
    assert all(("type" in v or "enum" in v) for v in matching["properties"].values())


# ---------------------------------------------------------------------------- files (2)
def test_rda_shorter_than_its_vector_size(tmp_path):
    from mrsflow.vendor import write_rda

    fid = np.exp(-np.arange(N_POINTS) / 50.0).astype(complex)
    rda = write_rda(tmp_path / "scan.rda", fid, f0_mhz=F0, bandwidth_hz=BW, te_ms=30,
                    tr_ms=2000, geometry=GEOM, n_averages=64)
    rda.write_bytes(rda.read_bytes()[: -16 * 10])  # the last 10 points lost
    line = assert_input_error(
        mrsflow_cli("convert-mrs", "--src", rda, "--acq", "ws", "--out",
                    tmp_path / "out" / "x_svs.nii.gz"), "convert-mrs",
        str(rda), f"declares VectorSize={N_POINTS}", "truncated")
    assert f"holds {(N_POINTS - 10) * 16} bytes" in line


def test_t1_series_of_two_slices(dicom_series, tmp_path):
    short = tmp_path / "short"
    short.mkdir()
    for f in sorted(dicom_series.iterdir())[:2]:
        (short / f.name).write_bytes(f.read_bytes())
    assert_input_error(
        mrsflow_cli("convert-t1", "--src", short, "--out", tmp_path / "a" / "x_T1w.nii.gz"),
        "convert-t1", str(short), "only 2 slice(s)", "3D T1")


# ---------------------------------------------------------------------------- where we run
@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for this process: chmod as a normal user; as root (whom chmod
    does not stop) a read-only bind mount of the folder onto itself."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mount = shutil.which("mount")
    ok = mount and subprocess.run([mount, "--bind", str(folder), str(folder)],
                                  capture_output=True).returncode == 0
    if not ok:
        pytest.skip("running as root without permission to bind-mount: cannot make a "
                    "folder read-only for root")
    try:
        ro = subprocess.run([mount, "-o", "remount,bind,ro", str(folder)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.decode().strip()}")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_read_only_results_folder_is_one_clear_line(tmp_path):
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    with read_only(run / "results"):
        with pytest.raises(OSError):
            (run / "results" / "probe").write_text("x")
        proc = snakemake("-s", str(ROOT / "Snakefile"), "-d", str(run), "--configfile",
                         str(ROOT / "config" / "config.yaml"), "-n")
    line = _one_error_line(proc)
    assert f"{run / 'results'}: the results folder is not writable" in line
