"""Streaming batches from disk: the training loops say which rows each batch needs, in order, and
get their volumes on the device, read ahead by worker processes.

The batches' contents are decided by the caller (seeded, a pure function of seed, epoch and step),
never by the loader, so any number of workers yields the same tensors in the same order; workers
only read. Host memory is bounded by the batch size and ``workers x prefetch`` batches in flight,
not by the dataset. With ``workers == 0`` the main process reads each batch when it is due (the
demo's tiny arrays: forking workers would cost more than reading).
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslad.volumes import ArrayFiles

Volumes = ArrayFiles | torch.Tensor  # anything indexed as (N, 1, X, Y, Z) by a list of rows

PREFETCH = 2  # batches each worker reads ahead


class RowBatches(Dataset):
    """Item ``i`` is the (n_i, 1, X, Y, Z) float16 volumes of the ``i``-th list of rows."""

    def __init__(self, volumes: Volumes, batches: Sequence[np.ndarray]) -> None:
        self.volumes, self.batches = volumes, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.volumes[self.batches[i]]


class Stream:
    """Iterate once over the volumes of ``batches`` (lists of rows) on ``device``, read by a
    ``torch.utils.data.DataLoader`` with ``workers`` processes (pinned memory on CUDA). ``waited``
    accumulates the seconds the loop spent waiting for data: the loader keeps up when it stays a
    small fraction of the step time."""

    def __init__(self, volumes: Volumes, batches: Sequence[np.ndarray | torch.Tensor], device: torch.device,
                 workers: int = 0) -> None:
        rows = [np.asarray(torch.as_tensor(b).cpu(), dtype=np.int64) for b in batches]
        pin = device.type == "cuda"
        # a private generator: the loader's seed draw must not advance the global RNG (dropout), so
        # that a job's numbers do not depend on how its data arrive
        self.loader = DataLoader(RowBatches(volumes, rows), batch_size=None, shuffle=False, num_workers=workers,
                                 pin_memory=pin, prefetch_factor=PREFETCH if workers else None,
                                 generator=torch.Generator())
        self.device, self.waited = device, 0.0

    def __iter__(self) -> Iterator[torch.Tensor]:
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                x = next(batches)
            except StopIteration:
                return
            x = x.to(self.device, non_blocking=True)
            self.waited += time.perf_counter() - start
            yield x


def local_rows(index: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows a batch of sequences uses (sorted) and the sequences' index into them
    (-1 at padding): the batch's volumes are then ``volumes[rows]`` and nothing else."""
    rows, inverse = torch.unique(index[valid], return_inverse=True)
    local = torch.full_like(index, -1)
    local[valid] = inverse
    return rows, local
