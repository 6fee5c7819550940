"""Task labels from each subject's whole longitudinal record (the seven tasks of DESIGN.md).

Why a module of its own: label semantics are where longitudinal studies leak or mislabel. Labels
are computed on the full record (every visit with a diagnosis, QC-passed or not) before any split or
filter; only the *inputs* of a sample are restricted to usable (QC-passed) scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RANK = {"CN": 0, "MCI": 1, "AD": 2}
DAYS_PER_MONTH = 30.4375


@dataclass(frozen=True)
class Task:
    """A binary task: ``family`` is diagnosis, detection or future; ``neg``/``pos`` diagnoses."""

    family: str
    neg: str
    pos: str


TASKS: dict[str, Task] = {
    "dx_cn_ad": Task("diagnosis", "CN", "AD"),
    "dx_cn_mci": Task("diagnosis", "CN", "MCI"),
    "dx_mci_ad": Task("diagnosis", "MCI", "AD"),
    "det_cn_mci": Task("detection", "CN", "MCI"),
    "det_mci_ad": Task("detection", "MCI", "AD"),
    "fut_cn_mci": Task("future", "CN", "MCI"),
    "fut_mci_ad": Task("future", "MCI", "AD"),
}


def visit_months(days: pd.Series) -> np.ndarray:
    """Months from baseline rounded to whole months, as visit codes (ses-M036) count them."""
    return np.round(np.asarray(days, dtype=float) / DAYS_PER_MONTH).astype(int)


def is_reverter(diagnoses: list[str]) -> bool:
    """True when a diagnosis falls below the highest one seen before it (AD -> MCI, MCI -> CN)."""
    ranks = [RANK[d] for d in diagnoses]
    return any(r < max(ranks[:k]) for k, r in enumerate(ranks) if k)


def future_label(task: Task, dx: list[str], months: np.ndarray, i: int, horizon: int) -> int | None:
    """1: converts within the horizon; 0: still ``neg`` at a visit >= horizon later; None: censored."""
    if dx[i] != task.neg:
        return None
    for j in range(i + 1, len(dx)):
        gap = months[j] - months[i]
        if gap <= horizon and RANK[dx[j]] > RANK[task.neg]:
            return 1
        if RANK[dx[j]] > RANK[task.neg]:
            return None  # converted, but only after the horizon: neither pMCI nor sMCI-like stable
        if gap >= horizon:
            return 0
    return None


def detection_label(task: Task, seq: list[str]) -> int | None:
    """1: sequence starts ``neg`` and ends ``pos``; 0: ``neg`` throughout; else not a sample."""
    if len(seq) < 2 or seq[0] != task.neg:
        return None
    if seq[-1] == task.pos:
        return 1
    if all(d == task.neg for d in seq):
        return 0
    return None


def task_samples(record: pd.DataFrame, usable: set[tuple[str, str]], task_id: str, horizon_months: int,
                 max_inputs: int, exclude_reverters: bool) -> pd.DataFrame:
    """One row per (subject, index visit) with a known label for ``task_id``.

    ``record`` holds every visit with a diagnosis (participant_id, session_id, days_from_baseline,
    diagnosis); ``usable`` the (participant, session) pairs a model may read. Inputs are the last
    ``max_inputs`` usable visits up to and including the index visit, which must itself be usable.
    """
    task = TASKS[task_id]
    rows = []
    for sub, visits in record.sort_values(["participant_id", "days_from_baseline"]).groupby("participant_id"):
        dx = visits["diagnosis"].tolist()
        if task.family != "diagnosis" and exclude_reverters and is_reverter(dx):
            continue
        sessions = visits["session_id"].tolist()
        days = visits["days_from_baseline"].tolist()
        months = visit_months(visits["days_from_baseline"])
        ok = [(sub, s) in usable for s in sessions]
        for i in range(len(dx)):
            if not ok[i]:
                continue
            inputs = [k for k in range(i + 1) if ok[k]][-max_inputs:]
            if task.family == "diagnosis":
                label = {task.neg: 0, task.pos: 1}.get(dx[i])
            elif task.family == "detection":
                label = detection_label(task, [dx[k] for k in inputs])
            else:
                label = future_label(task, dx, months, i, horizon_months)
            if label is None:
                continue
            rows.append({"participant_id": sub, "index_session": sessions[i],
                         "input_sessions": ";".join(sessions[k] for k in inputs),
                         "input_days": ";".join(str(int(days[k])) for k in inputs),
                         "n_inputs": len(inputs), "index_diagnosis": dx[i], "label": label})
    columns = ["participant_id", "index_session", "input_sessions", "input_days", "n_inputs",
               "index_diagnosis", "label"]
    return pd.DataFrame(rows, columns=columns)
