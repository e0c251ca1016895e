"""Study design and planted truth of the synthetic twin.

Everything here is drawn from one study-level random stream seeded by ``twin.seed``, is
cheap (milliseconds) and is therefore called when the Snakemake DAG is built: it defines the
participants, sessions and scans the workflow will find on disk. The per-participant
generator (``twin.generate``) draws its own stream from :func:`participant_rng`, so a
participant's files do not depend on which other participants are generated or in which order.

Planted effects (defaults in config/config.yaml, following the paper's findings):
- Glu at baseline lower in CUD by ``glu_group_d`` between-participant SDs;
- Glu change from neutral to cocaine film: ``glu_film_pct`` per group (CUD up, HC slightly
  down); NAC changes nothing unless ``glu_nac_pct`` is set;
- craving (VAS 0-100) rises after the cocaine film in CUD only, partly coupled to the
  participant's Glu response (``craving.glu_coupling``).
Concentrations are molal (mmol/kg tissue water), the quantity quantification recovers.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

FILMS = ("neutral", "cocaine")
TIMES = ("pre", "post")


@dataclass(frozen=True)
class Design:
    participants: pd.DataFrame  # one row per participant, demographics
    sessions: pd.DataFrame  # participant_id, session, drug, period
    scans: pd.DataFrame  # participant_id, session, film, planted quality, voxel placement
    concentrations: pd.DataFrame  # participant_id, session, film, metabolite, conc_molal
    craving: pd.DataFrame  # participant_id, group, session, drug, period, film, time, vas


def participant_ids(n_cud: int, n_hc: int) -> list[tuple[str, str]]:
    """[(participant_id, group)] in sheet order: CUD first, then HC."""
    return [(f"sub-cud{i:02d}", "CUD") for i in range(1, n_cud + 1)] + [
        (f"sub-hc{i:02d}", "HC") for i in range(1, n_hc + 1)
    ]


def participant_rng(seed: int, participant_id: str, stream: str) -> np.random.Generator:
    """Independent, order-free random stream of one participant (crc32 keeps it stable
    across Python processes, unlike ``hash``)."""
    key = [int(seed), zlib.crc32(participant_id.encode()), zlib.crc32(stream.encode())]
    return np.random.default_rng(key)


def _clipped_normal(rng, mean, sd, lo, hi, size=None):
    return np.clip(rng.normal(mean, sd, size), lo, hi)


def _demographics(rng: np.random.Generator, group: str, cfg: Mapping) -> dict:
    d = cfg["demographics"][group]
    row = {
        "age": int(round(_clipped_normal(rng, *d["age"], 18, 60))),
        "sex": "F" if rng.random() < d["female_fraction"] else "M",
        "education_years": int(round(_clipped_normal(rng, *d["education_years"], 8, 20))),
        "cigarettes_per_day": (
            int(round(_clipped_normal(rng, *d["cigarettes_per_day"], 1, 40)))
            if rng.random() < d["smoker_fraction"]
            else 0
        ),
    }
    if group == "CUD":
        # log-normal grams/week with the configured arithmetic mean and coefficient of variation
        mean, cv = d["cocaine_g_per_week"]
        s2 = np.log1p(cv**2)
        row["cocaine_g_per_week"] = round(float(rng.lognormal(np.log(mean) - s2 / 2, s2**0.5)), 2)
        row["cocaine_years"] = int(round(_clipped_normal(rng, *d["cocaine_years"], 1, 30)))
    else:
        row["cocaine_g_per_week"] = np.nan
        row["cocaine_years"] = 0
    return row


def study_design(cfg: Mapping) -> Design:
    """The whole twin study from the ``twin`` config block (see config/config.yaml)."""
    rng = np.random.default_rng([int(cfg["seed"]), 0])
    ids = participant_ids(int(cfg["n_cud"]), int(cfg["n_hc"]))
    eff = cfg["effects"]
    conc_cfg = cfg["concentrations_molal"]
    q = cfg["quality"]
    vox = cfg["voxel"]

    participants, sessions, scans, conc_rows, craving = [], [], [], [], []
    # balanced, randomised crossover order for CUD: half start with NAC
    n_cud = int(cfg["n_cud"])
    nac_first = rng.permutation(np.arange(n_cud) < (n_cud + 1) // 2)
    glu_mean, glu_sd = conc_cfg["Glu"]
    glu_sd_abs = glu_mean * glu_sd

    for i, (pid, group) in enumerate(ids):
        participants.append(
            {"participant_id": pid, "group": group, **_demographics(rng, group, cfg)}
        )
        if group == "CUD":
            drugs = ("nac", "placebo") if nac_first[i] else ("placebo", "nac")
        else:
            drugs = ("none",)
        # participant-level true concentrations (random intercepts, log-normal-ish via sd frac)
        base = {}
        for met, (mean, sd_frac) in conc_cfg.items():
            base[met] = mean * (1.0 + sd_frac * rng.standard_normal())
        if group == "CUD":
            base["Glu"] -= float(eff["glu_group_d"]) * glu_sd_abs
        film_pct = float(eff["glu_film_pct"][group]) + float(eff["glu_film_sd_pct"]) * float(
            rng.standard_normal()
        )
        crav = cfg["craving"]
        crav_base = float(_clipped_normal(rng, *crav["baseline"][group], 0, 100))
        for period, drug in enumerate(drugs, start=1):
            ses = f"ses-{period}"
            sessions.append({"participant_id": pid, "session": ses, "drug": drug, "period": period})
            session_shift = float(eff["session_sd_pct"]) * float(rng.standard_normal())
            nac = float(eff["glu_nac_pct"]) if drug == "nac" else 0.0
            centre = np.asarray(vox["mni_centre_mm"], float) + rng.normal(
                0, float(vox["jitter_mm"]), 3
            )
            ses_glu = {}
            for film in FILMS:
                snr = float(_clipped_normal(rng, q["snr_mean"], q["snr_sd"], *q["snr_range"]))
                lw = float(
                    _clipped_normal(
                        rng, q["linewidth_mean_hz"], q["linewidth_sd_hz"], *q["linewidth_range_hz"]
                    )
                )
                scans.append(
                    {
                        "participant_id": pid,
                        "group": group,
                        "session": ses,
                        "drug": drug,
                        "period": period,
                        "film": film,
                        "snr": round(snr, 3),
                        "linewidth_hz": round(lw, 3),
                        # BOLD-like T2* change during the cocaine film (no random draw)
                        "bold_linewidth_hz": float(
                            (eff.get("film_linewidth_hz") or {}).get(group, 0.0)
                            if film == "cocaine" else 0.0
                        ),
                        "voxel_mni_x": round(float(centre[0]), 3),
                        "voxel_mni_y": round(float(centre[1]), 3),
                        "voxel_mni_z": round(float(centre[2]), 3),
                    }
                )
                for met, value in base.items():
                    pct = session_shift + float(eff["scan_sd_pct"]) * float(rng.standard_normal())
                    if met == "Glu":
                        pct += nac + (film_pct if film == "cocaine" else 0.0)
                    c = max(value * (1.0 + pct / 100.0), 0.0)
                    if met == "Glu":
                        ses_glu[film] = c
                    conc_rows.append(
                        {
                            "participant_id": pid,
                            "session": ses,
                            "film": film,
                            "metabolite": met,
                            "conc_molal": round(c, 6),
                        }
                    )
            # craving before/after each film; the cocaine-film rise couples to Glu's response
            glu_resp_pct = 100.0 * (ses_glu["cocaine"] / ses_glu["neutral"] - 1.0)
            level = crav_base + float(crav["session_sd"]) * float(rng.standard_normal())
            for film in FILMS:
                mean, sd = crav["film_change"][group][film]
                change = mean + sd * float(rng.standard_normal())
                if film == "cocaine" and group == "CUD":
                    change += float(crav["glu_coupling"]) * glu_resp_pct
                    change += float(crav["nac_change"]) if drug == "nac" else 0.0
                pre = float(np.clip(level + crav["noise_sd"] * rng.standard_normal(), 0, 100))
                post = float(np.clip(pre + change, 0, 100))
                for time, vas in zip(TIMES, (pre, post), strict=True):
                    craving.append(
                        {
                            "participant_id": pid,
                            "group": group,
                            "session": ses,
                            "drug": drug,
                            "period": period,
                            "film": film,
                            "time": time,
                            "vas": int(round(vas)),
                        }
                    )
                level = post

    return Design(
        participants=pd.DataFrame(participants),
        sessions=pd.DataFrame(sessions),
        scans=pd.DataFrame(scans),
        concentrations=pd.DataFrame(conc_rows),
        craving=pd.DataFrame(craving),
    )


def raw_paths(participant_id: str, session: str, film: str, *, mode: str, vendor: str) -> dict:
    """Raw-file paths of one scan relative to the raw folder, as scans.tsv lists them.

    Philips exports are SPAR/SDAT pairs (scans.tsv names the SDAT; its SPAR sits beside it),
    Siemens exports RDA files; classic mode adds a separate water reference (``_mrsref``).
    """
    stem = f"{participant_id}/{session}/mrs/{participant_id}_{session}_task-{film}"
    ext = ".SDAT" if vendor == "philips" else ".rda"
    return {
        "acq": "mc" if mode == "mc" else "ws",
        "mrs": f"{stem}_svs{ext}",
        "water": f"{stem}_mrsref{ext}" if mode == "classic" else "",
    }


def mm_participants(cfg: Mapping) -> list[str]:
    """The participants with a metabolite-nulled (MM) acquisition in session 1: the first
    ``macromolecules.nulled_scans`` HC participants (CUD if there are too few HC), none when
    the planted MM is the basis set's own (model ``basis``)."""
    mm = cfg.get("macromolecules") or {}
    if mm.get("model", "basis") == "basis":
        return []
    ids = participant_ids(int(cfg["n_cud"]), int(cfg["n_hc"]))
    ordered = [p for p, g in ids if g == "HC"] + [p for p, g in ids if g == "CUD"]
    return ordered[: int(mm.get("nulled_scans", 0))]


