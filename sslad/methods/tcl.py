"""Temporal contrastive learning: two scans of a subject at different times are positives, other
subjects' scans negatives (NT-Xent). The earlier scan's encoding is shifted by an embedding of the
interval to the later one, so the model learns change over a known time, not invariance to it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslad.augment import apply
from sslad.distributed import gather
from sslad.methods import Batch, Sampling, sequence_embeddings
from sslad.methods.simclr import nt_xent
from sslad.networks import ProjectionHead, TimeEncoding


class TCL(nn.Module):
    sampling = Sampling(seq_len=2, min_scans=2, views=("augment",))

    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.interval = TimeEncoding(dim)
        self.projector = ProjectionHead(dim, dim, hp["projection_dim"])
        self.temperature = hp["temperature"]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(apply(batch.volumes, batch.views[0]))
        seq = sequence_embeddings(h, batch.index)
        delta = batch.months[:, 1] - batch.months[:, 0]
        q = self.projector(seq[:, 0] + self.interval(delta).to(seq.dtype))
        k = self.projector(seq[:, 1])
        return nt_xent(gather(q), gather(k), self.temperature), {"mean_interval_months": float(delta.abs().mean())}
