"""The study as a whole under bad luck: a pure-noise scan, a read-only raw tree, a run killed
mid-way, and two runs from scratch that must agree to the byte.

One session-scoped set of runs serves every test here (see :func:`study`):

1. a synthetic twin (4 CUD + 2 HC, 20 scans) generates the raw exports only;
2. its raw folder is copied, one scan's SDAT replaced by complex Gaussian noise of the same
   shape, the tree checksummed and made read-only (``chmod -R a-w``);
3. run A: the whole workflow in real-data mode (``data.source: sheets``) on that copy;
4. run B, at the same time as A: the same from scratch in another directory, killed with
   SIGKILL (snakemake and its jobs, the whole process group) once the first fit outputs exist
   and a job is running, then resumed with ``--unlock`` and ``--rerun-incomplete``.

Run B is a complete, independent run from scratch (interrupted or not, it computes every
output itself), so A == B checks both the resumed run (issue check 3) and determinism (check
4) without a third full run.

The design has 4 CUD rather than the 3 of ``tests/configs/small.yaml`` because the
correlation models need at least 4 CUD pairs; the noise scan is a CUD NAC-session scan, so
only the NAC-vs-placebo model loses a participant (named in its note column). If the
6-participant twin draws one sex only, one HC's sex is flipped in the copy's
participants.tsv (the baseline ANCOVA adjusts for sex and now stops, naming the factor, when
it has a single level).

Running as root, ``chmod a-w`` does not stop writes: the raw tree is then protected only by
the check itself - SHA-256 of every file plus every file's and folder's mtime and the listing,
before and after both runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BIN, ROOT, snakemake

from mrsflow.vendor import vax_f_decode, vax_f_encode

pytestmark = pytest.mark.slow

CONFIG = str(ROOT / "config" / "config.yaml")
DESIGN = {"twin": {"n_cud": 4, "n_hc": 2}}
TRACEBACK = "Traceback (most recent call last)"
# compared byte for byte between the runs: every table and JSON the workflow writes
# (logs and benchmarks hold times and are excluded)
COMPARED = (".tsv", ".json", ".md", ".yaml")
EXCLUDED_DIRS = ("logs", "benchmarks")
# spec2nii stamps its sidecar (a copy of the NIfTI-MRS header extension) with the wall-clock
# time of the conversion; it is provenance of the conversion, not a result, and nothing reads
# it. It is the one key left out of the comparison (the test checks that it is the only one).
VOLATILE_JSON_KEYS = {"ConversionTime"}


def tree_state(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: (kind, mtime_ns, size, sha256)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = ("dir", st.st_mtime_ns, 0, "")
        else:
            out[rel] = ("file", st.st_mtime_ns, st.st_size,
                        hashlib.sha256(p.read_bytes()).hexdigest())
    st = root.stat()
    out["."] = ("dir", st.st_mtime_ns, 0, "")
    return out


def set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        os.chmod(p, (mode | stat.S_IWUSR) if writable else (mode & ~bits))


def replace_with_noise(sdat: Path, seed: int = 7) -> None:
    """Complex Gaussian noise of the same shape (and RMS) as the SDAT's data."""
    values = vax_f_decode(sdat.read_bytes())
    rms = float(np.sqrt(np.mean(values**2)))
    noise = np.random.default_rng(seed).normal(0.0, rms, values.size)
    sdat.write_bytes(vax_f_encode(noise))


def sheets_run(workdir: Path, raw: Path, *args: str, configs: tuple[Path, ...] = ()):
    override = workdir.parent / f"{workdir.name}.yaml"
    override.write_text(yaml.safe_dump({"data": {"source": "sheets", "raw_dir": str(raw)}}))
    return [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            "--configfile", CONFIG, str(override), *map(str, configs), "--cores", "2", *args]


