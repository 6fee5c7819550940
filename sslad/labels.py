"""Task labels from each subject's whole longitudinal record (the seven tasks, docs/study.md).

Why a module of its own: label semantics are where longitudinal studies leak or mislabel. Labels
are computed on the full record (every visit with a diagnosis, with or without a usable image)
before any split or filter; only the *inputs* of a sample are restricted to usable (QC-passed)
scans. Visit times come from :mod:`sslad.visit_time` (visit codes first, days with a window else).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sslad.visit_time import chronological, gap_tolerance, is_coded, schedule_months

RANK = {"CN": 0, "MCI": 1, "AD": 2}


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


def is_reverter(diagnoses: list[str]) -> bool:
    """True when a diagnosis falls below the highest one seen before it (AD -> MCI, MCI -> CN)."""
    ranks = [RANK[d] for d in diagnoses]
    return any(r < max(ranks[:k]) for k, r in enumerate(ranks) if k)


def future_label(task: Task, dx: list[str], months: np.ndarray, coded: np.ndarray, i: int, horizon: float,
                 window: float) -> int | None:
    """1: converts within the horizon; 0: still ``neg`` at a visit at the horizon or later; None: censored.

    Visits are read in order after the index: the first that is not ``neg`` decides (a conversion
    within ``horizon`` is positive, a later one or a reversion leaves the sample unknown); before
    that, the first ``neg`` visit at least ``horizon`` later makes it negative. Gaps between coded
    visits are exact; where a visit has no code, ``window`` months of tolerance apply both ways.
    """
    if dx[i] != task.neg:
        return None
    for j in range(i + 1, len(dx)):
        gap = months[j] - months[i]
        tol = gap_tolerance(coded[i], coded[j], window)
        if RANK[dx[j]] > RANK[task.neg]:
            return 1 if gap <= horizon + tol else None  # converted after the horizon: neither
        if dx[j] != task.neg:
            return None  # reverted below the index diagnosis (only seen when reverters are kept)
        if gap >= horizon - tol:
            return 0
    return None


def detection_label(task: Task, seq: list[str], between: list[str]) -> int | None:
    """1: input sequence ``seq`` starts ``neg`` and ends ``pos``; 0: ``neg`` throughout, including every
    visit of the record ``between`` its first and last scan (with or without an image); else None."""
    if len(seq) < 2 or seq[0] != task.neg:
        return None
    if seq[-1] == task.pos:
        return 1
    if all(d == task.neg for d in seq + between):
        return 0
    return None


def task_samples(record: pd.DataFrame, usable: set[tuple[str, str]], task_id: str, horizon_months: float,
                 max_inputs: int, exclude_reverters: bool, window_months: float = 3.0) -> pd.DataFrame:
    """One row per (subject, index visit) with a known label for ``task_id``.

    ``record`` holds every visit with a diagnosis (participant_id, session_id, days_from_baseline,
    diagnosis), imaged or not; ``usable`` the (participant, session) pairs a model may read. Inputs
    are the last ``max_inputs`` usable visits up to and including the index visit, which must itself
    be usable. Order and gaps follow the visit schedule (:mod:`sslad.visit_time`).
    """
    task = TASKS[task_id]
    rows = []
    for sub, visits in chronological(record).groupby("participant_id", sort=True):
        dx = visits["diagnosis"].tolist()
        if task.family != "diagnosis" and exclude_reverters and is_reverter(dx):
            continue
        sessions = visits["session_id"].tolist()
        days = visits["days_from_baseline"].tolist()
        months = schedule_months(sessions, days)
        coded = is_coded(sessions)
        ages = visits["age"].tolist() if "age" in visits else [float("nan")] * len(dx)
        ok = [(sub, s) in usable for s in sessions]
        for i in range(len(dx)):
            if not ok[i]:
                continue
            inputs = [k for k in range(i + 1) if ok[k]][-max_inputs:]
            if task.family == "diagnosis":
                label = {task.neg: 0, task.pos: 1}.get(dx[i])
            elif task.family == "detection":
                label = detection_label(task, [dx[k] for k in inputs], dx[inputs[0]:i])
            else:
                label = future_label(task, dx, months, coded, i, horizon_months, window_months)
            if label is None:
                continue
            rows.append({"participant_id": sub, "index_session": sessions[i],
                         "input_sessions": ";".join(sessions[k] for k in inputs),
                         "input_days": ";".join(str(int(days[k])) for k in inputs),
                         "n_inputs": len(inputs), "index_months": months[i],
                         "span_months": months[i] - months[inputs[0]], "index_age": ages[i],
                         "index_diagnosis": dx[i], "label": label})
    columns = ["participant_id", "index_session", "input_sessions", "input_days", "n_inputs", "index_months",
               "span_months", "index_age", "index_diagnosis", "label"]
    return pd.DataFrame(rows, columns=columns)
