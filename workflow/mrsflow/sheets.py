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
    """The raw files of a T1: every (non-hidden) file of a DICOM series folder, or the file.
    (Listed once per process: the scans of a participant's sessions share their T1.)"""
    if path.is_dir():
        return tuple(sorted(p for p in path.rglob("*")
                            if p.is_file() and not any(s.startswith(".") for s in
                                                       p.relative_to(path).parts)))
    return (path,)


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
                 check_files: bool, allow_outside: bool) -> None:
    used: dict[str, tuple[int, str, tuple]] = {}  # normalised path -> (line, column, owner)
    for i, row in enumerate(scans.itertuples(index=False)):
        where = f"{path}, line {i + 2}"
        if (row.participant_id, row.session) not in ses_keys:
            raise InputError(f"{where}: session {row.session} of {row.participant_id} is not "
                             "in sessions.tsv")
        if row.acq == "ws" and not row.water:
            raise InputError(f"{where}: acq=ws needs a water reference file in column 'water'")
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


def load_study(raw_dir: Path, *, check_files: bool = True, allow_outside: bool = False) -> Study:
    """Read and cross-check all sheets of a raw folder.

    ``check_files`` (at DAG build): every file named must exist inside the raw folder (or
    anywhere, with ``allow_outside``)."""
    raw_dir = Path(raw_dir)
    sheets = {}
    for name, rel in SHEETS.items():
        path = raw_dir / rel
        sheets[name] = validate_sheet(read_tsv(path), name, path)
    part, ses, scans = sheets["participants"], sheets["sessions"], sheets["scans"]

    known = set(part.participant_id)
    for name in ("sessions", "scans", "craving"):
        unknown = sorted(set(sheets[name].participant_id) - known)
        if unknown:
            raise InputError(
                f"{raw_dir / SHEETS[name]}: participant(s) not in participants.tsv: {unknown}"
            )
    group = dict(zip(part.participant_id, part.group, strict=True))
    _check_sessions(raw_dir / SHEETS["sessions"], ses, group)
    ses_keys = set(zip(ses.participant_id, ses.session, strict=True))
    for i, row in enumerate(sheets["craving"].itertuples(index=False)):
        if (row.participant_id, row.session) not in ses_keys:
            raise InputError(f"{raw_dir / SHEETS['craving']}, line {i + 2}, column session: "
                             f"session {row.session} of {row.participant_id} is not in "
                             "sessions.tsv")
    _check_scans(raw_dir, raw_dir / SHEETS["scans"], scans, ses_keys, check_files,
                 allow_outside)
    table = scans.merge(part[["participant_id", "group"]], on="participant_id").merge(
        ses[["participant_id", "session", "drug", "period"]], on=["participant_id", "session"]
    )
    return Study(part, ses, table, sheets["craving"])
