# Shared helpers: config access, the scan table, input functions. Logic that is more than
# bookkeeping lives in the mrsflow package (workflow/mrsflow).

import json
import shlex
from pathlib import Path

# Rules run `python -m mrsflow ...`; make the package importable in every job (pip set-up,
# conda envs and cluster jobs alike) without installing it into each environment.
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(str(Path(workflow.basedir, "workflow")))
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BASIS_NAME = config["basis"]["name"]


def as_json(obj):
    """A config block as a compact JSON string for a rule's command line."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def basis_entries():
    return list(config["basis"]["metabolites"]) + list(
        config["basis"]["macromolecules"]
    )


def basis_outputs():
    return expand(
        f"{RESULTS}/basis/{BASIS_NAME}/{{entry}}.json", entry=basis_entries()
    ) + [f"{RESULTS}/basis/{BASIS_NAME}.png"]
