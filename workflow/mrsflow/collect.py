"""Collect every scan's fit, tissue fractions and QC into the study's tidy tables.

- ``results/tables/metabolites.tsv``  one row per scan x metabolite (see
  :data:`mrsflow.quantify.METABOLITE_COLUMNS`), concentrations from :mod:`mrsflow.quantify`
- ``results/tables/exclusions.tsv``   the scans failing QC, with the reason
- ``results/tables/craving.tsv``      the VAS ratings with the design columns
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from mrsflow import quantify
from mrsflow.errors import InputError
from mrsflow.sheets import load_study

TSV = {"sep": "\t", "index": False, "lineterminator": "\n", "na_rep": "NA"}


def _load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: missing (did the previous step run?)") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err


def build_tables(
    raw_dir: Path, cfg: Mapping, patterns: Mapping[str, str]
) -> dict[str, pd.DataFrame]:
    """The three tables from the raw folder's sheets and each scan's outputs.

    ``patterns`` map 'fit', 'tissue', 'qc' (and, with linewidth matching on, 'linewidth':
    the records of :mod:`mrsflow.linewidth`) to path templates with {pid}, {ses}, {film}.
    """
    study = load_study(Path(raw_dir), check_files=False)
    seq = cfg["sequence"]
    te_ms = float(seq["te1_ms"]) + float(seq["te2_ms"])
    tr_ms = float(seq["tr_ms"])
    params = quantify.QuantParams.from_config(cfg["quantify"])
    rows, exclusions = [], []
    scans = study.scans.sort_values(["participant_id", "session", "film"]).to_dict("records")
    outputs = []
    for scan in scans:
        keys = {"pid": scan["participant_id"], "ses": scan["session"], "film": scan["film"]}
        outputs.append([_load_json(patterns[k].format(**keys)) for k in ("fit", "tissue", "qc")])
    linewidths = [
        _load_json(patterns["linewidth"].format(pid=s["participant_id"], ses=s["session"],
                                                film=s["film"]))
        if patterns.get("linewidth") else None
        for s in scans
    ]
    shared = shared_raw_data(scans, [qc for _, _, qc in outputs])
    for scan, (fit, tissue, qc), lw in zip(scans, outputs, linewidths, strict=True):
        key = (scan["participant_id"], scan["session"], scan["film"])
        # the scan's own TE and TR (its header, recorded by the fit step), else `sequence`
        proto = (fit.get("extra") or {}).get("protocol") or {}
        scan_rows = quantify.scan_rows(
            scan, fit, tissue, qc, te_ms=float(proto.get("te_ms", te_ms)),
            tr_ms=float(proto.get("tr_ms", tr_ms)), params=params, rules=cfg["qc"],
            extra_reasons=shared.get(key, ()), linewidth=lw,
        )
        rows.extend(scan_rows)
        if scan_rows and not scan_rows[0]["qc_pass"]:
            exclusions.append(
                {
                    **{k: scan[k] for k in ("participant_id", "group", "session", "film")},
                    "reason": scan_rows[0]["qc_reason"],
                }
            )
    metabolites = pd.DataFrame(rows, columns=quantify.METABOLITE_COLUMNS)
    exclusions = pd.DataFrame(
        exclusions, columns=["participant_id", "group", "session", "film", "reason"]
    )
    craving = study.craving.merge(
        study.participants[["participant_id", "group"]], on="participant_id"
    ).merge(study.sessions[["participant_id", "session", "drug", "period"]])
    craving["vas"] = pd.to_numeric(craving["vas"])
    craving = craving[quantify.CRAVING_COLUMNS].sort_values(
        ["participant_id", "session", "film", "time"], key=_time_order
    )
    return {"metabolites": metabolites, "exclusions": exclusions, "craving": craving}


def shared_raw_data(scans: list[dict], qcs: list[dict]) -> dict[tuple, list[str]]:
    """Scans whose raw metabolite data are identical to another scan's (the same export
    listed under two names): {(participant, session, film): [reason]} for each of them. Which
    one is right cannot be told, so all are excluded."""
    by_hash: dict[str, list[tuple]] = {}
    for scan, qc in zip(scans, qcs, strict=True):
        digest = qc.get("raw_sha256")
        if digest:
            key = (scan["participant_id"], scan["session"], scan["film"])
            by_hash.setdefault(digest, []).append(key)
    out = {}
    for keys in by_hash.values():
        if len(keys) > 1:
            for k in keys:
                others = ", ".join(" ".join(o) for o in keys if o != k)
                out[k] = [f"raw data identical to {others} (one raw file listed as two scans)"]
    return out


def _time_order(col: pd.Series) -> pd.Series:
    """Sort films and times in study order (neutral before cocaine, pre before post)."""
    order = {"neutral": 0, "cocaine": 1, "pre": 0, "post": 1}
    return col.map(order).fillna(col) if col.name in ("film", "time") else col


def write_tables(tables: Mapping[str, pd.DataFrame], paths: Mapping[str, Path]) -> None:
    for name, path in paths.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tables[name].to_csv(path, float_format="%.6g", **TSV)
