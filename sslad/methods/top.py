"""Temporal order prediction: from scans of one subject, tell which of each pair came first.

Each scan gets a scalar "progression" score; the logit that scan i precedes scan j is
score_j - score_i, so swapping a pair flips the prediction exactly (the head is antisymmetric, as
LILAC's feature-difference head). Pairs are within a subject, so identity cancels out of every
logit: only what changes with time can order them.

The score is read through the temporal aggregator: the aggregator's pooled readout of the scan as a
one-scan sequence (what fine-tuning reads, for ``inputs: index`` exactly), then a small head. The
aggregator fine-tuning starts from is thus the one the order loss trained (saved in encoder.pt).
Times are withheld from the order term (each scan alone, at relative time 0): given the times, the
order is known."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import apply
from sslad.distributed import global_mean
from sslad.methods import Batch, Sampling, sequence_embeddings


def order_pairs(months: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every pair i < j (positions) of real scans in each sequence: (row, i, j, label), label 1 when
    scan i was acquired before scan j. Equal times are skipped (no order to learn)."""
    b, k = months.shape
    i, j = torch.triu_indices(k, k, offset=1, device=months.device)
    ok = valid[:, i] & valid[:, j] & (months[:, i] != months[:, j])
    rows, pair = ok.nonzero(as_tuple=True)
    return rows, i[pair], j[pair], (months[rows, i[pair]] < months[rows, j[pair]]).float()


def alone(aggregator: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """(N, D) the aggregator's pooled readout of each scan as a sequence of one, at time 0."""
    n = h.shape[0]
    return aggregator(h.unsqueeze(1), h.new_zeros((n, 1)), torch.ones((n, 1), dtype=torch.bool, device=h.device))


class OrderHead(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, seq: torch.Tensor, months: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loss, accuracy) over all ordered pairs of the sequences ``seq`` (B, K, D): the mean over
        the pairs of the global batch, however unevenly data-parallel ranks hold them. Without any
        pair (no two scans with different times) the loss is 0 with no gradient, and accuracy 0.5."""
        s = self.score(seq).squeeze(-1)
        rows, i, j, label = order_pairs(months, valid)
        logit = s[rows, j] - s[rows, i]
        total = F.binary_cross_entropy_with_logits(logit.float(), label, reduction="sum") + s.sum() * 0.0
        acc = ((logit > 0).float() == label).float().mean().detach() if len(rows) else torch.tensor(0.5)
        return global_mean(total, len(rows)), acc


class TOP(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2, views=("augment",))
        self.encoder = encoder
        self.aggregator = aggregator
        self.head = OrderHead(dim, hp["hidden"])

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = alone(self.aggregator, self.encoder(apply(batch.volumes, batch.views[0])))
        loss, acc = self.head(sequence_embeddings(h, batch.index), batch.months, batch.valid)
        return loss, {"order_accuracy": float(acc)}
