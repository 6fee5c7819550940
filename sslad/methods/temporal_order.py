"""Temporal order prediction: from scans of one subject, tell which of each pair came first.

Every pair of a sampled subject's scans (at different times) is scored within the subject's
sequence: the two scans keep their content and lose their own times (both take the time encoding's
"unknown" value, :class:`sslad.networks.TimeEncoding`), the subject's other scans keep content and
time, and the aggregator runs over the whole sequence. Each of the two gets a scalar "progression"
score from the aggregator's pooled readout (what fine-tuning reads) beside its output at its own
position (as ``tmp`` reads a hidden visit); the logit that scan i precedes scan j is
score_j - score_i (LILAC's antisymmetric difference head), trained by binary cross-entropy.

So the loss trains what fine-tuning on histories uses, attention across a subject's scans and the
time encoding of the scans around the pair (an earlier version scored each scan alone, at time 0:
attention across scans and the time encoding's sine half got no gradient). No shortcut reaches the
order without the images: the aggregator has no positional encoding, so it treats the two undated
scans alike, and whatever the other scans' times reveal (even the pair's two times, as a set) is the
same for both; only their contents can tell which came first. Two identical scans get logit 0 exactly,
whatever the weights (tested, with a control that gives the pair its times and does learn). Hiding
one scan's time alone would not do: the gaps between the other visits can tell where it sits (on a
6/12-month visit schedule, the missing visit of 0, 6, 12, 24 is placed by the gaps left).
Pairs within a subject cancel identity. Every pair of every sequence, no random draw: nothing has to
agree across data-parallel ranks."""

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


def undated_pairs(aggregator: nn.Module, seq: torch.Tensor, months: torch.Tensor, valid: torch.Tensor,
                  i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 2D) twice: for each (P, K) sequence, the aggregator's pooled readout beside its output at
    position ``i`` (P,), and beside its output at ``j``, with scans i and j undated (their own times
    hidden) and every other scan keeping its time."""
    positions = torch.arange(seq.shape[1], device=seq.device)
    undated = (positions == i[:, None]) | (positions == j[:, None])
    pooled, tokens = aggregator.tokens(seq, months, valid, undated=undated)
    p = torch.arange(len(i), device=seq.device)
    return torch.cat([pooled, tokens[p, i]], dim=1), torch.cat([pooled, tokens[p, j]], dim=1)


class OrderHead(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, aggregator: nn.Module, seq: torch.Tensor, months: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loss, accuracy) over all ordered pairs of the sequences ``seq`` (B, K, D), each pair
        undated in its sequence (:func:`undated_pairs`): the mean over the pairs of the global batch,
        however unevenly data-parallel ranks hold them. Without any pair (no two scans with different
        times) the loss is 0 with no gradient, and accuracy 0.5."""
        rows, i, j, label = order_pairs(months, valid)
        if not len(rows):
            return global_mean(seq.sum() * 0.0, 0), torch.tensor(0.5)
        first, second = undated_pairs(aggregator, seq[rows], months[rows], valid[rows], i, j)
        logit = (self.score(second) - self.score(first)).squeeze(-1)
        total = F.binary_cross_entropy_with_logits(logit.float(), label, reduction="sum")
        acc = ((logit > 0).float() == label).float().mean().detach()
        return global_mean(total, len(rows)), acc


class TOP(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2, views=("augment",))
        self.encoder = encoder
        self.aggregator = aggregator
        self.head = OrderHead(dim, hp["hidden"])

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(apply(batch.volumes, batch.views[0]))
        loss, acc = self.head(self.aggregator, sequence_embeddings(h, batch.index), batch.months, batch.valid)
        return loss, {"order_accuracy": float(acc)}
