"""Read a Clinica-style BIDS tree into one table of scans, listing every scan it cannot use.

Why: every later stage trusts ``scans.tsv``; problems in the raw data (missing images, broken
TSVs, duplicate or unlabelled sessions) must surface here with a reason, not disappear.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sslad.io import write_tsv
from sslad.labels import DAYS_PER_MONTH

SCAN_COLUMNS = ["participant_id", "session_id", "path", "sex", "age", "days_from_baseline",
                "diagnosis", "diagnosis_raw", "cohort"]
EXCLUDED_COLUMNS = ["participant_id", "session_id", "stage", "file", "reason"]
SESSION_MONTHS = re.compile(r"^ses-M(\d+)$")


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
           strict: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (scans, excluded) for a BIDS tree; in strict mode the first problem raises."""
    bids = Path(bids_dir)
    alias = {k.upper(): v for k, v in aliases.items()}
    scans: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []

    def reject(sub: str, ses: str, file: Path, reason: str) -> None:
        if strict:
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
            images = _t1w_images(bids, sub, ses)
            if not images:
                reject(sub, ses, bids / sub / ses / "anat", "no T1w image")
                continue
            raw_dx = row.get("diagnosis")
            if pd.isna(raw_dx) or str(raw_dx).upper() not in alias:
                reject(sub, ses, sessions_tsv, f"unknown diagnosis {raw_dx!r}")
                continue
            dx = alias[str(raw_dx).upper()]
            if dx is None:
                reject(sub, ses, sessions_tsv, f"diagnosis {raw_dx!r} excluded by cohort.diagnosis_aliases")
                continue
            age = pd.to_numeric(row.get("age"), errors="coerce")
            if pd.isna(age):
                reject(sub, ses, sessions_tsv, "missing age")
                continue
            days = pd.to_numeric(row.get("days_from_baseline"), errors="coerce")
            if pd.isna(days):
                match = SESSION_MONTHS.match(ses)
                if not match:
                    reject(sub, ses, sessions_tsv, "no days_from_baseline and session_id is not ses-M<months>")
                    continue
                days = round(int(match.group(1)) * DAYS_PER_MONTH)
            scans.append({"participant_id": sub, "session_id": ses, "path": str(images[0]),
                          "sex": listed[sub].get("sex"), "age": float(age), "days_from_baseline": int(days),
                          "diagnosis": dx, "diagnosis_raw": raw_dx, "cohort": cohort_name})
    scan_df = pd.DataFrame(scans, columns=SCAN_COLUMNS).sort_values(["participant_id", "days_from_baseline"])
    excl_df = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS).sort_values(["participant_id", "session_id"])
    return scan_df.reset_index(drop=True), excl_df.reset_index(drop=True)


def run(bids_dir: str | Path, aliases: dict[str, str | None], cohort_name: str, strict: bool,
        scans_out: str | Path, excluded_out: str | Path) -> None:
    """Ingest and write ``scans.tsv`` and ``excluded.tsv``."""
    scans, excluded = ingest(bids_dir, aliases, cohort_name, strict)
    for row in excluded.itertuples():
        print(f"excluded {row.participant_id} {row.session_id}: {row.reason} ({row.file})", file=sys.stderr)
    print(f"{len(scans)} scans of {scans['participant_id'].nunique()} participants; {len(excluded)} excluded",
          file=sys.stderr)
    if scans.empty:
        raise CohortError(f"{bids_dir}: no usable scan ({len(excluded)} excluded; see {excluded_out})")
    write_tsv(scans, scans_out)
    write_tsv(excluded, excluded_out)