def mm_raw_paths(participant_id: str, *, vendor: str) -> dict:
    """Raw files of a participant's metabolite-nulled acquisition (water-suppressed, with
    its own water reference), relative to the raw folder."""
    stem = f"{participant_id}/ses-1/mrs/{participant_id}_ses-1_acq-mmnull"
    ext = ".SDAT" if vendor == "philips" else ".rda"
    return {"acq": "ws", "mrs": f"{stem}_svs{ext}", "water": f"{stem}_mrsref{ext}"}


def t1_dicom_dir(participant_id: str) -> str:
    """The participant's T1 DICOM series (one per participant, acquired in session 1)."""
    return f"{participant_id}/ses-1/anat/{participant_id}_ses-1_T1w"


def scan_sheet(design: Design, cfg: Mapping) -> pd.DataFrame:
    """scans.tsv of the twin: one row per MRS scan with its raw files."""
    rows = []
    for s in design.scans.itertuples():
        paths = raw_paths(
            s.participant_id, s.session, s.film, mode=cfg["mode"], vendor=cfg["vendor"]
        )
        rows.append(
            {
                "participant_id": s.participant_id,
                "session": s.session,
                "film": s.film,
                **paths,
                "t1w": t1_dicom_dir(s.participant_id),
            }
        )
    return pd.DataFrame(rows)
