"""SimCLR: two augmented views of each scan are positives, the other scans' views in the global batch
negatives (NT-Xent). The spatial-only baseline, and the spatial term of ``topc`` (which draws its
scans the same way, from every pretraining scan). Another visit of the same subject is never a
negative: it is the same brain, and pushing it away would teach the encoder to tell visits apart by
whatever differs between them, i.e. time, which is the temporal terms' business, not this one's."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad.augment import AugmentParams, apply
from sslad.distributed import gather
from sslad.methods import Batch, Sampling
from sslad.networks import ProjectionHead


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, groups: torch.Tensor | None = None, *,
            center: bool = False) -> torch.Tensor:
    """Normalised-temperature cross entropy (SimCLR's NT-Xent, Chen et al. 2020): row i of ``z1`` and
    of ``z2`` are a positive pair, compared by cosine / ``temperature``; the other 2(N-1) rows are
    negatives, except rows of another scan in the same group (``groups`` (N,): the subject), which
    are left out. Mean over the 2N anchors. With the defaults, the standard loss (tested against
    pytorch-metric-learning's ``NTXentLoss``).

    ``center``: centre the unit projections on their mean over the (global) batch before the cosines,
    as a batch-norm layer would centre them. Without it, a group-norm encoder's features start nearly
    parallel (cosine ~0.96 between any two demo scans), every logit is alike and the loss stayed at
    log(2N - 1) for 100 epochs; centred, it falls (demo tuning cohort: 2.68 -> 1.70). The mean is over
    the gathered batch, so data-parallel ranks compute what one process would. A method's ``center``
    setting (on in config.yaml, group norm; off in config/paper.yaml, batch norm)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    if center:
        z = F.normalize(z - z.mean(0, keepdim=True), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    drop = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    if groups is not None:
        g = torch.cat([groups, groups]).to(z.device)
        drop |= g[:, None] == g[None, :]
        drop[torch.arange(2 * n, device=z.device), target] = False  # the positive stays
    sim = sim.masked_fill(drop, float("-inf"))
    return F.cross_entropy(sim, target)


class SimCLR(nn.Module):
    sampling = Sampling(seq_len=1, min_scans=1, views=("augment", "augment"))

    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = ProjectionHead(dim, dim, hp["projection_dim"])
        self.temperature = hp["temperature"]
        self.center = hp["center"]  # NT-Xent on centred projections

    def spatial_loss(self, volumes: torch.Tensor, view1: AugmentParams, view2: AugmentParams,
                     subjects: torch.Tensor) -> torch.Tensor:
        """NT-Xent between two augmented views of every scan, other visits of a subject not negatives."""
        z1 = gather(self.projector(self.encoder(apply(volumes, view1))))
        z2 = gather(self.projector(self.encoder(apply(volumes, view2))))
        return nt_xent(z1, z2, self.temperature, gather(subjects), center=self.center)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.spatial_loss(batch.volumes, batch.views[0], batch.views[1], batch.subjects), {}
