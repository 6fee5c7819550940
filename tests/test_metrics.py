"""Test metrics: AUC against hand cases and scikit-learn, thresholds, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from sslad import metrics


def test_auc_hand_cases():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert metrics.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pairs (pos, neg): (0.8>0.3), (0.8>0.6), (0.4>0.3), (0.4<0.6), (0.6=0.6 -> 1/2), (0.6>0.3) -> 4.5 / 6
    assert metrics.auc([1, 0, 1, 0, 1], [0.8, 0.3, 0.4, 0.6, 0.6]) == pytest.approx(4.5 / 6)
    assert np.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        metrics.auc([0, 2], [0.1, 0.2])


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for n in (5, 17, 100, 1000):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        for scores in (rng.normal(size=n) + y, np.round(rng.normal(size=n) + y, 1)):  # without and with ties
            assert metrics.auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_binary_metrics_hand_case():
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    scores = [0.9, 0.7, 0.5, 0.2, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    m = metrics.binary_metrics(labels, scores, 0.5)  # score >= 0.5 is positive
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["auc"] == pytest.approx(metrics.auc(labels, scores))


def test_youden_hand_case():
    # best: positive above the gap between 0.35 and 0.4 (sens 1, spec 1)
    assert metrics.youden_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.35, 0.4, 0.8]) == pytest.approx(0.375)
    # J = 0.5 at the gap 0.2|0.3 (sens 1, spec 1/2) and at 0.6|0.7 (sens 1/2, spec 1): the lowest wins
    t = metrics.youden_threshold([0, 0, 1, 0, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.6, 0.7])
    m = metrics.binary_metrics([0, 0, 1, 0, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.6, 0.7], t)
    assert t == pytest.approx(0.25)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(0.5)


def test_youden_is_best_of_all_thresholds():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.normal(size=80) + y, 1)
    t = metrics.youden_threshold(y, s)
    j = lambda thr: sum(metrics.binary_metrics(y, s, thr)[k] for k in ("sensitivity", "specificity")) - 1
    assert j(t) == pytest.approx(max(j(v) for v in np.unique(s)))


def _explicit_resamples(labels, scores, threshold: float, n: int, seed: int) -> dict[str, list[float]]:
    """The metrics of ``n`` resampled data sets built sample by sample (``bootstrap``'s draws without a
    ``groups``: within each label, ``stratified_counts`` with ``default_rng(seed)``)."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    pos, neg, c_pos, c_neg = metrics.stratified_counts(y, n, np.random.default_rng(seed))
    out: dict[str, list[float]] = {}
    for b in range(n):
        rows = np.r_[np.repeat(pos, c_pos[b].astype(int)), np.repeat(neg, c_neg[b].astype(int))]
        for name, value in metrics.binary_metrics(y[rows], s[rows], threshold).items():
            out.setdefault(name, []).append(value)
    return out


def test_bootstrap_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    s = rng.normal(size=100) + y
    point = metrics.binary_metrics(y, s, 0.5)
    ci = metrics.bootstrap(y, s, 0.5, n=1000, seed=3)
    assert set(ci) == set(point)
    # the 2.5 and 97.5% quantiles of the metrics of the 1000 explicitly resampled data sets (the same
    # draws: seed 3, within each class), each computed from the resampled labels and scores
    explicit = _explicit_resamples(y, s, 0.5, 1000, 3)
    for name, (low, high) in ci.items():
        assert (low, high) == pytest.approx(tuple(np.quantile(explicit[name], [0.025, 0.975])), abs=1e-12), name
        assert low < point[name] < high, name  # 100 samples, scores of both classes spread: no degenerate interval
    assert metrics.bootstrap(y, s, 0.5, n=1000, seed=3) == ci
    assert metrics.bootstrap(y, s, 0.5, n=1000, seed=4) != ci


