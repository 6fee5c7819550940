"""Build the longitudinal manifest: visits, subjects, task tables, splits, pretraining set, label fractions.

Order matters and is fixed here: labels from the whole clinical record first (every visit with a
diagnosis, imaged or not), samples only at usable (QC-passed) scans, then the subject-level split,
stratified on what the tasks need, then fractions of each task's training (and validation) split,
and last the pretraining set, which can only draw on subjects outside the test split.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sslad.cohort import EXCLUDED_COLUMNS
from sslad.io import read_tsv, write_tsv
from sslad.labels import RANK, TASKS, is_reverter, task_samples
from sslad.schedule import confound_table, match_schedule
from sslad.splits import label_fractions, split_subjects
from sslad.visit_time import acquisition_months, chronological

SPLITS = ("train", "val", "test")


def fraction_name(fraction: float) -> str:
    """How a label fraction is spelled in paths and columns: 0.1, 0.2, 1."""
    return f"{fraction:g}"


def trajectory(dx: list[str]) -> str:
    """Stable, converter or reverter, from the full record (used to stratify splits)."""
    if is_reverter(dx):
        return "reverter"
    return "converter" if RANK[dx[-1]] > RANK[dx[0]] else "stable"


def subjects_table(record: pd.DataFrame, usable: set[tuple[str, str]]) -> pd.DataFrame:
    """One row per subject of the clinical record, with its cohort and its trajectory over every visit."""
    rows = []
    for sub, v in chronological(record).groupby("participant_id", sort=True):
        dx = v["diagnosis"].tolist()
        rows.append({"participant_id": sub, "cohort": v["cohort"].iloc[0], "baseline_age": v["age"].iloc[0],
                     "baseline_diagnosis": dx[0],
                     "last_diagnosis": dx[-1], "n_visits": len(dx), "n_imaged_visits": int(v["has_image"].sum()),
                     "n_usable_visits": sum((sub, s) in usable for s in v["session_id"]),
                     "followup_months": float(v["months"].iloc[-1]), "trajectory": trajectory(dx),
                     "reverter": is_reverter(dx)})
    return pd.DataFrame(rows)


def subject_strata(subjects: pd.DataFrame, tasks: dict[str, pd.DataFrame]) -> dict[str, set[str]]:
    """What each subject brings to the split: its cohort x baseline diagnosis x trajectory, and every
    (task, class) it has samples of, pooled and, with several cohorts, within its cohort too (so that
    each cohort's part of a test split holds both classes whenever that cohort allows)."""
    cohort = dict(zip(subjects["participant_id"], subjects["cohort"]))
    several = subjects["cohort"].nunique() > 1
    strata = {sub: {f"base:{cohort[sub]}/{dx}/{traj}"} for sub, dx, traj in
              zip(subjects["participant_id"], subjects["baseline_diagnosis"], subjects["trajectory"])}
    for task, t in tasks.items():
        for sub, label in set(zip(t["participant_id"], t["label"])):
            strata[sub].add(f"{task}:{int(label)}")
            if several:
                strata[sub].add(f"{cohort[sub]}/{task}:{int(label)}")
    return strata


def build(scans: pd.DataFrame, record: pd.DataFrame, cohort_excluded: pd.DataFrame, qc: pd.DataFrame | None,
          cfg: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Every manifest table (visits, subjects, splits, pretraining set, exclusions, the seven task
    tables and the schedule confound of each), keyed by file name.

    With ``index_visits: matched`` each task keeps only samples whose classes share their schedules
    (:func:`sslad.schedule.match_schedule`), before the split; ``all`` keeps every usable index visit."""
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

    subjects = subjects_table(record, usable)
    subjects = subjects[subjects["n_usable_visits"] > 0].reset_index(drop=True)
    unknown = sorted(set(subjects["cohort"]) - set(cfg["cohort_use"]))
    if unknown:
        raise ValueError(f"manifest settings: cohort_use names no use for cohort(s) {', '.join(unknown)}")
    pretrain_only = set(subjects.loc[subjects["cohort"].map(cfg["cohort_use"]) == "pretrain", "participant_id"])
    sex = scans.drop_duplicates("participant_id").set_index("participant_id")["sex"] if "sex" in scans else {}
    tasks, confound = {}, []
    for task in TASKS:
        t = task_samples(record, usable, task, cfg["horizon_months"], cfg["max_inputs"], cfg["exclude_reverters"],
                         cfg["visit_window_months"])
        t = t[~t["participant_id"].isin(pretrain_only)].reset_index(drop=True)
        t = t.assign(sex=t["participant_id"].map(sex))
        confound.append(confound_table(task, t, "all"))
        if cfg["index_visits"] == "matched":
            t = match_schedule(t, task, cfg["match_bin_months"], cfg["seed"])
            confound.append(confound_table(task, t, "matched"))
        tasks[task] = t
    downstream = subjects[~subjects["participant_id"].isin(pretrain_only)]
    splits = split_subjects(subject_strata(downstream, tasks), cfg["split"]["val"], cfg["split"]["test"], cfg["seed"])
    splits = pd.concat([splits, pd.Series("pretrain", index=sorted(pretrain_only), dtype=object)]).sort_index()
    splits = splits.rename("split").rename_axis("participant_id")
    subjects["split"] = subjects["participant_id"].map(splits)
    cohort_of = dict(zip(subjects["participant_id"], subjects["cohort"]))
    split_df = splits.reset_index().assign(cohort=lambda d: d["participant_id"].map(cohort_of))

    out: dict[str, pd.DataFrame] = {}
    visits = chronological(usable_df)
    visits["months"] = acquisition_months(visits["days_from_baseline"])
    visits["split"] = visits["participant_id"].map(splits)
    out["visits.tsv"] = visits[["participant_id", "session_id", "days_from_baseline", "months", "age",
                                "diagnosis", "cohort", "split", "path"] + (["array"] if "array" in visits else [])]
    out["subjects.tsv"] = subjects
    out["schedule.tsv"] = pd.concat(confound, ignore_index=True)
    out["splits.tsv"] = split_df
    for task, t in tasks.items():
        out[f"tasks/{task}.tsv"] = t.assign(cohort=t["participant_id"].map(cohort_of),
                                            split=t["participant_id"].map(splits))
    out["excluded.tsv"] = pd.concat([e for e in excluded if len(e)] or [excluded[0]]).sort_values(
        ["participant_id", "session_id", "stage"])
    return out


def evaluable(t: pd.DataFrame) -> str | None:
    """Why a task table cannot be trained and evaluated (a split without both classes), or None."""
    for split in SPLITS:
        labels = set(t.loc[t["split"] == split, "label"])
        if labels != {0, 1}:
            lacking = "any" if not labels else ("negative" if 1 in labels else "positive")
            n_pos = t.loc[t["label"] == 1, "participant_id"].nunique()
            n_neg = t.loc[t["label"] == 0, "participant_id"].nunique()
            return (f"its {split} split has no {lacking} samples (the cohort has {n_pos} subjects with positive "
                    f"and {n_neg} with negative samples; each split needs one of each)")
    return None


def fraction_table(samples: pd.DataFrame, fraction: float, seed: int, task: str,
                   subsample_validation: bool = True) -> pd.DataFrame:
    """The training (and, when ``subsample_validation``, validation) samples of one label fraction.

    Both are nested, stratified subject subsets drawn the same way (each split from its own seeded
    permutation), so that a model is selected and thresholded on validation labels in proportion
    to the labels it trained on. Depends only on the task table, the fraction and the seed."""
    parts = []
    for split in ("train", "val"):
        rows = samples[samples["split"] == split]
        if split == "train" or subsample_validation:
            key = task if split == "train" else f"{task}/val"
            rows = rows[rows["participant_id"].isin(label_fractions(rows, [fraction], seed, key)[fraction])]
        parts.append(rows)
    return pd.concat(parts)[["participant_id", "index_session", "label", "split"]]


def write_fraction(task_tsv: str, task: str, fraction: float, seed: int, subsample_validation: bool,
                   out: str) -> None:
    """The label_fraction job."""
    table = fraction_table(read_tsv(task_tsv), fraction, seed, task, subsample_validation)
    write_tsv(table, out)
    for split, part in table.groupby("split", sort=False):
        print(f"{task} seed {seed} fraction {fraction_name(fraction)} {split}: {len(part)} samples of "
              f"{part['participant_id'].nunique()} subjects ({int(part['label'].sum())} positive)", file=sys.stderr)


def summary(task: str, t: pd.DataFrame) -> str:
    """Samples and subjects per split and class, for the job log."""
    cells = []
    for split in SPLITS:
        part = t[t["split"] == split]
        n = [part.loc[part["label"] == c, "participant_id"].nunique() for c in (1, 0)]
        cells.append(f"{split}: {int((part['label'] == 1).sum())}+/{int((part['label'] == 0).sum())}- samples, "
                     f"{n[0]}+/{n[1]}- subjects")
    why = evaluable(t)
    note = f"; CANNOT BE EVALUATED: {why}" if why else ""
    lines = [f"{task}: {len(t)} samples of {t['participant_id'].nunique()} subjects ({'; '.join(cells)}){note}"]
    if "cohort" in t and t["cohort"].nunique() > 1:
        for cohort, part in t.groupby("cohort", sort=True):
            test = part[part["split"] == "test"]
            n = [test.loc[test["label"] == c, "participant_id"].nunique() for c in (1, 0)]
            lacking = ("" if min(n) or not max(n) else
                       "; its test part lacks a class: no per-cohort row for it, only a line in summary.md")
            lines.append(f"  {cohort}: {len(part)} samples of {part['participant_id'].nunique()} subjects, "
                         f"test {n[0]}+/{n[1]}- subjects{lacking}")
    return "\n".join(lines)


def pretrain_set(visits: pd.DataFrame, pretrain_splits: list[str],
                 exclude_cohorts: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """The scans self-supervised pretraining may use: those of visits.tsv in ``pretrain_splits``
    (never test) or of a pretraining-only cohort (split "pretrain"), none of ``exclude_cohorts``
    (the downstream-only ones). A job of its own, so that changing the splits it draws on reruns
    pretraining and what follows it, never the task tables and the fine-tuning of scratch."""
    if "test" in pretrain_splits:
        raise ValueError("manifest.pretrain_splits must never include 'test'")
    chosen = visits[visits["split"].isin([*pretrain_splits, "pretrain"])]
    if "cohort" in chosen:
        chosen = chosen[~chosen["cohort"].isin(exclude_cohorts)]
    return chosen[["participant_id", "session_id", "days_from_baseline"]].reset_index(drop=True)


def fold_tables(tables: dict[str, pd.DataFrame], heldout: str) -> dict[str, pd.DataFrame]:
    """The tables of one leave-one-cohort-out fold (visits, splits and the task tables): every
    subject of ``heldout`` is test; the other cohorts' val subjects keep validating (their stratified
    split) and all their other subjects train (none of them is tested in this fold). As split
    "test", the held-out cohort is also kept out of pretraining (pretrain_set) and refused by it
    (sslad.pretrain_data)."""
    splits = tables["splits.tsv"]
    if heldout not in set(splits["cohort"]):
        raise ValueError(f"held-out cohort {heldout!r} has no subject in splits.tsv (cohorts: "
                         f"{sorted(set(splits['cohort']))})")
    if (splits.loc[splits["cohort"] == heldout, "split"] == "pretrain").any():
        raise ValueError(f"cohort {heldout!r} is used for pretraining only: it cannot be held out for testing")
    fold = splits["split"].where(splits["split"] != "test", "train")
    fold = fold.where(splits["cohort"] != heldout, "test")
    split_of = dict(zip(splits["participant_id"], fold))
    out = {"splits.tsv": splits.assign(split=fold),
           "visits.tsv": tables["visits.tsv"].assign(split=lambda d: d["participant_id"].map(split_of))}
    for name, t in tables.items():
        if name.startswith("tasks/"):
            t = t.assign(split=t["participant_id"].map(split_of))
            out[name] = t[t["split"].isin(SPLITS)].reset_index(drop=True)
    return out


def run_fold(inputs: dict[str, str], heldout: str, outputs: dict[str, str]) -> None:
    """The fold job: the pooled manifest's visits, splits and task tables (``inputs``, named as
    :func:`output_name` names them) -> the fold's, at the same names in ``outputs``."""
    if set(inputs) != set(outputs):
        raise ValueError(f"fold tables: inputs {sorted(inputs)}, outputs {sorted(outputs)}")
    names = {name: table_of(name) for name in inputs}
    tables = fold_tables({rel: read_tsv(inputs[name]) for name, rel in names.items()}, heldout)
    for name, rel in names.items():
        write_tsv(tables[rel], Path(outputs[name]))
    n = tables["splits.tsv"]["split"].value_counts()
    print(f"held out {heldout}: " + ", ".join(f"{k} {n.get(k, 0)}" for k in (*SPLITS, "pretrain"))
          + " subjects", file=sys.stderr)
    for name, rel in names.items():
        if rel.startswith("tasks/"):
            print(summary(rel.removeprefix("tasks/").removesuffix(".tsv"), tables[rel]), file=sys.stderr)


