"""Paired comparisons of inits on the same test subjects: summary.csv, the primary comparison, its controls.

Why paired, over subjects and seeds: every init is tested on the same test samples with the same
label-fraction subset (seed), so the AUC difference to the reference is judged on the same test
subjects for both models; the test-sample noise they share cancels, which an unpaired comparison of
two intervals would not see. Subjects, not samples, are the units of the bootstrap, because a
subject's index visits are not independent evidence. The seeds' spread is in the variance too,
because a difference that comes and goes with the training seed is not a property of the init; and a
pretrained init's pretraining runs (pretrain.seeds), crossed with the seeds, because one that comes
and goes with the pretraining run is not either. With 2-3 seeds that spread is known to 1-2 degrees
of freedom, and the t intervals say so (:func:`paired_auc_diff`; error rates measured by
benchmarks/calibration.py).

Why controls beside it: a gain of a temporal init may come from the history (several scans) or from
their times, or from neither. The primary init and reference fine-tuned again on reduced inputs
(the index scan alone; the history with its times shuffled) show which: per control, the init's
difference to the reference, and each one's own AUC change from the full inputs, on the same test
samples and seeds (:func:`control_comparisons`).

Why a pre-specified primary comparison: with several inits, modes, fractions and tasks, some
comparison looks good by chance; the study's claim rests on one comparison named in the config
before the results, judged with Holm-adjusted p-values and simultaneous (Bonferroni) intervals
over the tasks. Everything else is exploratory and labelled so.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any, Hashable, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from sslad.metrics import (
    auc,
    auc_from_counts,
    holm,
    subject_counts,
    subject_strata,
)
from sslad.result_table import Predictions, PredictionSource, sorted_rows

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


PRIMARY_COLUMNS = ["task", "n_seeds", "n_pretrain_seeds", "n_test_subjects_pos", "n_test_subjects_neg", "auc_init",
                   "auc_reference", "auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_seed_sd",
                   "auc_diff_pretrain_sd", "auc_diff_p", "auc_diff_p_holm",
                   "auc_diff_adj_low", "auc_diff_adj_high", "auc_diff_df", "auc_diff_adj_df", "favours",
                   "favours_reference"]


# the controls of the primary comparison (summary.md), one row per task x control inputs:
# init - reference with those inputs, and each one's AUC with the primary inputs minus with those
CONTROL_COLUMNS = ["task", "inputs", "n_seeds", "auc_init", "auc_reference", "auc_diff", "auc_diff_low",
                   "auc_diff_high", "init_change", "init_change_low", "init_change_high", "reference_change",
                   "reference_change_low", "reference_change_high"]


# Fewer test subjects than this in either class: no interval or p, only the point difference (a
# bootstrap over one subject per class has a single distinct resample). A claim needs more:
# study.primary.min_test_subjects, below which the bootstrap's test-subject variance is far too small.
MIN_RESAMPLABLE = 2


class SeedPair(NamedTuple):
    """One seed's test predictions of an init (a) and the reference (b) on the same test samples."""

    labels: np.ndarray  # bool
    groups: np.ndarray  # subject of each sample
    a: np.ndarray  # logits
    b: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """AUC of an init minus the reference's, over its cells (fine-tuning seeds, crossed with pretraining
    runs where there are several): the per-cell AUCs, and the standard error and degrees of freedom of
    the mean difference (:func:`paired_auc_diff`), from which its t interval and p-value follow.
    ``runs``: each cell's pretraining run (-1: none); ``seeds``: its fine-tuning seed. ``df_simultaneous``:
    the degrees of freedom of the simultaneous intervals (None: :attr:`df`), fewer where a factor of the
    seeds' part has one (:func:`paired_auc_diff`)."""

    auc_a: np.ndarray
    auc_b: np.ndarray
    se: float
    df: float
    n_pos_subjects: int
    n_neg_subjects: int
    runs: np.ndarray | None = None
    seeds: np.ndarray | None = None
    df_simultaneous: float | None = None

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

    def _usable(self) -> bool:
        return self.has_at_least(MIN_RESAMPLABLE) and math.isfinite(self.se) and math.isfinite(self.diff)

    @property
    def p(self) -> float:
        """Two-sided p-value of "no difference" from the t distribution on :attr:`df` degrees of freedom."""
        if not self._usable():
            return math.nan
        if self.se == 0:
            return 1.0 if self.diff == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.diff) / self.se, self.df))

    @property
    def adjusted_df(self) -> float:
        """Degrees of freedom of the simultaneous intervals: :attr:`df_simultaneous`, else :attr:`df`."""
        return self.df if self.df_simultaneous is None else self.df_simultaneous

    def interval(self, level: float, simultaneous: bool = False) -> tuple[float, float]:
        """t interval of the mean difference at ``level``, within [-1, 1]; ``simultaneous``: on
        :attr:`df_simultaneous` (an interval at a level adjusted for several tasks)."""
        if not self._usable():
            return math.nan, math.nan
        half = float(stats.t.ppf(0.5 + level / 2, self.adjusted_df if simultaneous else self.df)) * self.se
        return max(-1.0, self.diff - half), min(1.0, self.diff + half)


