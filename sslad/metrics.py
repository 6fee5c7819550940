"""Test metrics of a binary classifier, with stratified bootstrap intervals.

Why numpy only: every fine-tuning job imports this module, and scikit-learn's import alone costs
more than all of these computations together. Resampling is stratified so that every resample has
both classes (AUC, sensitivity and specificity are defined in each one), and the bootstrap is
written on per-sample counts, so that a paired comparison can apply one set of draws to the scores
of two models. Why subjects: a subject's test samples (index visits) share its brain and its
diagnosis trajectory, so they are not independent; resampling samples would treat a subject with
four visits as four pieces of evidence and give intervals that are too narrow. With ``groups``, the
unit of resampling is the subject.
"""

from __future__ import annotations

import numpy as np

METRICS = ("auc", "balanced_accuracy", "sensitivity", "specificity")


def _check(labels: np.ndarray | list, scores: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
    """Labels as a boolean array and scores as float64, same length, no NaN."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    if y.dtype != bool:
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError(f"labels must be 0/1, got values {sorted(set(np.unique(y).tolist()))[:5]}")
        y = y.astype(bool)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def auc(labels: np.ndarray | list, scores: np.ndarray | list) -> float:
    """ROC AUC by the Mann-Whitney rank formula, tied scores sharing their average rank.

    NaN when only one class is present (the AUC is undefined there, and 0.5 would look like a result).
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct value: ranks before it, plus the middle of its own block
    average = np.cumsum(counts) - counts + (counts + 1) / 2.0
    rank_sum = average[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(labels: np.ndarray | list, scores: np.ndarray | list, threshold: float) -> dict[str, float]:
    """Balanced accuracy, sensitivity, specificity (positive = score >= threshold) and AUC."""
    y, s = _check(labels, scores)
    pred = s >= threshold
    sens = float(pred[y].mean()) if y.any() else float("nan")
    spec = float((~pred[~y]).mean()) if (~y).any() else float("nan")
    return {"auc": auc(y, s), "balanced_accuracy": (sens + spec) / 2.0, "sensitivity": sens, "specificity": spec}


def youden_threshold(labels: np.ndarray | list, scores: np.ndarray | list) -> float:
    """Threshold that maximises sensitivity + specificity - 1 on (validation) data.

    Candidates are the lowest score (everything positive) and the midpoints between adjacent
    distinct scores: a midpoint classifies the data exactly as any threshold in its gap does, and
    keeps the widest margin on both sides for new data. When several candidates reach the maximum,
    the lowest one wins (it favours sensitivity), so the result is deterministic.
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("youden_threshold needs both classes")
    values, inverse = np.unique(s, return_inverse=True)
    pos_at = np.bincount(inverse[y], minlength=values.size)
    neg_at = np.bincount(inverse[~y], minlength=values.size)
    # candidate k predicts positive for values[k:]; k = 0 is "all positive"
    sens = (n_pos - np.concatenate(([0], np.cumsum(pos_at)[:-1]))) / n_pos
    spec = np.concatenate(([0], np.cumsum(neg_at)[:-1])) / n_neg
    j = sens + spec - 1.0
    k = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    return float(values[0]) if k == 0 else float((values[k - 1] + values[k]) / 2.0)


def _resample_counts(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, m) counts: how often each of m items is drawn in each of n resamples of size m."""
    draws = rng.integers(0, max(m, 1), size=(n, m)) + (np.arange(n) * m)[:, None]
    return np.bincount(draws.ravel(), minlength=n * m).reshape(n, m).astype(np.float64)


def stratified_counts(labels: np.ndarray | list, n: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap draws as counts: (positive indices, negative indices, counts_pos, counts_neg).

    counts_pos[b, i] is how often positive sample ``pos[i]`` appears in resample b; each resample keeps
    the class sizes of the data. Sharing the counts between two models makes the comparison paired.
    """
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    return pos, neg, _resample_counts(pos.size, n, rng), _resample_counts(neg.size, n, rng)


def subject_strata(labels: np.ndarray | list, groups: np.ndarray | list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct subjects sorted, stratum of each subject, subject index of each sample).

    Stratum 0: only negative samples, 1: only positive, 2: both (a subject can be a negative sample
    at one index visit and a positive one at a later visit in some tasks).
    """
    y = np.asarray(labels).astype(bool)
    g = np.asarray(groups).astype(str)
    if g.shape != y.shape:
        raise ValueError(f"groups must give one subject per sample, got {g.shape} for {y.shape} labels")
    subjects, inverse = np.unique(g, return_inverse=True)
    has_pos = np.bincount(inverse, weights=y, minlength=subjects.size) > 0
    has_neg = np.bincount(inverse, weights=~y, minlength=subjects.size) > 0
    return subjects, np.where(has_pos & has_neg, 2, has_pos.astype(int)), inverse


def subject_counts(labels: np.ndarray | list, groups: np.ndarray | list, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Per-sample counts (n, n_samples) of a bootstrap that draws subjects with replacement.

    A drawn subject brings all its samples, so every sample of a subject gets the subject's count.
    Subjects are drawn within their stratum (:func:`subject_strata`), each stratum keeping its number
    of subjects, so both classes are in every resample. The draws depend only on the sorted distinct
    subjects and their strata, not on how many samples each has or in which order they come.
    """
    subjects, stratum, inverse = subject_strata(labels, groups)
    per_subject = np.zeros((n, subjects.size))
    for k in range(3):
        members = np.flatnonzero(stratum == k)
        per_subject[:, members] = _resample_counts(members.size, n, rng)
    return per_subject[:, inverse]


def auc_from_counts(s_pos: np.ndarray, s_neg: np.ndarray, c_pos: np.ndarray, c_neg: np.ndarray) -> np.ndarray:
    """AUC of each resample given per-sample counts, in O(n) per resample (ties count one half).

    For each negative, the weighted number of positives above it and tied with it comes from the
    cumulative counts of the sorted positives; the positions do not change between resamples.
    """
    if s_pos.size == 0 or s_neg.size == 0:
        return np.full(c_pos.shape[0], np.nan)
    order = np.argsort(s_pos, kind="stable")
    sorted_pos = s_pos[order]
    cum = np.concatenate((np.zeros((c_pos.shape[0], 1)), np.cumsum(c_pos[:, order], axis=1)), axis=1)
    left = np.searchsorted(sorted_pos, s_neg, side="left")
    right = np.searchsorted(sorted_pos, s_neg, side="right")
    above = cum[:, -1:] - cum[:, right]
    tied = cum[:, right] - cum[:, left]
    wins = ((above + 0.5 * tied) * c_neg).sum(axis=1)
    return wins / (cum[:, -1] * c_neg.sum(axis=1))


def metrics_from_counts(s_pos: np.ndarray, s_neg: np.ndarray, c_pos: np.ndarray, c_neg: np.ndarray,
                        threshold: float) -> dict[str, np.ndarray]:
    """Every metric of :func:`binary_metrics` for each resample given per-sample counts."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (c_pos @ (s_pos >= threshold).astype(np.float64)) / c_pos.sum(axis=1)
        spec = (c_neg @ (s_neg < threshold).astype(np.float64)) / c_neg.sum(axis=1)
    return {"auc": auc_from_counts(s_pos, s_neg, c_pos, c_neg), "balanced_accuracy": (sens + spec) / 2.0,
            "sensitivity": sens, "specificity": spec}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Central percentile interval of bootstrap values; NaN bounds if any value is undefined."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        return float("nan"), float("nan")
    low, high = np.quantile(v, [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0])
    return float(low), float(high)


def holm(p: np.ndarray | list) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and do not count in the family.

    Why Holm: it controls the family-wise error rate under any dependence between the comparisons
    (comparisons with one reference share its predictions), and it rejects everything Bonferroni does.
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def bootstrap(labels: np.ndarray | list, scores: np.ndarray | list, threshold: float,
              groups: np.ndarray | list | None = None, n: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric of :func:`binary_metrics` (NaN bounds where a class is
    missing).

    ``groups``: the subject of each sample; subjects are resampled (:func:`subject_counts`). Without
    it, samples are resampled within each label, which is right only when every subject has one sample.
    """
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if groups is None:
        _, _, c_pos, c_neg = stratified_counts(y, n, rng)
    else:
        counts = subject_counts(y, groups, n, rng)
        c_pos, c_neg = counts[:, pos], counts[:, neg]
    values = metrics_from_counts(s[pos], s[neg], c_pos, c_neg, threshold)
    return {name: percentile_interval(values[name], level) for name in METRICS}