def output_name(table: str) -> str:
    """The name a caller gives a table's path: visits, subjects, splits, excluded, task_<task>."""
    return table.removesuffix(".tsv").replace("tasks/", "task_")


def table_of(name: str) -> str:
    """The table an :func:`output_name` names (task_dx_cn_ad -> tasks/dx_cn_ad.tsv)."""
    return ("tasks/" + name.removeprefix("task_") if name.startswith("task_") else name) + ".tsv"


def run(scans_tsv: str, record_tsv: str, cohort_excluded_tsv: str, qc_tsv: str | None, outputs: dict[str, str],
        cfg: dict[str, Any]) -> None:
    """The manifest job: read the inputs, write every table atomically to the path ``outputs`` gives
    it (keys: :func:`output_name`); the caller names every path, so nothing is written unannounced."""
    qc = read_tsv(qc_tsv) if qc_tsv else None
    tables = build(read_tsv(scans_tsv), read_tsv(record_tsv), read_tsv(cohort_excluded_tsv), qc, cfg)
    names = {output_name(rel): rel for rel in tables}
    if set(outputs) != set(names):
        raise ValueError(f"manifest outputs: missing {sorted(set(names) - set(outputs))}, "
                         f"unknown {sorted(set(outputs) - set(names))}")
    for name, rel in names.items():
        write_tsv(tables[rel], Path(outputs[name]))
    splits = tables["splits.tsv"]["split"].value_counts()
    print(f"{len(tables['visits.tsv'])} usable scans of {len(tables['subjects.tsv'])} subjects; split "
          + ", ".join(f"{k} {splits.get(k, 0)}" for k in SPLITS)
          + f"; {len(tables['excluded.tsv'])} excluded",
          file=sys.stderr)
    for task in TASKS:
        print(summary(task, tables[f"tasks/{task}.tsv"]), file=sys.stderr)
    print(schedule_report(tables["schedule.tsv"]), file=sys.stderr)


def schedule_report(confound: pd.DataFrame) -> str:
    """The schedule confound for the log: per task and sample set, each schedule feature's AUC alone
    against its limit (schedule.tsv)."""
    lines = ["AUC of each schedule feature alone (either direction; limit max(0.65, 0.5 + 2.5 null SE)):"]
    for (task, selection), part in confound.groupby(["task", "samples"], sort=False):
        cells = ", ".join(f"{r.feature} {r.auc:.3f}{' CONFOUNDED' if r.confounded else ''}" for r in part.itertuples())
        first = part.iloc[0]
        lines.append(f"  {task} {selection} ({first['n_pos']}+/{first['n_neg']}- samples, limit {first['limit']:.3f}): "
                     f"{cells}")
    return "\n".join(lines)
