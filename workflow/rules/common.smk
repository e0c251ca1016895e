# Shared helpers: config access, the scan table, input functions. Logic that is more than
# bookkeeping lives in the mrsflow package (workflow/mrsflow).

import functools
import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

# The Snakefile itself imports mrsflow (scan table, design): make it importable whether or
# not the package is pip-installed in the environment that runs snakemake. The package lies
# beside this file's folder (workflow/mrsflow), found from this file rather than from the
# main Snakefile, which is another project's when this workflow is used as a module.
PACKAGE_ROOT = str(Path(workflow.current_basedir).parent)
sys.path.insert(0, PACKAGE_ROOT)

from mrsflow import protocol, startup  # noqa: E402
from mrsflow.errors import InputError  # noqa: E402
from mrsflow.sheets import (  # noqa: E402
    load_study,
    raw_path,
    scan_raw_files,
    spectrum_files,
)
from mrsflow.twin.design import (  # noqa: E402
    mm_participants,
    mm_raw_paths,
    scan_sheet,
    study_design,
)

# Rules run `python -m mrsflow ...`; make the package importable in every job (pip set-up,
# conda envs and cluster jobs alike) without installing it into each environment.
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(PACKAGE_ROOT)
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

RAW = config["data"]["raw_dir"].rstrip("/")
TWIN = config["data"]["source"] == "twin"
ALLOW_OUTSIDE_RAW = config["data"].get("allow_outside_raw", False)

# Before anything is built: the raw folder lies where no output can touch it, results/ can
# be written, and no other run is working here (a job process re-reading the Snakefile, on
# a cluster node, skips this: its main process has checked).
if workflow.is_main_process:
    for _problem in (
        startup.live_run(),
        startup.raw_folder_problem(RAW, twin=TWIN),
        startup.results_problem(),
        startup.backend_problem(config["fitting"]),
    ):
        if _problem:
            startup.fail(_problem)

# The version of each stage's code (its modules as parsed Python, with the package modules
# they import; see mrsflow.startup). Every rule carries its stage's as the param `code`, so
# an edit of a stage's module reruns that stage and what follows it (Snakemake's params
# rerun trigger); comments and docstrings do not count.
CODE = startup.stage_code_versions(".snakemake/mrsflow/code-digests.json")
BASIS_NAME = config["basis"]["name"]
SCAN_COLUMNS = ["participant_id", "session", "film", "group", "drug", "period"]
# the study's acquisition protocols: `sequence` (named after basis.name) and any declared
# under `protocols`; one basis set is simulated per protocol that a scan uses
PROTOCOLS = protocol.protocols(config)
# the twin's measured macromolecules: the metabolite-nulled scans it acquires (config
# twin.macromolecules.nulled_scans; mrsflow.twin.design), as a study would give them in `mm`
TWIN_MM = mm_participants(config["twin"]) if TWIN else []
if TWIN_MM:
    PROTOCOLS[BASIS_NAME]["mm"] = {
        "scans": [mm_raw_paths(p, vendor=config["twin"]["vendor"]) for p in TWIN_MM]
    }


wildcard_constraints:
    pid="sub-[A-Za-z0-9]+",
    ses="ses-[A-Za-z0-9]+",
    film="[A-Za-z0-9]+",


