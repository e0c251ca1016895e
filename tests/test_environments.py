"""The pip lock and the per-rule conda envs are two faces of one truth."""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.utils import canonicalize_name

from mrsflow import environments as envs


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return envs.read_lock()


def test_lock_pins_python_311_and_snakemake_9(lock):
    import sys

    assert sys.version_info[:2] == (3, 11)
    assert lock["snakemake"].startswith("9.")
    assert "snakemake-executor-plugin-slurm" in lock


def test_installed_versions_equal_the_lock(lock):
    """The README set-up installs exactly the lock."""
    wrong = {}
    for name, version in lock.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert not wrong, f"installed != lock: {wrong}"


@pytest.mark.parametrize("family", sorted(envs.FAMILIES))
def test_env_file_pins_agree_with_the_lock(family, lock):
    path = envs.ENVS / f"{family}.yaml"
    pins = envs.env_pins(path)
    assert pins, f"{path} pins nothing"
    disagree = {n: (v, lock.get(n)) for n, v in pins.items() if lock.get(n) != v}
    assert not disagree, f"{path.name}: pin != lock: {disagree}"
    # and the file is exactly what the lock renders (nothing stale, nothing missing)
    assert path.read_text() == envs.render_env(family, lock)


def test_a_disagreeing_pin_is_caught(tmp_path, lock):
    text = envs.render_env("stats", lock).replace(f"numpy=={lock['numpy']}", "numpy==1.0.0")
    bad = tmp_path / "stats.yaml"
    bad.write_text(text)
    pins = envs.env_pins(bad)
    assert pins[canonicalize_name("numpy")] == "1.0.0" != lock["numpy"]


def test_fsl_backends_are_named_for_conda_users():
    assert "fsl_mrs" in (envs.ENVS / "fit.yaml").read_text()
    assert "fsl-fast4" in (envs.ENVS / "segment.yaml").read_text()
    assert envs.FSL_CHANNEL in (envs.ENVS / "segment.yaml").read_text()


def test_every_rule_env_exists():
    import re

    rules = (envs.ROOT / "workflow" / "rules").glob("*.smk")
    used = set()
    for p in rules:
        used |= set(re.findall(r'"\.\./\.\./envs/(\w+)\.yaml"', p.read_text()))
    assert used, "no conda: directives found"
    assert used <= set(envs.FAMILIES), used - set(envs.FAMILIES)


@pytest.mark.parametrize("family", sorted(envs.FAMILIES))
def test_every_env_entry_is_pinned_exactly(family):
    """Every conda dependency but python's series and pip names an exact version
    (name=X.Y[.Z]), every pip entry name==version: an unpinned entry fails here."""
    import yaml

    env = yaml.safe_load((envs.ENVS / f"{family}.yaml").read_text())
    unpinned = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            unpinned += [d for d in dep.get("pip", []) if "==" not in d]
        elif dep not in ("pip", "python=3.11"):
            name, _, version = dep.partition("=")
            if not version or version.count(".") < 1 or "*" in version:
                unpinned.append(dep)
    assert not unpinned, f"{family}.yaml: unpinned {unpinned}"