def same_content(a: Path, b: Path) -> bool:
    """Byte-identical, or (spec2nii sidecars) identical but for VOLATILE_JSON_KEYS."""
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix != ".json" or "convert" not in a.parts:
        return False
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    if not isinstance(ja, dict) or not isinstance(jb, dict):
        return False
    return {k: v for k, v in ja.items() if k not in VOLATILE_JSON_KEYS} == {
        k: v for k, v in jb.items() if k not in VOLATILE_JSON_KEYS}


def all_files(results: Path) -> list[str]:
    """Every file (hidden ones too) outside logs/ and benchmarks/."""
    return sorted(str(p.relative_to(results)) for p in results.rglob("*")
                  if p.is_file() and p.relative_to(results).parts[0] not in EXCLUDED_DIRS)


def compared_files(results: Path) -> list[str]:
    return sorted(
        str(p.relative_to(results)) for p in results.rglob("*")
        if p.is_file() and p.name.endswith(COMPARED)
        and p.relative_to(results).parts[0] not in EXCLUDED_DIRS
    )


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("robustness")
    timings = {}

    # 1. the twin's raw exports (and nothing else)
    t0 = time.monotonic()
    twin = base / "twin"
    (base / "twin.yaml").write_text(yaml.safe_dump(DESIGN))
    snakemake("results/twin/raw/scans.tsv", "results/twin/truth/concentrations.tsv",
              "-s", str(ROOT / "Snakefile"), "-d", str(twin), "--configfile", CONFIG,
              str(base / "twin.yaml"), "--cores", "2", "--quiet", "rules",
              check=True, timeout=900)
    timings["twin"] = time.monotonic() - t0

    # 2. a separate raw folder: the twin's, one scan replaced by noise, then read-only
    raw = base / "raw"
    shutil.copytree(twin / "results" / "twin" / "raw", raw)
    sessions = pd.read_csv(raw / "sessions.tsv", sep="\t")
    nac = sessions[sessions.drug == "nac"].sort_values(["participant_id", "session"]).iloc[0]
    scans = pd.read_csv(raw / "scans.tsv", sep="\t", keep_default_na=False)
    row = scans[(scans.participant_id == nac.participant_id) & (scans.session == nac.session)
                & (scans.film == "cocaine")].iloc[0]
    replace_with_noise(raw / row.mrs)
    # the baseline ANCOVA adjusts for sex: a 6-participant twin may draw one sex only
    part = pd.read_csv(raw / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    if part.sex.nunique() < 2:
        last_hc = part.index[part.group == "HC"][-1]
        part.loc[last_hc, "sex"] = "F" if part.loc[last_hc, "sex"] == "M" else "M"
        part.to_csv(raw / "participants.tsv", sep="\t", index=False, lineterminator="\n")
    noise = SimpleNamespace(participant_id=row.participant_id, session=row.session,
                            film="cocaine", sdat=raw / row.mrs)
    before = tree_state(raw)
    set_writable(raw, False)

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    a, b = base / "A", base / "B"
    try:
        # 3. + 4. run A (uninterrupted) and run B (killed, then resumed) side by side: two
        # independent runs from scratch; running them together keeps both cores busy through
        # each run's serial stretches (basis, stats, figures, reports)
        t0 = time.monotonic()
        with open(base / "A.log", "w") as log_a, open(base / "B.killed.log", "w") as log_b:
            proc_a = subprocess.Popen(sheets_run(a, raw), stdout=log_a,
                                      stderr=subprocess.STDOUT, env=env)
            proc_b = subprocess.Popen(sheets_run(b, raw), stdout=log_b,
                                      stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)  # its own process group
            killed = SimpleNamespace(fits=0, incomplete=0, returncode=None)
            second = None
            deadline = time.monotonic() + 1800
            while proc_b.poll() is None and time.monotonic() < deadline:
                fits = list((b / "results" / "fit").rglob("*_desc-fit.json"))
                markers = b / ".snakemake" / "incomplete"
                running = list(markers.iterdir()) if markers.is_dir() else []
                if fits and running:  # the first fits exist and a job is mid-way
                    # a second snakemake started in the same folder while B runs
                    second = subprocess.run(sheets_run(b, raw), capture_output=True,
                                            text=True, env=env, timeout=300)
                    second.live_pid = proc_b.pid
                    os.killpg(proc_b.pid, signal.SIGKILL)  # snakemake and its jobs
                    killed.fits, killed.incomplete = len(fits), len(running)
                    break
                time.sleep(0.2)
            killed.returncode = proc_b.wait()
            unlock = subprocess.run(sheets_run(b, raw, "--unlock"), capture_output=True,
                                    text=True, env=env, timeout=300)
            run_b = subprocess.run(sheets_run(b, raw, "--rerun-incomplete"),
                                   capture_output=True, text=True, env=env, timeout=1800)
            timings["B"] = time.monotonic() - t0
            returncode_a = proc_a.wait(timeout=1800)
            timings["A"] = time.monotonic() - t0
        run_a = SimpleNamespace(returncode=returncode_a, stdout="",
                                stderr=(base / "A.log").read_text())
        after = tree_state(raw)
        writable_after = [p for p in [raw, *raw.rglob("*")]
                          if p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)]
    finally:
        for proc in ("proc_a", "proc_b"):  # never leave a run behind on failure
            if proc in locals() and locals()[proc].poll() is None:
                locals()[proc].kill()
        set_writable(raw, True)  # let pytest clean up
    (base / "timings.json").write_text(json.dumps(timings, indent=1))
    yield SimpleNamespace(base=base, raw=raw, noise=noise, before=before, after=after,
                          writable_after=writable_after, a=a, b=b, run_a=run_a,
                          run_b=run_b, unlock=unlock, killed=killed, timings=timings,
                          second=second)


