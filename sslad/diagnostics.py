"""What a pretrained encoder learned about time, measured on held-out pretraining subjects.

A falling SSL loss does not say that a method learned anything temporal (identity alone lowers
many losses), so every pretraining job measures it on subjects held out of its loss
(``pretrain.train.holdout_subjects``, never a test subject):

- **order probe**, every method: a linear classifier (scikit-learn's logistic regression, no
  intercept) on the difference of two visits' frozen encoder features says which came first. Each
  held-out subject is scored by a probe trained on the other held-out subjects' pairs
  (leave-one-subject-out), so the accuracy is on brains neither the encoder nor the probe saw.
  Differences within a subject cancel its identity: only features that follow time order pairs.
  Chance is 0.5.
- **visit retrieval**, the contrastive and masked methods (tcl, tmp: those with ``retrieval``):
  how often their own query picks the right visit among all of the same subject's visits; chance
  is the mean of 1 / visits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from sslad.pretrain_data import ScanSet


@torch.no_grad()
def encode(encoder: nn.Module, volumes: torch.Tensor, device: torch.device, chunk: int = 32) -> torch.Tensor:
    """(N, D) float32 eval-mode features of (N, 1, X, Y, Z) volumes, ``chunk`` at a time."""
    was = encoder.training
    encoder.eval()
    out = torch.cat([encoder(volumes[i:i + chunk].to(device).float()).float() for i in range(0, len(volumes), chunk)])
    encoder.train(was)
    return out


def pair_differences(features: np.ndarray, months: np.ndarray) -> np.ndarray:
    """(P, D): later minus earlier visit's features, every pair of one subject's visits with different times."""
    out = [features[j] - features[i] for i in range(len(months)) for j in range(len(months))
           if months[i] < months[j]]
    return np.array(out).reshape(-1, features.shape[1])


def order_probe(features: np.ndarray, months: np.ndarray, subjects: list[np.ndarray]) -> tuple[float | None, int]:
    """(accuracy, pairs) of the leave-one-subject-out linear order probe; (None, 0) under 2 subjects."""
    diffs = [pair_differences(features[rows], months[rows]) for rows in subjects]
    if len(subjects) < 2 or sum(len(d) for d in diffs) == 0:
        return None, 0
    right = 0
    for s, test in enumerate(diffs):
        train = np.concatenate([d for t, d in enumerate(diffs) if t != s])
        if not len(test) or not len(train):
            continue
        scale = features[np.concatenate([r for t, r in enumerate(subjects) if t != s])].std(0) + 1e-6
        x = np.concatenate([train, -train]) / scale
        y = np.r_[np.ones(len(train)), np.zeros(len(train))]
        probe = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000).fit(x, y)
        right += int((probe.decision_function(test / scale) > 0).sum())
    pairs = sum(len(d) for d in diffs)
    return right / pairs, pairs


@torch.no_grad()
def visit_retrieval(method: nn.Module, features: torch.Tensor, months: np.ndarray,
                    subjects: list[np.ndarray]) -> tuple[float, float]:
    """(accuracy, chance) of the method's own visit retrieval within each subject."""
    hits, chance = [], []
    was = method.training
    method.eval()
    for rows in subjects:
        m = torch.as_tensor(months[rows], dtype=torch.float32, device=features.device)
        for sims, target in method.retrieval(features[rows], m):
            hits.append(float(int(sims.argmax()) == target))
            chance.append(1.0 / len(rows))
    method.train(was)
    return float(np.mean(hits)), float(np.mean(chance))


def diagnose(method: nn.Module, encoder: nn.Module, scans: ScanSet, held: list[int],
             device: torch.device) -> dict[str, Any]:
    """The diagnostics of one encoder (and its method's heads) on the held-out subjects ``held``."""
    if not held:
        return {"holdout_subjects": 0}
    rows = np.concatenate([scans.subjects[s] for s in held])
    local, start = [], 0
    for s in held:
        local.append(np.arange(start, start + len(scans.subjects[s])))
        start += len(scans.subjects[s])
    feats = encode(encoder, scans.volumes[torch.from_numpy(rows)], device)
    months = scans.months[rows]
    acc, pairs = order_probe(feats.cpu().numpy().astype(np.float64), months, local)
    out: dict[str, Any] = {"holdout_subjects": len(held), "holdout_scans": len(rows),
                           "order_probe_accuracy": acc, "order_probe_pairs": pairs}
    if hasattr(method, "retrieval"):
        out["retrieval_accuracy"], out["retrieval_chance"] = visit_retrieval(method, feats, months, local)
    return out
