"""What a model could read without the image: a sample's visit schedule, age, sex and cohort.

Why a module of its own: in longitudinal cohorts the classes differ in their schedules (controls
are followed longer, patients drop out, converters are seen more often), so the number of input
scans, their span or the index visit's month can predict a label with no image at all. Here that
confound is measured (the AUC of each schedule feature alone, :func:`confound_table`), removed from
the task tables by matching the classes on their schedules (:func:`match_schedule`, the manifest's
default), and turned into the reference every image model is read against: the ``schedule`` init,
a logistic regression on these features alone (:func:`fit_baseline`).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from sslad.metrics import auc

# Readable from the schedule alone; the matching balances the classes on these.
SCHEDULE_FEATURES = ("n_inputs", "span_months", "index_months")
# What the schedule baseline reads: the schedule, and what a model could know of the subject without
# an image (age at the index visit, sex, cohort).
NUMERIC_FEATURES = (*SCHEDULE_FEATURES, "index_age")
CATEGORICAL_FEATURES = ("sex", "cohort")
SCHEDULE = "schedule"  # the init name of the schedule-only baseline


def null_se(n_pos: int, n_neg: int) -> float:
    """Standard error of the AUC of an uninformative score (Mann-Whitney, no ties)."""
    return float(np.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))) if n_pos and n_neg else float("nan")


def confound_limit(n_pos: int, n_neg: int) -> float:
    """The AUC a schedule feature alone may reach before it counts as a confound: max(0.65, 0.5 +
    2.5 null standard errors), so that small tables are not flagged for chance imbalance."""
    return max(0.65, 0.5 + 2.5 * null_se(n_pos, n_neg))


def feature_auc(labels: pd.Series, values: pd.Series) -> float:
    """How well one feature alone separates the classes, in either direction (0.5 = not at all)."""
    a = auc(labels.to_numpy(dtype=int), values.to_numpy(dtype=float))
    return float(max(a, 1.0 - a)) if np.isfinite(a) else float("nan")


def confound_table(task: str, t: pd.DataFrame, selection: str) -> pd.DataFrame:
    """One row per schedule feature: its AUC alone over the task's samples, the limit and the verdict."""
    n_pos, n_neg = int((t["label"] == 1).sum()), int((t["label"] == 0).sum())
    limit = confound_limit(n_pos, n_neg)
    rows = []
    for feature in SCHEDULE_FEATURES:
        value = feature_auc(t["label"], t[feature]) if n_pos and n_neg else float("nan")
        rows.append({"task": task, "samples": selection, "feature": feature, "auc": round(value, 4),
                     "limit": round(limit, 4), "confounded": bool(value > limit), "n_pos": n_pos, "n_neg": n_neg})
    return pd.DataFrame(rows)


def match_schedule(t: pd.DataFrame, task: str, bin_months: float, seed: int) -> pd.DataFrame:
    """The samples of ``t`` whose classes have the same schedules: samples are grouped into cells of
    equal number of inputs and the same ``bin_months``-wide bins of span and index month, and each
    cell keeps as many samples of each class as its rarer class has: those of the subjects with the
    fewest samples first, ties drawn with ``seed`` and the task. Costs samples; buys task tables
    whose labels no schedule feature can read."""
    if t.empty:
        return t
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{task}".encode()))
    cells = list(zip(t["n_inputs"], np.floor(t["span_months"] / bin_months), np.floor(t["index_months"] / bin_months)))
    keep = np.zeros(len(t), dtype=bool)
    by_cell = pd.Series(range(len(t))).groupby(pd.Series(cells, dtype=object).map(str))
    labels = t["label"].to_numpy()
    # a subject's samples give way before a lone sample's subject does: more subjects stay
    crowd = t.groupby("participant_id")["label"].transform("size").to_numpy() + rng.random(len(t))
    for _, rows in by_cell:
        rows = rows.to_numpy()
        pos, neg = rows[labels[rows] == 1], rows[labels[rows] == 0]
        n = min(len(pos), len(neg))
        keep[pos[np.argsort(crowd[pos])][:n]] = True
        keep[neg[np.argsort(crowd[neg])][:n]] = True
    return t[keep].reset_index(drop=True)


def design(parts: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """The baseline's inputs of every split: numeric features standardised on train (a missing age
    takes train's mean), categories one-hot on train's levels."""
    train = parts["train"]
    mu = train[list(NUMERIC_FEATURES)].astype(float).mean()
    sd = train[list(NUMERIC_FEATURES)].astype(float).std(ddof=0).replace(0.0, 1.0).fillna(1.0)
    levels = {c: sorted(train[c].fillna("n/a").astype(str).unique())[1:] for c in CATEGORICAL_FEATURES}
    out = {}
    for name, part in parts.items():
        numeric = ((part[list(NUMERIC_FEATURES)].astype(float).fillna(mu) - mu) / sd).to_numpy()
        onehot = [(part[c].fillna("n/a").astype(str) == level).to_numpy(dtype=float)[:, None]
                  for c in CATEGORICAL_FEATURES for level in levels[c]]
        out[name] = np.hstack([numeric, *onehot])
    return out


def fit_baseline(parts: dict[str, pd.DataFrame], seed: int) -> dict[str, np.ndarray]:
    """The schedule-only baseline: an L2 logistic regression (scikit-learn, classes weighted as the
    image models weight them) fitted on train; logits of every split."""
    from sklearn.linear_model import LogisticRegression

    x = design(parts)
    model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)
    model.fit(x["train"], parts["train"]["label"].to_numpy(dtype=int))
    return {name: model.decision_function(v).astype(np.float64) for name, v in x.items()}