def as_json(obj):
    """A config block as a compact JSON string for a rule's command line."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _scan_protocols(table):
    """Each scan's protocol from its raw file's header (mrsflow.protocol), matched against
    the config's protocols: a scan that matches none stops the run naming the file and the
    field. The twin's files do not exist yet: they are written with `sequence`."""
    if TWIN:
        seq = PROTOCOLS[BASIS_NAME]
        head = {f: seq[f] for f in protocol.FIELDS}
        head["averages"] = config["twin"]["n_transients"]
        return table.assign(protocol=BASIS_NAME, **head)
    rows = []
    for rec in table.to_dict("records"):
        path = raw_path(RAW, rec["mrs"])
        head = protocol.read_header(path)
        rows.append(
            {
                **{f: head[f] for f in protocol.FIELDS},
                "averages": head["averages"],
                "protocol": protocol.match(head, PROTOCOLS, head["header"]),
            }
        )
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def _scan_table():
    """One row per MRS scan: keys, design columns, raw files (relative to RAW) and the
    protocol. For the twin the table comes from the seeded design (the files do not exist
    yet when the DAG is built); for real data from the raw folder's validated sheets."""
    if TWIN:
        design = study_design(config["twin"])
        table = scan_sheet(design, config["twin"]).merge(
            design.scans[SCAN_COLUMNS], on=["participant_id", "session", "film"]
        )
    else:
        table = load_study(Path(RAW), allow_outside=ALLOW_OUTSIDE_RAW).scans
    table = _scan_protocols(table)
    # the T1 each scan uses is named after the first session that lists that series; a
    # scan without a T1 (t1w empty) has none
    has_t1 = table.t1w.astype(str) != ""
    first = table.groupby(["participant_id", "t1w"]).session.transform("min")
    table = table.assign(t1_session=first.where(has_t1, ""))
    return table.set_index(["participant_id", "session", "film"])


# a problem with a sheet or a header: one line naming the file (sheet, line, column)
try:
    SCANS = _scan_table()
except InputError as _err:
    startup.fail(str(_err))
PARTICIPANTS = sorted(SCANS.index.unique("participant_id"))


def basis_entries():
    return list(config["basis"]["metabolites"]) + list(
        config["basis"]["macromolecules"]
    )


def twin_basis_config():
    """The basis block the twin simulates its spectra with: every metabolite it plants
    (twin.concentrations_molal), whichever of them the fit's basis leaves out."""
    return {
        **config["basis"],
        "metabolites": list(config["twin"]["concentrations_molal"]),
    }


# a basis set: one folder of FSL-MRS JSON files (one per metabolite / macromolecule), an
# input of every fit job as a folder (one DAG node, not ~30 files per job); one per protocol
# in use (the twin plants with its own, rule twin_basis)
USED_PROTOCOLS = sorted(set(SCANS.protocol), key=list(PROTOCOLS).index)


def basis_dir(name):
    return f"results/basis/{name}"


# the basis sets of the protocols in use (the first is what study-level rules describe)
USED_BASES = [basis_dir(n) for n in USED_PROTOCOLS]


def protocol_sequence(name):
    """The `sequence`-style block of a protocol (what the basis rule simulates)."""
    return {k: v for k, v in PROTOCOLS[name].items() if k not in ("te_ms", "mm")}


def measured_mm(wildcards):
    """A protocol's measured MM spectrum (rule mm_spectrum), if its config block has `mm`."""
    if not PROTOCOLS[wildcards.name].get("mm"):
        return []
    return [f"results/basis/{wildcards.name}_mm.nii.gz"]


def mm_raw_inputs(wildcards):
    """The raw files of a protocol's `mm` block: the MM spectrum file, or each
    metabolite-nulled scan (with its SPAR) and its water reference."""
    spec = PROTOCOLS[wildcards.name]["mm"]
    if TWIN:  # written by rule twin_participants into the participants' folders
        return [f"{RAW}/{pid}" for pid in TWIN_MM]
    if spec.get("file"):
        return [str(raw_path(RAW, spec["file"]))]
    files = set()
    for scan in spec["scans"]:
        for col in ("mrs", "water"):
            if scan.get(col):
                files.update(str(p) for p in spectrum_files(raw_path(RAW, scan[col])))
    return sorted(files)


# the MNI152 template prepared once for every T1 -> MNI registration (mrsflow.register)
MNI_TEMPLATE = "results/segment/MNI152NLin2009aSym_desc-registration_template.npz"