def _out(proc) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"


def test_run_completes_on_read_only_raw_with_a_noise_scan(study):
    assert study.run_a.returncode == 0, _out(study.run_a)
    for run in (study.a, study.b):
        res = run / "results"
        for f in ("tables/metabolites.tsv", "tables/exclusions.tsv", "stats/summary.md",
                  "stats/all_models.tsv", "verification.tsv", "report/provenance.tsv",
                  "figures/fig1.png"):
            assert (res / f).is_file(), f"{run.name}: {f} missing"


def test_noise_scan_is_excluded_with_its_reason(study):
    n = study.noise
    exc = pd.read_csv(study.a / "results" / "tables" / "exclusions.tsv", sep="\t")
    hit = exc[(exc.participant_id == n.participant_id) & (exc.session == n.session)
              & (exc.film == n.film)]
    assert len(hit) == 1, exc.to_string()
    reason = hit.iloc[0].reason
    assert isinstance(reason, str) and reason, exc.to_string()
    assert "SNR" in reason or "fit failed" in reason or "linewidth" in reason, reason
    # the noise scan is the only one excluded; the twin's other scans pass QC
    assert len(exc) == 1, exc.to_string()
    # it is still reported, flagged, in the metabolite table
    met = pd.read_csv(study.a / "results" / "tables" / "metabolites.tsv", sep="\t")
    mine = met[(met.participant_id == n.participant_id) & (met.session == n.session)
               & (met.film == n.film)]
    assert len(mine) and not mine.qc_pass.any() and (mine.qc_reason == reason).all()
    assert met[~((met.participant_id == n.participant_id) & (met.session == n.session)
                 & (met.film == n.film))].qc_pass.all()


def test_paired_model_drops_the_noise_participant_and_says_why(study):
    n = study.noise
    stats = pd.read_csv(study.a / "results" / "stats" / "glu_drug_film_cud_lmm.tsv", sep="\t",
                        keep_default_na=False)
    contrast = stats[stats.section == "contrast"].iloc[0]
    assert f"dropped incomplete participant(s): {n.participant_id} (missing drug=nac, " \
           f"film={n.film})" in contrast.note, contrast.note
    assert float(contrast.n_participants) == 3.0
    summary = (study.a / "results" / "stats" / "summary.md").read_text()
    assert n.participant_id in summary
    # models that do not need the excluded scan keep every participant
    group = pd.read_csv(study.a / "results" / "stats" / "glu_group_film_lmm.tsv", sep="\t",
                        keep_default_na=False)
    assert "dropped" not in " ".join(group.note)
    assert float(group[group.section == "contrast"].iloc[0].n_participants) == 6.0


