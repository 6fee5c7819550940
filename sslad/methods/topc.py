"""TOP + spatial contrastive ("SSL-TOPC"): temporal order prediction on both augmented views of
every scan, plus SimCLR's NT-Xent between the two views (the robust-spatial-features extension)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslad.methods import Batch, Sampling, sequence_embeddings
from sslad.methods.simclr import SimCLR
from sslad.methods.top import OrderHead


class TOPC(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2, views=2)
        self.spatial = SimCLR(encoder, aggregator, dim, hp)
        self.head = OrderHead(dim, hp["hidden"])
        self.weight = hp["spatial_weight"]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        spatial, h1, h2 = self.spatial.spatial_loss(batch.volumes, batch)
        top1, acc1 = self.head(sequence_embeddings(h1, batch.index), batch.months, batch.valid)
        top2, acc2 = self.head(sequence_embeddings(h2, batch.index), batch.months, batch.valid)
        order = (top1 + top2) / 2
        return order + self.weight * spatial, {"order_accuracy": float((acc1 + acc2) / 2),
                                               "order_loss": float(order.detach()),
                                               "spatial_loss": float(spatial.detach())}