def _key(text: str) -> int:
    return zlib.crc32(text.encode())


def _seed_variance(d: np.ndarray) -> tuple[float, float]:
    """Variance of the mean of a runs x seeds table ``d`` of differences from its mean squares, both
    factors random, and its degrees of freedom: (MS_runs + MS_seeds - MS_residual) / (runs x seeds),
    the terms of a factor with one level left out; at least the larger factor's term alone (the
    residual can pull the sum below what one factor shows). Satterthwaite degrees of freedom of the
    factors' terms (the residual's would give a fraction of one on a 2 x 2 table)."""
    r, f = d.shape
    factors = [(f * float(np.var(d.mean(axis=1), ddof=1)) / (r * f), r - 1)] if r > 1 else []
    factors += [(r * float(np.var(d.mean(axis=0), ddof=1)) / (r * f), f - 1)] if f > 1 else []
    resid = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
    residual = float((resid ** 2).sum()) / ((r - 1) * (f - 1) * r * f) if r > 1 and f > 1 else 0.0
    total = sum(v for v, _ in factors)
    df = total ** 2 / sum(v ** 2 / dof for v, dof in factors) if total > 0 else math.inf
    return max(total - residual, max(v for v, _ in factors)), df


def _satterthwaite(var: float, shared: float, subjects_df: float, spread: float, spread_df: float) -> float:
    """Satterthwaite degrees of freedom of ``var``, the shared part and the seeds' each on its own; as a
    shared part estimated below 0 takes off at most half the seeds' part, at least half their own."""
    if var <= 0:
        return subjects_df
    return max(var ** 2 / (shared ** 2 / subjects_df + spread ** 2 / spread_df), spread_df / 2)