def test_raw_tree_is_never_written(study):
    """SHA-256 of every file, every file's and folder's mtime, sizes and the listing are the
    same before and after both runs (the killed one included)."""
    assert study.run_a.returncode == 0, _out(study.run_a)
    assert study.run_b.returncode == 0, _out(study.run_b)
    assert set(study.after) == set(study.before)  # no file added or removed
    changed = [k for k in study.before if study.after[k] != study.before[k]]
    assert changed == []
    assert study.writable_after == []  # and it stayed read-only throughout


def test_run_succeeds_on_a_read_only_raw_tree(study):
    """As a normal user, any write into the read-only raw tree would have failed the run."""
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod a-w does not stop root's writes, so the raw tree "
                    "is checked by checksums and mtimes only (test_raw_tree_is_never_written)")
    assert study.run_a.returncode == 0, _out(study.run_a)
    assert study.run_b.returncode == 0, _out(study.run_b)


def test_killed_run_resumes_to_identical_results(study):
    k = study.killed
    assert k.returncode == -signal.SIGKILL, f"the run was not killed mid-way: {vars(k)}"
    assert k.fits >= 1 and k.incomplete >= 1, vars(k)
    assert study.unlock.returncode == 0, _out(study.unlock)
    assert study.run_b.returncode == 0, _out(study.run_b)
    assert TRACEBACK not in study.run_b.stdout + study.run_b.stderr
    a, b = study.a / "results", study.b / "results"
    tables = sorted(p.relative_to(a) for d in ("tables", "stats") for p in (a / d).glob("*.tsv"))
    assert len(tables) >= 14, tables
    for rel in tables:
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), f"{rel} differs after resume"
    # nothing left behind by the killed jobs (partial outputs, converter temp folders)
    assert all_files(b) == all_files(a)


def test_two_runs_from_scratch_are_byte_identical(study):
    """Every TSV, JSON, Markdown and YAML under results/ (not logs/benchmarks): no timestamps,
    no absolute working-directory paths, no unordered iteration, single-threaded BLAS."""
    assert study.run_b.returncode == 0, _out(study.run_b)
    a, b = study.a / "results", study.b / "results"
    files_a, files_b = compared_files(a), compared_files(b)
    assert files_a == files_b
    assert len(files_a) > 100, files_a
    differ = [f for f in files_a if not same_content(a / f, b / f)]
    assert differ == [], differ
    volatile = [f for f in files_a if (a / f).read_bytes() != (b / f).read_bytes()]
    assert all(f.startswith("convert/") and f.endswith("_svs.json") for f in volatile), volatile


def test_participant_with_one_film_is_dropped_from_paired_models(study, tmp_path):
    """Decision (see test_bad_input.py): a participant scanned during one film only is kept
    and reported; the paired models leave them out and say so. With on_incomplete: error the
    stats step instead stops naming the participant and what is missing."""
    tables = study.a / "results" / "tables"
    met = pd.read_csv(tables / "metabolites.tsv", sep="\t", keep_default_na=False)
    hc = sorted(met[met.group == "HC"].participant_id.unique())[0]
    met = met[~((met.participant_id == hc) & (met.film == "cocaine"))]
    met.to_csv(tmp_path / "metabolites.tsv", sep="\t", index=False)
    cfg = yaml.safe_load(Path(CONFIG).read_text())["stats"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}

    def run_stats(stats_cfg, out):
        return subprocess.run(
            [sys.executable, "-m", "mrsflow", "stats", "--stats", json.dumps(stats_cfg),
             "--metabolites", str(tmp_path / "metabolites.tsv"),
             "--craving", str(tables / "craving.tsv"),
             "--participants", str(study.raw / "participants.tsv"),
             "--out-dir", str(tmp_path / out), "--summary", str(tmp_path / out / "summary.md")],
            capture_output=True, text=True, env=env, timeout=600)

    cfg["models"] = [m for m in cfg["models"] if m["name"] == "glu_group_film_lmm"]
    assert cfg["models"][0]["on_incomplete"] == "drop"
    proc = run_stats(cfg, "drop")
    assert proc.returncode == 0, proc.stderr
    res = pd.read_csv(tmp_path / "drop" / "glu_group_film_lmm.tsv", sep="\t",
                      keep_default_na=False)
    row = res[res.term == "film_in_HC"].iloc[0]
    assert f"dropped incomplete participant(s): {hc} (missing film=cocaine)" in row.note
    assert float(row.n_participants) == 5.0

    cfg["models"][0]["on_incomplete"] = "error"
    proc = run_stats(cfg, "error")
    assert proc.returncode == 2 and TRACEBACK not in proc.stderr, proc.stderr
    assert (f"mrsflow stats: error: model 'glu_group_film_lmm': paired over ['film']: "
            f"participant {hc} has only film=neutral (missing film=cocaine)") in proc.stderr


