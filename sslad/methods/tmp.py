"""Masked temporal prediction: hide a scan of a sequence, predict its encoding from the other
scans and all times through the temporal aggregator (InfoNCE).

The prediction is read from the aggregator's pooled readout (what fine-tuning reads) beside its
output at the hidden position (:func:`sslad.methods.masked_readout`), so the loss trains both; it is
projected by a query head and compared with every scan's key projection (as in ``tcl``). The
candidates are every scan of the global batch, *including the same subject's other visits* (the
context scans): identity alone cannot pick the hidden visit among them, its time can. Each visit of
a sampled sequence is hidden in turn (one query per visit): the mean over positions is the expected
loss of a uniformly drawn mask without its variance, it gives n_scans times the queries for the same
encoder passes, and no draw has to agree across data-parallel ranks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import apply
from sslad.distributed import gather, global_mean, row_offset
from sslad.methods import Batch, Sampling, masked_readout, sequence_embeddings
from sslad.networks import ProjectionHead


def hide_each(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One query per real position of the (B, K) sequences: its sequence's row (Q,) and a (Q, K)
    one-hot mask hiding that position (padding is never hidden)."""
    rows, position = valid.nonzero(as_tuple=True)
    return rows, F.one_hot(position, valid.shape[1]).bool()


class TMP(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2, views=("augment",))
        self.encoder = encoder
        self.aggregator = aggregator
        self.query = ProjectionHead(2 * dim, dim, hp["projection_dim"])
        self.key = ProjectionHead(dim, dim, hp["projection_dim"])
        self.temperature = hp["temperature"]

    def predict(self, seq: torch.Tensor, months: torch.Tensor, valid: torch.Tensor,
                masked: torch.Tensor) -> torch.Tensor:
        """(Q, projection_dim) queries: the masked scans predicted from the rest of their sequences."""
        return self.query(masked_readout(self.aggregator, seq, months, valid, masked))

    def retrieval(self, h: torch.Tensor, months: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """One subject's visits (n, D) and times (n,): per visit j, the similarity of its prediction
        from all the other visits (however many: the aggregator takes any length) to every visit of
        the subject, and j (the right one)."""
        n = len(months)
        masked = torch.eye(n, dtype=torch.bool, device=h.device)
        seq, m = h.unsqueeze(0).expand(n, -1, -1), months.unsqueeze(0).expand(n, -1)
        pred = F.normalize(self.predict(seq, m, torch.ones_like(masked), masked).float(), dim=1)
        sims = pred @ F.normalize(self.key(h).float(), dim=1).T
        return [(sims[j], j) for j in range(n)]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(apply(batch.volumes, batch.views[0]))
        seq = sequence_embeddings(h, batch.index)
        rows, masked = hide_each(batch.valid)
        pred = self.predict(seq[rows], batch.months[rows], batch.valid[rows], masked)
        keys = gather(self.key(h))
        target = batch.index[rows][masked] + row_offset(h.shape[0], h.device)
        logits = F.normalize(pred.float(), dim=1) @ F.normalize(keys.float(), dim=1).T / self.temperature
        total = F.cross_entropy(logits, target, reduction="sum")
        hits = float((logits.argmax(1) == target).float().mean())
        return global_mean(total, len(target)), {"batch_retrieval": hits}
