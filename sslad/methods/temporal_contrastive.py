"""Temporal contrastive learning: from one visit of a subject and a time gap, pick out the visit
at that gap (InfoNCE).

The query is one scan carried to another visit's time by the temporal aggregator: the sequence
(that scan, a masked scan at the other visit's time), read out as fine-tuning reads the aggregator
(:func:`sslad.methods.masked_readout`). Its positive is that other visit's encoding; its negatives
are every other scan of the global batch, *including the same subject's other visits*, but not the
query's own scan (nor another scan of the subject at the query's time), which the model saw and
could rule out by its content alone (on a tuning study, order probe 0.81 / 0.73 / 0.44 over three
training seeds with it as a candidate, 0.89 / 0.77 / 0.47 without).

Subject identity must not solve the task, so a query is only made where its subject has another
candidate visit besides the target (at a time other than the query's): a sequence of three or more
visits. Of a subject with two visits, the target would be the only candidate of the subject left,
found by identity alone; such a subject's scans are only other subjects' negatives. Every
candidate of the subject then has its identity, and only how the brain changes over the gap tells
the target from the others. Every ordered pair of a subject's sampled visits (``n_scans``, at least
3) is a query, so both directions of time are learned."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import apply
from sslad.distributed import gather, global_mean, row_offset
from sslad.methods import Batch, Sampling, masked_readout, sequence_embeddings, unseen_nce
from sslad.networks import ProjectionHead


def ordered_pairs(months: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, i, j) for every ordered pair of real positions i != j with different times whose sequence
    has another real visit at a time other than i's besides j: tcl's queries (scan i carried to j's
    time), each with a candidate of its subject besides the target, so that identity cannot pick it."""
    k = months.shape[1]
    i, j = (~torch.eye(k, dtype=torch.bool, device=months.device)).nonzero(as_tuple=True)
    ok = valid[:, i] & valid[:, j] & (months[:, i] != months[:, j])
    # (B, K) the real visits at another time than each position's: its subject's candidates as a query
    elsewhen = (valid[:, None, :] & (months[:, None, :] != months[:, :, None])).sum(-1)
    ok &= elsewhen[:, i] >= 2  # the target and at least one more
    rows, pair = ok.nonzero(as_tuple=True)
    return rows, i[pair], j[pair]


def seen_visits(months: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor,
                i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, position): the real visits of query q's sequence at its scan's time (its own scan, and
    any other scan of that day), which are no candidates of the query: their content gives them away."""
    same = valid[rows] & (months[rows] == months[rows, i].unsqueeze(1))
    return same.nonzero(as_tuple=True)


class TCL(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        # subjects with two visits are sampled too: no query of theirs (ordered_pairs), but their
        # scans are the other subjects' negatives
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2, views=("augment",))
        self.encoder = encoder
        self.aggregator = aggregator
        self.query = ProjectionHead(2 * dim, dim, hp["projection_dim"])
        self.key = ProjectionHead(dim, dim, hp["projection_dim"])
        self.temperature = hp["temperature"]

    def carry(self, h_from: torch.Tensor, m_from: torch.Tensor, m_to: torch.Tensor) -> torch.Tensor:
        """(P, proj) queries: scans ``h_from`` (P, D) at times ``m_from`` carried to times ``m_to``."""
        seq = torch.stack([h_from, torch.zeros_like(h_from)], dim=1)
        months = torch.stack([m_from, m_to], dim=1)
        valid = torch.ones_like(months, dtype=torch.bool)
        masked = torch.zeros_like(valid)
        masked[:, 1] = True
        return self.query(masked_readout(self.aggregator, seq, months, valid, masked))

    def retrieval(self, h: torch.Tensor, months: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """One subject's visits (n, D) and times (n,): per query (i, j) of :func:`ordered_pairs`, the
        similarity of the query (scan i carried to j's time) to each of the subject's candidate visits
        (those at other times than i's: at least two, or no query), and j's place among them."""
        keys = F.normalize(self.key(h).float(), dim=1)
        valid = torch.ones((1, len(months)), dtype=torch.bool, device=h.device)
        _, i, j = ordered_pairs(months.unsqueeze(0), valid)
        out = []
        for a, b in zip(i.tolist(), j.tolist()):
            others = [c for c in range(len(months)) if months[c] != months[a]]
            q = F.normalize(self.carry(h[a:a + 1], months[a:a + 1], months[b:b + 1]).float(), dim=1)
            out.append(((q @ keys[others].T)[0], others.index(b)))
        return out

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(apply(batch.volumes, batch.views[0]))
        seq = sequence_embeddings(h, batch.index)
        rows, i, j = ordered_pairs(batch.months, batch.valid)
        # no query on this rank (only two-visit subjects): every collective below still runs
        q = (self.carry(seq[rows, i], batch.months[rows, i], batch.months[rows, j]) if len(rows)
             else h.new_zeros((0, self.key[-1].out_features)))
        keys = gather(self.key(h))
        offset = row_offset(h.shape[0], h.device)
        query, position = seen_visits(batch.months, batch.valid, rows, i)  # its own scan: no candidate
        seen = (query, batch.index[rows[query], position] + offset)
        total, hits = unseen_nce(q, keys, batch.index[rows, j] + offset, seen, self.temperature)
        total = total + h.sum() * 0.0
        gap = (batch.months[rows, j] - batch.months[rows, i]).abs()
        return global_mean(total, len(rows)), {"batch_retrieval": hits,
                                               "mean_interval_months": float(gap.mean()) if len(rows) else 0.0}
