"""Read a Clinica-style BIDS tree into the clinical record and the table of scans, listing every
scan it cannot use.

Why: every later stage trusts these tables; problems in the raw data (missing images, broken
TSVs, duplicate or unlabelled sessions) must surface here with a reason, not disappear. Two tables,
because labels and inputs need different things: ``record.tsv`` holds every visit with a usable
diagnosis and time, imaged or not (a conversion seen only at a visit without a scan is still a
conversion); ``scans.tsv`` holds the visits with a T1w image, the candidates for model inputs.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sslad.io import read_tsv, write_tsv
from sslad.visit_time import DAYS_PER_MONTH, code_months, schedule_months

SCAN_COLUMNS = ["participant_id", "session_id", "path", "sex", "age", "days_from_baseline",
                "diagnosis", "diagnosis_raw", "cohort"]
RECORD_COLUMNS = ["participant_id", "session_id", "days_from_baseline", "months", "diagnosis", "diagnosis_raw",
                  "age", "has_image", "cohort"]
EXCLUDED_COLUMNS = ["participant_id", "session_id", "stage", "file", "reason"]


COHORT_DEFAULTS = {"bids_dir": "", "use": "both", "strict": False, "simulate": {}}
RUN = re.compile(r"_run-(\d+)_")
# BIDS labels: letters and digits only. Anything else could not form valid file names downstream, and a
# label reaches shell commands, file paths and wildcards (a session "ses-M000$(touch X)" must never run).
PARTICIPANT_LABEL = re.compile(r"sub-[A-Za-z0-9]+")
SESSION_LABEL = re.compile(r"ses-[A-Za-z0-9]+")


class CohortError(ValueError):
    """A problem in the input data, raised in strict mode; the message names the file."""


def convert_single_cohort(cfg: dict[str, Any]) -> str | None:
    """Turn the old single-cohort block (`cohort:` with `simulate:`) into a one-element `cohorts:`
    list, in place, so that configs written before pooled cohorts keep working; returns the warning
    that says how to write it now (None when there was nothing to convert)."""
    old = cfg.pop("cohort", None)
    if old is None:
        return None
    entry = {"name": old.get("name", "simulated"), "bids_dir": old.get("bids_dir", ""),
             "strict": old.get("strict", False)}
    if "diagnosis_aliases" in old:
        entry["diagnosis_aliases"] = old["diagnosis_aliases"]
        cfg.setdefault("diagnosis_aliases", old["diagnosis_aliases"])  # an old config.yaml has no shared map
    cfg["cohorts"] = [entry]
    return ("config key `cohort:` is the old single-cohort form, read as `cohorts: [{name: "
            f"{entry['name']}, bids_dir: {entry['bids_dir']!r}, strict: {str(entry['strict']).lower()}, "
            "diagnosis_aliases: ...}]` (the `simulate:` block applies to it); write it so to silence this")


def _merged(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in new.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def resolve_cohorts(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cohort of a validated config with its defaults filled in: use, strict, bids_dir, its
    diagnosis map (the shared one unless it has its own) and its full simulation settings (the
    shared `simulate:` block updated by its own keys). ValueError for names that could make two
    pooled participant ids equal."""
    cohorts = []
    for entry in cfg["cohorts"]:
        c = {**COHORT_DEFAULTS, "diagnosis_aliases": cfg.get("diagnosis_aliases"), **entry}
        if c["diagnosis_aliases"] is None:
            raise ValueError(f"invalid configuration: cohort {entry['name']!r} has no diagnosis_aliases and the "
                             "config has no shared `diagnosis_aliases:` block")
        # contrast: added with pooled cohorts; a simulate block written before has none
        c["simulate"] = _merged({"contrast": 1.0, **cfg["simulate"]}, entry.get("simulate", {}))
        cohorts.append(c)
    names = [c["name"] for c in cohorts]
    for a in names:
        for b in names:
            if a is not b and b.startswith(a):
                raise ValueError(f"invalid configuration: cohort names {a!r} and {b!r}: one begins with the other, "
                                 f"so sub-{a}<label> and sub-{b}<label> could be the same participant id")
    if len(set(names)) < len(names):
        raise ValueError(f"invalid configuration: cohorts: a name appears twice in {names}")
    if not any(c["use"] != "pretrain" for c in cohorts):
        raise ValueError("invalid configuration: cohorts: no cohort has use both or downstream, so no task has samples")
    return cohorts


