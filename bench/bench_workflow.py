"""Whole-workflow benchmarks: the default twin from nothing, a no-op rerun, per-rule figures,
and DAG construction for large studies.

Each run happens in a fresh working directory with `snakemake -d <dir>` and the repository's
config (plus an override); the figures printed are wall-clock seconds of the snakemake
command, and per-rule medians / maxima from the `benchmark:` files every rule writes
(seconds and peak resident memory, max_rss in MB).

    python bench/bench_workflow.py full          # whole default twin -> figures, report
    python bench/bench_workflow.py twin          # only the twin's raw exports and truth
    python bench/bench_workflow.py dag 100 300 1000   # dry-run DAG construction times

Run from the README-installed environment (activated), on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def machine() -> str:
    cpu = cpu_model()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{platform.platform()}; {cpu}; {os.cpu_count()} CPUs; {mem:.0f} GiB; "
        f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}"
    )


#: CPU seconds of the snakemake process itself (not its jobs) in the last snakemake() call
LAST_MAIN_CPU: list[float] = [0.0]


def _run_watching_cpu(cmd: list[str], env: dict) -> tuple[int, str, str]:
    """Run ``cmd``; record its own CPU time (user + system, children excluded) sampled every
    0.5 s with psutil (a snakemake dependency) into ``LAST_MAIN_CPU``."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        watched, cpu = psutil.Process(proc.pid), 0.0
        while proc.poll() is None:
            try:
                t = watched.cpu_times()
                cpu = t.user + t.system
            except psutil.Error:
                pass
            time.sleep(0.5)
        LAST_MAIN_CPU[0] = cpu
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def snakemake(workdir: Path, override: dict, *args: str, targets: list[str] = ()) -> float:
    """Run snakemake in ``workdir`` with the repository config + ``override``; seconds."""
    cfg = workdir / "override.yaml"
    cfg.write_text(yaml.safe_dump(override))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        str(BIN / "snakemake"),
        *targets,
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        str(cfg),
        "--profile",  # the README's command: workstation profile, two cores
        str(ROOT / "workflow" / "profiles" / "default"),
        "--cores",
        "2",
        "--quiet",
        "all",
        *args,
    ]
    t0 = time.perf_counter()
    code, stdout, stderr = _run_watching_cpu(cmd, env)
    seconds = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"snakemake failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return seconds


def rule_table(workdir: Path) -> pd.DataFrame:
    rows = []
    for p in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        rule = p.relative_to(workdir / "results" / "benchmarks").parts[0]
        b = pd.read_csv(p, sep="\t")
        rows.append({"rule": rule, "s": float(b["s"].iloc[0]), "max_rss_mb": b["max_rss"].iloc[0]})
    df = pd.DataFrame(rows)
    df["max_rss_mb"] = pd.to_numeric(df["max_rss_mb"], errors="coerce")
    return (
        df.groupby("rule")
        .agg(
            jobs=("s", "size"),
            median_s=("s", "median"),
            max_s=("s", "max"),
            total_s=("s", "sum"),
            peak_mb=("max_rss_mb", "max"),
        )
        .sort_values("total_s", ascending=False)
    )


def step_seconds(workdir: Path, rule: str, pattern: str) -> list[float]:
    """Seconds of one step inside the participant jobs, from the lines their logs print
    (e.g. 'segmented <T1> in 4.12 s', 'fitted <spectrum> in 0.051 s')."""
    found = []
    for log in sorted((workdir / "results" / "logs" / rule).glob("*.log")):
        found += [float(x) for x in re.findall(pattern, log.read_text())]
    return found


def bench_full(targets: list[str], keep: bool, report: bool = True) -> None:
    work = Path(tempfile.mkdtemp(prefix="mrsflow-bench-"))
    try:
        print(f"machine: {machine()}")
        seconds = snakemake(work, {}, targets=targets)
        what = " ".join(targets) or "all"
        print(f"from nothing ({what}), --cores 2: {seconds:.1f} s ({seconds / 60:.2f} min); "
              f"the snakemake process itself used {LAST_MAIN_CPU[0]:.0f} CPU-s")
        if report:
            t_report = snakemake(work, {}, "--report", "results/report.html", targets=targets)
            size = (work / "results" / "report.html").stat().st_size / 1e6
            total = seconds + t_report
            print(f"snakemake --report results/report.html: {t_report:.1f} s ({size:.0f} MB)")
            print(f"from nothing to figures and report: {total:.1f} s ({total / 60:.2f} min)")
            seg = step_seconds(work, "segment", r"segmented \S+ in ([0-9.]+) s")
            reg = step_seconds(work, "segment", r"registered \S+ to MNI152 in ([0-9.]+) s")
            fit = step_seconds(work, "fit", r"fitted \S+ in ([0-9.]+) s")
            if seg and fit:
                print(f"in this run: segmentation {statistics.median(seg):.2f} s per T1 "
                      f"(median of {len(seg)}), MNI registration "
                      f"{statistics.median(reg):.2f} s per T1, builtin fitter "
                      f"{statistics.median(fit):.3f} s per spectrum (median of {len(fit)})")
        noop = [snakemake(work, {}, targets=targets) for _ in range(3)]
        print(f"no-op rerun: median {statistics.median(noop):.2f} s over 3")
        with pd.option_context("display.width", 120, "display.max_rows", 100):
            print(rule_table(work).round(2).to_string())
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench_dag(sizes: list[int]) -> None:
    print(f"machine: {machine()}")
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix="mrsflow-dag-"))
        try:
            n_cud = n * 26 // 56
            override = {"twin": {"n_cud": n_cud, "n_hc": n - n_cud}}
            runs = [snakemake(work, override, "-n") for _ in range(3)]
            print(f"DAG (dry run) for {n} participants: median {statistics.median(runs):.1f} s")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["full", "twin", "dag"])
    ap.add_argument("sizes", nargs="*", type=int, default=[100, 300, 1000])
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    a = ap.parse_args()
    if a.what == "full":
        bench_full([], a.keep)
    elif a.what == "twin":
        bench_full(["twin_participants", "twin_sheets"], a.keep, report=False)
    else:
        bench_dag(a.sizes)


if __name__ == "__main__":
    main()