# what a statistics setting may rerun: the statistics and everything downstream of them
DOWNSTREAM_OF_STATS = {"stats", "figure1", "figure2", "figure3", "figure_s1", "verification",
                       "twin_recovery", "mrsinmrs", "provenance", "qc_scans", "all"}


def test_changing_a_statistics_setting_reruns_only_stats_figures_and_report(study, tmp_path):
    """On the finished run A: a no-op dry run plans nothing; changing one statistics setting
    plans the stats rule and what is downstream of it (figures, report tables), never a
    conversion, preprocessing, segmentation or fit."""
    a = study.a
    noop = subprocess.run(sheets_run(a, study.raw, "-n", "--quiet", "rules"),
                          capture_output=True, text=True, timeout=300)
    assert noop.returncode == 0, _out(noop)
    assert "Nothing to be done" in noop.stdout + noop.stderr, _out(noop)

    cfg = yaml.safe_load(Path(CONFIG).read_text())
    stats = {"stats": {**cfg["stats"], "alpha": 0.01}}
    extra = tmp_path / "alpha.yaml"
    extra.write_text(yaml.safe_dump(stats))
    proc = subprocess.run(sheets_run(a, study.raw, "-n", "--quiet", "rules", configs=(extra,)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, _out(proc)
    planned = set(re.findall(r"^(\w+)\s+\d+$", proc.stdout, flags=re.M)) - {"total"}
    assert "stats" in planned, proc.stdout
    assert planned <= DOWNSTREAM_OF_STATS, planned - DOWNSTREAM_OF_STATS


def test_second_run_in_the_same_folder_is_refused_naming_the_first(study):
    """Started while run B was executing jobs: one line naming the live run, exit code 2;
    not Snakemake's claim that the live run's files are incomplete, and nothing of B's
    touched (B's resumed run equals A: test_killed_run_resumes_to_identical_results)."""
    second = study.second
    assert second is not None, "run B finished before a second run could be started"
    out = second.stdout + second.stderr
    assert second.returncode == 2, out
    assert TRACEBACK not in out and "incomplete" not in out.lower(), out
    lines = [ln for ln in second.stderr.splitlines() if ln.startswith("mrsflow: error: ")]
    assert len(lines) == 1, out
    assert f"another snakemake run (pid {second.live_pid}, started " in lines[0]
    assert f"kill {second.live_pid}" in lines[0]


def _planned(proc) -> set[str]:
    assert proc.returncode == 0, _out(proc)
    if "Nothing to be done" in proc.stdout + proc.stderr:
        return set()
    return set(re.findall(r"^(\w+)\s+\d+$", proc.stdout, flags=re.M)) - {"total", "job"}


def _planned_jobs(study, *args) -> tuple[set[str], str]:
    """(rules planned, the dry run's text) for run A after an edit."""
    proc = subprocess.run(sheets_run(study.a, study.raw, "-n", *args), capture_output=True,
                          text=True, timeout=300)
    return _planned(proc), proc.stdout


PER_PARTICIPANT = {"convert", "preprocess", "segment", "fit"}
STUDY_LEVEL = {"quantify", "stats", "figure1", "figure2", "figure3", "figure_s1", "verification",
               "mrsinmrs", "provenance", "qc_scans", "all"}


class _Restore:
    """Edit a file in place, then put back its bytes and its mtime (the raw tree of the
    shared study must be as it was for the tests that follow)."""

    def __init__(self, path: Path):
        self.path, self.data, self.stat = path, path.read_bytes(), path.stat()

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        self.path.write_bytes(self.data)
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))


