"""Linters are part of the test suite, so CI catches style regressions."""

from __future__ import annotations

import subprocess

from conftest import BIN, ROOT


def test_ruff_check_is_clean():
    proc = subprocess.run(
        [str(BIN / "ruff"), "check", "workflow", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line for line in ci.splitlines() if line.startswith("python3.11 -m venv"))
    assert test_cmd in readme, "the README's test command and .ci/run differ"