def pooled_id(cohort: str, participant: str) -> str:
    """The participant id in the pooled study: the cohort name before the BIDS label (sub-ADNI002S0295),
    still a valid BIDS label, unique across cohorts whose names do not begin with one another."""
    return f"sub-{cohort}{participant.removeprefix('sub-')}"


def clinical_digest(bids_dir: str | Path) -> str:
    """sha256 of what ingestion reads from a BIDS tree: participants.tsv, every sessions.tsv (path and
    bytes) and the list of T1w images (path and size). A rule parameter, so that a table corrected in
    place (whose folder's time stamp does not change) or an added image reruns ingestion."""
    import hashlib

    bids = Path(bids_dir)
    h = hashlib.sha256()
    files = [bids / "participants.tsv", *sorted(bids.glob("sub-*/sub-*_sessions.tsv"))]
    for path in files:
        h.update(str(path.relative_to(bids)).encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"(missing)")
    for image in sorted(bids.glob("sub-*/ses-*/anat/*T1w.nii*")):
        size = image.stat().st_size if image.exists() else -1  # a broken link: ingestion reports it
        h.update(f"{image.relative_to(bids)}\0{size}\0".encode())
    return h.hexdigest()


def _read_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=["", "n/a", "NA", "NaN"])
    except Exception as exc:  # pandas raises many types for a broken file
        raise CohortError(f"{path}: unreadable TSV ({type(exc).__name__}: {exc})") from exc
    if df.shape[1] < 2:
        raise CohortError(f"{path}: unreadable TSV (fewer than two tab-separated columns)")
    return df


def _t1w_images(bids: Path, sub: str, ses: str) -> list[Path]:
    """The session's T1w images (.nii.gz or .nii, any acq-/run- entities), the one to use first.

    Several runs of one session (a repeated acquisition): the lowest run number is used (a file
    without run- counts as run 1), the session's first acquisition, so that the choice does not
    depend on how many repeats a site made; ties (acq- variants, .nii next to .nii.gz) are broken by
    file name. The others are listed as not used."""
    images = [p for p in (bids / sub / ses / "anat").glob(f"{sub}_{ses}_*T1w.nii*")
              if p.name.endswith(("_T1w.nii", "_T1w.nii.gz"))]

    def run(p: Path) -> int:
        found = RUN.search(p.name)
        return int(found.group(1)) if found else 1

    return sorted(images, key=lambda p: (run(p), p.name))


