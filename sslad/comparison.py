"""Paired comparisons of inits on the same test subjects: summary.csv, the primary comparison, its controls.

Why a paired bootstrap over subjects and seeds: every init is tested on the same test samples with
the same label-fraction subset (seed), so the AUC difference to the reference is judged on the same
resampled test subjects for both models; the test-sample noise they share cancels, which an
unpaired comparison of two intervals would not see. Subjects, not samples, are resampled because a
subject's index visits are not independent evidence. Seeds are resampled too, because a
difference that comes and goes with the training seed is not a property of the init; and a
pretrained init's pretraining runs (pretrain.seeds), crossed with the seeds, because one that comes
and goes with the pretraining run is not either.

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

from sslad.metrics import (
    auc,
    auc_from_counts,
    bootstrap_p,
    holm,
    percentile_interval,
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
                   "auc_diff_adj_low", "auc_diff_adj_high", "favours", "favours_reference"]


# the controls of the primary comparison (summary.md), one row per task x control inputs:
# init - reference with those inputs, and each one's AUC with the primary inputs minus with those
CONTROL_COLUMNS = ["task", "inputs", "n_seeds", "auc_init", "auc_reference", "auc_diff", "auc_diff_low",
                   "auc_diff_high", "init_change", "init_change_low", "init_change_high", "reference_change",
                   "reference_change_low", "reference_change_high"]


# Fewer test subjects than this in either class: no interval or p, only the point difference (a
# bootstrap over one subject per class has a single distinct resample). A claim needs more:
# study.primary.min_test_subjects, below which percentile intervals are far too narrow.
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
        df.loc[family, "auc_diff_p_holm"] = _floored_holm(df.loc[family, "auc_diff_p"], n_boot)
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



def primary_rows(comparisons: dict[str, Comparison], n_boot: int, level: float = 0.95, *,
                 min_subjects: int) -> pd.DataFrame:
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
    preds = preds or Predictions()
    init = dict(list(at_setting(table, primary, primary["init"]).groupby("task")))
    ref = dict(list(at_setting(table, primary, primary["reference"]).groupby("task")))
    comparisons = {}
    for task in sorted(set(init) & set(ref)):
        cells = matched_cells(init[task], ref[task])
        if cells:
            comparisons[task] = compare_cells(cells, primary["mode"], n_boot, seed, preds)
    return primary_rows(comparisons, n_boot, level, min_subjects=primary["min_test_subjects"])



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
