"""The workflow used as a module by another study, the way the Snakemake workflow catalog
describes it: the README's "Use this workflow for your own study" commands, run as written
(the clone's path in place of ``/path/to/mrsflow``), deploy a fresh copy of the repository
with ``snakedeploy deploy-workflow`` into a new folder; that folder's own config asks for the
small twin; its run must give the same tables, byte for byte, as the small twin run in the
repository itself (the session's run, conftest.small_twin), write only into the deployment
folder and leave the copy it was deployed from unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from conftest import copy_repository, sh
from test_readme import CLONE_PLACEHOLDER, deploy_commands

DEPLOYMENT = "my-study"  # the folder name the README's commands use


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but Python's bytecode caches (written when the
    deployment imports the package from the clone)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def compared_tables(results: Path) -> list[str]:
    return sorted(str(p.relative_to(results)) for pattern in ("tables/*.tsv", "stats/*.tsv",
                                                              "verification.tsv")
                  for p in results.glob(pattern))


@pytest.mark.slow
def test_deployed_module_runs_the_small_twin_to_the_same_tables(small_twin, tmp_path):
    assert small_twin.main.returncode == 0, small_twin.main.stderr[-3000:]
    # the module's source: a fresh copy of the repository, named as the README's clone
    clone = tmp_path / "src" / "mrsflow"
    copy_repository(clone)
    before = tree_digest(clone)
    work = tmp_path / "work"
    work.mkdir()

    deploy, run = deploy_commands()
    assert deploy[0].startswith("snakedeploy deploy-workflow ") and DEPLOYMENT in deploy[0]
    for command in deploy:
        proc = sh(command.replace(CLONE_PLACEHOLDER, str(clone)), work, timeout=300)
        assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])

    study = work / DEPLOYMENT
    snakefile = (study / "workflow" / "Snakefile").read_text()
    assert "module mrsflow:" in snakefile and "use rule * from mrsflow" in snakefile
    assert f'"{clone}/workflow/Snakefile"' in snakefile, snakefile
    assert (study / "LICENSE").read_text() == (clone / "LICENSE").read_text()
    # the deployment's own config: the repository's, with the small twin of the direct run
    cfg_path = study / "config" / "config.yaml"
    assert cfg_path.read_text() == (clone / "config" / "config.yaml").read_text()
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["twin"].update(n_cud=4, n_hc=4)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert cfg == yaml.safe_load((small_twin.clone / "config" / "config.yaml").read_text())

    for command in run:
        proc = sh(command, work, timeout=1800)
        assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])

    # the same tables as the run in the repository
    mine, direct = study / "results", small_twin.results
    tables = compared_tables(direct)
    assert len(tables) >= 15, tables
    assert compared_tables(mine) == tables
    differ = [t for t in tables if (mine / t).read_bytes() != (direct / t).read_bytes()]
    assert differ == [], f"tables differ from the direct run: {differ}"
    for rel in ("figures/fig1.png", "report/provenance.tsv", "twin/raw/scans.tsv"):
        assert (mine / rel).is_file(), rel
    # everything written into the deployment folder; the module's source only read
    assert tree_digest(clone) == before
    assert not (clone / ".snakemake").exists()
    assert sorted(p.name for p in (clone / "results").iterdir()) == ["README.md"]