def paired_auc_diff(pairs: list[SeedPair], n_boot: int, seed: int = 0,
                    crossed: list[tuple[Hashable, Hashable]] | None = None) -> Comparison:
    """Paired comparison of the mean (over cells) AUC difference a - b: its standard error from the test
    subjects (a paired bootstrap) and from the seeds and pretraining runs (their spread), with a t interval.

    The variance of the mean has two parts. (1) What every cell shares: the test subjects. A paired
    bootstrap draws subjects within their strata (:func:`sslad.metrics.subject_counts`), the same draw
    for a and b and for every cell (keyed by the sorted test subject ids), and the covariance of the
    resampled differences of two cells that share no seed and no run is that shared part. (2) What
    differs between cells: the seeds, the pretraining runs (``crossed``) and each cell's own reading of
    the test subjects, estimated from the spread of the cells' differences by the mean squares of a
    random runs x seeds table (:func:`_seed_variance`). The interval is the t interval on the
    Satterthwaite degrees of freedom of the sum, the subjects' part known to min(positive, negative test
    subjects) - 1, the seeds' to what the table gives: near the subjects' where the inits read some test
    subjects differently in every seed (the shared part then dominates, as in the validation study), near
    1 with 2 seeds where the seeds' spread dominates; at least half the seeds' own.

    Simultaneous intervals reach further into the tail (each at 1 - 0.05 / tasks), where the t
    approximation fails when a factor of the seeds' part has one degree of freedom (2 fine-tuning seeds, or
    2 pretraining runs): a spread that falls near 0 by chance hands the degrees of freedom to the subjects'
    part, and the intervals covered 0.88-0.93 instead of 0.95 (benchmarks/calibration.py). There the
    degrees of freedom of the simultaneous intervals count the seeds' part as at least the part of the
    test subjects' variance that the cells do not share (the paired bootstrap's variance of the mean over cells minus
    the shared part): the seeds' spread contains it, so an estimate below it is chance.

    Why not resample seeds and subjects together: a cell's own reading of the test subjects (the
    subject x seed interaction) is then counted twice, once by each draw, and the test is conservative
    where test-subject noise dominates (type-I error 1-3% at nominal 5% with 10-20 test subjects per
    class, benchmarks/calibration.py); a percentile interval over 2-3 resampled seeds also has too
    few distinct draws to reach its tails. With one cell the interval covers test-subject noise only.

    ``crossed``: per pair, its (pretraining run, fine-tuning seed) when the init was pretrained more than
    once, a complete grid; without it every pair is a seed of its own.
    """
    if not pairs:
        raise ValueError("paired_auc_diff needs at least one seed")
    k = len(pairs)
    levels = [(0, j) for j in range(k)] if crossed is None else list(crossed)
    if len(levels) != k:
        raise ValueError(f"crossed needs one (pretraining run, seed) per pair, got {len(levels)} for {k}")
    runs, run_of = np.unique(np.array([str(v[0]) for v in levels]), return_inverse=True)
    seeds, seed_of = np.unique(np.array([str(v[1]) for v in levels]), return_inverse=True)
    if len(set(map(tuple, levels))) != k or k != runs.size * seeds.size:
        raise ValueError("crossed seeds must form a complete grid, each combination once")
    counts: dict[tuple[str, bytes], np.ndarray] = {}
    diffs = np.empty((k, n_boot))
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
    auc_a = np.array([auc(p.labels, p.a) for p in pairs])
    auc_b = np.array([auc(p.labels, p.b) for p in pairs])
    # the test subjects' part is known to about as many degrees of freedom as the smaller class has subjects
    subjects_df = float(max(min(min(n_pos), min(n_neg)) - 1, 1))
    df_simultaneous = None
    if k == 1:
        var, df = float(np.var(diffs[0], ddof=1)), subjects_df
    else:
        cov = np.cov(diffs)
        # cells apart in every factor that varies share only the test subjects: their covariance is that
        # part (unbiased, so it may come out below 0 where it is small; it may then take off at most
        # half of the seeds' part)
        apart = ((run_of[:, None] != run_of[None, :]) | (runs.size == 1)) & \
                ((seed_of[:, None] != seed_of[None, :]) | (seeds.size == 1)) & ~np.eye(k, dtype=bool)
        table = np.empty((runs.size, seeds.size))
        table[run_of, seed_of] = auc_a - auc_b
        spread, spread_df = _seed_variance(table)
        shared = float(cov[apart].mean())
        var = max(shared + spread, spread / 2)
        df = _satterthwaite(var, shared, subjects_df, spread, spread_df)
        if 2 in (runs.size, seeds.size):  # a factor of the seeds' part on one degree of freedom
            df_simultaneous = min(df, _satterthwaite(var, shared, subjects_df,
                                                     max(spread, float(cov.mean()) - shared), spread_df))
    return Comparison(auc_a=auc_a, auc_b=auc_b, se=math.sqrt(var), df=df,
                      n_pos_subjects=min(n_pos), n_neg_subjects=min(n_neg), df_simultaneous=df_simultaneous)


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
    seeds grid, the two are crossed factors; otherwise the cells count as independent seeds (a grid
    with a cell missing, e.g. a diverged run, cannot be analysed as crossed)."""
    pairs = seed_pairs(cells, mode, preds)
    levels = [(c.run, c.seed) for c in cells]
    runs, seeds = {c.run for c in cells}, {c.seed for c in cells}
    crossed = levels if len(runs) > 1 and len(set(levels)) == len(runs) * len(seeds) == len(levels) else None
    comparison = paired_auc_diff(pairs, n_boot, seed, crossed=crossed)
    return dataclasses.replace(comparison, runs=np.array([c.run for c in cells]),
                               seeds=np.array([c.seed for c in cells]))


def seed_pairs(cells: list[Cell], mode: str, preds: PredictionSource) -> list[SeedPair]:
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


def _claim(init: str, reference: str, p_holm: float, low: float, high: float, level: float) -> str:
    """The verdict of one adjusted comparison: the init its interval and Holm p favour, or none."""
    if p_holm < 1 - level and low > 0:
        return f"favours {init}"
    if p_holm < 1 - level and high < 0:
        return f"favours {reference}"
    return "none"


def summarise(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, reference: str = "scratch",
              level: float = 0.95, preds: PredictionSource | None = None, *,
              min_subjects: int) -> pd.DataFrame:
    """One row per task x init x mode x inputs x fraction: mean and sd (ddof=1) over seeds, and for
    each init other than the reference the paired comparison with it on the seeds both have. A
    comparison with fewer than ``min_subjects`` test subjects of either class carries no claim and no
    adjusted p (as in summary.md); the others get Holm's adjustment over every such task x init at
    the same mode, inputs and fraction, and the claim it supports (exploratory: see summary.md)."""
    preds = preds or Predictions()
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
        df.loc[family, "auc_diff_p_holm"] = holm(df.loc[family, "auc_diff_p"])
        df.loc[family, "holm_family"] = (f"exploratory: {len(family)} comparisons with {reference} at {mode}, "
                                         f"{inputs}, fraction {float(fraction):g}")
        for i in family:
            r = df.loc[i]
            df.at[i, "claim"] = _claim(r["init"], reference, r["auc_diff_p_holm"], r["auc_diff_low"],
                                       r["auc_diff_high"], level)
    return sorted_rows(df.astype({"n_paired": "Int64", "n_test_subjects_pos": "Int64", "n_test_subjects_neg": "Int64"}),
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


def at_setting(table: pd.DataFrame, primary: dict[str, Any], init: str) -> pd.DataFrame:
    return table[(table["init"] == init) & (table["mode"] == primary["mode"]) & (table["inputs"] == primary["inputs"])
                 & np.isclose(table["fraction"].astype(float), float(primary["fraction"]))]


def primary_rows(comparisons: dict[str, Comparison], level: float = 0.95, *,
                 min_subjects: int) -> pd.DataFrame:
    """The primary comparison's verdict, one row per task, from its per-task comparisons.

    m = number of tasks with at least ``min_subjects`` test subjects of each class: only they can
    carry a claim (the others show their interval, unadjusted, and no verdict). p_holm: Holm over
    those m tasks. The adjusted interval is the
    simultaneous (Bonferroni) one at level 1 - (1 - level) / m, on its own degrees of freedom
    (``auc_diff_adj_df``, :attr:`Comparison.df_simultaneous`). A task favours the init when that
    interval lies above 0 and the Holm p is below 1 - level (the two agree except where the
    bootstrap is too short to resolve the adjusted tails, or where the interval has fewer degrees of
    freedom than the p), the reference when it lies below 0.
    """
    tasks = sorted(comparisons)
    if not tasks:
        return pd.DataFrame(columns=PRIMARY_COLUMNS)
    claims = [comparisons[t].has_at_least(min_subjects) for t in tasks]
    m = sum(claims)
    p_holm = holm([comparisons[t].p if ok else math.nan for t, ok in zip(tasks, claims)])
    rows = []
    for task, ph, ok in zip(tasks, p_holm, claims):
        c = comparisons[task]
        low, high = c.interval(level)
        adj_low, adj_high = c.interval(1 - (1 - level) / max(m, 1), simultaneous=True) if ok else (math.nan, math.nan)
        rows.append({"task": task, "n_seeds": c.n_seeds, "n_pretrain_seeds": c.n_runs,
                     "n_test_subjects_pos": c.n_pos_subjects,
                     "n_test_subjects_neg": c.n_neg_subjects, "auc_init": float(np.mean(c.auc_a)),
                     "auc_reference": float(np.mean(c.auc_b)), "auc_diff": c.diff, "auc_diff_low": low,
                     "auc_diff_high": high, "auc_diff_seed_sd": c.seed_sd, "auc_diff_pretrain_sd": c.pretrain_sd,
                     "auc_diff_p": c.p,
                     "auc_diff_p_holm": float(ph), "auc_diff_adj_low": adj_low, "auc_diff_adj_high": adj_high,
                     "auc_diff_df": c.df,
                     "auc_diff_adj_df": c.adjusted_df if ok else math.nan,
                     "favours": bool(adj_low > 0 and ph < 1 - level),
                     "favours_reference": bool(adj_high < 0 and ph < 1 - level)})
    return pd.DataFrame(rows, columns=PRIMARY_COLUMNS)


def primary_comparison(table: pd.DataFrame, primary: dict[str, Any], n_boot: int, seed: int = 0,
                       level: float = 0.95, preds: PredictionSource | None = None) -> pd.DataFrame:
    """The pre-specified comparison (``primary``: init, reference, mode, inputs, fraction), one row per
    task that has both at that setting with a common seed (:func:`primary_rows`); empty if none.

    Draws are keyed as in :func:`summarise`, so a task's interval here equals its summary.csv row.
    """
    preds = preds or Predictions()
    init = dict(list(at_setting(table, primary, primary["init"]).groupby("task")))
    ref = dict(list(at_setting(table, primary, primary["reference"]).groupby("task")))
    comparisons = {}
    for task in sorted(set(init) & set(ref)):
        cells = matched_cells(init[task], ref[task])
        if cells:
            comparisons[task] = compare_cells(cells, primary["mode"], n_boot, seed, preds)
    return primary_rows(comparisons, level, min_subjects=primary["min_test_subjects"])


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
    preds = preds or Predictions()

    def jobs(init: str, inputs: str) -> dict[str, pd.DataFrame]:
        at = at_setting(table, {**primary, "inputs": inputs}, init)
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
