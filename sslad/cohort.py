"""Read a Clinica-style BIDS tree into the clinical record and the table of scans, listing every
scan it cannot use.

Why: every later stage trusts these tables; problems in the raw data (missing images, broken
TSVs, duplicate or unlabelled sessions) must surface here with a reason, not disappear. Two tables,
because labels and inputs need different things: ``record.tsv`` holds every visit with a usable
diagnosis and time, imaged or not (a conversion seen only at a visit without a scan is still a
conversion); ``scans.tsv`` holds the visits with a T1w image, the candidates for model inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sslad.io import write_tsv
from sslad.visit_time import DAYS_PER_MONTH, code_months, schedule_months

SCAN_COLUMNS = ["participant_id", "session_id", "path", "sex", "age", "days_from_baseline",
                "diagnosis", "diagnosis_raw", "cohort"]
RECORD_COLUMNS = ["participant_id", "session_id", "days_from_baseline", "months", "diagnosis", "diagnosis_raw",
                  "age", "has_image", "cohort"]
EXCLUDED_COLUMNS = ["participant_id", "session_id", "stage", "file", "reason"]


class CohortError(ValueError):
    """A problem in the input data, raised in strict mode; the message names the file."""


def _read_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=["", "n/a", "NA", "NaN"])
    except Exception as exc:  # pandas raises many types for a broken file
        raise CohortError(f"{path}: unreadable TSV ({type(exc).__name__}: {exc})") from exc
    if df.shape[1] < 2:
        raise CohortError(f"{path}: unreadable TSV (fewer than two tab-separated columns)")
    return df


def _t1w_images(bids: Path, sub: str, ses: str) -> list[Path]:
    return sorted((bids / sub / ses / "anat").glob(f"{sub}_{ses}*_T1w.nii*"))


def ingest(bids_dir: str | Path, aliases: dict[str, str | None], cohort_name: str = "bids",
           strict: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (scans, record, excluded) for a BIDS tree; in strict mode the first problem raises.

    A visit without an image is not a problem of the data (ADNI has many): it joins the record and
    is listed in ``excluded`` as a scan that cannot be an input, even in strict mode. A missing age
    is kept as missing: nothing downstream needs it, and it must not remove a diagnosis.
    """
    bids = Path(bids_dir)
    alias = {k.upper(): v for k, v in aliases.items()}
    scans: list[dict[str, Any]] = []
    record: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []

    def reject(sub: str, ses: str, file: Path, reason: str, problem: bool = True) -> None:
        if strict and problem:
            raise CohortError(f"{file}: {reason} ({sub} {ses})")
        excluded.append({"participant_id": sub, "session_id": ses, "stage": "cohort",
                         "file": str(file), "reason": reason})

    participants_tsv = bids / "participants.tsv"
    if not participants_tsv.is_file():
        raise CohortError(f"{participants_tsv}: missing; is {bids} a BIDS dataset?")
    participants = _read_table(participants_tsv)
    if "participant_id" not in participants:
        raise CohortError(f"{participants_tsv}: no participant_id column")
    listed = dict(zip(participants["participant_id"], participants.to_dict("records")))
    on_disk = sorted(p.name for p in bids.glob("sub-*") if p.is_dir())
    for sub in on_disk:
        if sub not in listed:
            for ses_dir in sorted((bids / sub).glob("ses-*")):
                reject(sub, ses_dir.name, participants_tsv, "participant not listed in participants.tsv")
    for sub in sorted(listed):
        sessions_tsv = bids / sub / f"{sub}_sessions.tsv"
        disk_sessions = sorted(p.name for p in (bids / sub).glob("ses-*") if p.is_dir())
        try:
            if not sessions_tsv.is_file():
                raise CohortError(f"{sessions_tsv}: missing")
            sessions = _read_table(sessions_tsv)
            if "session_id" not in sessions:
                raise CohortError(f"{sessions_tsv}: no session_id column")
        except CohortError as exc:
            if strict:
                raise
            for ses in disk_sessions or ["n/a"]:
                reject(sub, ses, sessions_tsv, str(exc).removeprefix(f"{sessions_tsv}: "))
            continue
        counts = sessions["session_id"].value_counts()
        for ses in disk_sessions:
            if ses not in counts:
                reject(sub, ses, sessions_tsv, "session on disk but not listed in sessions.tsv")
        for row in sessions.to_dict("records"):
            ses = row["session_id"]
            if counts[ses] > 1:
                reject(sub, ses, sessions_tsv, "duplicate session_id in sessions.tsv")
                continue
            raw_dx = row.get("diagnosis")
            if pd.isna(raw_dx) or str(raw_dx).upper() not in alias:
                reject(sub, ses, sessions_tsv, f"unknown diagnosis {raw_dx!r}")
                continue
            dx = alias[str(raw_dx).upper()]
            if dx is None:
                reject(sub, ses, sessions_tsv, f"diagnosis {raw_dx!r} excluded by cohort.diagnosis_aliases")
                continue
            days = pd.to_numeric(row.get("days_from_baseline"), errors="coerce")
            if pd.isna(days):
                code = code_months(ses)
                if code is None:
                    reject(sub, ses, sessions_tsv, "no days_from_baseline and session_id is not ses-M<months>")
                    continue
                days = round(code * DAYS_PER_MONTH)
            age = pd.to_numeric(row.get("age"), errors="coerce")
            images = _t1w_images(bids, sub, ses)
            visit = {"participant_id": sub, "session_id": ses, "days_from_baseline": int(days),
                     "months": float(schedule_months([ses], [days])[0]), "diagnosis": dx, "diagnosis_raw": raw_dx,
                     "age": float(age), "has_image": bool(images), "cohort": cohort_name}
            record.append(visit)
            if not images:
                reject(sub, ses, bids / sub / ses / "anat",
                       "no T1w image (clinical visit: its diagnosis counts for labels)", problem=False)
                continue
            scans.append({"participant_id": sub, "session_id": ses, "path": str(images[0]),
                          "sex": listed[sub].get("sex"), "age": float(age), "days_from_baseline": int(days),
                          "diagnosis": dx, "diagnosis_raw": raw_dx, "cohort": cohort_name})
    scan_df = pd.DataFrame(scans, columns=SCAN_COLUMNS).sort_values(["participant_id", "days_from_baseline"])
    record_df = pd.DataFrame(record, columns=RECORD_COLUMNS).sort_values(["participant_id", "months",
                                                                          "days_from_baseline"])
    excl_df = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS).sort_values(["participant_id", "session_id"])
    return scan_df.reset_index(drop=True), record_df.reset_index(drop=True), excl_df.reset_index(drop=True)


def run(bids_dir: str | Path, aliases: dict[str, str | None], cohort_name: str, strict: bool,
        scans_out: str | Path, record_out: str | Path, excluded_out: str | Path) -> None:
    """Ingest and write ``scans.tsv``, ``record.tsv`` and ``excluded.tsv``."""
    scans, record, excluded = ingest(bids_dir, aliases, cohort_name, strict)
    for row in excluded.itertuples():
        print(f"excluded {row.participant_id} {row.session_id}: {row.reason} ({row.file})", file=sys.stderr)
    print(f"{len(scans)} scans of {scans['participant_id'].nunique()} participants; {len(record)} clinical visits "
          f"({int((~record['has_image']).sum())} without an image); {len(excluded)} excluded", file=sys.stderr)
    if scans.empty:
        raise CohortError(f"{bids_dir}: no usable scan ({len(excluded)} excluded; see {excluded_out})")
    write_tsv(scans, scans_out)
    write_tsv(record, record_out)
    write_tsv(excluded, excluded_out)
