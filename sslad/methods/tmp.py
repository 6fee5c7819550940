"""Masked temporal prediction: hide one scan of a sequence, predict its encoding from the other
scans and all times through the temporal aggregator. Contrastive (InfoNCE against the other
sequences' hidden scans), which rules out the collapsed constant solution. The aggregator is
pretrained here and carried over to fine-tuning."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import apply
from sslad.distributed import gather
from sslad.methods import Batch, Sampling, sequence_embeddings


def choose_masked(valid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One real position per sequence, uniformly (B, K) bool; padding is never chosen."""
    u = torch.rand(valid.shape, generator=generator).to(valid.device)
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
        self.predictor = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.temperature = hp["temperature"]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(apply(batch.volumes, batch.views[0]))
        seq = sequence_embeddings(h, batch.index)
        masked = choose_masked(batch.valid, batch.generator)
        _, tokens = self.aggregator.tokens(seq, batch.months, batch.valid, masked)
        pred = self.predictor(tokens[masked])
        return info_nce(gather(pred), gather(seq[masked]), self.temperature), {}
