"""TOP + spatial contrastive ("SSL-TOPC"): ``top``'s order loss through the aggregator on one view of
each sampled subject's scans (recipe ``augment``; each pair scored undated within the subject's
sequence, see :mod:`sslad.methods.temporal_order`), plus ``spatial_weight`` x ``simclr``'s NT-Xent
between two further views (``spatial_augment``) of a separate batch of single scans drawn from
every pretraining scan, as simclr draws them (single-visit subjects included, other visits of a
subject never negatives). So topc against simclr and top isolates the combination. Each term sees
the inputs it sees alone: resized crops would rescale the anatomy whose change the order term follows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslad.methods import Batch, Sampling
from sslad.methods.simclr import SimCLR
from sslad.methods.temporal_order import TOP


class TOPC(nn.Module):
    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.sampling = Sampling(seq_len=hp["n_scans"], min_scans=2, views=("augment",),
                                 spatial_views=("spatial_augment", "spatial_augment"))
        self.order = TOP(encoder, aggregator, dim, hp)
        self.spatial = SimCLR(encoder, aggregator, dim, hp)
        self.weight = hp["spatial_weight"]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        order, stats = self.order(batch)
        s = batch.spatial
        spatial = self.spatial.spatial_loss(s.volumes, s.views[0], s.views[1], s.subjects)
        return order + self.weight * spatial, {**stats, "order_loss": float(order.detach()),
                                               "spatial_loss": float(spatial.detach())}