def basis_outputs():
    names = sorted(set(USED_PROTOCOLS) | ({BASIS_NAME} if TWIN else set()))
    return [p for n in names for p in (basis_dir(n), f"{basis_dir(n)}.png")]


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
LWM = f"results/linewidth/{SCAN_STEM}"
# preprocess.linewidth_matching: the spectra of a participant's session broadened to the
# broadest before fitting (the match_linewidth step, mrsflow.linewidth); off, the fit reads the
# processed spectra
LW_MATCH_CFG = config["preprocess"].get("linewidth_matching", {})
LW_MATCH = bool(LW_MATCH_CFG.get("enabled", False))
FIT_INPUT = "linewidth" if LW_MATCH else "preprocess"
# the match_linewidth step's settings: the matching block, and as the largest linewidth that may
# set a session's target the QC limit of the measured line (a scan QC will exclude for its
# linewidth must not drag the others down to it)
LW_MATCH_PARAMS = {
    "max_linewidth_hz": config["qc"].get(
        {"water": "linewidth_water_max_hz", "naa": "linewidth_naa_max_hz"}.get(
            LW_MATCH_CFG.get("measure", "water"), ""
        )
    ),
    **LW_MATCH_CFG,
}
# what mrsflow.preprocess takes (the matching block goes to rule match_linewidth)
PREPROCESS_PARAMS = {
    k: v for k, v in config["preprocess"].items() if k != "linewidth_matching"
}


def sheet_files():
    """The raw folder's sheets (for the twin, written by rule twin_sheets); participants.tsv
    first. An MRS-BIDS folder may have no scans.tsv (its scans are found by their names)
    and per-participant sub-*/sub-*_sessions.tsv instead of sessions.tsv."""
    names = ["participants.tsv", "sessions.tsv", "scans.tsv", "phenotype/craving.tsv"]
    if TWIN:
        return [f"{RAW}/{s}" for s in names]
    found = [f"{RAW}/{s}" for s in names if Path(RAW, s).is_file()]
    return found + sorted(str(p) for p in Path(RAW).glob("sub-*/sub-*_sessions.tsv"))


# --- per-participant plans ------------------------------------------------------------
# The per-scan steps (convert, segment + tissue fractions, preprocess, fit) run one job per
# participant: a job loops over that participant's scans in one process, so the interpreter
# start-up and imports (1-2 s) are paid once per participant, not once per scan. The plans
# below list, from the scan table, every input and output path of a participant's scans;
# the rule passes its plan to the package as JSON and declares the participant's derivative
# folder as its output.


def participant_dirs(stage):
    return expand("results/{stage}/{pid}", stage=stage, pid=PARTICIPANTS)


# the scan table as plain records per participant (plans are built for every job when the
# DAG is; dict look-ups keep that cheap for studies of thousands of participants)
_ROWS = {}
for _rec in SCANS.reset_index().to_dict("records"):
    _ROWS.setdefault(_rec["participant_id"], []).append(SimpleNamespace(**_rec))


def _anat(pid, ses):
    return f"{pid}/{ses}/anat/{pid}_{ses}"


def scan_files(pid, ses, film):
    """Every derivative path of one scan (BIDS-derivatives names)."""
    keys = {"pid": pid, "ses": ses, "film": film}
    conv = f"results/convert/{SCAN_STEM}".format(**keys)
    pre, seg, fit, lwm = (p.format(**keys) for p in (PRE, SEGOUT, FIT, LWM))
    return {
        "svs": f"{conv}_svs.nii.gz",
        "mrsref": f"{conv}_mrsref.nii.gz",
        "metab": f"{pre}_desc-metab_svs.nii.gz",
        "water": f"{pre}_desc-water_svs.nii.gz",
        "qc": f"{pre}_desc-qc.json",
        "transients": f"{pre}_desc-transients.tsv",
        "tissue": f"{seg}_desc-tissue.json",
        "fit_json": f"{fit}_desc-fit.json",
        "fit_tsv": f"{fit}_desc-fit.tsv",
        "metab_matched": f"{lwm}_desc-metab_svs.nii.gz",
        "water_matched": f"{lwm}_desc-water_svs.nii.gz",
        "linewidth": f"{lwm}_desc-linewidth.json",
    }


def t1_file(pid, ses):
    return f"results/convert/{_anat(pid, ses)}_T1w.nii.gz"


