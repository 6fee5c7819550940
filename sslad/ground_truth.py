"""What a simulated cohort's split supports: a reader of the simulation's true volumes, per task.

Why: an image model that reads a task at chance, or a convergence flag, says that the model did not
learn; it does not say whether the split held anything to learn. On a simulated cohort the truth is
known: every scan's hippocampal, ventricular and brain volume (``derivatives/simulation/scans.tsv``),
the volumes its image was rendered with. A logistic regression (scikit-learn, classes weighted as the
image models weight them) on the log volumes at the index scan and their annual change since the
first input scan, fitted on the task's training samples and read on its validation and test samples,
is the reference of what the same split supports. Where it reads validation no better than the
schedule baseline (which reads age), the volumes add nothing on that split that the schedule does not
give, and a longer training budget of an image model is unlikely to (sslad.convergence cites it).

It reads exact volumes, not images: a ceiling for a reader of these three volumes, not a bound on an
image model, which sees them through noise and coarse voxels but may see more (shape, other regions).
Samples of a cohort that is not simulated have no truth and are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sslad.cohort import pooled_id
from sslad.io import read_tsv, write_tsv
from sslad.metrics import auc

VOLUMES = ("hippocampus_volume", "ventricles_volume", "brain_volume")
SPLITS = ("train", "val", "test")
# n_<split>: samples with truth; n_without_truth: the task's samples of cohorts that are not simulated
COLUMNS = ["task", *(f"n_{s}" for s in SPLITS), "n_without_truth", "val_auc", "test_auc"]
DAYS_PER_YEAR = 365.25


def truth_path(bids_dir: str | Path) -> Path:
    """Where a simulated BIDS tree keeps its ground truth (sslad.simulate)."""
    return Path(bids_dir) / "derivatives" / "simulation" / "scans.tsv"


def read_truth(cohorts: dict[str, str | Path]) -> pd.DataFrame:
    """Every scan's true log volumes, indexed by (pooled participant id, session), from each simulated
    cohort's BIDS tree ({cohort name: tree})."""
    frames = []
    for name, bids in cohorts.items():
        path = truth_path(bids)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no simulation ground truth for cohort {name!r} (not a simulated cohort?)")
        t = read_tsv(path)
        missing = [c for c in ("participant_id", "session_id", *VOLUMES) if c not in t]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        t["participant_id"] = [pooled_id(name, p) for p in t["participant_id"]]
        frames.append(t)
    truth = pd.concat(frames, ignore_index=True).set_index(["participant_id", "session_id"])
    return np.log(truth[list(VOLUMES)].astype(float))


def features(task: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(features, known): per sample, the index scan's true log volumes and their annual change since
    the first input scan (0 for one input); ``known`` is False where a scan has no truth."""
    x = np.zeros((len(task), 2 * len(VOLUMES)))
    known = np.zeros(len(task), bool)
    for i, row in enumerate(task.itertuples()):
        sessions = str(row.input_sessions).split(";")
        days = [float(d) for d in str(row.input_days).split(";")]
        keys = [(row.participant_id, row.index_session), (row.participant_id, sessions[0])]
        if not all(k in truth.index for k in keys):
            continue
        index, first = (truth.loc[k].to_numpy() for k in keys)
        years = (days[-1] - days[0]) / DAYS_PER_YEAR
        x[i] = np.r_[index, (index - first) / years if years > 0 else np.zeros(len(VOLUMES))]
        known[i] = True
    return x, known


def reference(name: str, task: pd.DataFrame, truth: pd.DataFrame, seed: int = 0) -> dict[str, object]:
    """One task's row (COLUMNS): samples per split with truth, and the reader's validation and test AUC
    (nan where the training samples lack a class, or that split does)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, known = features(task, truth)
    split, y = task["split"].to_numpy(), task["label"].to_numpy(dtype=int)
    row: dict[str, object] = {"task": name}
    row |= {f"n_{s}": int(((split == s) & known).sum()) for s in SPLITS}
    row |= {"n_without_truth": int((~known).sum()), "val_auc": np.nan, "test_auc": np.nan}
    fit = known & (split == "train")
    if np.unique(y[fit]).size < 2:
        return row
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000,
                                                               random_state=seed))
    model.fit(x[fit], y[fit])
    for s in ("val", "test"):
        part = known & (split == s)
        if np.unique(y[part]).size == 2:
            row[f"{s}_auc"] = auc(y[part].astype(bool), model.decision_function(x[part]))
    return row


def run(task_paths: list[str], cohorts: dict[str, str], out: str) -> pd.DataFrame:
    """Write ``out`` (COLUMNS), one row per task table (its name the file's stem)."""
    truth = read_truth(cohorts)
    rows = []
    for path in task_paths:
        task = read_tsv(path)
        missing = [c for c in ("participant_id", "index_session", "input_sessions", "input_days", "label", "split")
                   if c not in task]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        rows.append(reference(Path(path).stem, task, truth))
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_tsv(table, out)
    return table


def val_auc(table: pd.DataFrame | None) -> dict[str, float]:
    """{task: the reader's validation AUC} of a ground_truth.tsv (empty without one), for the tasks whose
    every sample has truth: only there is it read on the same validation samples as the models."""
    if table is None or table.empty:
        return {}
    whole = table[table["n_without_truth"] == 0]
    return {str(t): float(v) for t, v in zip(whole["task"], whole["val_auc"])}


def section(table: pd.DataFrame) -> list[str]:
    """summary.md's lines on the true-volume reader: per task, its validation and test AUC."""
    if table.empty:
        return []
    lines = ["## What the split supports (simulated cohorts)", "",
             "A logistic regression on each sample's true volumes (the simulation's hippocampal, ventricular "
             "and brain volume at the index scan, and their annual change), fitted on the task's training "
             "samples: what a reader of those three volumes makes of the same split. Not a bound on an image "
             "model, which sees them through noise and voxels but may see more; a task it reads at chance "
             "has little in its training samples for any init to find (results/ground_truth.tsv)."
             + (" Samples of cohorts that are not simulated have no truth: those tasks are read on the simulated "
                "samples only." if (table["n_without_truth"] > 0).any() else ""), "",
             "| task | samples train / val / test | validation AUC | test AUC |", "|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.task} | {r.n_train} / {r.n_val} / {r.n_test} | {_num(r.val_auc)} | {_num(r.test_auc)} |")
    return lines + [""]


def _num(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.3f}"
