"""Build the longitudinal manifest: visits, subjects, splits, pretraining set, task tables, label fractions.

Order matters and is fixed here: labels from the whole record first, then the subject-level split,
then the QC filter on model inputs, then fractions of each task's training split, and last the
pretraining set, which can only draw on subjects outside the test split.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sslad.cohort import EXCLUDED_COLUMNS
from sslad.io import read_tsv, write_tsv
from sslad.labels import RANK, is_reverter, task_samples, visit_months
from sslad.splits import label_fractions, split_subjects


def fraction_name(fraction: float) -> str:
    """How a label fraction is spelled in paths and columns: 0.1, 0.2, 1."""
    return f"{fraction:g}"


def trajectory(dx: list[str]) -> str:
    """Stable, converter or reverter, from the full record (used to stratify splits)."""
    if is_reverter(dx):
        return "reverter"
    return "converter" if RANK[dx[-1]] > RANK[dx[0]] else "stable"


def subjects_table(scans: pd.DataFrame, usable: set[tuple[str, str]]) -> pd.DataFrame:
    rows = []
    for sub, v in scans.sort_values(["participant_id", "days_from_baseline"]).groupby("participant_id"):
        dx = v["diagnosis"].tolist()
        n_ok = sum((sub, s) in usable for s in v["session_id"])
        rows.append({"participant_id": sub, "sex": v["sex"].iloc[0], "baseline_age": v["age"].iloc[0],
                     "baseline_diagnosis": dx[0], "last_diagnosis": dx[-1], "n_visits": len(dx),
                     "n_usable_visits": n_ok, "followup_months": int(visit_months(v["days_from_baseline"])[-1]),
                     "trajectory": trajectory(dx), "reverter": is_reverter(dx)})
    return pd.DataFrame(rows)


def build(scans: pd.DataFrame, cohort_excluded: pd.DataFrame, qc: pd.DataFrame | None,
          cfg: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The study-wide tables (visits, subjects, splits, pretraining set, exclusions), keyed by file
    name. Task tables are built from them by ``task_table``, one job per task, so that a task
    setting (horizon, inputs) reruns those and never the pretraining that reads pretrain.tsv."""
    excluded = [cohort_excluded[EXCLUDED_COLUMNS]]
    if qc is not None:
        qc = qc.astype({"qc_pass": str})
        failed = qc[qc["qc_pass"].str.lower() != "true"]
        excluded.append(pd.DataFrame({"participant_id": failed["participant_id"], "session_id": failed["session_id"],
                                      "stage": "qc", "file": failed.get("file", ""),
                                      "reason": failed["qc_reason"]}))
        keep = ["participant_id", "session_id"] + (["array"] if "array" in qc else [])
        usable_df = scans.merge(qc[qc["qc_pass"].str.lower() == "true"][keep])
        missing = scans.merge(qc[["participant_id", "session_id"]], how="left", indicator=True)
        missing = missing[missing["_merge"] == "left_only"]
        excluded.append(pd.DataFrame({"participant_id": missing["participant_id"],
                                      "session_id": missing["session_id"], "stage": "qc", "file": "",
                                      "reason": "no QC result"}))
    else:
        usable_df = scans
    usable = set(zip(usable_df["participant_id"], usable_df["session_id"]))

    subjects = subjects_table(scans, usable)
    subjects = subjects[subjects["n_usable_visits"] > 0].reset_index(drop=True)
    strata = pd.Series((subjects["baseline_diagnosis"] + "/" + subjects["trajectory"]).values,
                       index=subjects["participant_id"])
    splits = split_subjects(strata, cfg["split"]["val"], cfg["split"]["test"], cfg["seed"])
    subjects["split"] = subjects["participant_id"].map(splits)
    split_df = splits.rename_axis("participant_id").reset_index()

    out: dict[str, pd.DataFrame] = {}
    visits = usable_df.sort_values(["participant_id", "days_from_baseline"]).copy()
    visits["months"] = visit_months(visits["days_from_baseline"])
    visits["split"] = visits["participant_id"].map(splits)
    out["visits.tsv"] = visits[["participant_id", "session_id", "days_from_baseline", "months", "age",
                                "diagnosis", "split", "path"] + (["array"] if "array" in visits else [])]
    out["subjects.tsv"] = subjects
    out["splits.tsv"] = split_df
    pretrain = visits[visits["split"].isin(cfg["pretrain_splits"])]
    out["pretrain.tsv"] = pretrain[["participant_id", "session_id", "days_from_baseline"]]

    out["excluded.tsv"] = pd.concat([e for e in excluded if len(e)] or [excluded[0]]).sort_values(
        ["participant_id", "session_id", "stage"])
    return out


