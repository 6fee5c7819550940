"""How often a cohort of a study's design lets its split carry each task's signal, by cohort size.

Why: summary.md flags a cell whose validation AUC is no better than the schedule baseline's, and on
simulated cohorts cites what a reader of the true volumes makes of the same split
(sslad.ground_truth). Where even that reader reads validation no better than the schedule, an init
is unlikely to clear the flag; whether that is the luck of one cohort or the design's, one run
cannot say. Here many cohorts of the same design (a study config with one simulated cohort, its
``simulate.seed`` varied, never the reported one) go through the manifest's own code (labels,
schedule matching, splits) without rendering an image: per task and cohort size, the training and
validation samples, the true-volume reader's validation and test AUC, the schedule baseline's
validation AUC (sslad.schedule, as its fine-tuning job fits it) and how often the reader beats it on
validation ("clear", over the cohorts where both have a validation AUC).

    python benchmarks/split_support.py --sizes 220 280 340 440 --cohorts 40   # config/validation.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sslad import ground_truth, schedule
from sslad.cohort import EXCLUDED_COLUMNS, pooled_id, resolve_cohorts
from sslad.labels import TASKS
from sslad.manifest import build
from sslad.metrics import auc
from sslad.simulate import draw_cohort, log_volumes
from sslad.stage_settings import merge_config

ROOT = Path(__file__).resolve().parents[1]
REPORTED_SEED = 42  # the validation and demo studies' simulate.seed: never drawn here


def design(cfg: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """(name, simulate settings) of the config's one cohort (sslad.cohort.resolve_cohorts): the design a
    cohort of it is drawn from."""
    cohorts = resolve_cohorts(cfg)
    if len(cohorts) != 1 or cohorts[0]["bids_dir"]:
        raise SystemExit(f"split_support: {source} has {len(cohorts)} cohort(s); it needs exactly one, simulated "
                         "(bids_dir empty), e.g. config/validation.yaml")
    return cohorts[0]["name"], cohorts[0]["simulate"]


def cohort(name: str, sim: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scans, record, truth) of a simulated cohort as `sslad cohort` reads its tree, without images:
    every visit with its diagnosis, the imaged ones as scans, and each scan's true log volumes (as
    :func:`sslad.ground_truth.read_truth` reads them from the rendered tree's scans.tsv)."""
    record, truth = [], []
    for s in draw_cohort(sim):
        pid = pooled_id(name, s.participant_id)
        for visit, (m, d, dx, img) in enumerate(zip(s.months, s.days, s.diagnoses, s.imaged)):
            ses = f"ses-M{m:03d}"
            record.append({"participant_id": pid, "session_id": ses, "days_from_baseline": d, "months": float(m),
                           "diagnosis": dx, "diagnosis_raw": dx, "age": s.age + d / 365.25, "has_image": img,
                           "cohort": name, "sex": s.sex})
            if img:
                volumes = log_volumes(s, visit, sim)
                truth.append({"participant_id": pid, "session_id": ses,
                              **{f"{k}_volume": v for k, v in volumes.items()}})
    record = pd.DataFrame(record)
    scans = record[record["has_image"]].assign(path="x.nii.gz").drop(columns=["months", "has_image"])
    truth = pd.DataFrame(truth).set_index(["participant_id", "session_id"])[list(ground_truth.VOLUMES)]
    return scans.reset_index(drop=True), record.drop(columns="sex"), truth


def support(cfg: dict[str, Any], name: str, sim: dict[str, Any], n_subjects: int, seed: int,
            tasks: list[str]) -> list[dict[str, Any]]:
    """One cohort's rows: per task, its samples, the true-volume reader's AUCs and the schedule's."""
    scans, record, truth = cohort(name, {**sim, "n_subjects": n_subjects, "seed": seed})
    tables = build(scans, record, pd.DataFrame(columns=EXCLUDED_COLUMNS), None,
                   {**cfg["manifest"], "cohort_use": {name: "both"}})
    rows = []
    for task in tasks:
        t = tables[f"tasks/{task}.tsv"]
        reader = ground_truth.reference(task, t, truth)
        parts = {s: t[t["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
        both = all(p["label"].nunique() == 2 for p in parts.values())
        sched = (auc(parts["val"]["label"].astype(bool), schedule.fit_baseline(parts, 0)["val"]) if both
                 else np.nan)
        rows.append({"subjects": n_subjects, "seed": seed, "task": task, "n_train": reader["n_train"],
                     "n_val": reader["n_val"], "truth_val": reader["val_auc"], "truth_test": reader["test_auc"],
                     "schedule_val": sched})
    return rows


def table(rows: pd.DataFrame) -> list[str]:
    """Markdown: per task and size, medians over cohorts and the share where the reader clears (over the
    cohorts where both validation AUCs exist, counted as "read")."""
    read = rows["truth_val"].notna() & rows["schedule_val"].notna()
    rows = rows.assign(read=read, clear=read & (rows["truth_val"] > rows["schedule_val"]))
    lines = ["| task | subjects | cohorts (read) | train / val samples (median) | true volumes: validation / test "
             "(median) | schedule: validation (median) | clear |", "|---|---|---|---|---|---|---|"]
    for (task, n), g in rows.groupby(["task", "subjects"], sort=False):
        share = f"{g['clear'].sum() / g['read'].sum():.0%}" if g["read"].any() else "–"
        lines.append(f"| {task} | {n} | {len(g)} ({g['read'].sum()}) | {g['n_train'].median():.0f} / "
                     f"{g['n_val'].median():.0f} | {g['truth_val'].median():.3f} / {g['truth_test'].median():.3f} | "
                     f"{g['schedule_val'].median():.3f} | {share} |")
    return lines


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "config/validation.yaml"),
                   help="a study config with one simulated cohort, merged over config.yaml (its cohort's "
                        "simulate: settings and its manifest:)")
    p.add_argument("--sizes", type=_positive, nargs="+", default=[220], help="subjects per cohort")
    p.add_argument("--cohorts", type=_positive, default=40, help="cohorts per size")
    p.add_argument("--first-seed", type=int, default=100, help="simulate.seed of the first cohort")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    a = p.parse_args(argv)
    cfg = merge_config(yaml.safe_load((ROOT / "config.yaml").read_text()),
                       yaml.safe_load(Path(a.config).read_text()))
    name, sim = design(cfg, a.config)
    seeds = [s for s in range(a.first_seed, a.first_seed + a.cohorts + 1) if s != REPORTED_SEED][:a.cohorts]
    start, rows = time.time(), []
    for n in a.sizes:
        for seed in seeds:
            rows += support(cfg, name, sim, n, seed, a.tasks)
    print(f"{len(seeds)} cohorts per size, simulate.seed {seeds[0]}-{seeds[-1]} (never {REPORTED_SEED}), "
          f"{a.config}; {time.time() - start:.0f} s\n")
    print("\n".join(table(pd.DataFrame(rows))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
