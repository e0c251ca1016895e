"""The raw folder's sheets: reading, validation and the scan table the DAG is built from.

A raw folder (the twin's ``results/twin/raw`` or a real study's export) holds BIDS-like sheets:

- ``participants.tsv``   participant_id, group (CUD/HC), age, sex, ... (demographics)
- ``sessions.tsv``       participant_id, session, drug (nac/placebo/none), period (1, 2, ...)
- ``scans.tsv``          participant_id, session, film, acq (mc/ws), mrs, water, t1w: raw-file
                         paths relative to the raw folder (water empty in MC mode; t1w is the
                         T1 DICOM series folder)
- ``phenotype/craving.tsv`` participant_id, session, film, time (pre/post), vas (0-100)

Each sheet is validated row by row against ``config/schemas/<sheet>.schema.yaml`` (numbers
finite; a missing cell - empty, ``n/a``, ``NaN`` - only in optional columns). Across sheets:
keys unique; every participant in ``participants.tsv``; every scans/craving session in
``sessions.tsv``; drug arms that agree with the group (HC ``none``, CUD ``nac``/``placebo``) and
distinct crossover periods (and CUD drugs) per participant; every file named exists inside the
raw folder (no absolute path, no ``..`` out of it, unless ``data.allow_outside_raw``); one raw
file is never two scans' data (a water reference may serve the scans of one session, a T1 the
sessions of one participant). Any violation raises :class:`~mrsflow.errors.InputError` naming
the sheet, the line, the column and the problem.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from mrsflow.errors import InputError
from mrsflow.vendor import philips_pair

SHEETS = {
    "participants": "participants.tsv",
    "sessions": "sessions.tsv",
    "scans": "scans.tsv",
    "craving": "phenotype/craving.tsv",
}
KEYS = {
    "participants": ["participant_id"],
    "sessions": ["participant_id", "session"],
    "scans": ["participant_id", "session", "film"],
    "craving": ["participant_id", "session", "film", "time"],
}
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schemas"


@dataclass(frozen=True)
class Study:
    participants: pd.DataFrame
    sessions: pd.DataFrame
    scans: pd.DataFrame  # scans.tsv joined with group, drug and period
    craving: pd.DataFrame


# cells meaning "no value" (BIDS writes n/a; spreadsheets and pandas write empty or NaN),
# compared case-insensitively
MISSING = frozenset({"", "n/a", "nan"})
# the design: which drug arms each group has (HC: one session without drug; CUD: the NAC and
# placebo sessions of the crossover)
DRUGS_BY_GROUP = {"HC": {"none"}, "CUD": {"nac", "placebo"}}


def is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING


def read_tsv(path: Path) -> pd.DataFrame:
    """A TSV sheet with identifiers kept as text and empty cells as ''."""
    if not path.is_file():
        raise InputError(f"{path}: sheet not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable TSV sheet ({err})") from err
    return df


def _types(spec: dict) -> list[str]:
    types = spec.get("type", [])
    return [types] if isinstance(types, str) else list(types)


def _coerce(value: str, spec: dict):
    """Text cell -> the JSON type its schema asks for. A missing cell (:data:`MISSING`) is
    None where the column allows null (an optional column); numbers stay text if unparsable
    so the schema reports them."""
    types = _types(spec)
    if is_missing(value) and ("null" in types or None in spec.get("enum", [])):
        return None
    for t in ("integer", "number", "boolean"):
        if t in types:
            try:
                if t == "integer":
                    return int(value)
                if t == "number":
                    return float(value)
                if value.lower() in {"true", "false"}:
                    return value.lower() == "true"
            except ValueError:
                pass
    return value


def validate_sheet(df: pd.DataFrame, name: str, path: Path) -> pd.DataFrame:
    """Check every row against the sheet's schema and the key columns for duplicates.

    Numeric cells must be finite numbers; a missing cell (empty, ``n/a``, ``NaN``) is
    accepted only in columns whose schema allows null (the optional ones)."""
    schema = yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())
    props = schema.get("properties", {})
    missing = [c for c in schema.get("required", []) if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    validator = jsonschema.Draft202012Validator(schema)
    for i, row in enumerate(df.to_dict("records")):
        where = f"{path}, line {i + 2}"  # +2: header line, and humans count from 1
        record = {}
        for k, v in row.items():
            spec = props.get(k, {})
            value = _coerce(v, spec)
            numeric = {"number", "integer"} & set(_types(spec))
            if numeric and value is not None and is_missing(v):
                raise InputError(f"{where}, column {k}: missing value {v!r}; {k} is required "
                                 "in every row")
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{where}, column {k}: {v!r} is not a finite number")
            record[k] = value
        err = jsonschema.exceptions.best_match(validator.iter_errors(record))
        if err is not None:
            col = ".".join(map(str, err.absolute_path)) or "row"
            raise InputError(f"{where}, column {col}: {err.message}")
    dup = df[df.duplicated(KEYS[name], keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        key = ", ".join(f"{k}={first[k]}" for k in KEYS[name])
        raise InputError(f"{path}: duplicate rows for {key} (lines {list(dup.index + 2)})")
    return df


def raw_path(raw_dir: Path | str, rel: str) -> Path:
    """A sheet's file path: relative to the raw folder, or absolute (where allowed)."""
    return Path(raw_dir) / rel