def xfm_file(pid, ses):
    """The T1 -> MNI152 affine of a T1 (written by the segment step)."""
    return f"results/segment/{_anat(pid, ses)}_from-T1w_to-MNI152_xfm.json"


def participant_t1_sessions(pid):
    """The sessions whose T1 the participant's scans use (named after the first session
    that lists each T1; scans without a T1 add none)."""
    return sorted({r.t1_session for r in _ROWS[pid] if r.t1_session})


def scan_fractions(row):
    """(fractions, source) of a scan without a T1 segmentation: the f_gm/f_wm/f_csf of its
    scans.tsv row, else the config's segment.default_fractions; (None, 'T1') otherwise.
    """
    given = [getattr(row, f"f_{t}", None) for t in ("gm", "wm", "csf")]
    if all(v not in (None, "") and v == v for v in given):
        return dict(zip(("gm", "wm", "csf"), map(float, given))), "scans.tsv"
    if row.t1_session:
        return None, "T1"
    return dict(config["segment"]["default_fractions"]), "default"


def convert_plan(pid):
    """spec2nii / dcm2niix conversions of one participant: src (raw), out (NIfTI)."""
    t1 = []
    for ses in participant_t1_sessions(pid):
        src = next(r.t1w for r in _ROWS[pid] if r.t1_session == ses)
        t1.append({"src": str(raw_path(RAW, src)), "out": t1_file(pid, ses)})
    mrs = []
    for row in _ROWS[pid]:
        f = scan_files(pid, row.session, row.film)
        mrs.append(
            {"src": str(raw_path(RAW, row.mrs)), "acq": row.acq, "out": f["svs"]}
        )
        if row.acq == "ws":
            mrs.append(
                {"src": str(raw_path(RAW, row.water)), "acq": "ws", "out": f["mrsref"]}
            )
    return {"t1": t1, "mrs": mrs}


def participant_raw_files(pid):
    """Every raw file the participant's results depend on: each spectrum with its SPAR, the
    water references, each file of the T1 series (a change of any reruns the participant's
    chain; a folder's mtime would not see a slice rewritten in place)."""
    files = set()
    for row in _ROWS[pid]:
        for group in scan_raw_files(RAW, row).values():
            files.update(str(p) for p in group)
    return sorted(files)


def convert_inputs(wildcards):
    """The participant's raw files (for the twin, its generated folder)."""
    if TWIN:
        return [f"{RAW}/{wildcards.pid}"]
    return participant_raw_files(wildcards.pid)


def segment_plan(pid):
    """Segment each T1 of the participant and register it to MNI152 (for the voxel-overlap
    map of Fig. 1), then the tissue fractions of each scan's voxel on the T1 it was planned
    on."""
    t1 = [
        {
            "t1": t1_file(pid, ses),
            "out_dir": f"results/segment/{pid}/{ses}/anat",
            "xfm": xfm_file(pid, ses),
        }
        for ses in participant_t1_sessions(pid)
    ]
    voxels = []
    for row in _ROWS[pid]:
        f = scan_files(pid, row.session, row.film)
        fractions, source = scan_fractions(row)
        voxels.append(
            {
                "t1": t1_file(pid, row.t1_session) if fractions is None else None,
                "fractions": fractions,
                "source": source,
                "mrs": f["svs"],
                "json": f["tissue"],
                "label": f"{row.session} {row.film}",
            }
        )
    return {"t1": t1, "voxels": voxels}


def preprocess_plan(pid):
    plan = []
    for row in _ROWS[pid]:
        f = scan_files(pid, row.session, row.film)
        plan.append(
            {
                "mrs": f["svs"],
                "water": f["mrsref"] if row.acq == "ws" else None,
                "mode": "mc" if row.acq == "mc" else "classic",
                "metab": f["metab"],
                "water_out": f["water"],
                "qc": f["qc"],
                "transients": f["transients"],
                "label": f"{row.session} {row.film}",
            }
        )
    return plan