def _pids_in(dry_run_text: str) -> set[str]:
    return set(re.findall(r"wildcards: pid=(sub-\w+)", dry_run_text))


def test_spar_edit_reruns_that_participants_chain_only(study):
    """A SPAR is an input of its participant's conversion: moving the voxel in it (a header
    edit, the SDAT untouched) reruns that participant's conversion and everything after it,
    and no other participant's jobs."""
    scans = pd.read_csv(study.raw / "scans.tsv", sep="\t", keep_default_na=False)
    row = scans.iloc[-1]
    spar = (study.raw / row.mrs).with_suffix(".SPAR")
    with _Restore(spar):
        text = spar.read_text()
        assert "\nap_off_center : " in text
        spar.write_text(re.sub(r"\nap_off_center : [^\n]*", "\nap_off_center : 23.0", text))
        planned, text = _planned_jobs(study, "-p")
    assert planned == PER_PARTICIPANT | STUDY_LEVEL, planned
    assert _pids_in(text) == {row.participant_id}
    assert _planned_jobs(study)[0] == set()  # restored: nothing to do


def test_dicom_slice_replaced_reruns_that_t1s_chain_only(study):
    """Each file of a T1 series is an input: one slice rewritten in place (new pixel values,
    same name; the folder's mtime does not change) reruns that participant's chain. Touching
    it without a change reruns nothing (Snakemake compares checksums of small inputs)."""
    import pydicom

    scans = pd.read_csv(study.raw / "scans.tsv", sep="\t", keep_default_na=False)
    row = scans.iloc[0]
    folder = study.raw / row.t1w
    dcm = sorted(folder.iterdir())[40]
    folder_mtime = folder.stat().st_mtime_ns
    with _Restore(dcm):
        ds = pydicom.dcmread(dcm)
        pixels = ds.pixel_array.copy()
        pixels[10:20, 10:20] += 50
        ds.PixelData = pixels.tobytes()
        ds.save_as(dcm)
        assert folder.stat().st_mtime_ns == folder_mtime
        planned, text = _planned_jobs(study, "-p")
    assert planned == PER_PARTICIPANT | STUDY_LEVEL, planned
    assert _pids_in(text) == {row.participant_id}
    with _Restore(dcm):
        dcm.touch()
        assert _planned_jobs(study)[0] == set()


def test_stage_code_edit_reruns_that_stage_and_what_follows(study):
    """A rule carries its stage's code version (the modules as parsed Python): an edit of
    mrsflow/quantify.py reruns quantification and what depends on it, never conversion,
    preprocessing, segmentation or fitting; a comment or docstring edit reruns nothing."""
    module = ROOT / "workflow" / "mrsflow" / "quantify.py"
    with _Restore(module):
        module.write_text(module.read_text() + "\n# a comment changes no result\n")
        assert _planned_jobs(study)[0] == set()
        module.write_text(module.read_text() + "_RERUN_PROBE = 1\n")
        planned, _ = _planned_jobs(study)
    assert "quantify" in planned and planned <= STUDY_LEVEL, planned
    module = ROOT / "workflow" / "mrsflow" / "preprocess.py"
    with _Restore(module):
        module.write_text(module.read_text() + "_RERUN_PROBE = 1\n")
        planned, _ = _planned_jobs(study)
    assert {"preprocess", "fit", "quantify"} <= planned <= {"preprocess", "fit"} | STUDY_LEVEL
    assert _planned_jobs(study)[0] == set()