def spectrum_files(path: Path) -> list[Path]:
    """The raw files read to convert one spectrum: a Philips SDAT with its SPAR (either
    named), or the file itself."""
    pair = philips_pair(path)
    return list(pair) if pair is not None else [path]


@functools.cache
def t1_files(path: Path) -> tuple[Path, ...]:
    """The raw files of a T1: every (non-hidden) file of a DICOM series folder, or the NIfTI
    file (with its JSON sidecar).
    (Listed once per process: the scans of a participant's sessions share their T1.)"""
    if path.is_dir():
        return tuple(sorted(p for p in path.rglob("*")
                            if p.is_file() and not any(s.startswith(".") for s in
                                                       p.relative_to(path).parts)))
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    sidecar = path.with_name(f"{stem}.json")  # a NIfTI T1's BIDS sidecar (copied along)
    return (path, sidecar) if sidecar.is_file() else (path,)


def scan_raw_files(raw_dir: Path | str, row) -> dict[str, list[Path]]:
    """{'mrs', 'water', 't1w': raw files} that one scans.tsv row's results depend on."""
    out = {"mrs": spectrum_files(raw_path(raw_dir, row.mrs)), "water": [], "t1w": []}
    if isinstance(row.water, str) and row.water:
        out["water"] = spectrum_files(raw_path(raw_dir, row.water))
    if isinstance(row.t1w, str) and row.t1w:
        out["t1w"] = list(t1_files(raw_path(raw_dir, row.t1w)))
    return out


def _path_problem(rel: str, allow_outside: bool) -> str:
    if allow_outside:
        return ""
    if os.path.isabs(rel):
        return ("is an absolute path; name raw files relative to the raw folder (or set "
                "data.allow_outside_raw: true)")
    if os.path.normpath(rel).split(os.sep)[0] == os.pardir:
        return ("leaves the raw folder; keep every raw file inside it (or set "
                "data.allow_outside_raw: true)")
    return ""


def _check_sessions(path: Path, ses: pd.DataFrame, group: dict[str, str]) -> None:
    """Drug arms agree with the group; a participant's crossover periods (and, in CUD, drugs)
    are distinct."""
    for i, row in enumerate(ses.itertuples(index=False)):
        g = group[row.participant_id]
        if row.drug not in DRUGS_BY_GROUP[g]:
            raise InputError(
                f"{path}, line {i + 2}, column drug: {row.participant_id} is in group {g}, "
                f"whose sessions have drug {' or '.join(sorted(DRUGS_BY_GROUP[g]))}, not "
                f"{row.drug!r}")
    for pid, rows in ses.groupby("participant_id", sort=True):
        lines = [int(j) + 2 for j in rows.index]
        for col in ("period", "drug"):
            if col == "drug" and group[pid] != "CUD":
                continue
            dup = rows[rows[col].duplicated(keep=False)]
            if not dup.empty:
                raise InputError(
                    f"{path}, lines {lines}, column {col}: {pid} has {len(dup)} sessions with "
                    f"{col} {dup[col].iloc[0]!r}; the sessions of a crossover have distinct "
                    f"{'periods' if col == 'period' else 'drugs'}")


