"""TOP + spatial contrastive ("SSL-TOPC"): ``top``'s order loss on one view of every scan (its
recipe, ``augment``), plus ``simclr``'s NT-Xent between two further views (``spatial_augment``),
weighted by ``spatial_weight`` (the robust-spatial-features extension). Each term sees the inputs it
sees alone: resized crops would rescale the anatomy whose change the order term follows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslad.methods import Batch, Sampling
from sslad.methods.simclr import SimCLR
from sslad.methods.top import TOP


class TOPC(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2,
                                 views=("augment", "spatial_augment", "spatial_augment"))
        self.order = TOP(encoder, aggregator, dim, hp)
        self.spatial = SimCLR(encoder, aggregator, dim, hp)
        self.weight = hp["spatial_weight"]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        order, stats = self.order(batch)
        spatial = self.spatial.spatial_loss(batch.volumes, batch.views[1], batch.views[2])
        return order + self.weight * spatial, {**stats, "order_loss": float(order.detach()),
                                               "spatial_loss": float(spatial.detach())}
