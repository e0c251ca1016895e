"""Every command the README gives runs as written.

The README's shell blocks are parsed; each command must be one this test knows how to check,
so a new command cannot slip in untested:

- the two set-up commands: CI (``.ci/run``) runs the test one verbatim; the main one's
  ``snakemake --profile workflow/profiles/default`` runs here, as written, in a copy of the
  repository whose ``config/config.yaml`` asks for a smaller twin (4 CUD + 4 HC), then again
  (it must do nothing);
- ``snakemake --report results/report.html``, as written, in the same copy after that run;
- the SLURM command: run by CI's cluster stage (``.ci/slurm_stage.sh``) on a real SLURM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT

SETUP = ("python3.11 -m venv .venv && . .venv/bin/activate && pip install -r "
         "envs/requirements.lock && pip install --no-deps -e . && ")
MAIN = "snakemake --profile workflow/profiles/default"
REPORT = "snakemake --report results/report.html"
SLURM = "snakemake --profile workflow/profiles/slurm --default-resources slurm_partition="


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip()]


def test_every_readme_command_is_known():
    cmds = readme_commands()
    assert cmds.count(SETUP + MAIN) == 1 and cmds.count(SETUP + "pytest") == 1, cmds
    assert REPORT in cmds
    unknown = [c for c in cmds if c not in (SETUP + MAIN, SETUP + "pytest", REPORT)
               and not c.startswith(SLURM)]
    assert unknown == [], f"README commands no test runs: {unknown}"


def test_ci_runs_the_readme_test_command_and_the_slurm_command():
    """.ci/run runs the test command verbatim; the cluster stage runs the SLURM command with
    the same profile and partition option (on a clean clone's small twin, with its paths)."""
    assert SETUP + "pytest" in (ROOT / ".ci" / "run").read_text()
    stage = (ROOT / ".ci" / "slurm_stage.sh").read_text().replace("\\\n", " ")
    command = next(ln for ln in stage.splitlines() if ln.startswith("snakemake ")
                   and "profiles/slurm" in ln)
    assert '--profile "$repo/workflow/profiles/slurm"' in command
    assert "--default-resources slurm_partition=ci" in command


def _copy_repository(dest: Path) -> None:
    """The repository's files as a fresh clone has them (no results, venv or metadata)."""
    def ignore(folder, names):
        top = Path(folder) == ROOT
        skip = {".venv", ".git", ".snakemake", "__pycache__", ".pytest_cache", ".ruff_cache"}
        out = {n for n in names if n in skip or n.endswith(".egg-info")}
        if top:
            out |= {"results"}
        return out

    shutil.copytree(ROOT, dest, ignore=ignore)
    (dest / "results").mkdir()
    shutil.copy2(ROOT / "results" / "README.md", dest / "results" / "README.md")


def _sh(command: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_main_and_report_commands_run_as_written(tmp_path):
    clone = tmp_path / "clone"
    _copy_repository(clone)
    cfg_path = clone / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["twin"].update(n_cud=4, n_hc=4)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    run = _sh(MAIN, clone)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for rel in ("figures/fig1.pdf", "tables/metabolites.tsv", "verification.tsv",
                "stats/summary.md"):
        assert (clone / "results" / rel).is_file(), rel
    again = _sh(MAIN, clone)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    report = _sh(REPORT, clone)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    html = clone / "results" / "report.html"
    assert html.is_file() and html.stat().st_size > 100_000
    page = html.read_text(errors="replace")
    assert "fig1.png" in page and "metabolites.tsv" in page