def test_bootstrap_counts_agree_with_direct_metrics():
    """The count-based resample metrics equal the metrics of the explicitly resampled data."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 30)
    s = np.round(rng.normal(size=30), 1)
    pos, neg, c_pos, c_neg = metrics.stratified_counts(y, 20, np.random.default_rng(0))
    assert (c_pos.sum(axis=1) == len(pos)).all() and (c_neg.sum(axis=1) == len(neg)).all()
    many = metrics.metrics_from_counts(s[pos], s[neg], c_pos, c_neg, 0.0)
    for b in range(20):
        yb = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
        sb = np.r_[np.repeat(s[pos], c_pos[b].astype(int)), np.repeat(s[neg], c_neg[b].astype(int))]
        for name, value in metrics.binary_metrics(yb, sb, 0.0).items():
            assert many[name][b] == pytest.approx(value, abs=1e-12), name


def test_one_class_gives_nan_interval():
    scores = np.linspace(0.05, 0.95, 10)  # 10 positives, 5 of them score >= 0.5
    ci = metrics.bootstrap(np.ones(10, int), scores, 0.5, n=200)
    for name in ("auc", "specificity", "balanced_accuracy"):
        assert np.isnan(ci[name]).all(), name
    # the sensitivity is still defined: each resample's is the share of its 10 draws among those 5
    sensitivity = _explicit_resamples(np.ones(10, int), scores, 0.5, 200, 0)["sensitivity"]
    low, high = np.quantile(sensitivity, [0.025, 0.975])
    assert ci["sensitivity"] == pytest.approx((low, high), abs=1e-12) and 0 < low < 0.5 < high < 1


def _clustered(seed: int = 0, n_subjects: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, subject ids and scores of subjects with 1-4 samples each (a few with both labels)."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 5, size=n_subjects)
    sub = np.repeat(np.arange(n_subjects), n)
    visit = np.concatenate([np.arange(k) for k in n])
    both = (np.arange(n_subjects) % 9 == 0) & (n > 1)
    y = np.where(both[sub], visit >= n[sub] // 2, (rng.random(n_subjects) < 0.4)[sub]).astype(int)
    s = y + rng.normal(size=n_subjects)[sub] + 0.3 * rng.normal(size=y.size)
    return y, np.char.add("sub-", sub.astype(str)), s


def test_subject_counts_keep_strata_and_subjects_whole():
    y, g, _ = _clustered(1)
    subjects, stratum, inverse = metrics.subject_strata(y, g)
    assert set(stratum) == {0, 1, 2}  # the data have every stratum
    c = metrics.subject_counts(y, g, 50, np.random.default_rng(0))
    assert c.shape == (50, y.size)
    per_subject = np.zeros((50, subjects.size))
    per_subject[:, inverse] = c
    assert (per_subject[:, inverse] == c).all()  # every sample of a subject has the subject's count
    for k in range(3):
        assert (per_subject[:, stratum == k].sum(axis=1) == (stratum == k).sum()).all()
    assert ((c @ y) > 0).all() and ((c @ (1 - y)) > 0).all()  # both classes in every resample
    # draws depend on the subjects and strata only: not on sample order or sample multiplicity
    perm = np.random.default_rng(2).permutation(y.size)
    again = metrics.subject_counts(y[perm], g[perm], 50, np.random.default_rng(0))
    assert (again == c[:, perm]).all()
    double = metrics.subject_counts(np.r_[y, y], np.r_[g, g], 50, np.random.default_rng(0))
    assert (double == np.c_[c, c]).all()


def test_duplicating_samples_leaves_subject_interval_unchanged():
    y, g, s = _clustered(3)
    subject = metrics.bootstrap(y, s, 0.5, groups=g, n=500, seed=1)
    assert metrics.bootstrap(np.r_[y, y], np.r_[s, s], 0.5, groups=np.r_[g, g], n=500, seed=1) == subject  # exactly
    sample = metrics.bootstrap(y, s, 0.5, n=500, seed=1)
    sample2 = metrics.bootstrap(np.r_[y, y], np.r_[s, s], 0.5, n=500, seed=1)
    width = lambda ci: ci["auc"][1] - ci["auc"][0]
    assert width(sample2) < 0.8 * width(sample)  # per-sample resampling takes copies for evidence (~1/sqrt 2)
    assert width(subject) > width(sample)  # and is too narrow already on clustered data
    assert metrics.bootstrap(y, s, 0.5, groups=g, n=500, seed=2) != subject


def test_subject_bootstrap_counts_agree_with_direct_metrics():
    y, g, s = _clustered(4, 12)
    c = metrics.subject_counts(y, g, 10, np.random.default_rng(0))
    pos, neg = np.flatnonzero(y), np.flatnonzero(1 - y)
    many = metrics.metrics_from_counts(s[pos], s[neg], c[:, pos], c[:, neg], 0.5)
    for b in range(10):
        reps = c[b].astype(int)
        for name, value in metrics.binary_metrics(np.repeat(y, reps), np.repeat(s, reps), 0.5).items():
            assert many[name][b] == pytest.approx(value, abs=1e-12), name


def test_holm_hand_case_and_nan():
    # sorted p 0.01, 0.02, 0.04, 0.2 with m = 4: 0.04, 0.06, max(0.06, 0.08), max(0.08, 0.2)
    adj = metrics.holm([0.2, 0.01, np.nan, 0.04, 0.02])
    assert np.isnan(adj[2])
    assert adj[[1, 4, 3, 0]] == pytest.approx([0.04, 0.06, 0.08, 0.2])
    assert metrics.holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1
    assert metrics.holm([]).size == 0


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(6)
    for m in (1, 2, 7, 42):
        p = rng.uniform(0, 0.2, m) ** 2
        p[: m // 3] = p[0]  # ties
        assert metrics.holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1], abs=1e-15)


def test_percentile_interval():
    assert metrics.percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    assert np.isnan(metrics.percentile_interval(np.array([0.1, np.nan]))).all()
