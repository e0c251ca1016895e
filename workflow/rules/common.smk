# Shared helpers: config access, the scan table, input functions. Logic that is more than
# bookkeeping lives in the mrsflow package (workflow/mrsflow).

import json
import shlex
import sys
from pathlib import Path

# The Snakefile itself imports mrsflow (scan table, design): make it importable whether or
# not the package is pip-installed in the environment that runs snakemake.
sys.path.insert(0, str(Path(workflow.basedir, "workflow")))

from mrsflow.sheets import load_study  # noqa: E402
from mrsflow.twin.design import scan_sheet, study_design  # noqa: E402

# Rules run `python -m mrsflow ...`; make the package importable in every job (pip set-up,
# conda envs and cluster jobs alike) without installing it into each environment.
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(str(Path(workflow.basedir, "workflow")))
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

RAW = config["data"]["raw_dir"].rstrip("/")
TWIN = config["data"]["source"] == "twin"
BASIS_NAME = config["basis"]["name"]
SCAN_COLUMNS = ["participant_id", "session", "film", "group", "drug", "period"]


wildcard_constraints:
    pid="sub-[A-Za-z0-9]+",
    ses="ses-[A-Za-z0-9]+",
    film="[A-Za-z0-9]+",


def as_json(obj):
    """A config block as a compact JSON string for a rule's command line."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _scan_table():
    """One row per MRS scan: keys, design columns and raw files (relative to RAW). For the
    twin the table comes from the seeded design (the files do not exist yet when the DAG is
    built); for real data from the raw folder's validated sheets."""
    if TWIN:
        design = study_design(config["twin"])
        table = scan_sheet(design, config["twin"]).merge(
            design.scans[SCAN_COLUMNS], on=["participant_id", "session", "film"]
        )
    else:
        table = load_study(Path(RAW)).scans
    # the T1 each scan uses is named after the first session that lists that series
    first = table.groupby(["participant_id", "t1w"]).session.transform("min")
    return table.assign(t1_session=first).set_index(
        ["participant_id", "session", "film"]
    )


SCANS = _scan_table()
PARTICIPANTS = sorted(SCANS.index.unique("participant_id"))


def scan(wildcards):
    """The scan-table row of a {pid, ses, film} job."""
    return SCANS.loc[(wildcards.pid, wildcards.ses, wildcards.film)]


def scan_keys():
    """dict(pid=[...], ses=[...], film=[...]) for expand(..., zip)."""
    pid, ses, film = zip(*SCANS.index)
    return {"pid": list(pid), "ses": list(ses), "film": list(film)}


def t1_keys():
    """The T1 series of the study as (participant, session-of-T1) pairs."""
    pairs = sorted(set(zip(SCANS.index.get_level_values(0), SCANS.t1_session)))
    return {"pid": [p for p, _ in pairs], "ses": [s for _, s in pairs]}


def raw_input(column):
    """Input function: a raw file of the scan (for the twin, the participant's generated
    folder, since one twin job writes all of a participant's files)."""

    def _input(wildcards):
        if TWIN:
            return f"{RAW}/{wildcards.pid}"
        return f"{RAW}/{scan(wildcards)[column]}"

    return _input


def raw_path(wildcards, column):
    return f"{RAW}/{scan(wildcards)[column]}"


def t1_dicom(wildcards):
    """The DICOM folder of the T1 named {pid}_{ses}_T1w."""
    rows = SCANS.loc[wildcards.pid]
    return f"{RAW}/{rows[rows.t1_session == wildcards.ses].t1w.iloc[0]}"


def basis_entries():
    return list(config["basis"]["metabolites"]) + list(
        config["basis"]["macromolecules"]
    )


def basis_files(name=BASIS_NAME):
    return expand(f"results/basis/{name}/{{entry}}.json", entry=basis_entries())


def basis_outputs():
    return basis_files() + [f"results/basis/{BASIS_NAME}.png"]


def twin_outputs():
    if not TWIN:
        return []
    return [f"{RAW}/scans.tsv"] + expand(
        "results/twin/truth/{table}.tsv",
        table=["concentrations", "scans", "tissue", "transients"],
    )


# --- derivative paths (BIDS-derivatives names; {pid} {ses} {film} wildcards) ------------
SCAN_STEM = "{pid}/{ses}/mrs/{pid}_{ses}_task-{film}"
PRE = f"results/preprocess/{SCAN_STEM}"
SEGOUT = f"results/segment/{SCAN_STEM}"
FIT = f"results/fit/{SCAN_STEM}"
SEG_MAPS = {
    "gm": "label-GM_probseg",
    "wm": "label-WM_probseg",
    "csf": "label-CSF_probseg",
    "mask": "desc-brain_mask",
}


def sheet_files():
    """The raw folder's sheets (for the twin, written by rule twin_sheets)."""
    return [
        f"{RAW}/{s}"
        for s in (
            "participants.tsv",
            "sessions.tsv",
            "scans.tsv",
            "phenotype/craving.tsv",
        )
    ]


def preprocess_inputs(wildcards):
    stem = f"results/convert/{SCAN_STEM}".format(**wildcards)
    inputs = {"mrs": f"{stem}_svs.nii.gz"}
    if scan(wildcards).acq == "ws":
        inputs["water"] = f"{stem}_mrsref.nii.gz"
    return inputs


def tissue_inputs(wildcards):
    """The scan's converted spectrum (its affine places the voxel) and the segmentation of
    the T1 it was planned on."""
    t1ses = scan(wildcards).t1_session
    anat = f"{wildcards.pid}/{t1ses}/anat/{wildcards.pid}_{t1ses}"
    return {
        "mrs": f"results/convert/{SCAN_STEM}_svs.nii.gz".format(**wildcards),
        "t1": f"results/convert/{anat}_T1w.nii.gz",
        **{k: f"results/segment/{anat}_{v}.nii.gz" for k, v in SEG_MAPS.items()},
    }


def fit_params():
    """The fitter's parameters: the config's fitting block plus the sequence timing."""
    f = dict(config["fitting"])
    f.pop("backend")
    seq = config["sequence"]
    return {**f, "te_ms": seq["te1_ms"] + seq["te2_ms"], "tr_ms": seq["tr_ms"]}
