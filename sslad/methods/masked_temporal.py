"""Masked temporal prediction: hide some visits of a subject's sequence and, from the others and
every visit's time, pick out each hidden visit among the other hidden ones and other subjects' scans
(InfoNCE).

Each query is the aggregator's pooled readout (what fine-tuning reads) beside its output at the
hidden position (:func:`sslad.methods.masked_readout`), so the loss trains both; a query head
projects it and it is compared with every scan's key projection (as in ``tcl``). The candidates are
every scan of the global batch *except the visits the query was computed from*: a visit the model
has seen can be ruled out by its own content, with no time at all (one hidden visit among a
subject's four was picked out of the three it was predicted from by exclusion alone, and the demo's
tmp then kept less order than the raw voxels). The subject's other hidden visits, unseen like the
target and of the same identity, leave only time to tell them apart. Every split of a sampled
sequence into context (at least one visit) and hidden visits (two or more, at different times) is
used, each hidden visit a query in turn: no random mask, so nothing has to agree across
data-parallel ranks; a sequence needs three visits. Every query weighs the same: a sequence of 4
visits gives 24 queries, one of 3 gives 6 (as tcl's and top's pairs weigh longer records more)."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import apply
from sslad.distributed import gather, global_mean, row_offset
from sslad.methods import Batch, Sampling, masked_readout, sequence_embeddings, unseen_nce
from sslad.networks import ProjectionHead


@cache
def _subsets(k: int, most: int) -> torch.Tensor:
    """(S, k) every subset of k positions with two to ``most`` members."""
    return torch.tensor([[bool(m >> i & 1) for i in range(k)] for m in range(1 << k)
                         if 2 <= bin(m).count("1") <= most], dtype=torch.bool).reshape(-1, k)


def hidden_sets(valid: torch.Tensor, months: torch.Tensor,
                most: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One query per hidden visit of every split of the (B, K) sequences into context (>= 1 real
    scan) and hidden scans (2 to ``most`` real scans, by default all but one), where no hidden visit
    shares its time with another visit (a same-time twin in the context would give its content
    away): its sequence's row (Q,), its position (Q,) and the split's hidden positions (Q, K)."""
    k = valid.shape[1]
    subsets = _subsets(k, most or k).to(valid.device)
    inside = ~(subsets[None] & ~valid[:, None]).any(-1)                    # (B, S) only real scans hidden
    context = (valid[:, None] & ~subsets[None]).any(-1)                    # (B, S) something left to see
    tie = (months[:, :, None] == months[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    tie &= ~torch.eye(k, dtype=torch.bool, device=valid.device)            # (B, K, K) two real visits, one time
    same_time = (tie[:, None] & subsets[None, :, :, None]).flatten(2).any(-1)  # (B, S) a hidden visit has a twin
    rows, split = (inside & context & ~same_time).nonzero(as_tuple=True)
    hidden = subsets[split]
    query, position = hidden.nonzero(as_tuple=True)
    return rows[query], position, hidden[query]


class TMP(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=3, views=("augment",))
        self.encoder = encoder
        self.aggregator = aggregator
        self.query = ProjectionHead(2 * dim, dim, hp["projection_dim"])
        self.key = ProjectionHead(dim, dim, hp["projection_dim"])
        self.temperature = hp["temperature"]

    def predict(self, seq: torch.Tensor, months: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
                at: torch.Tensor) -> torch.Tensor:
        """(Q, projection_dim) queries: the hidden scans at positions ``at`` predicted from the rest."""
        return self.query(masked_readout(self.aggregator, seq, months, valid, hidden, at))

    def retrieval(self, h: torch.Tensor, months: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """One subject's visits (n, D) and times (n,): per query of every split that hides two visits
        (all splits would grow as 2^n over a long record), the similarity of its prediction to both
        hidden visits, and the right one's place (chance 1/2)."""
        valid = torch.ones((1, len(months)), dtype=torch.bool, device=h.device)
        _, at, hidden = hidden_sets(valid, months.unsqueeze(0), most=2)
        q = len(at)
        if not q:  # fewer than three visits: no split to predict
            return []
        pred = self.predict(h.unsqueeze(0).expand(q, -1, -1), months.unsqueeze(0).expand(q, -1),
                            valid.expand(q, -1), hidden, at)
        sims = F.normalize(pred.float(), dim=1) @ F.normalize(self.key(h).float(), dim=1).T
        return [(sims[i][hidden[i]], int(hidden[i, :at[i]].sum())) for i in range(q)]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(apply(batch.volumes, batch.views[0]))
        seq = sequence_embeddings(h, batch.index)
        rows, at, hidden = hidden_sets(batch.valid, batch.months)
        # no split (three visits, two hidden at different times) on this rank: no query, but every
        # collective below still runs
        pred = (self.predict(seq[rows], batch.months[rows], batch.valid[rows], hidden, at) if len(rows)
                else h.new_zeros((0, self.key[-1].out_features)))
        keys = gather(self.key(h))
        offset = row_offset(h.shape[0], h.device)
        target = batch.index[rows, at] + offset
        # the query's own context is no candidate
        query, position = (batch.valid[rows] & ~hidden).nonzero(as_tuple=True)
        seen = (query, batch.index[rows[query], position] + offset)
        total, hits = unseen_nce(pred, keys, target, seen, self.temperature)
        total = total + h.sum() * 0.0
        return global_mean(total, len(target)), {"batch_retrieval": hits}