def ingest(bids_dir: str | Path, aliases: dict[str, str | None], cohort_name: str = "bids",
           strict: bool = False, notes: list[str] | None = None,
           diagnosis_required: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (scans, record, excluded) for a BIDS tree; in strict mode the first problem raises.
    ``notes`` (when given) receives one line per visit read in a way worth reporting that excludes
    nothing: a time taken from the visit code, an uncompressed .nii image, an acq- entity.
    ``diagnosis_required=False`` (new participants to score, whose diagnosis is what is predicted)
    keeps a visit without a known diagnosis, its diagnosis "".

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
    listed = dict(zip(participants["participant_id"].astype(str), participants.to_dict("records")))
    on_disk = sorted(p.name for p in bids.glob("sub-*") if p.is_dir())
    for sub in on_disk:
        if sub not in listed:
            for ses_dir in sorted((bids / sub).glob("ses-*")):
                reject(sub, ses_dir.name, participants_tsv, "participant not listed in participants.tsv")
    for sub in sorted(listed):
        sessions_tsv = bids / sub / f"{sub}_sessions.tsv"
        disk_sessions = sorted(p.name for p in (bids / sub).glob("ses-*") if p.is_dir())
        if not PARTICIPANT_LABEL.fullmatch(sub):
            for ses in disk_sessions or ["n/a"]:
                reject(sub, ses, participants_tsv, f"participant label {sub!r} is not a BIDS label "
                       "(sub-<letters and digits>): rename it in the dataset")
            continue
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
            ses = str(row["session_id"])
            if not SESSION_LABEL.fullmatch(ses):
                reject(sub, ses, sessions_tsv, f"session label {ses!r} is not a BIDS label (ses-<letters and "
                       "digits>): rename it in the dataset")
                continue
            if counts[ses] > 1:
                reject(sub, ses, sessions_tsv, "duplicate session_id in sessions.tsv")
                continue
            raw_dx = row.get("diagnosis")
            known = not pd.isna(raw_dx) and str(raw_dx).upper() in alias
            if not known and diagnosis_required:
                reject(sub, ses, sessions_tsv, f"unknown diagnosis {raw_dx!r}")
                continue
            dx = alias[str(raw_dx).upper()] if known else ""
            if dx is None:
                reject(sub, ses, sessions_tsv, f"diagnosis {raw_dx!r} excluded by the diagnosis_aliases")
                continue
            days = pd.to_numeric(row.get("days_from_baseline"), errors="coerce")
            if pd.isna(days):
                code = code_months(ses)
                if code is None:
                    reject(sub, ses, sessions_tsv, "no days_from_baseline and session_id is not ses-M<months>")
                    continue
                days = round(code * DAYS_PER_MONTH)
                if notes is not None:
                    notes.append(f"{sub} {ses}: no days_from_baseline in {sessions_tsv.name}; day {days} from "
                                 "the visit code")
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
            if notes is not None and images and images[0].name.endswith(".nii"):
                notes.append(f"{sub} {ses}: uncompressed image {images[0].name}")
            if notes is not None and images and "_acq-" in images[0].name:
                notes.append(f"{sub} {ses}: acquisition entity in {images[0].name}")
            for other in images[1:]:
                reject(sub, ses, other, f"another T1w image of the session is used: {images[0].name} "
                       "(lowest run, then file name)", problem=False)
            scans.append({"participant_id": sub, "session_id": ses, "path": str(images[0]),
                          "sex": listed[sub].get("sex"), "age": float(age), "days_from_baseline": int(days),
                          "diagnosis": dx, "diagnosis_raw": raw_dx, "cohort": cohort_name})
    scan_df = pd.DataFrame(scans, columns=SCAN_COLUMNS).sort_values(["participant_id", "days_from_baseline"])
    record_df = pd.DataFrame(record, columns=RECORD_COLUMNS).sort_values(["participant_id", "months",
                                                                          "days_from_baseline"])
    excl_df = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS).sort_values(["participant_id", "session_id"])
    return scan_df.reset_index(drop=True), record_df.reset_index(drop=True), excl_df.reset_index(drop=True)


def baseline_counts(record: pd.DataFrame) -> dict[str, int]:
    """Subjects by baseline diagnosis (CN, MCI, AD), from a record sorted by visit as ingest writes it."""
    base = record.drop_duplicates("participant_id")["diagnosis"].value_counts()
    return {dx: int(base.get(dx, 0)) for dx in ("CN", "MCI", "AD")}


def qualify(table: pd.DataFrame, cohort: str) -> pd.DataFrame:
    """A per-cohort table with pooled participant ids (:func:`pooled_id`); the BIDS one is kept in
    ``bids_participant_id`` (the name the cohort's own files use)."""
    out = table.copy()
    out.insert(1, "bids_participant_id", out["participant_id"])
    out["participant_id"] = [pooled_id(cohort, sub) for sub in out["participant_id"]]
    return out


def run(bids_dir: str | Path, aliases: dict[str, str | None], cohort_name: str, strict: bool,
        scans_out: str | Path, record_out: str | Path, excluded_out: str | Path) -> None:
    """Ingest one cohort and write its ``scans.tsv``, ``record.tsv`` and ``excluded.tsv``, with pooled
    participant ids; the log reports every exclusion and every visit read in an unusual way."""
    notes: list[str] = []
    scans, record, excluded = ingest(bids_dir, aliases, cohort_name, strict, notes)
    for row in excluded.itertuples():
        print(f"excluded {row.participant_id} {row.session_id}: {row.reason} ({row.file})", file=sys.stderr)
    for note in notes:
        print(f"note {note}", file=sys.stderr)
    print(f"{cohort_name}: {len(scans)} scans of {scans['participant_id'].nunique()} participants; {len(record)} "
          f"clinical visits ({int((~record['has_image']).sum())} without an image); {len(excluded)} excluded",
          file=sys.stderr)
    baseline = baseline_counts(record)
    absent = [dx for dx in ("CN", "MCI", "AD") if dx not in set(record["diagnosis"])]
    print(f"{cohort_name}: baseline diagnoses " + ", ".join(f"{dx} {n}" for dx, n in baseline.items())
          + (f"; no {' or '.join(absent)} visit: tasks that need it get no samples from this cohort" if absent else ""),
          file=sys.stderr)
    if scans.empty:  # the job's outputs are removed on failure: the exclusions go beside the log's lines
        report = Path(excluded_out).with_name("excluded.no-usable-scan.tsv")
        write_tsv(qualify(excluded, cohort_name), report)
        reasons = excluded["reason"].value_counts().head(3)
        raise CohortError(f"{bids_dir}: no usable scan ({len(excluded)} excluded, listed in {report}; most often: "
                          + "; ".join(f"{n} x {reason}" for reason, n in reasons.items()) + ")")
    Path(excluded_out).with_name("excluded.no-usable-scan.tsv").unlink(missing_ok=True)
    write_tsv(qualify(scans, cohort_name), scans_out)
    write_tsv(qualify(record, cohort_name), record_out)
    write_tsv(qualify(excluded, cohort_name), excluded_out)