def _as_mrs_bids(raw: Path, bids: Path) -> None:
    """The study's raw folder rewritten as MRS-BIDS: each spectrum as the NIfTI-MRS spec2nii
    makes of it (sub-*/ses-*/mrs/*_task-<film>_svs.nii.gz), each T1 as the NIfTI dcm2niix
    makes of its DICOM series (sub-*/ses-*/anat/*_T1w.nii.gz), the sheets but scans.tsv."""
    from mrsflow import convert

    for sheet in ("participants.tsv", "sessions.tsv", "phenotype/craving.tsv"):
        (bids / sheet).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / sheet, bids / sheet)
    scans = pd.read_csv(raw / "scans.tsv", sep="\t", keep_default_na=False)
    for r in scans.itertuples():
        stem = f"{r.participant_id}_{r.session}"
        convert.convert_spectrum(raw / r.mrs, bids / r.participant_id / r.session / "mrs"
                                 / f"{stem}_task-{r.film}_svs.nii.gz", acq=r.acq)
        t1_ses = Path(r.t1w).parts[1]  # the twin keeps each T1 in the session it was taken
        t1 = bids / r.participant_id / t1_ses / "anat" / f"{r.participant_id}_{t1_ses}_T1w.nii.gz"
        if not t1.exists():
            convert.convert_t1(raw / r.t1w, t1)


def test_mrs_bids_folder_of_nifti_files_gives_the_same_rows(study, tmp_path):
    """The same study as an MRS-BIDS folder (no scans.tsv: spectra found by their names, as
    NIfTI-MRS; T1s as NIfTI) gives metabolites.tsv rows identical to the vendor files' run
    A: a NIfTI-MRS input is its vendor file, a NIfTI T1 the DICOM series it was made from
    (same tissue fractions)."""
    bids = tmp_path / "bids"
    _as_mrs_bids(study.raw, bids)
    assert not (bids / "scans.tsv").exists()
    proc = subprocess.run(
        [*sheets_run(tmp_path / "run", bids)[:1], "results/tables/metabolites.tsv",
         *sheets_run(tmp_path / "run", bids)[1:]], capture_output=True, text=True,
        timeout=1800)
    assert proc.returncode == 0, _out(proc)
    got = (tmp_path / "run" / "results" / "tables" / "metabolites.tsv").read_bytes()
    assert got == (study.a / "results" / "tables" / "metabolites.tsv").read_bytes()
    tissue = sorted((tmp_path / "run" / "results" / "segment").rglob("*_desc-tissue.json"))
    assert len(tissue) == 20
    for f in tissue:
        ref = study.a / "results" / f.relative_to(tmp_path / "run" / "results")
        a, b = json.loads(f.read_text()), json.loads(ref.read_text())
        assert {k: a[k] for k in ("GM", "WM", "CSF")} == {k: b[k] for k in ("GM", "WM", "CSF")}


def test_forced_reruns_and_deletions_never_touch_the_raw_tree(study):
    """Last test of the module (it deletes run B's results): -F as a dry run and for real,
    --delete-temp-output and --delete-all-output on the finished run B leave every raw file,
    its bytes and mtime, and every folder as they were; the forced rerun reproduces run A's
    tables."""
    before = tree_state(study.raw)
    res = study.b / "results"
    for args in (("-F", "-n"), ("-F",), ("--delete-temp-output",), ("--delete-all-output",)):
        proc = subprocess.run(sheets_run(study.b, study.raw, *args), capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, f"{args}: {_out(proc)}"
        assert tree_state(study.raw) == before, args
        if args == ("-F",):
            for rel in ("tables/metabolites.tsv", "tables/exclusions.tsv", "stats/all_models.tsv"):
                assert (res / rel).read_bytes() == (study.a / "results" / rel).read_bytes(), rel
    assert not (res / "tables" / "metabolites.tsv").exists()  # the outputs were deleted
