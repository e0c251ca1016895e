"""Every command the README gives runs as written.

The README's shell blocks are parsed; each command must be one this test knows how to check,
so a new command cannot slip in untested:

- the two set-up commands: CI (``.ci/run``) runs the test one verbatim; the main one's
  ``snakemake --profile workflow/profiles/default`` runs here, as written, in a copy of the
  repository whose ``config/config.yaml`` asks for a smaller twin (4 CUD + 4 HC), then again
  (it must do nothing);
- ``snakemake --report results/report.html``, as written, in the same copy after that run
  (the session's ``small_twin`` run, conftest.py, which other tests reuse);
- the SLURM command: run by CI's cluster stage (``.ci/slurm_stage.sh``) on a real SLURM;
- the commands of "Use this workflow for your own study": run by ``tests/test_deploy.py``, as
  written but for the clone's path in place of ``/path/to/mrsflow``.
"""

from __future__ import annotations

import re

import pytest
from conftest import README_MAIN, README_REPORT, ROOT

SETUP = ("python3.11 -m venv .venv && . .venv/bin/activate && pip install -r "
         "envs/requirements.lock && pip install --no-deps -e . && ")
MAIN = README_MAIN
REPORT = README_REPORT
SLURM = "snakemake --profile workflow/profiles/slurm --default-resources slurm_partition="
# the section whose commands tests/test_deploy.py runs (its placeholder: the clone's path)
DEPLOY_SECTION = "Use this workflow for your own study"
CLONE_PLACEHOLDER = "/path/to/mrsflow"


def sh_blocks(text: str) -> list[list[str]]:
    """The commands of each ```sh block of a Markdown text, one list per block."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [[ln.strip() for ln in b.splitlines() if ln.strip()] for b in blocks]


def readme_commands() -> list[str]:
    return [c for block in sh_blocks((ROOT / "README.md").read_text()) for c in block]


def readme_section(title: str) -> str:
    """The text of the README's ``## <title>`` section (up to the next ``## `` heading)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def deploy_commands() -> list[list[str]]:
    """The command blocks of "Use this workflow for your own study" (tests/test_deploy.py)."""
    return sh_blocks(readme_section(DEPLOY_SECTION))


def test_every_readme_command_is_known():
    cmds = readme_commands()
    assert cmds.count(SETUP + MAIN) == 1 and cmds.count(SETUP + "pytest") == 1, cmds
    assert REPORT in cmds
    deploy = [c for block in deploy_commands() for c in block]
    assert any(c.startswith("snakedeploy deploy-workflow") for c in deploy), deploy
    unknown = [c for c in cmds if c not in (SETUP + MAIN, SETUP + "pytest", REPORT)
               and c not in deploy and not c.startswith(SLURM)]
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


@pytest.mark.slow
def test_main_and_report_commands_run_as_written(small_twin):
    clone, run = small_twin.clone, small_twin.main
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for rel in ("figures/fig1.pdf", "tables/metabolites.tsv", "verification.tsv",
                "stats/summary.md"):
        assert (clone / "results" / rel).is_file(), rel
    again = small_twin.again
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    report = small_twin.report
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    html = clone / "results" / "report.html"
    assert html.is_file() and html.stat().st_size > 100_000
    page = html.read_text(errors="replace")
    assert "fig1.png" in page and "metabolites.tsv" in page
