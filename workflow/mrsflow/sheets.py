"""The raw folder's sheets: reading, validation and the scan table the DAG is built from.

A raw folder (the twin's ``results/twin/raw`` or a real study's export) holds BIDS-like sheets:

- ``participants.tsv``   participant_id, group (CUD/HC), age, sex, ... (demographics)
- ``sessions.tsv``       participant_id, session, drug (nac/placebo/none), period (1, 2, ...)
- ``scans.tsv``          participant_id, session, film, acq (mc/ws), mrs, water, t1w: raw-file
                         paths relative to the raw folder (water empty in MC mode; t1w is the
                         T1 DICOM series folder)
- ``phenotype/craving.tsv`` participant_id, session, film, time (pre/post), vas (0-100)

Each sheet is validated row by row against ``config/schemas/<sheet>.schema.yaml``; keys must
be unique and consistent across sheets and every file named must exist. Any violation raises
:class:`~mrsflow.errors.InputError` naming the sheet, the row and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from mrsflow.errors import InputError

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


def read_tsv(path: Path) -> pd.DataFrame:
    """A TSV sheet with identifiers kept as text and empty cells as ''."""
    if not path.is_file():
        raise InputError(f"{path}: sheet not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable TSV sheet ({err})") from err
    return df


def _coerce(value: str, spec: dict):
    """Text cell -> the JSON type its schema asks for (numbers stay text if unparsable so the
    schema reports them)."""
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else types
    if value == "" and "null" in types:
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
    """Check every row against the sheet's schema and the key columns for duplicates."""
    schema = yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())
    props = schema.get("properties", {})
    missing = [c for c in schema.get("required", []) if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    validator = jsonschema.Draft202012Validator(schema)
    for i, row in enumerate(df.to_dict("records")):
        record = {k: _coerce(v, props.get(k, {})) for k, v in row.items()}
        err = jsonschema.exceptions.best_match(validator.iter_errors(record))
        if err is not None:
            where = ".".join(map(str, err.absolute_path)) or "row"
            # +2: header line, and humans count from 1
            raise InputError(f"{path}, line {i + 2}, column {where}: {err.message}")
    dup = df[df.duplicated(KEYS[name], keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        key = ", ".join(f"{k}={first[k]}" for k in KEYS[name])
        raise InputError(f"{path}: duplicate rows for {key} (lines {list(dup.index + 2)})")
    return df


def load_study(raw_dir: Path, *, check_files: bool = True) -> Study:
    """Read and cross-check all sheets of a raw folder."""
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
    ses_keys = set(zip(ses.participant_id, ses.session, strict=True))
    for i, row in enumerate(scans.itertuples(index=False)):
        if (row.participant_id, row.session) not in ses_keys:
            raise InputError(
                f"{raw_dir / SHEETS['scans']}, line {i + 2}: session {row.session} of "
                f"{row.participant_id} is not in sessions.tsv"
            )
        if row.acq == "ws" and not row.water:
            raise InputError(
                f"{raw_dir / SHEETS['scans']}, line {i + 2}: acq=ws needs a water reference "
                "file in column 'water'"
            )
        if check_files:
            for col in ("mrs", "water", "t1w"):
                rel = getattr(row, col)
                if rel and not (raw_dir / rel).exists():
                    raise InputError(
                        f"{raw_dir / SHEETS['scans']}, line {i + 2}: {col} file "
                        f"{raw_dir / rel} does not exist"
                    )
    table = scans.merge(part[["participant_id", "group"]], on="participant_id").merge(
        ses[["participant_id", "session", "drug", "period"]], on=["participant_id", "session"]
    )
    return Study(part, ses, table, sheets["craving"])
