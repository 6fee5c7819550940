"""table.csv: one row per fine-tuning job and mode (and per test cohort), with subject-bootstrap intervals.

Every output is sorted and formatted stably, so identical inputs give byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from sslad.io import atomic_path
from sslad.metrics import (
    METRICS,
    binary_metrics,
    bootstrap,
)
from sslad.provenance import code_label
from sslad.results import COUNT_KEYS, JOB_METRIC_KEYS, PREDICTION_COLUMNS, read_job

# the table's: each metric with its bootstrap interval, which aggregation computes (the number of
# resamples is aggregation's setting, so changing it retrains nothing)
UNIT_KEYS = tuple(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")) + ("val_auc",)


# heldout: the cohort a leave-one-cohort-out job held out ("" when pooled); test_cohort: "all" for the
# job's whole test split, else the one cohort whose part of it the row scores (same model, same threshold)
# code: the commit (and source digest) of the job that made the row (sslad.provenance.code_label)
# pretrain_seed: the pretraining run (pretrain.seeds) a pretrained init's row starts from, empty for the others
TABLE_COLUMNS = ["task", "init", "mode", "inputs", "fraction", "seed", "pretrain_seed", "heldout", "test_cohort",
                 *UNIT_KEYS, "threshold", *COUNT_KEYS, "code"]


ALL = "all"


COHORT_SKIPPED_COLUMNS = ["heldout", "task", "init", "mode", "inputs", "fraction", "pretrain_seed", "seed",
                          "test_cohort", "reason"]


SKIPPED_COLUMNS = ["heldout", "task", "init", "inputs", "fraction", "pretrain_seed", "seed", "reason", "source"]


def _job_rows(job: dict[str, Any], path: str | Path) -> list[dict[str, Any]]:
    return [{"task": job["task"], "init": job["init"], "inputs": job["inputs"], "fraction": float(job["fraction"]),
             "pretrain_seed": job.get("pretrain_seed"), "seed": job["seed"], "heldout": job.get("heldout", ""),
             "test_cohort": ALL,
             **{k: row[k] for k in ("mode", *JOB_METRIC_KEYS, "threshold", *COUNT_KEYS)},
             "code": code_label(job.get("provenance")), "source": str(path)} for row in job["rows"]]


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """One row per mode of a job's metrics.json, without intervals (none for a skipped job);
    ValueError naming the file and key if malformed."""
    job, _ = read_job(path)
    return _job_rows(job, path)


def sorted_rows(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort with scratch first and the other inits alphabetically, so outputs do not depend on input order."""
    rank = (df["init"] != "scratch").astype(int)
    return (df.assign(_rank=rank).sort_values(["task", "_rank", *keys], kind="mergesort")
            .drop(columns="_rank").reset_index(drop=True))


def _no_duplicate(df: pd.DataFrame, key: list[str], what: str) -> None:
    """ValueError naming the first key that more than one metrics.json gives, with those files."""
    keyed = df.assign(pretrain_seed=df["pretrain_seed"].astype("Int64").fillna(-1))
    dup = keyed[keyed.duplicated(key, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        same = dup[(dup[key] == first[key]).all(axis=1)]["source"].tolist()
        raise ValueError(f"{what}: {dict(first[key])} in {same}")


def build_table(metrics_paths: list[str], n_boot: int, level: float = 0.95,
                preds: PredictionSource | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, skipped): all evaluated jobs' rows, sorted, a ``source`` column keeping each row's
    metrics.json path, with :func:`add_intervals`' bootstrap intervals; and one row per skipped job
    with its reason (:data:`SKIPPED_COLUMNS`)."""
    rows, skipped = [], []
    for path in metrics_paths:
        job, _ = read_job(path)
        if job.get("skipped") is not None:
            skipped.append({"heldout": job.get("heldout", ""), "task": job["task"], "init": job["init"],
                            "inputs": job["inputs"],
                            "fraction": float(job["fraction"]), "pretrain_seed": job.get("pretrain_seed"),
                            "seed": job["seed"],
                            "reason": " ".join(job["skipped"].split()), "source": str(path)})
        rows += _job_rows(job, path)
    if not rows and not skipped:
        raise ValueError("no fine-tuning results to aggregate")
    interval_free = [c for c in TABLE_COLUMNS if not c.endswith(("_low", "_high"))]
    df = pd.DataFrame(rows, columns=[*interval_free, "source"]).astype(
        {"fraction": float, "heldout": str, "pretrain_seed": "Int64"})
    key = ["heldout", "task", "init", "mode", "inputs", "fraction", "pretrain_seed", "seed"]
    _no_duplicate(df, key, "the same job and mode appear more than once")
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).astype(
        {"fraction": float, "heldout": str, "pretrain_seed": "Int64"})
    job_key = ["heldout", "task", "init", "inputs", "fraction", "pretrain_seed", "seed"]
    jobs = pd.concat([df.drop_duplicates("source")[[*job_key, "source"]], skipped_df[[*job_key, "source"]]])
    _no_duplicate(jobs, job_key, "the same job appears more than once")
    df = add_intervals(df, preds or Predictions(), n_boot, level)
    return (sorted_rows(df, ["heldout", "init", "mode", "inputs", "fraction", "pretrain_seed", "seed"])
            [TABLE_COLUMNS + ["source"]],
            sorted_rows(skipped_df, ["heldout", "init", "inputs", "fraction", "pretrain_seed", "seed"]))


def cohort_rows(table: pd.DataFrame, preds: PredictionSource, cohort_of: dict[str, str], n_boot: int,
                level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, not evaluated): each job row's test split broken down by test cohort, where it spans
    several: the same predictions and validation threshold, scored on one cohort's test subjects
    (test counts recomputed, the rest the job's). A cohort part without both classes gets no row,
    only a line in ``not evaluated`` (its AUC is undefined). From the predictions, so that the
    breakdown adds no fine-tuning job."""
    rows, missing = [], []
    for r in table[table["test_cohort"] == ALL].to_dict("records"):
        p = preds.get(r["source"], r["mode"])
        cohorts = p["participant_id"].map(cohort_of)
        if cohorts.isna().any():
            raise ValueError(f"{r['source']}: test participant {p['participant_id'][cohorts.isna()].iloc[0]} "
                             "is in no cohort of subjects.tsv")
        if cohorts.nunique() < 2:
            continue
        for cohort in sorted(cohorts.unique()):
            q = p[(cohorts == cohort).to_numpy()]
            y, logit, groups = q["label"].to_numpy(), q["logit"].to_numpy(), q["participant_id"].to_numpy()
            if len(set(y)) < 2:
                kind = "positive" if y.all() else "negative"
                missing.append({**{k: r[k] for k in COHORT_SKIPPED_COLUMNS if k in r}, "test_cohort": cohort,
                                "reason": f"{len(set(groups))} test subjects, all {kind}"})
                continue
            row = {**r, "test_cohort": cohort, **binary_metrics(y, logit, r["threshold"])}
            ci = bootstrap(y, logit, r["threshold"], groups=groups, n=n_boot, seed=int(r["seed"]), level=level)
            for m in METRICS:
                row[f"{m}_low"], row[f"{m}_high"] = ci[m]
            row.update(n_test=len(y), n_test_pos=int(y.sum()), n_test_subjects=len(set(groups)),
                       n_test_pos_subjects=len(set(groups[y == 1])), n_test_neg_subjects=len(set(groups[y == 0])))
            rows.append(row)
    return (pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "source"]),
            pd.DataFrame(missing, columns=COHORT_SKIPPED_COLUMNS))


