"""Masked temporal prediction: hide one scan of a sequence, predict its encoding from the other
scans and all times through the temporal aggregator (InfoNCE).

The prediction is read from the aggregator's pooled readout (what fine-tuning reads) beside its
output at the hidden position (:func:`sslad.methods.masked_readout`), so the loss trains both. The
candidates are every scan of the global batch, *including the same subject's other visits* (the
context scans): identity alone cannot pick the hidden visit among them, its time can. The mask is
drawn for the whole global batch from the step's generator, each data-parallel rank taking its own
sequences' rows (:func:`sslad.methods.step_draw`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import apply
from sslad.distributed import gather, global_mean, row_offset
from sslad.methods import Batch, Sampling, masked_readout, sequence_embeddings, step_draw


def choose_masked(valid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One real position per sequence (B, K) bool, the one with the largest draw ``u`` (B, K);
    padding is never chosen."""
    u = u.masked_fill(~valid, -1.0)
    return F.one_hot(u.argmax(dim=1), valid.shape[1]).bool()


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row i of ``pred`` should match row i of ``target`` better than any other row."""
    logits = F.normalize(pred.float(), dim=1) @ F.normalize(target.float(), dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(pred), device=pred.device))


class TMP(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2, views=("augment",))
        self.encoder = encoder
        self.aggregator = aggregator
        self.predictor = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.temperature = hp["temperature"]

    def predict(self, seq: torch.Tensor, months: torch.Tensor, valid: torch.Tensor,
                masked: torch.Tensor) -> torch.Tensor:
        """(B, D) predicted encodings of the masked scans."""
        return self.predictor(masked_readout(self.aggregator, seq, months, valid, masked))

    def retrieval(self, h: torch.Tensor, months: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """One subject's visits (n, D) and times (n,): per visit j, the similarity of its prediction
        from all the other visits (however many: the aggregator takes any length) to every visit of
        the subject, and j (the right one)."""
        n = len(months)
        masked = torch.eye(n, dtype=torch.bool, device=h.device)
        seq, m = h.unsqueeze(0).expand(n, -1, -1), months.unsqueeze(0).expand(n, -1)
        pred = F.normalize(self.predict(seq, m, torch.ones_like(masked), masked).float(), dim=1)
        sims = pred @ F.normalize(h.float(), dim=1).T
        return [(sims[j], j) for j in range(n)]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(apply(batch.volumes, batch.views[0]))
        seq = sequence_embeddings(h, batch.index)
        masked = choose_masked(batch.valid, step_draw(batch, tuple(batch.valid.shape)))
        pred = self.predict(seq, batch.months, batch.valid, masked)
        keys = gather(h)
        target = batch.index[masked] + row_offset(h.shape[0], h.device)
        logits = F.normalize(pred.float(), dim=1) @ F.normalize(keys.float(), dim=1).T / self.temperature
        total = F.cross_entropy(logits, target, reduction="sum")
        hits = float((logits.argmax(1) == target).float().mean())
        return global_mean(total, len(target)), {"batch_retrieval": hits}
