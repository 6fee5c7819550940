"""Visit time: the one place that says when a visit happened, for labels and for models.

Why a module of its own: real visits happen weeks to months off their scheduled date. ADNI and
Clinica name a session by its schedule (``ses-M036`` = the month-36 visit, whatever day it took
place), and labels count on that schedule, as ClinicaDL's label tools do: a subject seen stable at
ses-M036 is stable at 36 months even if the visit was on day 1,060. Rounding days to months instead
turns that visit into month 35 and the subject into a censored one. So:

- ``schedule_months``: the visit code's months when the session has one, else the acquisition
  months; labels (horizons, windows, order) use it.
- ``window_months``: the tolerance when a horizon is matched on days rather than codes (a visit
  within ``window`` months of the horizon counts as at the horizon). The default, 3 months, is half
  of ADNI's 6-month visit step: days then behave as if rounded to the nearest scheduled visit,
  which is what the visit codes would have said. Coded visits are exact (window 0).
- ``acquisition_months``: days from baseline as fractional months; what models see (pretraining
  and fine-tuning alike), since atrophy follows real time, not the schedule.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

DAYS_PER_MONTH = 30.4375  # 365.25 / 12
SESSION_CODE = re.compile(r"^ses-M(\d+)$")


def code_months(session_id: str) -> int | None:
    """Months of a visit code (ses-M036 -> 36), None when the session is not named by its schedule."""
    match = SESSION_CODE.match(str(session_id))
    return int(match.group(1)) if match else None


def acquisition_months(days: pd.Series | np.ndarray | list | float) -> np.ndarray:
    """Days from baseline as fractional months (what models are given)."""
    return np.asarray(days, dtype=float) / DAYS_PER_MONTH


def schedule_months(sessions: pd.Series | list, days: pd.Series | list) -> np.ndarray:
    """Scheduled months of each visit: its code's months where it has one, else its acquisition months."""
    codes = [code_months(s) for s in sessions]
    acquired = acquisition_months(days)
    return np.array([float(c) if c is not None else a for c, a in zip(codes, np.atleast_1d(acquired))], dtype=float)


def is_coded(sessions: pd.Series | list) -> np.ndarray:
    """Which visits are named by their schedule (their time is exact on that schedule)."""
    return np.array([code_months(s) is not None for s in sessions], dtype=bool)


def gap_tolerance(coded_a: bool, coded_b: bool, window: float) -> float:
    """Tolerance of a gap between two visits: 0 when both are coded, else the window."""
    return 0.0 if coded_a and coded_b else float(window)


def chronological(record: pd.DataFrame) -> pd.DataFrame:
    """A record sorted by subject, then scheduled time, then days (ties of codes broken by the day)."""
    out = record.assign(_sched=schedule_months(record["session_id"], record["days_from_baseline"]))
    return (out.sort_values(["participant_id", "_sched", "days_from_baseline", "session_id"], kind="mergesort")
            .drop(columns="_sched").reset_index(drop=True))