def _check_scans(raw_dir: Path, path: Path, scans: pd.DataFrame, ses_keys: set,
                 check_files: bool, allow_outside: bool, where: list[str] | None = None
                 ) -> None:
    """``where``: the file each row was found as (MRS-BIDS), else rows are scans.tsv lines."""
    used: dict[str, tuple[int, str, tuple]] = {}  # normalised path -> (line, column, owner)
    lines = where
    for i, row in enumerate(scans.itertuples(index=False)):
        where = lines[i] if lines else f"{path}, line {i + 2}"
        if (row.participant_id, row.session) not in ses_keys:
            raise InputError(f"{where}: session {row.session} of {row.participant_id} is not "
                             "in sessions.tsv")
        if row.acq == "ws" and not row.water:
            raise InputError(f"{where}: acq=ws needs a water reference file in column 'water'")
        given = [getattr(row, f"f_{t}", "") for t in ("gm", "wm", "csf")]
        if any(not is_missing(v) for v in given):
            if any(is_missing(v) for v in given):
                raise InputError(f"{where}, columns f_gm/f_wm/f_csf: give all three tissue "
                                 "fractions or none")
            total = sum(float(v) for v in given)
            if abs(total - 1.0) > 0.01:
                raise InputError(f"{where}, columns f_gm/f_wm/f_csf: the tissue fractions "
                                 f"sum to {total:.3g}, not 1")
        if row.acq == "mc" and row.water:
            raise InputError(f"{where}, column water: acq=mc scans take their water from the "
                             "same acquisition; leave 'water' empty (or set acq=ws)")
        for col in ("mrs", "water", "t1w"):
            rel = getattr(row, col)
            if not rel:
                continue
            if check_files:
                problem = _path_problem(rel, allow_outside)
                if problem:
                    raise InputError(f"{where}, column {col}: {rel!r} {problem}")
                if not raw_path(raw_dir, rel).exists():
                    raise InputError(f"{where}: {col} file {raw_path(raw_dir, rel)} does not "
                                     "exist")
            key = os.path.normpath(str(raw_path(raw_dir, rel)))
            owner = (row.participant_id, row.session) if col == "water" else (
                row.participant_id,) if col == "t1w" else (i,)
            if key in used:
                line, col0, owner0 = used[key]
                same_kind = col0 == col and col in ("water", "t1w") and owner0 == owner
                if not same_kind:
                    shared = {"water": "a water reference is shared only by the scans of one "
                                       "session",
                              "t1w": "a T1 belongs to one participant"}.get(col, "")
                    raise InputError(
                        f"{where}, column {col}: {rel!r} is already used on line {line} "
                        f"(column {col0}); one raw file cannot be two scans' data"
                        + (f" ({shared})" if shared and col0 == col else ""))
                continue
            used[key] = (i + 2, col, owner)


# MRS-BIDS: sub-<label>[_ses-<label>][_<key>-<value>...]_svs.nii[.gz]
_BIDS_SVS = re.compile(r"^(?P<sub>sub-[A-Za-z0-9]+)(?:_(?P<ses>ses-[A-Za-z0-9]+))?"
                       r"(?P<ents>(?:_[a-zA-Z]+-[A-Za-z0-9]+)*)_svs\.nii(?:\.gz)?$")
NO_SESSION = "ses-1"  # the session of an MRS-BIDS dataset without session folders


def _films() -> list[str]:
    schema = yaml.safe_load((SCHEMA_DIR / "scans.schema.yaml").read_text())
    return list(schema["properties"]["film"]["enum"])


def _dim5(path: Path) -> str | None:
    import nibabel as nib

    from mrsflow import nmrs

    try:
        hdr = nmrs.header_extension(nib.load(str(path)))
    except InputError:
        raise InputError(f"{path}: not a NIfTI-MRS file (no header extension)") from None
    return hdr.get("dim_5")


def _bids_t1(raw_dir: Path, sub: str, ses: str | None) -> str:
    """The participant's T1 (``anat/*_T1w.nii[.gz]``): of the scan's session, else of any
    of the participant's sessions (the first), else ''."""
    here = raw_dir / sub / ses / "anat" if ses else raw_dir / sub / "anat"
    found = sorted(here.glob("*_T1w.nii*")) or sorted((raw_dir / sub).glob("*/anat/*_T1w.nii*"))
    return found[0].relative_to(raw_dir).as_posix() if found else ""


