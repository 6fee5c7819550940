"""SimCLR: two augmented views of each scan are positives, every other view in the global batch a
negative (NT-Xent). The spatial-only baseline, and the spatial term of ``topc``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import AugmentParams, apply
from sslad.distributed import gather
from sslad.methods import Batch, Sampling
from sslad.networks import ProjectionHead


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross entropy: row i of ``z1`` and of ``z2`` are a positive pair; the
    other 2(N-1) rows are negatives. Mean over the 2N anchors."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLR(nn.Module):
    sampling = Sampling(seq_len=1, min_scans=1, views=("augment", "augment"))

    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = ProjectionHead(dim, dim, hp["projection_dim"])
        self.temperature = hp["temperature"]

    def spatial_loss(self, volumes: torch.Tensor, view1: AugmentParams, view2: AugmentParams) -> torch.Tensor:
        """NT-Xent between two augmented views of every scan."""
        z1 = gather(self.projector(self.encoder(apply(volumes, view1))))
        z2 = gather(self.projector(self.encoder(apply(volumes, view2))))
        return nt_xent(z1, z2, self.temperature)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.spatial_loss(batch.volumes, batch.views[0], batch.views[1]), {}
