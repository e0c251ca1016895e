"""Shared test helpers: the repository root, the reference data folder, running snakemake,
and the README's small-twin run (one per session, shared by the tests that need its outputs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"
BIN = Path(sys.executable).parent
# the README's commands that the small-twin run executes as written (tests/test_readme.py)
README_MAIN = "snakemake --profile workflow/profiles/default"
README_REPORT = "snakemake --report results/report.html"


def snakemake(*args: str, cwd: Path = ROOT, check: bool = False, timeout: float = 600):
    """Run the snakemake of this interpreter's environment; returns CompletedProcess."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def snakemake_with_override(workdir: Path, override: dict, *args: str, timeout: float = 600):
    """Run this repository's Snakefile in ``workdir`` with config/config.yaml and ``override``
    (written as ``workdir/override.yaml``) on top; ``args`` (targets, options) go before the
    config files, which take every argument after ``--configfile``."""
    (workdir / "override.yaml").write_text(yaml.safe_dump(override))
    return snakemake(*args, "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                     "--configfile", str(ROOT / "config" / "config.yaml"),
                     str(workdir / "override.yaml"), timeout=timeout)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def copy_repository(dest: Path) -> None:
    """The repository's files as a fresh clone has them (no results, venv or metadata)."""

    def ignore(folder, names):
        top = Path(folder) == ROOT
        skip = {".venv", ".git", ".snakemake", "__pycache__", ".pytest_cache", ".ruff_cache",
                ".lcmodel"}
        out = {n for n in names if n in skip or n.endswith(".egg-info")}
        if top:
            out |= {"results"}
        return out

    shutil.copytree(ROOT, dest, ignore=ignore)
    (dest / "results").mkdir()
    shutil.copy2(ROOT / "results" / "README.md", dest / "results" / "README.md")


def sh(command: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a shell command line as a user types it, with this environment's bin/ on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def small_twin(tmp_path_factory) -> SimpleNamespace:
    """The README's main command run as written in a fresh copy of the repository whose
    config/config.yaml asks for a small twin (4 CUD + 4 HC), then again (nothing to do), then
    the README's report command: once per session, shared by tests/test_readme.py (the
    commands), tests/test_report_browser.py (opens the report) and tests/test_deploy.py
    (compares a module deployment's tables with this run's). ``main``, ``again`` and
    ``report`` are the commands' CompletedProcess (the last two None if ``main`` failed)."""
    clone = tmp_path_factory.mktemp("small-twin") / "clone"
    copy_repository(clone)
    cfg_path = clone / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["twin"].update(n_cud=4, n_hc=4)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    main = sh(README_MAIN, clone)
    again = sh(README_MAIN, clone) if main.returncode == 0 else None
    report = sh(README_REPORT, clone) if main.returncode == 0 else None
    return SimpleNamespace(clone=clone, results=clone / "results", main=main, again=again,
                           report=report)
