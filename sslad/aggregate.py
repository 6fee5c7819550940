"""From per-job fine-tuning results to the study's table, summary and figures.

Why a paired bootstrap over subjects and seeds: every init is tested on the same test samples with
the same label-fraction subset (seed), so the AUC difference to the reference is judged on the same
resampled test subjects for both models; the test-sample noise they share cancels, which an
unpaired comparison of two intervals would not see. Subjects, not samples, are resampled because a
subject's index visits are not independent evidence. Seeds are resampled too, because a
difference that comes and goes with the training seed is not a property of the init.

Why controls beside it: a gain of a temporal init may come from the history (several scans) or from
their times, or from neither. The primary init and reference fine-tuned again on reduced inputs
(the index scan alone; the history with its times shuffled) show which: per control, the init's
difference to the reference, and each one's own AUC change from the full inputs, on the same test
samples and seeds (:func:`control_comparisons`).

Why a pre-specified primary comparison: with several inits, modes, fractions and tasks, some
comparison looks good by chance; the study's claim rests on one comparison named in the config
before the results, judged with Holm-adjusted p-values and simultaneous (Bonferroni) intervals
over the tasks. Everything else is exploratory and labelled so. Every output is sorted and
formatted stably, so identical inputs give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, NamedTuple, Protocol

import numpy as np
import pandas as pd

from sslad import convergence
from sslad.io import atomic_path
from sslad.metrics import (
    METRICS,
    auc,
    auc_from_counts,
    binary_metrics,
    bootstrap,
    bootstrap_p,
    holm,
    percentile_interval,
    subject_counts,
    subject_strata,
)
from sslad.provenance import code_label
from sslad.registry import colours
from sslad.schedule import SCHEDULE

MODES = ("full", "probe")
# metric keys of a metrics.json row; each must be a finite number in [0, 1]
JOB_METRIC_KEYS = (*METRICS, "val_auc")
# the table's: each metric with its bootstrap interval, which aggregation computes (the number of
# resamples is aggregation's setting, so changing it retrains nothing)
UNIT_KEYS = tuple(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")) + ("val_auc",)
# n_train, n_val, n_test, n_test_pos count samples; the *_subjects keys count subjects (a subject is
# "positive" in the test split if it has at least one positive test sample, likewise negative)
COUNT_KEYS = ("best_epoch", "n_train", "n_val", "n_test", "n_test_pos", "n_train_subjects", "n_val_subjects",
              "n_test_subjects", "n_test_pos_subjects", "n_test_neg_subjects")
JOB_KEYS = ("task", "init", "fraction", "seed", "inputs", "rows")
# heldout: the cohort a leave-one-cohort-out job held out ("" when pooled); test_cohort: "all" for the
# job's whole test split, else the one cohort whose part of it the row scores (same model, same threshold)
# code: the commit (and source digest) of the job that made the row (sslad.provenance.code_label)
# pretrain_seed: the pretraining run (pretrain.seeds) a pretrained init's row starts from, empty for the others
TABLE_COLUMNS = ["task", "init", "mode", "inputs", "fraction", "seed", "pretrain_seed", "heldout", "test_cohort",
                 *UNIT_KEYS, "threshold", *COUNT_KEYS, "code"]
ALL = "all"
COHORT_SKIPPED_COLUMNS = ["heldout", "task", "init", "mode", "inputs", "fraction", "pretrain_seed", "seed",
                          "test_cohort", "reason"]
GROUP = ["task", "init", "mode", "inputs", "fraction"]
# the family of one Holm adjustment in summary.csv: every task x init compared with the reference there
FAMILY = ["mode", "inputs", "fraction"]
# claim: what the row's comparison with the reference says ("favours <init>", "none", "too few test
# subjects" (no adjusted p then), "" without a comparison); holm_family: what its auc_diff_p_holm adjusts over
# n_seeds: fine-tuning seeds; n_pretrain_seeds: pretraining runs (0: not pretrained by the study); *_sd over
# every cell (run x seed); auc_pretrain_sd and auc_diff_pretrain_sd: over the pretraining runs of their
# mean over seeds, the spread that pretraining alone adds; auc_diff_seed_sd: over seeds of the mean over runs
SUMMARY_COLUMNS = [*GROUP, "n_seeds", "n_pretrain_seeds", "auc_mean", "auc_sd", "auc_pretrain_sd",
                   "balanced_accuracy_mean", "balanced_accuracy_sd", "n_paired", "n_test_subjects_pos",
                   "n_test_subjects_neg", "auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_p",
                   "auc_diff_seed_sd", "auc_diff_pretrain_sd", "auc_diff_p_holm", "claim", "holm_family"]
TOO_FEW = "too few test subjects"
SKIPPED_COLUMNS = ["heldout", "task", "init", "inputs", "fraction", "pretrain_seed", "seed", "reason", "source"]
PRIMARY_KEYS = ("init", "reference", "mode", "inputs", "fraction")
PRIMARY_COLUMNS = ["task", "n_seeds", "n_pretrain_seeds", "n_test_subjects_pos", "n_test_subjects_neg", "auc_init",
                   "auc_reference", "auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_seed_sd",
                   "auc_diff_pretrain_sd", "auc_diff_p", "auc_diff_p_holm",
                   "auc_diff_adj_low", "auc_diff_adj_high", "favours", "favours_reference"]
# the controls of the primary comparison (summary.md), one row per task x control inputs:
# init - reference with those inputs, and each one's AUC with the primary inputs minus with those
CONTROL_COLUMNS = ["task", "inputs", "n_seeds", "auc_init", "auc_reference", "auc_diff", "auc_diff_low",
                   "auc_diff_high", "init_change", "init_change_low", "init_change_high", "reference_change",
                   "reference_change_low", "reference_change_high"]
# fixed colours, so that a method looks the same in every figure and every run
COLOURS = colours()
SPARE_COLOURS = ["tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
PREDICTION_COLUMNS = ("participant_id", "index_session", "mode", "label", "logit")
# Fewer test subjects than this in either class: no interval or p, only the point difference (a
# bootstrap over one subject per class has a single distinct resample). A claim needs more:
# study.primary.min_test_subjects (default 10), below which percentile intervals are far too narrow.
MIN_RESAMPLABLE = 2
MIN_CLAIM_SUBJECTS = 10


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_job(path: str | Path, required: tuple[str, ...] = ()) -> tuple[dict[str, Any], bytes]:
    """A fine-tuning job's metrics.json, parsed and checked, and its bytes (for callers that
    fingerprint it); ValueError naming the file and key if malformed. ``required``: keys a caller
    needs beyond the table's.

    A job whose task could not be evaluated has ``"rows": []`` and the reason in ``"skipped"``; it is
    a result (the study must say which tasks it could not evaluate), not an error.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        job = json.loads(raw)
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or UTF-8
        raise ValueError(f"{path}: cannot read metrics ({exc})") from exc
    if not isinstance(job, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in (*JOB_KEYS, *required):
        if key not in job:
            raise ValueError(f"{path}: missing key '{key}'")
    for key in ("task", "init", "inputs"):
        if not isinstance(job[key], str) or not job[key]:
            raise ValueError(f"{path}: '{key}' must be a non-empty string, got {job[key]!r}")
    if not isinstance(job.get("heldout", ""), str):
        raise ValueError(f"{path}: 'heldout' must be a string (a cohort name), got {job['heldout']!r}")
    if not _is_number(job["fraction"]) or not 0 < job["fraction"] <= 1:
        raise ValueError(f"{path}: 'fraction' must be in (0, 1], got {job['fraction']!r}")
    if not isinstance(job["seed"], int) or isinstance(job["seed"], bool):
        raise ValueError(f"{path}: 'seed' must be an integer, got {job['seed']!r}")
    run = job.get("pretrain_seed")
    if run is not None and (not isinstance(run, int) or isinstance(run, bool) or run < 0):
        raise ValueError(f"{path}: 'pretrain_seed' must be a non-negative integer or null, got {run!r}")
    skipped = job.get("skipped")
    if skipped is not None and (not isinstance(skipped, str) or not skipped.strip()):
        raise ValueError(f"{path}: 'skipped' must be a non-empty string (the reason), got {skipped!r}")
    if not isinstance(job["rows"], list):
        raise ValueError(f"{path}: 'rows' must be a list")
    if skipped is None and not job["rows"]:
        raise ValueError(f"{path}: 'rows' must be a non-empty list (or 'skipped' must give the reason)")
    if skipped is not None and job["rows"]:
        raise ValueError(f"{path}: 'rows' must be empty in a skipped job, got {len(job['rows'])}")
    for i, row in enumerate(job["rows"]):
        where = f"{path}: rows[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object")
        for key in ("mode", *JOB_METRIC_KEYS, "threshold", *COUNT_KEYS):
            if key not in row:
                raise ValueError(f"{where}: missing key '{key}'")
        if row["mode"] not in MODES:
            raise ValueError(f"{where}: 'mode' must be one of {MODES}, got {row['mode']!r}")
        for key in JOB_METRIC_KEYS:
            if not _is_number(row[key]) or not 0 <= row[key] <= 1:
                raise ValueError(f"{where}: '{key}' must be a number in [0, 1], got {row[key]!r}")
        if not _is_number(row["threshold"]):
            raise ValueError(f"{where}: 'threshold' must be a finite number, got {row['threshold']!r}")
        for key in COUNT_KEYS:
            if not isinstance(row[key], int) or isinstance(row[key], bool) or row[key] < 0:
                raise ValueError(f"{where}: '{key}' must be a non-negative integer, got {row[key]!r}")
    return job, raw


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


