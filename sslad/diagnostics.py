"""What a pretrained encoder learned about time, measured on held-out pretraining subjects.

A falling SSL loss does not say that a method learned anything temporal (identity alone lowers
many losses), so every pretraining job measures it on subjects held out of its loss
(``pretrain.train.holdout_subjects``, never a test subject):

- **order probe**, every method: a linear classifier (scikit-learn's logistic regression, no
  intercept) on the difference of two visits' frozen encoder features says which came first. It is
  fitted on the pairs of the subjects the encoder trained on (at most ``PROBE_SUBJECTS`` of them)
  and scored on the held-out subjects' pairs, brains neither the encoder nor the probe saw: the
  linear-evaluation protocol of self-supervised learning. Differences within a subject cancel its
  identity: only features that follow time order pairs. Chance is 0.5; the 95% interval resamples
  the held-out subjects. (Fitted on the held-out subjects themselves, leave-one-subject-out, the
  demo's 6 subjects' ~30 pairs were too few for 128 features: raw voxels then scored 0.61 where,
  fitted on 29 subjects, they score 0.88.)
- **the voxels' reach**: the same probe on the raw voxels of the same scans (average-pooled to at
  most ``VOXEL_FEATURES``), independent of the method: how much order these held-out subjects'
  scans carry for a linear reader. On the demo's 6 held-out subjects it read 0.72, on a tuning
  study's draws 0.58-0.81: a method below it keeps less order than the voxels hold.
- **by course**: both probes on the held-out subjects whose diagnosis is CN at every visit or MCI
  at every visit (``*_stable``) and on the others (a change of diagnosis, or AD: ``*_progressing``),
  with their pairs: where the order is (subjects with a visit of unknown diagnosis count in
  neither). In the simulation a stable subject's stage moves at most 0.04 a year, and on a tuning
  study every reader, raw voxels included, ordered pairs of nearly unchanged stage near chance
  (0.48-0.61) and the others at 0.83-0.87: with about half the pairs stable, the overall accuracy
  is bounded near 0.72 whatever the method.
- **visit retrieval**, the contrastive and masked methods (tcl, tmp: those with ``retrieval``):
  how often their own query picks the right visit among the same subject's candidate visits (tcl:
  all but the query's own scan; tmp: the visits hidden with it); chance is the mean of 1 / candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression
from torch import nn

from sslad.loader import Volumes
from sslad.metrics import subject_counts
from sslad.pretrain_data import ScanSet, timed_subjects

# The probe's training subjects, at most (every how-many-th of the subjects trained on beyond it):
# bounds the encoding at paper scale, where thousands of subjects are pretrained on.
PROBE_SUBJECTS = 200
# The voxel reference's features, at most: whole-brain 1-mm grids are average-pooled (7^3 voxels on the
# paper's 152 x 192 x 152: 11,907 features), the demo's 4-mm grid (13,104 voxels) is read as it is.
VOXEL_FEATURES = 16_384


@torch.no_grad()
def encode(encoder: nn.Module, volumes: Volumes, device: torch.device, rows: np.ndarray | None = None,
           chunk: int = 32) -> torch.Tensor:
    """(N, D) float32 eval-mode features of the (N, 1, X, Y, Z) volumes (or of their ``rows``),
    read and encoded ``chunk`` at a time: streamed volumes are never all in memory."""
    rows = np.arange(len(volumes)) if rows is None else np.asarray(rows)
    was = encoder.training
    encoder.eval()
    out = [encoder(volumes[torch.from_numpy(rows[i:i + chunk])].to(device).float()).float().cpu()
           for i in range(0, len(rows), chunk)]
    encoder.train(was)
    return torch.cat(out) if out else torch.zeros(0)


def pair_differences(features: np.ndarray, months: np.ndarray) -> np.ndarray:
    """(P, D): later minus earlier visit's features, every pair of one subject's visits with different times."""
    out = [features[j] - features[i] for i in range(len(months)) for j in range(len(months))
           if months[i] < months[j]]
    return np.array(out).reshape(-1, features.shape[1])


def pair_hits(features: np.ndarray, months: np.ndarray, train: list[np.ndarray],
              test: list[np.ndarray]) -> list[np.ndarray] | None:
    """Per ``test`` subject (a list of rows of ``features``), 1.0 for each of its pairs that a linear
    order probe fitted on the ``train`` subjects' pairs orders right, else 0.0; None when either has
    no pair."""
    fit = [pair_differences(features[rows], months[rows]) for rows in train]
    scored = [pair_differences(features[rows], months[rows]) for rows in test]
    x = np.concatenate(fit) if fit else np.zeros((0, features.shape[1]))
    if not len(x) or not sum(len(d) for d in scored):
        return None
    scale = features[np.concatenate(train)].std(0) + 1e-6
    probe = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000).fit(
        np.concatenate([x, -x]) / scale, np.r_[np.ones(len(x)), np.zeros(len(x))])
    return [(probe.decision_function(d / scale) > 0).astype(np.float64) if len(d) else np.zeros(0) for d in scored]


def summarise(hits: list[np.ndarray] | None, n_boot: int = 1000, seed: int = 0,
              bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float | None, int, tuple[float, float] | None]:
    """(accuracy, pairs, 95% interval) of per-subject pair hits; (None, 0, None) without any, no interval
    with fewer than 2 subjects with pairs. ``hits`` may also be per-pair differences of two readers'
    hits on the same pairs (``bounds`` (-1, 1)): the interval of the difference in accuracy.

    The interval: the accuracy +- t standard errors, from a bootstrap that resamples the n subjects (each
    with all its pairs), its sd scaled by sqrt(n / (n - 1)), with the degrees of freedom of the subjects'
    effective number when weighted by their pair counts ((sum m)^2 / sum m^2 - 1), clipped to [0, 1]. Why:
    a demo holds out a handful of subjects with unequal pair counts, and there the percentile interval of
    the same bootstrap covered 84% (6 subjects) to 93% (40); this one 93-94% (benchmarks/calibration.py).
    """
    if hits is None:
        return None, 0, None
    correct = np.concatenate(hits)
    subject = np.concatenate([np.full(len(h), i) for i, h in enumerate(hits)])
    acc, pairs = float(correct.mean()), np.array([len(h) for h in hits if len(h)], np.float64)
    n = pairs.size
    if n < 2:
        return acc, len(correct), None
    counts = subject_counts(np.zeros(len(correct)), subject, n_boot, np.random.default_rng(seed))
    se = float(np.std(counts @ correct / counts.sum(axis=1), ddof=1)) * np.sqrt(n / (n - 1))
    df = max(1.0, pairs.sum() ** 2 / (pairs ** 2).sum() - 1)
    half = float(stats.t.ppf(0.975, df)) * se
    return acc, len(correct), (max(bounds[0], acc - half), min(bounds[1], acc + half))


def order_probe(features: np.ndarray, months: np.ndarray, train: list[np.ndarray], test: list[np.ndarray],
                n_boot: int = 1000, seed: int = 0) -> tuple[float | None, int, tuple[float, float] | None]:
    """(accuracy, pairs, 95% interval) on the ``test`` subjects' pairs of a linear order probe fitted
    on the ``train`` subjects' pairs (each a list of rows of ``features``); (None, 0, None) when
    either has none."""
    return summarise(pair_hits(features, months, train, test), n_boot, seed)


def course(diagnoses: np.ndarray) -> str:
    """A subject's course over its scans: ``stable`` with one diagnosis, CN or MCI, at every visit
    (little change to order the visits by: in the simulation their stage moves at most 0.04 a year),
    ``progressing`` with a change of diagnosis, or AD; ``unknown`` when a visit has no diagnosis."""
    seen = set(diagnoses)
    if not seen <= {"CN", "MCI", "AD"}:
        return "unknown"
    return "stable" if len(seen) == 1 and seen <= {"CN", "MCI"} else "progressing"


def by_course(hits: list[np.ndarray] | None, scans: ScanSet, held: list[int]) -> dict[str, tuple[float, int]]:
    """(accuracy, pairs) on the held-out subjects of each course that has pairs: where the order is."""
    if hits is None or scans.diagnoses is None:
        return {}
    out = {}
    for name in ("stable", "progressing"):
        mine = [h for h, s in zip(hits, held) if course(scans.diagnoses[scans.subjects[s]]) == name]
        if sum(len(h) for h in mine):
            correct = np.concatenate(mine)
            out[name] = (float(correct.mean()), len(correct))
    return out


@torch.no_grad()
def visit_retrieval(method: nn.Module, features: torch.Tensor, months: np.ndarray,
                    subjects: list[np.ndarray]) -> tuple[float | None, float | None]:
    """(accuracy, chance) of the method's own visit retrieval within each subject; (None, None) when no
    subject has a query (tmp needs three visits)."""
    hits, chance = [], []
    was = method.training
    method.eval()
    for rows in subjects:
        m = torch.as_tensor(months[rows], dtype=torch.float32, device=features.device)
        for sims, target in method.retrieval(features[rows], m):
            hits.append(float(int(sims.argmax()) == target))
            chance.append(1.0 / len(sims))
    method.train(was)
    return (float(np.mean(hits)), float(np.mean(chance))) if hits else (None, None)


def probe_subjects(scans: ScanSet, held: list[int]) -> tuple[np.ndarray, list[np.ndarray], int]:
    """The rows of the held-out subjects, then of the probe's fitting subjects (the others with an
    order, those the encoder trained on); each subject's positions among those rows; how many fit."""
    timed = [s for s in timed_subjects(scans) if s not in set(held)]
    fit = timed[::-(-len(timed) // PROBE_SUBJECTS)] if timed else []
    rows = np.concatenate([scans.subjects[s] for s in [*held, *fit]])
    local, start = [], 0
    for s in [*held, *fit]:
        local.append(np.arange(start, start + len(scans.subjects[s])))
        start += len(scans.subjects[s])
    return rows, local, len(fit)


def pooled_voxels(volumes: Volumes, rows: np.ndarray) -> np.ndarray:
    """(N, V) the ``rows``' voxels, average-pooled by the smallest cube that leaves at most
    ``VOXEL_FEATURES`` of them (1, i.e. none, on coarse grids), read as :func:`encode` reads."""
    k = int(np.ceil((np.prod(volumes.shape[-3:]) / VOXEL_FEATURES) ** (1 / 3)))
    reader = nn.Sequential(nn.AvgPool3d(k, ceil_mode=True), nn.Flatten())
    return encode(reader, volumes, torch.device("cpu"), rows).numpy().astype(np.float64)


def voxel_reference(scans: ScanSet, held: list[int]) -> dict[str, Any]:
    """The order probe on the voxels (``order_probe_voxels``, also per course): what the held-out
    subjects' scans allow."""
    if not held:
        return {}
    rows, local, _ = probe_subjects(scans, held)
    hits = pair_hits(pooled_voxels(scans.volumes, rows), scans.months[rows], local[len(held):], local[:len(held)])
    acc = summarise(hits)[0]
    if acc is None:
        return {}
    return {"order_probe_voxels": acc, **{f"order_probe_voxels_{name}": a
                                          for name, (a, _) in by_course(hits, scans, held).items()}}


def diagnose(method: nn.Module, encoder: nn.Module, scans: ScanSet, held: list[int],
             device: torch.device) -> dict[str, Any]:
    """The diagnostics of one encoder (and its method's heads) on the held-out subjects ``held``, the
    order probe fitted on the other subjects with an order (those the encoder trained on)."""
    if not held:
        return {"holdout_subjects": 0}
    rows, local, n_fit = probe_subjects(scans, held)
    feats = encode(encoder, scans.volumes, device, rows)
    months = scans.months[rows]
    hits = pair_hits(feats.numpy().astype(np.float64), months, local[len(held):], local[:len(held)])
    acc, pairs, interval = summarise(hits)
    n_held = sum(len(scans.subjects[s]) for s in held)
    out: dict[str, Any] = {"holdout_subjects": len(held), "holdout_scans": n_held, "order_probe_accuracy": acc,
                           "order_probe_pairs": pairs, "order_probe_fit_subjects": n_fit}
    if interval is not None:
        out["order_probe_low"], out["order_probe_high"] = interval
    for name, (a, n) in by_course(hits, scans, held).items():
        out[f"order_probe_accuracy_{name}"], out[f"order_probe_pairs_{name}"] = a, n
    if hasattr(method, "retrieval"):
        found, chance = visit_retrieval(method, feats[:n_held].to(device), months[:n_held], local[:len(held)])
        if found is not None:
            out["retrieval_accuracy"], out["retrieval_chance"] = found, chance
    return out