OVERLAP_COLUMNS = ["bids_participant_id", "cohorts", "participant_ids"]
COHORT_REPORT_COLUMNS = ["cohort", "use", "participants", "scans", "visits", "baseline_CN", "baseline_MCI",
                         "baseline_AD", "excluded"]


def pool(tables: dict[str, dict[str, pd.DataFrame]],
         uses: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The pooled scans, record and excluded tables of every cohort (``tables[cohort][name]``), one
    row per cohort in ``cohorts`` (counts, baseline diagnoses), and in ``overlap`` every BIDS label
    found in several cohorts: such subjects stay apart (their pooled ids differ), never merged; if
    they are one person, the study counts them twice, which the report makes visible.
    ValueError if two cohorts' pooled ids still coincide."""
    pooled = {name: pd.concat([t[name] for t in tables.values()], ignore_index=True)
              for name in ("scans", "record", "excluded")}
    owners = pooled["record"].drop_duplicates(["cohort", "participant_id"])
    clash = owners[owners.duplicated("participant_id", keep=False)]
    if not clash.empty:
        raise ValueError(f"participant id {clash['participant_id'].iloc[0]} belongs to cohorts "
                         f"{sorted(set(clash['cohort']))}: rename a cohort")
    rows = []
    for label, g in owners.groupby("bids_participant_id", sort=True):
        if g["cohort"].nunique() > 1:
            rows.append({"bids_participant_id": label, "cohorts": ",".join(g["cohort"]),
                         "participant_ids": ",".join(g["participant_id"])})
    report = []
    for cohort, t in tables.items():
        report.append({"cohort": cohort, "use": uses[cohort], "participants": t["record"]["participant_id"].nunique(),
                       "scans": len(t["scans"]), "visits": len(t["record"]),
                       **{f"baseline_{dx}": n for dx, n in baseline_counts(t["record"]).items()},
                       "excluded": len(t["excluded"])})
    return {**pooled, "overlap": pd.DataFrame(rows, columns=OVERLAP_COLUMNS),
            "cohorts": pd.DataFrame(report, columns=COHORT_REPORT_COLUMNS)}


def run_pool(inputs: dict[str, tuple[str, str, str]], uses: dict[str, str], outputs: dict[str, str]) -> None:
    """The pooling job: ``inputs[cohort]`` = its (scans, record, excluded) paths; ``outputs`` names
    the path of scans, record, excluded, cohorts and overlap."""
    if set(inputs) != set(uses):
        raise ValueError(f"cohort tables for {sorted(inputs)}, but settings for {sorted(uses)}")
    tables = {c: dict(zip(("scans", "record", "excluded"), (read_tsv(p) for p in paths)))
              for c, paths in inputs.items()}
    out = pool(tables, uses)
    for row in out["overlap"].itertuples():
        print(f"participant {row.bids_participant_id} is listed in cohorts {row.cohorts}: kept apart as "
              f"{row.participant_ids} (never merged)", file=sys.stderr)
    for row in out["cohorts"].itertuples():
        print(f"{row.cohort} ({row.use}): {row.participants} participants, {row.scans} scans, baseline CN "
              f"{row.baseline_CN} / MCI {row.baseline_MCI} / AD {row.baseline_AD}, {row.excluded} excluded",
              file=sys.stderr)
    for name, table in out.items():
        write_tsv(table, outputs[name])