def task_table(scans: pd.DataFrame, visits: pd.DataFrame, splits: pd.DataFrame, task: str,
               cfg: dict[str, Any]) -> pd.DataFrame:
    """One task's samples: labels from the whole record (``scans``), inputs from the usable scans
    (``visits``), the split of each subject."""
    usable = set(zip(visits["participant_id"], visits["session_id"]))
    samples = task_samples(scans, usable, task, cfg["horizon_months"], cfg["max_inputs"], cfg["exclude_reverters"])
    samples["split"] = samples["participant_id"].map(splits.set_index("participant_id")["split"])
    return samples


def fraction_table(samples: pd.DataFrame, fraction: float, seed: int, task: str) -> pd.DataFrame:
    """The training samples of one label fraction. Depends only on the task table, the fraction and
    the seed, so each subset is its own job and adding a seed or a fraction touches no other file."""
    train = samples[samples["split"] == "train"]
    chosen = label_fractions(train, [fraction], seed, task)[fraction]
    return train[train["participant_id"].isin(chosen)][["participant_id", "index_session", "label"]]


def write_fraction(task_tsv: str, task: str, fraction: float, seed: int, out: str) -> None:
    table = fraction_table(read_tsv(task_tsv), fraction, seed, task)
    write_tsv(table, out)
    print(f"{task} seed {seed} fraction {fraction_name(fraction)}: {len(table)} training samples of "
          f"{table['participant_id'].nunique()} subjects ({int(table['label'].sum())} positive)", file=sys.stderr)


def summary(task: str, t: pd.DataFrame) -> str:
    """Counts per split, for the job log."""
    counts = t.groupby(["split", "label"]).size().unstack(fill_value=0)
    cells = ", ".join(f"{s}: {int(r.get(1, 0))}+/{int(r.get(0, 0))}-" for s, r in counts.iterrows())
    return f"{task}: {len(t)} samples of {t['participant_id'].nunique()} subjects ({cells})"


def run(scans_tsv: str, cohort_excluded_tsv: str, qc_tsv: str | None, out_dir: str, cfg: dict[str, Any]) -> None:
    """The manifest job: read the inputs, write the study-wide tables atomically under ``out_dir``."""
    qc = read_tsv(qc_tsv) if qc_tsv else None
    tables = build(read_tsv(scans_tsv), read_tsv(cohort_excluded_tsv), qc, cfg)
    for rel, df in tables.items():
        write_tsv(df, Path(out_dir) / rel)
    splits = tables["splits.tsv"]["split"].value_counts()
    print(f"{len(tables['visits.tsv'])} usable scans of {len(tables['subjects.tsv'])} subjects; split "
          + ", ".join(f"{k} {splits.get(k, 0)}" for k in ("train", "val", "test"))
          + f"; {len(tables['pretrain.tsv'])} scans for pretraining; {len(tables['excluded.tsv'])} excluded",
          file=sys.stderr)


def write_task(scans_tsv: str, visits_tsv: str, splits_tsv: str, task: str, cfg: dict[str, Any], out: str) -> None:
    """The task_table job."""
    t = task_table(read_tsv(scans_tsv), read_tsv(visits_tsv), read_tsv(splits_tsv), task, cfg)
    write_tsv(t, out)
    print(summary(task, t), file=sys.stderr)
