"""The pinned software environments: one pip lock, and the per-rule conda envs derived from it.

``envs/requirements.lock`` is the single truth: exact versions of every Python package the pip
set-up installs (transitive included), produced by ``pip freeze`` in a clean Python 3.11 venv
built from ``envs/requirements.in``. Each conda env under ``envs/`` (one per rule family) pins
the subset a family imports, closed over its dependencies, with the same versions, through
conda's pip section (so conda and pip users run the same wheels). FSL's own conda channel
provides ``fsl_mrs`` and FAST/BET, which are not on PyPI; the fitting and segmentation envs
name them for users who have that channel.

Regenerate after changing ``envs/requirements.in``::

    python -m venv /tmp/lockenv && /tmp/lockenv/bin/pip install -r envs/requirements.in
    /tmp/lockenv/bin/pip freeze --exclude-editable > envs/requirements.lock
    python -m mrsflow.environments --write     # re-render envs/*.yaml from the lock

``tests/test_environments.py`` fails when an env file and the lock disagree.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
ENVS = ROOT / "envs"
LOCK = ENVS / "requirements.lock"
PYTHON = "3.11"
FSL_CHANNEL = "https://fsl.fmrib.ox.ac.uk/fsldownloads/fslconda/public/"

# rule family -> top-level PyPI packages its rules import (closed over dependencies below)
FAMILIES: dict[str, list[str]] = {
    "basis": ["numpy", "scipy", "pyyaml", "matplotlib"],
    "twin": [
        "numpy",
        "scipy",
        "pandas",
        "pyyaml",
        "jsonschema",
        "nibabel",
        "nilearn",
        "pydicom",
        "nifti-mrs",
    ],
    "convert": ["spec2nii", "dcm2niix", "nifti-mrs", "nibabel", "numpy"],
    "preprocess": ["numpy", "scipy", "nibabel", "nifti-mrs", "matplotlib", "threadpoolctl"],
    "segment": ["numpy", "scipy", "nibabel", "nilearn", "matplotlib"],  # + MNI registration
    "fit": ["numpy", "scipy", "nibabel", "nifti-mrs", "matplotlib", "pyyaml", "threadpoolctl"],
    "quantify": ["numpy", "pandas", "pyyaml", "jsonschema"],
    "stats": ["numpy", "scipy", "pandas", "statsmodels", "pyyaml"],
    "figures": [
        "numpy",
        "scipy",
        "pandas",
        "matplotlib",
        "nibabel",
        "nilearn",
        "nifti-mrs",
        "pyyaml",
    ],
    "report": [
        "pandas",
        "pyyaml",
        "nibabel",
        "scipy",
        "statsmodels",
        "matplotlib",
        "jsonschema",
        "spec2nii",
        "nifti-mrs",
        "dcm2niix",
        "pydicom",
        "nilearn",
    ],
}
# conda packages from FSL's channel (not on PyPI), pinned to exact versions: FSL-MRS 2.4.11 (the
# release the fsl_mrs backend was run against), FAST 2111.3 and BET 2111.8 (FSL 6.0.7).
FSL_PACKAGES: dict[str, list[str]] = {
    "fit": ["fsl_mrs=2.4.11"],  # the FSL-MRS the fsl_mrs backend was checked against
    "segment": ["fsl-fast4=2111.3", "fsl-bet2=2111.8"],  # FSL 6.0.7 releases
}


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} from a ``name==version`` lock file."""
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path}:{n}: not an exact 'name==version' pin: {line!r}")
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def closure(names: list[str]) -> set[str]:
    """Top-level names plus everything they require in the current environment (markers
    evaluated for this interpreter, extras not followed)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(canonicalize_name(req.name))
    return seen


def render_env(family: str, pins: dict[str, str]) -> str:
    """The conda env YAML of one rule family."""
    pkgs = sorted(closure(FAMILIES[family]))
    missing = [p for p in pkgs if p not in pins]
    if missing:
        raise ValueError(f"envs/{family}.yaml: not in the lock: {', '.join(missing)}")
    channels = ([FSL_CHANNEL] if family in FSL_PACKAGES else []) + ["conda-forge", "nodefaults"]
    lines = [
        f"# Rule family '{family}'. Generated from envs/requirements.lock by",
        "# `python -m mrsflow.environments --write`; edit requirements.in, not this file.",
        f"name: mrsflow-{family}",
        "channels:",
        *[f"  - {c}" for c in channels],
        "dependencies:",
        f"  - python={PYTHON}",
        "  - pip",
        *[f"  - {p}" for p in FSL_PACKAGES.get(family, [])],
        "  - pip:",
        *[f"      - {p}=={pins[p]}" for p in pkgs],
    ]
    return "\n".join(lines) + "\n"


def env_pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of the pip pins in a conda env file."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"\s*-\s+([A-Za-z0-9_.\-]+)==(\S+)\s*", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite envs/*.yaml from the lock")
    args = ap.parse_args(argv)
    pins = read_lock()
    stale = []
    for family in FAMILIES:
        path = ENVS / f"{family}.yaml"
        text = render_env(family, pins)
        if args.write:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(path.name)
    if stale:
        print("stale env files (run with --write):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