def _sorted(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
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
    df = add_intervals(df, preds or _Predictions(), n_boot, level)
    return (_sorted(df, ["heldout", "init", "mode", "inputs", "fraction", "pretrain_seed", "seed"])
            [TABLE_COLUMNS + ["source"]],
            _sorted(skipped_df, ["heldout", "init", "inputs", "fraction", "pretrain_seed", "seed"]))


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


class _Predictions:
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


class SeedPair(NamedTuple):
    """One seed's test predictions of an init (a) and the reference (b) on the same test samples."""

    labels: np.ndarray  # bool
    groups: np.ndarray  # subject of each sample
    a: np.ndarray  # logits
    b: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """AUC of an init minus the reference's, over its cells (fine-tuning seeds, crossed with pretraining
    runs where there are several): the per-cell AUCs and the bootstrap distribution of the mean
    difference. ``runs``: each cell's pretraining run (-1: none); ``seeds``: its fine-tuning seed."""

    auc_a: np.ndarray
    auc_b: np.ndarray
    boot: np.ndarray
    n_pos_subjects: int
    n_neg_subjects: int
    runs: np.ndarray | None = None
    seeds: np.ndarray | None = None

    def _factor(self, which: str) -> np.ndarray:
        own = self.runs if which == "runs" else self.seeds
        return np.zeros(self.auc_a.size, int) if own is None else np.asarray(own)

    def _spread(self, by: str) -> float:
        """sd (ddof=1) over the levels of ``by`` of the mean difference at each level."""
        levels = self._factor(by)
        d = self.auc_a - self.auc_b
        means = [d[levels == v].mean() for v in np.unique(levels)]
        return float(np.std(means, ddof=1)) if len(means) > 1 else math.nan

    @property
    def n_seeds(self) -> int:
        """Fine-tuning seeds (the number of cells when none are given)."""
        return int(self.auc_a.size) if self.seeds is None else int(np.unique(self.seeds).size)

    @property
    def n_runs(self) -> int:
        """Pretraining runs of the comparison (0: neither init was pretrained by the study)."""
        runs = self._factor("runs")
        return int(np.unique(runs[runs >= 0]).size) if self.runs is not None else 0

    @property
    def diff(self) -> float:
        return float(np.mean(self.auc_a - self.auc_b))

    @property
    def seed_sd(self) -> float:
        """sd (ddof=1) over fine-tuning seeds of the difference (averaged over pretraining runs): how much
        the answer moves with the seed."""
        return self._spread("seeds") if self.seeds is not None else (
            float(np.std(self.auc_a - self.auc_b, ddof=1)) if self.auc_a.size > 1 else math.nan)

    @property
    def pretrain_sd(self) -> float:
        """sd (ddof=1) over pretraining runs of the difference (averaged over seeds); nan with one run."""
        return self._spread("runs") if self.n_runs > 1 else math.nan

    def has_at_least(self, n: int) -> bool:
        """At least ``n`` test subjects in each class."""
        return min(self.n_pos_subjects, self.n_neg_subjects) >= n

    @property
    def p(self) -> float:
        return bootstrap_p(self.boot) if self.has_at_least(MIN_RESAMPLABLE) else math.nan

    def interval(self, level: float) -> tuple[float, float]:
        return percentile_interval(self.boot, level) if self.has_at_least(MIN_RESAMPLABLE) else (math.nan, math.nan)


def _key(text: str) -> int:
    return zlib.crc32(text.encode())


def _crossed_weights(levels: list[tuple[Hashable, Hashable]], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, k) weights of the k pairs when two crossed seed factors are drawn with replacement, each
    independently: a pair weighs (draws of its first level) x (draws of its second)."""
    first, second = (np.unique(np.array([str(v[i]) for v in levels]), return_inverse=True) for i in (0, 1))
    if len(set(map(tuple, levels))) != len(levels) or len(levels) != first[0].size * second[0].size:
        raise ValueError("crossed seeds must form a complete grid, each combination once")
    draws = [(rng.integers(0, u.size, (n_boot, u.size))[:, :, None] == np.arange(u.size)).sum(axis=1)
             for u, _ in (first, second)]
    return (draws[0][:, first[1]] * draws[1][:, second[1]]).astype(np.float64)


def paired_auc_diff(pairs: list[SeedPair], n_boot: int, seed: int = 0,
                    crossed: list[tuple[Hashable, Hashable]] | None = None) -> Comparison:
    """Hierarchical paired bootstrap of the mean (over seeds) AUC difference a - b.

    Each resample draws test subjects within their strata (:func:`sslad.metrics.subject_counts`) and
    applies the same draw to a and b and to every seed; it also draws the seeds with replacement
    (not with one seed), so that seed-to-seed variation widens the interval. The subject draws are
    keyed by the sorted test subject ids, so seeds (and inits) that share a test set share them, and
    the draws do not depend on how many samples a subject has; the seed draws by the number of seeds.

    Calibration (benchmarks/calibration.py: 1,000 simulated studies per setting, 300 resamples): with
    2-5 seeds, type-I error at nominal 5% is 1-3% with 10-20 test subjects per class and 3-6% with 50,
    coverage 94-98%. Conservative where test-subject noise dominates, as resampling both crossed factors
    counts their interaction twice; subtracting it from the seeds' spread instead gave 7-16% type-I error
    (a variance from 2 seeds is too uncertain to net out). With one seed the interval covers test-subject
    noise only (somewhat narrow).

    ``crossed``: per pair, its (pretraining run, fine-tuning seed) when the init was pretrained more than
    once; the two are drawn as crossed factors instead of the pairs as independent seeds. Pairs that
    share a pretraining run are not independent: drawn as if they were, 3 runs x 2 seeds with 50 test
    subjects per class gave 11% type-I error and 90% coverage; crossed, 5% and 96% (and 0.2-3% type-I
    error where test-subject noise dominates, conservative as above).
    """
    if not pairs:
        raise ValueError("paired_auc_diff needs at least one seed")
    counts: dict[tuple[str, bytes], np.ndarray] = {}
    diffs = np.empty((len(pairs), n_boot))
    n_pos, n_neg = [], []
    for j, pair in enumerate(pairs):
        y = np.asarray(pair.labels).astype(bool)
        groups = np.asarray(pair.groups).astype(str)
        subjects, stratum, _ = subject_strata(y, groups)
        n_pos.append(int(np.isin(stratum, (1, 2)).sum()))
        n_neg.append(int(np.isin(stratum, (0, 2)).sum()))
        cache = ("\n".join(groups), y.tobytes())
        if cache not in counts:
            rng = np.random.default_rng([seed, _key("\n".join(subjects))])
            counts[cache] = subject_counts(y, groups, n_boot, rng)
        c = counts[cache]
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        a, b = np.asarray(pair.a, np.float64), np.asarray(pair.b, np.float64)
        diffs[j] = (auc_from_counts(a[pos], a[neg], c[:, pos], c[:, neg])
                    - auc_from_counts(b[pos], b[neg], c[:, pos], c[:, neg]))
    k = len(pairs)
    if k == 1:
        boot = diffs[0]
    elif crossed is None:
        w = np.random.default_rng([seed, 0x5EED, k]).integers(0, k, size=(n_boot, k))
        boot = diffs[w, np.arange(n_boot)[:, None]].mean(axis=1)
    else:
        if len(crossed) != k:
            raise ValueError(f"crossed needs one (pretraining run, seed) per pair, got {len(crossed)} for {k}")
        w = _crossed_weights(crossed, n_boot, np.random.default_rng([seed, 0x5EED, k, 2]))
        boot = (w * diffs.T).sum(axis=1) / w.sum(axis=1)
    return Comparison(auc_a=np.array([auc(p.labels, p.a) for p in pairs]),
                      auc_b=np.array([auc(p.labels, p.b) for p in pairs]),
                      boot=boot, n_pos_subjects=min(n_pos), n_neg_subjects=min(n_neg))


class Cell(NamedTuple):
    """One cell of a comparison: the sources of its two jobs' rows, its pretraining run (-1: none) and seed."""

    a: str
    b: str
    run: int
    seed: int


def _cells(g: pd.DataFrame) -> dict[tuple[int, int], str]:
    """A job table's rows by (pretraining run, -1 for none; fine-tuning seed): their metrics.json."""
    runs = g["pretrain_seed"] if "pretrain_seed" in g else pd.Series(pd.NA, index=g.index)
    return {(-1 if pd.isna(r) else int(r), int(s)): src for r, s, src in zip(runs, g["seed"], g["source"])}


def matched_cells(a: pd.DataFrame, b: pd.DataFrame) -> list[Cell]:
    """The cells of two job tables compared with each other: the same fine-tuning seed (the same
    label-fraction subset) and, where both inits were pretrained, the same pretraining run index; an
    init not pretrained meets each of the other's runs at that seed (crossed factors)."""
    ca, cb = _cells(a), _cells(b)
    out = [Cell(src_a, src_b, max(ra, rb), sa) for (ra, sa), src_a in ca.items() for (rb, sb), src_b in cb.items()
           if sa == sb and (ra == rb or min(ra, rb) == -1)]
    return sorted(out, key=lambda c: (c.run, c.seed))


def compare_cells(cells: list[Cell], mode: str, n_boot: int, seed: int, preds: PredictionSource) -> Comparison:
    """:func:`paired_auc_diff` over the matched cells: with several pretraining runs in a complete runs x
    seeds grid, the two are drawn as crossed factors; otherwise the cells as independent seeds (a grid
    with a cell missing, e.g. a diverged run, cannot be drawn crossed)."""
    pairs = _seed_pairs(cells, mode, preds)
    levels = [(c.run, c.seed) for c in cells]
    runs, seeds = {c.run for c in cells}, {c.seed for c in cells}
    crossed = levels if len(runs) > 1 and len(set(levels)) == len(runs) * len(seeds) == len(levels) else None
    comparison = paired_auc_diff(pairs, n_boot, seed, crossed=crossed)
    return dataclasses.replace(comparison, runs=np.array([c.run for c in cells]),
                               seeds=np.array([c.seed for c in cells]))


def _seed_pairs(cells: list[Cell], mode: str, preds: PredictionSource) -> list[SeedPair]:
    """The prediction pairs of the matched cells, checked to be on the same test samples."""
    out = []
    for cell in cells:
        a, b = preds.get(cell.a, mode), preds.get(cell.b, mode)
        cols = ["participant_id", "index_session", "label"]
        if not a[cols].equals(b[cols]):
            raise ValueError(f"test samples or labels differ between {cell.a} and {cell.b} (mode {mode}); "
                             f"they cannot be compared")
        out.append(SeedPair(a["label"].to_numpy().astype(bool), a["participant_id"].to_numpy(str),
                            a["logit"].to_numpy(np.float64), b["logit"].to_numpy(np.float64)))
    return out


def _floored_holm(p: np.ndarray | list, n_boot: int) -> np.ndarray:
    """Holm on bootstrap p-values floored at 1/n_boot: a p of 0 only says "below the resolution"."""
    return holm(np.maximum(np.asarray(p, np.float64), 1.0 / n_boot))


def _claim(init: str, reference: str, p_holm: float, low: float, high: float, level: float) -> str:
    """The verdict of one adjusted comparison: the init its interval and Holm p favour, or none."""
    if p_holm < 1 - level and low > 0:
        return f"favours {init}"
    if p_holm < 1 - level and high < 0:
        return f"favours {reference}"
    return "none"


def summarise(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, reference: str = "scratch",
              level: float = 0.95, preds: PredictionSource | None = None,
              min_subjects: int = MIN_CLAIM_SUBJECTS) -> pd.DataFrame:
    """One row per task x init x mode x inputs x fraction: mean and sd (ddof=1) over seeds, and for
    each init other than the reference the paired comparison with it on the seeds both have. A
    comparison with fewer than ``min_subjects`` test subjects of either class carries no claim and no
    adjusted p (as in summary.md); the others get Holm's adjustment over every such task x init at
    the same mode, inputs and fraction, and the claim it supports (exploratory: see summary.md)."""
    preds = preds or _Predictions()
    rows = []
    by_job = dict(list(table.groupby(GROUP, sort=False)))
    for key, g in by_job.items():
        row: dict[str, Any] = dict(zip(GROUP, key))
        runs = g["pretrain_seed"].dropna() if "pretrain_seed" in g else pd.Series(dtype=float)
        row["n_seeds"], row["n_pretrain_seeds"] = g["seed"].nunique(), runs.nunique()
        for m in ("auc", "balanced_accuracy"):
            row[f"{m}_mean"] = float(g[m].mean())
            row[f"{m}_sd"] = float(g[m].std(ddof=1)) if len(g) > 1 else math.nan
        per_run = g.loc[runs.index].groupby("pretrain_seed")["auc"].mean()
        row["auc_pretrain_sd"] = float(per_run.std(ddof=1)) if len(per_run) > 1 else math.nan
        row.update(n_paired=math.nan, n_test_subjects_pos=math.nan, n_test_subjects_neg=math.nan, auc_diff=math.nan,
                   auc_diff_low=math.nan, auc_diff_high=math.nan, auc_diff_p=math.nan, auc_diff_seed_sd=math.nan,
                   auc_diff_pretrain_sd=math.nan, auc_diff_p_holm=math.nan, claim="", holm_family="")
        task, init, mode, inputs, fraction = key
        ref = by_job.get((task, reference, mode, inputs, fraction))
        cells = matched_cells(g, ref) if ref is not None and init != reference else []
        if cells:
            c = compare_cells(cells, mode, n_boot, seed, preds)
            low, high = c.interval(level)
            row.update(n_paired=len(cells), n_test_subjects_pos=c.n_pos_subjects,
                       n_test_subjects_neg=c.n_neg_subjects, auc_diff=c.diff, auc_diff_low=low, auc_diff_high=high,
                       auc_diff_p=c.p, auc_diff_seed_sd=c.seed_sd, auc_diff_pretrain_sd=c.pretrain_sd,
                       claim="" if c.has_at_least(min_subjects) else TOO_FEW)
        rows.append(row)
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for (mode, inputs, fraction), idx in df.groupby(FAMILY, sort=False).groups.items():
        family = [i for i in idx if df.at[i, "n_paired"] > 0 and df.at[i, "claim"] != TOO_FEW]
        if not family:
            continue
        df.loc[family, "auc_diff_p_holm"] = _floored_holm(df.loc[family, "auc_diff_p"], n_boot)
        df.loc[family, "holm_family"] = (f"exploratory: {len(family)} comparisons with {reference} at {mode}, "
                                         f"{inputs}, fraction {float(fraction):g}")
        for i in family:
            r = df.loc[i]
            df.at[i, "claim"] = _claim(r["init"], reference, r["auc_diff_p_holm"], r["auc_diff_low"],
                                       r["auc_diff_high"], level)
    return _sorted(df.astype({"n_paired": "Int64", "n_test_subjects_pos": "Int64", "n_test_subjects_neg": "Int64"}),
                   ["init", "mode", "inputs", "fraction"])


def with_primary(summary: pd.DataFrame, prim: pd.DataFrame, primary: dict[str, Any]) -> pd.DataFrame:
    """summary.csv's rows of the pre-specified comparison carry its verdict, as summary.md states it:
    the Holm p over the tasks that can carry a claim, and its claim (none where too few subjects)."""
    out = summary.copy()
    if prim.empty:
        return out
    at = ((out["init"] == primary["init"]) & (out["mode"] == primary["mode"]) & (out["inputs"] == primary["inputs"])
          & np.isclose(out["fraction"].astype(float), float(primary["fraction"])))
    m = int(prim["auc_diff_p_holm"].notna().sum())
    for r in prim.itertuples(index=False):
        i = out.index[at & (out["task"] == r.task)]
        claim = (TOO_FEW if pd.isna(r.auc_diff_p_holm) else f"favours {primary['init']}" if r.favours
                 else f"favours {primary['reference']}" if r.favours_reference else "none")
        out.loc[i, "auc_diff_p_holm"] = r.auc_diff_p_holm
        out.loc[i, "claim"] = f"primary: {claim}"
        out.loc[i, "holm_family"] = f"primary: {m} tasks" if claim != TOO_FEW else ""
    return out


def _at(table: pd.DataFrame, primary: dict[str, Any], init: str) -> pd.DataFrame:
    return table[(table["init"] == init) & (table["mode"] == primary["mode"]) & (table["inputs"] == primary["inputs"])
                 & np.isclose(table["fraction"].astype(float), float(primary["fraction"]))]


def primary_rows(comparisons: dict[str, Comparison], n_boot: int, level: float = 0.95,
                 min_subjects: int = MIN_CLAIM_SUBJECTS) -> pd.DataFrame:
    """The primary comparison's verdict, one row per task, from its per-task comparisons.

    m = number of tasks with at least ``min_subjects`` test subjects of each class: only they can
    carry a claim (the others show their interval, unadjusted, and no verdict). p_holm: Holm over
    those m tasks. The adjusted interval is the
    simultaneous (Bonferroni) one at level 1 - (1 - level) / m. A task favours the init when that
    interval lies above 0 and the Holm p is below 1 - level (the two agree except where the
    bootstrap is too short to resolve the adjusted tails), the reference when it lies below 0.
    """
    tasks = sorted(comparisons)
    if not tasks:
        return pd.DataFrame(columns=PRIMARY_COLUMNS)
    claims = [comparisons[t].has_at_least(min_subjects) for t in tasks]
    m = sum(claims)
    p_holm = _floored_holm([comparisons[t].p if ok else math.nan for t, ok in zip(tasks, claims)], n_boot)
    rows = []
    for task, ph, ok in zip(tasks, p_holm, claims):
        c = comparisons[task]
        low, high = c.interval(level)
        adj_low, adj_high = c.interval(1 - (1 - level) / max(m, 1)) if ok else (math.nan, math.nan)
        rows.append({"task": task, "n_seeds": c.n_seeds, "n_pretrain_seeds": c.n_runs,
                     "n_test_subjects_pos": c.n_pos_subjects,
                     "n_test_subjects_neg": c.n_neg_subjects, "auc_init": float(np.mean(c.auc_a)),
                     "auc_reference": float(np.mean(c.auc_b)), "auc_diff": c.diff, "auc_diff_low": low,
                     "auc_diff_high": high, "auc_diff_seed_sd": c.seed_sd, "auc_diff_pretrain_sd": c.pretrain_sd,
                     "auc_diff_p": c.p,
                     "auc_diff_p_holm": float(ph), "auc_diff_adj_low": adj_low, "auc_diff_adj_high": adj_high,
                     "favours": bool(adj_low > 0 and ph < 1 - level),
                     "favours_reference": bool(adj_high < 0 and ph < 1 - level)})
    return pd.DataFrame(rows, columns=PRIMARY_COLUMNS)


def primary_comparison(table: pd.DataFrame, primary: dict[str, Any], n_boot: int, seed: int = 0,
                       level: float = 0.95, preds: PredictionSource | None = None) -> pd.DataFrame:
    """The pre-specified comparison (``primary``: init, reference, mode, inputs, fraction), one row per
    task that has both at that setting with a common seed (:func:`primary_rows`); empty if none.

    Draws are keyed as in :func:`summarise`, so a task's interval here equals its summary.csv row.
    """
    preds = preds or _Predictions()
    init = dict(list(_at(table, primary, primary["init"]).groupby("task")))
    ref = dict(list(_at(table, primary, primary["reference"]).groupby("task")))
    comparisons = {}
    for task in sorted(set(init) & set(ref)):
        cells = matched_cells(init[task], ref[task])
        if cells:
            comparisons[task] = compare_cells(cells, primary["mode"], n_boot, seed, preds)
    return primary_rows(comparisons, n_boot, level, primary.get("min_test_subjects", MIN_CLAIM_SUBJECTS))


def _compare(a: pd.DataFrame, b: pd.DataFrame, mode: str, n_boot: int, seed: int, level: float,
             preds: PredictionSource) -> tuple[Comparison, float, float] | None:
    """Paired comparison of two jobs' tables on their matched cells, with its interval."""
    cells = matched_cells(a, b)
    if not cells:
        return None
    c = compare_cells(cells, mode, n_boot, seed, preds)
    return (c, *c.interval(level))


def control_comparisons(table: pd.DataFrame, primary: dict[str, Any], n_boot: int, seed: int = 0,
                        level: float = 0.95, preds: PredictionSource | None = None) -> pd.DataFrame:
    """The controls of the primary comparison (:data:`CONTROL_COLUMNS`): at the primary mode and
    fraction, for every task and inputs other than the primary's where both inits have results, the
    init's AUC difference to the reference with those inputs, and each init's change from the
    primary inputs to those (primary minus control: what the removed history or times were worth
    to it). Intervals unadjusted; draws keyed as in :func:`summarise`."""
    preds = preds or _Predictions()

    def jobs(init: str, inputs: str) -> dict[str, pd.DataFrame]:
        at = _at(table, {**primary, "inputs": inputs}, init)
        return dict(list(at.groupby("task")))

    init, ref, mode = primary["init"], primary["reference"], primary["mode"]
    full = {name: jobs(name, primary["inputs"]) for name in (init, ref)}
    rows = []
    for inputs in sorted(set(table["inputs"]) - {primary["inputs"]}):
        ctl = {name: jobs(name, inputs) for name in (init, ref)}
        for task in sorted(set(ctl[init]) & set(ctl[ref])):
            pair = _compare(ctl[init][task], ctl[ref][task], mode, n_boot, seed, level, preds)
            if pair is None:
                continue
            c, low, high = pair
            row = {"task": task, "inputs": inputs, "n_seeds": c.n_seeds, "auc_init": float(np.mean(c.auc_a)),
                   "auc_reference": float(np.mean(c.auc_b)), "auc_diff": c.diff, "auc_diff_low": low,
                   "auc_diff_high": high}
            for name, key in ((init, "init_change"), (ref, "reference_change")):
                own = _compare(full[name][task], ctl[name][task], mode, n_boot, seed, level, preds) \
                    if task in full[name] else None
                row.update({key: own[0].diff, f"{key}_low": own[1], f"{key}_high": own[2]} if own else
                           {key: math.nan, f"{key}_low": math.nan, f"{key}_high": math.nan})
            rows.append(row)
    return pd.DataFrame(rows, columns=CONTROL_COLUMNS).sort_values(["task", "inputs"], kind="mergesort",
                                                                   ignore_index=True)


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _p(p: float, n_boot: int) -> str:
    return "" if pd.isna(p) else f"< {1 / n_boot:.2g}" if p == 0 else f"{p:.3g}"


def _ci(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"[{low:+.3f}, {high:+.3f}]"


def _pct(level: float) -> str:
    return f"{100 * level:.4g}%"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _setting(primary: dict[str, Any]) -> str:
    mode = "full fine-tuning" if primary["mode"] == "full" else f"{primary['mode']} mode"
    return f"{mode}, {primary['inputs']} inputs, label fraction {float(primary['fraction']):g}"


def _primary_section(prim: pd.DataFrame, primary: dict[str, Any], table: pd.DataFrame, n_boot: int,
                     level: float) -> list[str]:
    init, reference = primary["init"], primary["reference"]
    lines = ["## Primary comparison (pre-specified)", "",
             f"Pre-specified comparison: test AUC of **{init}** vs **{reference}**, {_setting(primary)}.", ""]
    missing = [name for name in (init, reference) if _at(table, primary, name).empty]
    if missing:
        return lines + [f"**Not made: no results of {' and '.join(missing)} at this setting**, so this study "
                        f"makes no primary claim.", ""]
    if prim.empty:
        return lines + [f"**Not made: no task has results of both {init} and {reference} with a common seed at "
                        f"this setting**, so this study makes no primary claim.", ""]
    need = primary.get("min_test_subjects", MIN_CLAIM_SUBJECTS)
    claimable = prim["auc_diff_p_holm"].notna()
    m, k, j = int(claimable.sum()), int(prim["favours"].sum()), int(prim["favours_reference"].sum())
    few = (f"{len(prim) - m} of {len(prim)} tasks have fewer than {need} positive or negative test subjects: too "
           f"few for a claim, so they show their unadjusted interval and do not count.")
    if m:
        lines += [f"**The primary comparison favours {init} on {k} of {m} tasks** (Holm-adjusted; simultaneous "
                  f"{_pct(level)} intervals above 0), and {reference} on {j} of {m}."
                  + (f" {few}" if m < len(prim) else ""), ""]
    else:
        lines += [f"**No primary claim: every task compared has fewer than {need} positive or negative test "
                  f"subjects** (`study.primary.min_test_subjects`); the intervals below are unadjusted and "
                  f"describe this cohort's test split only.", ""]
    runs = int(prim["n_pretrain_seeds"].max()) > 1  # several pretraining runs: their spread apart
    head = ["task", f"ΔAUC {init} − {reference}", f"{_pct(level)} CI (subjects)", f"simultaneous {_pct(level)} CI",
            "p", "Holm p", "seed sd", *(["pretraining sd"] if runs else []),
            "pretraining runs × seeds" if runs else "seeds", "test subjects +/−", f"AUC {init}", f"AUC {reference}",
            "favours"]
    rows = []
    for r in prim.itertuples(index=False):
        rows.append([r.task, f"{r.auc_diff:+.3f}", _ci(r.auc_diff_low, r.auc_diff_high),
                     _ci(r.auc_diff_adj_low, r.auc_diff_adj_high), _p(r.auc_diff_p, n_boot),
                     "" if pd.isna(r.auc_diff_p_holm) else f"{r.auc_diff_p_holm:.3g}",
                     "" if pd.isna(r.auc_diff_seed_sd) else f"{r.auc_diff_seed_sd:.3f}",
                     *([_sd(r.auc_diff_pretrain_sd)] if runs else []),
                     f"{max(r.n_pretrain_seeds, 1)} × {r.n_seeds}" if runs else str(r.n_seeds),
                     f"{r.n_test_subjects_pos}/{r.n_test_subjects_neg}", f"{r.auc_init:.3f}",
                     f"{r.auc_reference:.3f}", init if r.favours else reference if r.favours_reference
                     else "–" if pd.notna(r.auc_diff_p_holm) else "too few subjects"])
    lines += _table(head, rows)
    not_compared = sorted(set(table["task"]) - set(prim["task"]))
    if not_compared:
        lines += ["", f"Not in the comparison (no results of both at this setting with a common seed): "
                      f"{', '.join(not_compared)}."]
    adj = 1 - (1 - level) / max(m, 1)
    crossed = (" Each pretraining run of an init is fine-tuned with every seed; the bootstrap draws runs and "
               "seeds with replacement as crossed factors. Seed sd: over seeds of the difference averaged over "
               "runs; pretraining sd: over runs of the difference averaged over seeds.") if runs else ""
    lines += ["", f"ΔAUC: mean over seeds of the per-seed AUC difference on the same test samples. Intervals: "
                  f"paired bootstrap ({n_boot} resamples) that draws test subjects with all their samples "
                  f"(stratified: only negative, only positive, both) and seeds with replacement.{crossed} "
                  f"Simultaneous: "
                  f"Bonferroni over the {m} tasks that can carry a claim (each at {_pct(adj)}). p two-sided; Holm over "
                  f"the same {m} tasks (p below 1/{n_boot} set to 1/{n_boot} first). A task favours an init when "
                  f"its simultaneous interval excludes 0 and its Holm p is below {1 - level:.2g}. Test subjects "
                  f"+/−: with at least one positive / negative test sample (a claim needs {need} of each, an "
                  f"interval {MIN_RESAMPLABLE})."]
    tail = n_boot * (1 - adj) / 2
    if m and tail < 10:
        lines += ["", f"Note: each tail of the simultaneous intervals holds {tail:.1f} resamples; raise "
                      f"n_bootstrap for stable bounds."]
    return lines + [""]


def _sd(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.3f}"


def _diff(value: float, low: float, high: float) -> str:
    return "" if pd.isna(value) else f"{value:+.3f} {_ci(low, high)}"


def _controls_section(controls: pd.DataFrame, prim: pd.DataFrame, primary: dict[str, Any], level: float) -> list[str]:
    if controls.empty:
        return []
    init, reference, inputs = primary["init"], primary["reference"], primary["inputs"]
    setting = _setting(primary).replace(f", {inputs} inputs", "")
    lines = ["## Controls of the primary comparison", "",
             f"Where the difference comes from: {init} and {reference} fine-tuned again ({setting}) on reduced "
             f"inputs. **index**: the index scan alone, no history; **time_shuffled**: the history with its times "
             f"permuted among its scans (in training and test). A gain of {init} that stays with the index scan "
             f"alone is not carried by the history; one that stays with shuffled times is not carried by the times. "
             f"\"{inputs} − control\": an init's own AUC change when its inputs are reduced (near 0: it does not "
             f"use what was removed). Exploratory: {_pct(level)} intervals unadjusted.", ""]
    head = ["task", "inputs", f"AUC {init}", f"AUC {reference}", f"ΔAUC {init} − {reference} [{_pct(level)} CI]",
            f"{init}: {inputs} − control", f"{reference}: {inputs} − control", "seeds"]
    prim = prim.set_index("task")
    rows = []
    for task, g in controls.groupby("task", sort=True):
        if task in prim.index:
            r = prim.loc[task]
            rows.append([task, f"{inputs} (primary)", f"{r.auc_init:.3f}", f"{r.auc_reference:.3f}",
                         _diff(r.auc_diff, r.auc_diff_low, r.auc_diff_high), "", "", str(r.n_seeds)])
        for r in g.itertuples(index=False):
            rows.append([task, r.inputs, f"{r.auc_init:.3f}", f"{r.auc_reference:.3f}",
                         _diff(r.auc_diff, r.auc_diff_low, r.auc_diff_high),
                         _diff(r.init_change, r.init_change_low, r.init_change_high),
                         _diff(r.reference_change, r.reference_change_low, r.reference_change_high), str(r.n_seeds)])
    return lines + _table(head, rows) + [""]


def _skipped_section(skipped: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    if skipped.empty:
        return []
    lines = ["## Tasks not evaluated", ""]
    for task, g in skipped.groupby("task", sort=True):
        reasons = list(dict.fromkeys(g["reason"]))
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else "")
        total = len(g) + table.loc[table["task"] == task, "source"].nunique()
        lines.append(f"- {task}: {shown} ({len(g)} of {total} jobs)")
    return lines + [""]


def _exploratory_section(summary_df: pd.DataFrame, reference: str, n_boot: int, level: float) -> list[str]:
    lines = ["## Exploratory: every init, mode and fraction", "",
             f"Not adjusted for choosing among inits, modes or fractions: a good-looking row here is a hypothesis, "
             f"not a finding. Holm p adjusts over every task × init compared with {reference} at the same mode, "
             f"inputs and fraction that has at least the claim's number of test subjects of each class; the others "
             f"have no adjusted p and claim nothing (summary.csv: `claim`, `holm_family`; the primary "
             f"comparison's rows there carry the primary section's Holm p and verdict).", ""]
    if summary_df.empty:
        return lines + ["No evaluated jobs.", ""]
    show_inputs = summary_df["inputs"].nunique() > 1
    runs = int(summary_df["n_pretrain_seeds"].max()) > 1
    head = ["task", "init", "mode", *(["inputs"] if show_inputs else []), "fraction",
            "pretraining runs × seeds" if runs else "seeds", "AUC mean ± sd", *(["AUC pretraining sd"] if runs else []),
            "BA mean ± sd", f"ΔAUC vs {reference} [{_pct(level)} CI]", "p", "Holm p", "claim"]
    rows = []
    for r in summary_df.itertuples(index=False):
        diff = "" if pd.isna(r.auc_diff) else f"{r.auc_diff:+.3f} {_ci(r.auc_diff_low, r.auc_diff_high)}"
        cells = f"{max(r.n_pretrain_seeds, 1)} × {r.n_seeds}" if runs else str(r.n_seeds)
        rows.append([r.task, r.init, r.mode, *([r.inputs] if show_inputs else []), f"{r.fraction:g}", cells,
                     _pm(r.auc_mean, r.auc_sd), *([_sd(r.auc_pretrain_sd)] if runs else []),
                     _pm(r.balanced_accuracy_mean, r.balanced_accuracy_sd), diff,
                     _p(r.auc_diff_p, n_boot), "" if pd.isna(r.auc_diff_p_holm) else f"{r.auc_diff_p_holm:.3g}",
                     r.claim])
    over = ("seeds (label-fraction subsets) and pretraining runs; AUC pretraining sd: over the runs of their "
            "mean over seeds") if runs else "seeds (label-fraction subsets)"
    return lines + _table(head, rows) + [
        "", f"Mean ± sd over {over}. ΔAUC: paired bootstrap over test subjects and seeds "
            f"({n_boot} resamples), same seeds for both inits; p two-sided; n/a: fewer than "
            f"{MIN_RESAMPLABLE} positive or negative test subjects.", ""]


def _schedule_section(baseline: dict[str, pd.DataFrame], primary: dict[str, Any], n_boot: int,
                      level: float) -> list[str]:
    """Each image init of the primary comparison against the schedule-only baseline (same setting, test
    samples and seeds), judged as the primary comparison is: what the images add beyond the schedule."""
    if not baseline:
        return []
    lines = ["## Against the schedule-only baseline", "",
             f"`{SCHEDULE}`: a logistic regression on what a model could read without the image (number of "
             f"input scans, their span, the index visit's month, age at it, sex, cohort), fitted on the same "
             f"training samples. A gain that this baseline also has is not a gain of the images.", ""]
    need = primary.get("min_test_subjects", MIN_CLAIM_SUBJECTS)
    for init, rows in baseline.items():
        if rows.empty:
            lines += [f"- {init}: no results of both {init} and {SCHEDULE} at this setting.", ""]
            continue
        m = int(rows["auc_diff_p_holm"].notna().sum())
        k = int(rows["favours"].sum())
        if m:
            verdict = (f"**{init} beats the schedule-only baseline on {k} of {m} tasks**"
                       + ("" if k == m else f"; on the other {m - k} it does not beat what the schedule alone gives")
                       + f" (Holm over those {m} tasks; simultaneous {_pct(level)} intervals above 0).")
        else:
            verdict = (f"**{init} vs {SCHEDULE}: no claim**, every task has fewer than {need} positive or "
                       f"negative test subjects.")
        lines += [verdict, ""]
        head = ["task", f"AUC {init}", f"AUC {SCHEDULE}", f"ΔAUC [{_pct(level)} CI]", "Holm p", "verdict"]
        body = []
        for r in rows.itertuples(index=False):
            verdict = (TOO_FEW if pd.isna(r.auc_diff_p_holm) else f"{init} beats it" if r.favours
                       else f"{SCHEDULE} beats {init}" if r.favours_reference else f"{init} does not beat it")
            body.append([r.task, f"{r.auc_init:.3f}", f"{r.auc_reference:.3f}",
                         _diff(r.auc_diff, r.auc_diff_low, r.auc_diff_high),
                         "" if pd.isna(r.auc_diff_p_holm) else f"{r.auc_diff_p_holm:.3g}", verdict])
        lines += _table(head, body) + [""]
    return lines


def summary_markdown(summary_df: pd.DataFrame, prim: pd.DataFrame, primary: dict[str, Any], table: pd.DataFrame,
                     skipped: pd.DataFrame, n_boot: int, level: float = 0.95,
                     controls: pd.DataFrame | None = None, baseline: dict[str, pd.DataFrame] | None = None,
                     convergence_lines: list[str] | None = None) -> str:
    """The report: the pre-specified primary comparison first, the schedule-only baseline and the
    controls beside it, then the tasks not evaluated, the exploratory table of everything and the
    training convergence of every cell (sslad.convergence)."""
    controls = pd.DataFrame(columns=CONTROL_COLUMNS) if controls is None else controls
    lines = ["# Fine-tuning results", "", *_primary_section(prim, primary, table, n_boot, level),
             *_schedule_section(baseline or {}, primary, n_boot, level),
             *_controls_section(controls, prim, primary, level), *_skipped_section(skipped, table),
             *_exploratory_section(summary_df, primary["reference"], n_boot, level), *(convergence_lines or [])]
    return "\n".join(lines).rstrip("\n") + "\n"


def check_settings(settings: dict[str, Any]) -> tuple[int, int, float, dict[str, Any]]:
    """(n_bootstrap, seed, level, primary) of the aggregate settings; ValueError naming the bad key."""
    if not isinstance(settings, dict):
        raise ValueError(f"aggregate settings must be an object, got {settings!r}")
    n_boot, seed, level = settings.get("n_bootstrap", 1000), settings.get("seed", 0), settings.get("level", 0.95)
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"aggregate settings: 'n_bootstrap' must be a positive integer, got {n_boot!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"aggregate settings: 'seed' must be a non-negative integer, got {seed!r}")
    if not _is_number(level) or not 0 < level < 1:
        raise ValueError(f"aggregate settings: 'level' must be in (0, 1), got {level!r}")
    primary = settings.get("primary")
    if not isinstance(primary, dict):
        raise ValueError("aggregate settings need 'primary': {init, reference, mode, inputs, fraction}, the "
                         f"pre-specified comparison; got {primary!r}")
    for key in PRIMARY_KEYS:
        if key not in primary:
            raise ValueError(f"aggregate settings: 'primary' is missing '{key}'")
    for key in ("init", "reference", "inputs"):
        if not isinstance(primary[key], str) or not primary[key]:
            raise ValueError(f"aggregate settings: 'primary.{key}' must be a non-empty string, got {primary[key]!r}")
    if primary["mode"] not in MODES:
        raise ValueError(f"aggregate settings: 'primary.mode' must be one of {MODES}, got {primary['mode']!r}")
    if not _is_number(primary["fraction"]) or not 0 < primary["fraction"] <= 1:
        raise ValueError(f"aggregate settings: 'primary.fraction' must be in (0, 1], got {primary['fraction']!r}")
    need = primary.get("min_test_subjects", MIN_CLAIM_SUBJECTS)
    if not isinstance(need, int) or isinstance(need, bool) or need < MIN_RESAMPLABLE:
        raise ValueError(f"aggregate settings: 'primary.min_test_subjects' must be an integer >= {MIN_RESAMPLABLE}, "
                         f"got {need!r}")
    if primary["init"] == primary["reference"]:
        raise ValueError(f"aggregate settings: 'primary.init' and 'primary.reference' are both {primary['init']!r}")
    return n_boot, seed, float(level), primary


def _colours(inits: list[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * (1 + len(inits)))
    return {i: COLOURS[i] if i in COLOURS else next(spare) for i in sorted(inits)}


def plot_task(table: pd.DataFrame, task: str, out_png: str | Path, colours: dict[str, str]) -> None:
    """AUC and balanced accuracy against label fraction, one line per init and mode.

    The x axis is logarithmic: label fractions are usually spaced by factors (0.1, 0.2, 0.5, 1), and
    a log axis keeps their true ratios while giving each the same room (a categorical axis would
    hide uneven spacing). Lines of different inits are nudged sideways so error bars do not overlap.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = table[table["task"] == task]
    fractions = sorted(df["fraction"].unique())
    inits = list(dict.fromkeys(_sorted(df[["task", "init"]].drop_duplicates(), ["init"])["init"]))
    show_inputs = df["inputs"].nunique() > 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, metric, name in zip(axes, ("auc", "balanced_accuracy"), ("test AUC", "test balanced accuracy")):
        bottom = 0.4
        for k, init in enumerate(inits):
            nudge = math.exp(0.04 * (k - (len(inits) - 1) / 2))
            for (inputs, mode), g in df[df["init"] == init].groupby(["inputs", "mode"], sort=True):
                stats = g.groupby("fraction")[metric].agg(["mean", "std"]).sort_index()
                bottom = min(bottom, float((stats["mean"] - stats["std"].fillna(0)).min()))
                label = f"{init} ({mode})" + (f" [{inputs}]" if show_inputs else "")
                ax.errorbar(stats.index.to_numpy() * nudge, stats["mean"], yerr=stats["std"].fillna(0).to_numpy(),
                            color=colours[init], linestyle="-" if mode == "full" else "--", marker="o",
                            markersize=4, capsize=2, linewidth=1.2, label=label)
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction (log scale)")
        ax.set_ylabel(name)
        ax.set_ylim(max(0.0, bottom - 0.03), 1.02)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                   title="mean ± sd over seeds", title_fontsize=7)
    fig.suptitle(task)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _by_cohort_section(table: pd.DataFrame, missing: pd.DataFrame, primary: dict[str, Any]) -> list[str]:
    """summary.md's breakdown of the primary setting by test cohort: mean AUC over seeds of each task x
    init on each cohort's part of the test split, and the parts that could not be scored."""
    rows = table[(table["test_cohort"] != ALL) & (table["mode"] == primary["mode"])
                 & (table["inputs"] == primary["inputs"]) & ((table["fraction"] - primary["fraction"]).abs() < 1e-9)]
    if rows.empty and missing.empty:
        return []
    lines = ["## By test cohort", "",
             f"The same models and thresholds ({_setting(primary)}), scored on each cohort's part of the test "
             "split: test AUC, mean ± sd over seeds (test subjects). Exploratory.", ""]
    cohorts = sorted(rows["test_cohort"].unique())
    body = []
    for (task, init), g in _sorted(rows, ["init"]).groupby(["task", "init"], sort=False):
        cells = []
        for cohort in cohorts:
            c = g[g["test_cohort"] == cohort]
            cells.append(f"{_pm(c['auc'].mean(), c['auc'].std())} ({int(c['n_test_subjects'].max())})" if len(c)
                         else "n/a")
        body.append([task, init, *cells])
    if body:
        lines += _table(["task", "init", *cohorts], body) + [""]
    for (task, cohort), g in missing.groupby(["task", "test_cohort"], sort=True):
        lines.append(f"- {task} on {cohort}: not scored ({g['reason'].iloc[0]}; {len(g)} job rows)")
    return lines + ([""] if not missing.empty else [])


def _demoted(markdown: str) -> list[str]:
    """A report's body one heading level down, without its title (a section of a larger report)."""
    return [("#" + line if line.startswith("#") else line) for line in markdown.splitlines()[1:]]


def run(metrics_paths: list[str], table_csv: str, summary_csv: str, summary_md: str, figures_dir: str,
        settings: dict[str, Any], predictions_paths: list[str] | None = None,
        subjects_tsv: str | None = None) -> None:
    """Read every job's metrics.json and predictions.tsv (``predictions_paths``, one per metrics file
    in the same order; default: next to it), write the table, summary, markdown and one figure per
    evaluated task (``{figures_dir}/{task}.png``; ``{task}_heldout-{cohort}.png`` per held-out cohort).

    ``settings``: n_bootstrap, seed (default 0), level (default 0.95) and primary (init, reference,
    mode, inputs, fraction), the pre-specified comparison that summary.md leads with.
    ``subjects_tsv``: the manifest's subjects.tsv; with it, rows per test cohort (:func:`cohort_rows`).
    Jobs of a leave-one-cohort-out study are summarised per held-out cohort, each its own section.
    """
    n_boot, seed, level, primary = check_settings(settings)
    if predictions_paths is not None and len(predictions_paths) != len(metrics_paths):
        raise ValueError(f"{len(predictions_paths)} predictions files for {len(metrics_paths)} metrics files")
    preds = _Predictions(dict(zip(metrics_paths, predictions_paths or [])))
    table, skipped = build_table(metrics_paths, n_boot, level, preds)
    missing = pd.DataFrame(columns=COHORT_SKIPPED_COLUMNS)
    if subjects_tsv:
        subjects = pd.read_csv(subjects_tsv, sep="\t", dtype=str)
        per_cohort, missing = cohort_rows(table, preds, dict(zip(subjects["participant_id"], subjects["cohort"])),
                                          n_boot, level)
        if not per_cohort.empty:  # each job's rows together, its whole test split first
            table = pd.concat([table, per_cohort], ignore_index=True).assign(_part=lambda d: d["test_cohort"] != ALL)
            table = _sorted(table, ["heldout", "init", "mode", "inputs", "fraction", "pretrain_seed", "seed", "_part",
                                    "test_cohort"]).drop(columns="_part")
    write_csv(table.drop(columns="source"), table_csv)
    folds = sorted(set(table["heldout"]) | set(skipped["heldout"])) or [""]
    summaries, sections = [], []
    training = pd.DataFrame([r for path in metrics_paths for r in convergence.training_rows(read_job(path)[0])],
                            columns=convergence.TRAINING_COLUMNS).astype({"heldout": str})
    colours = _colours(sorted(table["init"].unique()))
    Path(figures_dir).mkdir(parents=True, exist_ok=True)
    for fold in folds:
        whole = table[(table["heldout"] == fold) & (table["test_cohort"] == ALL)]
        need = primary.get("min_test_subjects", MIN_CLAIM_SUBJECTS)
        summary = summarise(whole, n_boot, seed, primary["reference"], level, preds, need)
        prim = primary_comparison(whole, primary, n_boot, seed, level, preds)
        summary = with_primary(summary, prim, primary)
        summaries.append(summary.assign(heldout=fold)[["heldout", *SUMMARY_COLUMNS]])
        baseline = {name: primary_comparison(whole, {**primary, "init": name, "reference": SCHEDULE}, n_boot, seed,
                                             level, preds)
                    for name in dict.fromkeys((primary["init"], primary["reference"])) if name != SCHEDULE}
        controls = control_comparisons(whole, primary, n_boot, seed, level, preds)
        fold_training = training[training["heldout"] == fold]
        converged = convergence.section(convergence.flags(fold_training, SCHEDULE), fold_training, primary)
        text = summary_markdown(summary, prim, primary, whole, skipped[skipped["heldout"] == fold], n_boot, level,
                                controls, baseline, converged)
        lines = text.rstrip("\n").splitlines() + [""] + _by_cohort_section(table[table["heldout"] == fold],
                                                                          missing[missing["heldout"] == fold], primary)
        sections.append((fold, lines))
        for task in sorted(whole["task"].unique()):
            name = f"{task}_heldout-{fold}" if fold else task
            plot_task(whole, task, Path(figures_dir) / f"{name}.png", colours)
    write_csv(pd.concat(summaries, ignore_index=True), summary_csv)
    if folds == [""]:
        md = sections[0][1]
    else:
        md = ["# Fine-tuning results: leave one cohort out", "",
              "Each section: models pretrained and fine-tuned on the other cohorts only, tested on every "
              "subject of the held-out cohort.", ""]
        for fold, lines in sections:
            body = _demoted("\n".join(lines))
            while body and not body[0].strip():
                body.pop(0)
            md += [f"## Held-out cohort {fold}", "", *body, ""]
    with atomic_path(summary_md) as tmp:
        tmp.write_text("\n".join(md).rstrip("\n") + "\n")