def add_intervals(df: pd.DataFrame, preds: PredictionSource, n_boot: int, level: float = 0.95) -> pd.DataFrame:
    """Each row's test metrics with percentile intervals from ``n_boot`` resamples of test subjects
    (stratified, :func:`sslad.metrics.bootstrap`) at the row's validation threshold, seeded by the
    job's seed. Here rather than in the fine-tuning job: the number of resamples is a reporting
    choice, and raising it must not retrain 168 models."""
    bounds: dict[str, list[float]] = {f"{m}{s}": [] for m in METRICS for s in ("_low", "_high")}
    for r in df.itertuples(index=False):
        p = preds.get(r.source, r.mode)
        ci = bootstrap(p["label"].to_numpy(), p["logit"].to_numpy(), r.threshold,
                       groups=p["participant_id"].to_numpy(), n=n_boot, seed=int(r.seed), level=level)
        for m in METRICS:
            bounds[f"{m}_low"].append(ci[m][0])
            bounds[f"{m}_high"].append(ci[m][1])
    return df.assign(**{k: pd.Series(v, index=df.index, dtype=float) for k, v in bounds.items()})


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Comma-separated, atomically, floats as %.6g, so reruns are byte-identical."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6g")


class PredictionSource(Protocol):
    def get(self, source: str, mode: str) -> pd.DataFrame: ...


class Predictions:
    """Test predictions of each job, read once: the file ``paths`` gives for its metrics.json, else
    predictions.tsv next to it (the workflow's layout).

    The logit is read as float64 with pandas' exact parser (the default since pandas 3), so a logit
    written with %.17g comes back bit for bit: ties and near-ties between logits decide AUCs.
    """

    def __init__(self, paths: dict[str, str] | None = None) -> None:
        self._cache: dict[str, pd.DataFrame] = {}
        self._paths = paths or {}

    def get(self, source: str, mode: str) -> pd.DataFrame:
        path = Path(self._paths.get(str(source), Path(source).with_name("predictions.tsv")))
        if str(path) not in self._cache:
            try:
                df = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "index_session": str, "mode": str})
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: cannot read predictions ({exc})") from exc
            missing = set(PREDICTION_COLUMNS) - set(df.columns)
            if missing:
                hint = (" (a 'score' column is from an older fine-tuning job; rerun it to get raw logits)"
                        if "logit" in missing and "score" in df.columns else "")
                raise ValueError(f"{path}: missing column(s) {sorted(missing)}{hint}")
            try:
                df["logit"] = df["logit"].astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: 'logit' must be a number in every row ({exc})") from exc
            if not df["label"].isin([0, 1]).all() or df["logit"].isna().any():
                raise ValueError(f"{path}: 'label' must be 0/1 and 'logit' present in every row")
            self._cache[str(path)] = df
        df = self._cache[str(path)]
        out = df[df["mode"] == mode].sort_values(["participant_id", "index_session"], kind="mergesort")
        if out.empty:
            raise ValueError(f"{path}: no predictions for mode '{mode}'")
        if out.duplicated(["participant_id", "index_session"]).any():
            raise ValueError(f"{path}: a test sample appears twice for mode '{mode}'")
        return out.reset_index(drop=True)