def discover_bids_scans(raw_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The scan table of an MRS-BIDS raw folder (no scans.tsv): one row per
    ``sub-*/[ses-*/]mrs/*_svs.nii[.gz]`` whose ``task-`` entity is a film of the design; its
    water reference is the ``_mrsref`` file with the same entities (acq ws), or none when
    the spectrum is metabolite-cycled (``dim_5`` DIM_METCYCLE: acq mc); its T1 the
    ``anat/*_T1w.nii[.gz]`` of its session (else of another session, else none). A dataset
    without session folders is one session, ``ses-1``. Returns (table, the file of each
    row, for messages)."""
    films = _films()
    rows, where = [], []
    for svs in sorted(raw_dir.glob("sub-*/**/mrs/*_svs.nii*")):
        m = _BIDS_SVS.match(svs.name)
        rel = svs.relative_to(raw_dir)
        if m is None or rel.parts[0] != m["sub"] or (m["ses"] and m["ses"] not in rel.parts):
            raise InputError(f"{svs}: not an MRS-BIDS name (sub-<label>[_ses-<label>]"
                             "_task-<film>[_...]_svs.nii.gz in sub-*/[ses-*/]mrs/)")
        ents = dict(e.split("-", 1) for e in m["ents"].strip("_").split("_") if e)
        film = ents.get("task")
        if film not in films:
            raise InputError(f"{svs}: task-{film} is not a film of the design ({', '.join(films)});"
                             " list the study's scans in scans.tsv to choose them")
        ref = svs.with_name(svs.name.replace("_svs.nii", "_mrsref.nii"))
        if ref.is_file():
            acq, water = "ws", ref.relative_to(raw_dir).as_posix()
        elif _dim5(svs) == "DIM_METCYCLE":
            acq, water = "mc", ""
        else:
            raise InputError(f"{svs}: no water reference ({ref.name}) and not "
                             "metabolite-cycled (dim_5 is not DIM_METCYCLE)")
        rows.append({"participant_id": m["sub"], "session": m["ses"] or NO_SESSION,
                     "film": film, "acq": acq, "mrs": rel.as_posix(), "water": water,
                     "t1w": _bids_t1(raw_dir, m["sub"], m["ses"])})
        where.append(str(svs))
    if not rows:
        raise InputError(f"{raw_dir}: no scans.tsv, and no MRS-BIDS spectra "
                         "(sub-*/[ses-*/]mrs/*_svs.nii.gz)")
    table = pd.DataFrame(rows)
    dup = table[table.duplicated(KEYS["scans"], keep=False)]
    if not dup.empty:
        files = [where[i] for i in dup.index]
        raise InputError(f"{raw_dir}: several spectra for {dup.iloc[0].participant_id} "
                         f"{dup.iloc[0].session} film {dup.iloc[0].film}: {files}")
    return table, where


def _bids_sessions(raw_dir: Path) -> tuple[pd.DataFrame, Path] | None:
    """Sessions from the per-participant BIDS files ``sub-*/sub-*_sessions.tsv``
    (``session_id`` plus the design columns drug, period), or None."""
    files = sorted(raw_dir.glob("sub-*/sub-*_sessions.tsv"))
    if not files:
        return None
    frames = []
    for f in files:
        df = read_tsv(f).rename(columns={"session_id": "session"})
        df.insert(0, "participant_id", f.parent.name)
        frames.append(validate_sheet(df, "sessions", f))
    return pd.concat(frames, ignore_index=True), files[0]


def load_study(raw_dir: Path, *, check_files: bool = True, allow_outside: bool = False) -> Study:
    """Read and cross-check all sheets of a raw folder.

    ``check_files`` (at DAG build): every file named must exist inside the raw folder (or
    anywhere, with ``allow_outside``). Without ``scans.tsv`` the raw folder is read as
    MRS-BIDS (:func:`discover_bids_scans`), and sessions may come from per-participant
    ``sub-*/sub-*_sessions.tsv`` files instead of ``sessions.tsv``."""
    raw_dir = Path(raw_dir)
    sheets, paths, where = {}, {}, None
    for name, rel in SHEETS.items():
        path = raw_dir / rel
        paths[name] = path
        if name == "scans" and not path.is_file():
            sheets[name], where = discover_bids_scans(raw_dir)
            continue
        if name == "sessions" and not path.is_file():
            found = _bids_sessions(raw_dir)
            if found is not None:
                sheets[name], paths[name] = found
                continue
        sheets[name] = validate_sheet(read_tsv(path), name, path)
    part, ses, scans = sheets["participants"], sheets["sessions"], sheets["scans"]

    known = set(part.participant_id)
    for name in ("sessions", "scans", "craving"):
        unknown = sorted(set(sheets[name].participant_id) - known)
        if unknown:
            raise InputError(
                f"{paths[name]}: participant(s) not in participants.tsv: {unknown}"
            )
    group = dict(zip(part.participant_id, part.group, strict=True))
    _check_sessions(paths["sessions"], ses, group)
    ses_keys = set(zip(ses.participant_id, ses.session, strict=True))
    for i, row in enumerate(sheets["craving"].itertuples(index=False)):
        if (row.participant_id, row.session) not in ses_keys:
            raise InputError(f"{paths['craving']}, line {i + 2}, column session: "
                             f"session {row.session} of {row.participant_id} is not in "
                             "sessions.tsv")
    _check_scans(raw_dir, paths["scans"], scans, ses_keys, check_files, allow_outside,
                 where=where)
    table = scans.merge(part[["participant_id", "group"]], on="participant_id").merge(
        ses[["participant_id", "session", "drug", "period"]], on=["participant_id", "session"]
    )
    return Study(part, ses, table, sheets["craving"])