def linewidth_plan(pid):
    plan = []
    for row in _ROWS[pid]:
        f = scan_files(pid, row.session, row.film)
        plan.append(
            {
                "session": row.session,
                "metab": f["metab"],
                "water": f["water"],
                "metab_out": f["metab_matched"],
                "water_out": f["water_matched"],
                "record": f["linewidth"],
            }
        )
    return plan


def fit_plan(pid, backend=None):
    """A participant's fit plan; with ``backend``, the plan of that compared backend (its
    fits under results/fit_compare/<backend>/, the same spectra)."""
    plan = []
    for row in _ROWS[pid]:
        f = scan_files(pid, row.session, row.film)
        if backend:
            f = {k: compare_path(v, backend) for k, v in f.items()}
        plan.append(
            {
                "metab": f["metab_matched"] if LW_MATCH else f["metab"],
                "water": f["water_matched"] if LW_MATCH else f["water"],
                "tissue": f["tissue"],
                "qc": f["qc"],
                "json": f["fit_json"],
                "tsv": f["fit_tsv"],
                "label": f"{row.session} {row.film}",
                "basis": basis_dir(row.protocol),
                "protocol": scan_protocol(row),
            }
        )
    return plan


def scan_protocol(row):
    """A scan's protocol as its fit records it (quantification reads TE and TR there)."""
    out = {f: getattr(row, f) for f in protocol.FIELDS}
    out["points"] = int(out["points"])
    averages = getattr(row, "averages", None)
    out["averages"] = (
        None if averages is None or averages != averages else int(averages)
    )
    return {"name": row.protocol, **out}


def participant_bases(wildcards):
    """The basis sets of the protocols of a participant's scans."""
    return sorted({basis_dir(r.protocol) for r in _ROWS[wildcards.pid]})


# fitting.compare: every spectrum fitted also with these backends (the primary, the tables'
# one, is fitting.backend), and their agreement with it (mrsflow.agreement)
COMPARE = [
    b for b in config["fitting"].get("compare", []) if b != config["fitting"]["backend"]
]


def compare_path(path, backend):
    """A fit output of the primary backend -> the same of a compared backend."""
    return path.replace("results/fit/", f"results/fit_compare/{backend}/", 1)


def compare_outputs():
    return [
        p
        for b in COMPARE
        for p in (
            f"results/tables/fit_agreement_{b}.tsv",
            f"results/figures/fit_agreement_{b}.png",
        )
    ]


@functools.lru_cache(maxsize=None)
def plan_json(step, pid, backend=None):
    """A participant's plan of one step as the JSON its job gets (``backend``: the fit plan
    of a compared backend). Cached: snakemake re-evaluates the params of every waiting job
    each time it selects jobs to run."""
    if backend:
        return as_json(fit_plan(pid, backend))
    plans = {
        "convert": convert_plan,
        "segment": segment_plan,
        "preprocess": preprocess_plan,
        "linewidth": linewidth_plan,
        "fit": fit_plan,
    }
    return as_json(plans[step](pid))


def all_scan_files(key):
    """One derivative per scan, in scan-table order (for rules that take them as params)."""
    return [scan_files(pid, ses, film)[key] for pid, ses, film in SCANS.index]


def qc_page(what, caption, ext="png"):
    """A participant's QC page of one step (a row per scan) as a report item."""
    return report(
        f"results/qc/{{pid}}_desc-{what}.{ext}",
        caption=f"../report/{caption}",
        category="3. Quality control",
        subcategory="{pid}",
        labels={"participant": "{pid}", "figure": what},
    )


def fit_params():
    """The fitter's parameters: the config's fitting block plus the sequence timing."""
    f = dict(config["fitting"])
    f.pop("backend")
    f.pop(
        "compare", None
    )  # fitting other backends too does not change this backend's fits
    seq = config["sequence"]
    return {**f, "te_ms": seq["te1_ms"] + seq["te2_ms"], "tr_ms": seq["tr_ms"]}


def cancel_pending_timers():
    """Cancel the threading.Timer threads still pending in this (finished) Snakemake
    process: the scheduler's re-evaluation timers (see the Snakefile's onsuccess)."""
    import threading

    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
