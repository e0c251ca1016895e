"""Shared test helpers: the repository root, the reference data folder, running snakemake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"
BIN = Path(sys.executable).parent


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
