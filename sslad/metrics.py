"""Test metrics of a binary classifier, with stratified bootstrap intervals.

Why numpy only: every fine-tuning job imports this module, and scikit-learn's import alone costs
more than all of these computations together. Resampling is stratified by label so that every
resample has both classes (AUC, sensitivity and specificity are defined in each one), and the
bootstrap is written on per-sample counts, so that a paired comparison can apply one set of draws
to the scores of two models.
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


def stratified_counts(labels: np.ndarray | list, n: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap draws as counts: (positive indices, negative indices, counts_pos, counts_neg).

    counts_pos[b, i] is how often positive sample ``pos[i]`` appears in resample b; each resample keeps
    the class sizes of the data. Sharing the counts between two models makes the comparison paired.
    """
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    out = []
    for idx in (pos, neg):
        m = idx.size
        draws = rng.integers(0, max(m, 1), size=(n, m)) + (np.arange(n) * m)[:, None]
        out.append(np.bincount(draws.ravel(), minlength=n * m).reshape(n, m).astype(np.float64))
    return pos, neg, out[0], out[1]


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


def bootstrap(labels: np.ndarray | list, scores: np.ndarray | list, threshold: float, n: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric of :func:`binary_metrics`, resampling samples with
    replacement within each label (NaN bounds where a class is missing)."""
    y, s = _check(labels, scores)
    pos, neg, c_pos, c_neg = stratified_counts(y, n, np.random.default_rng(seed))
    values = metrics_from_counts(s[pos], s[neg], c_pos, c_neg, threshold)
    q = [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0]
    out = {}
    for name in METRICS:
        v = values[name]
        low, high = np.quantile(v, q) if np.isfinite(v).all() else (np.nan, np.nan)
        out[name] = (float(low), float(high))
    return out
