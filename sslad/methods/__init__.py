"""Self-supervised pretraining methods, one module each, registered in :mod:`sslad.registry`;
``build`` picks one by name.

Every method takes a :class:`Batch` (the scans of a global-batch slice, how they form subject
sequences, their times and augmentation draws) and returns its loss and a few statistics.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sslad.augment import AugmentParams, draw
from sslad.registry import METHODS as REGISTRY

METHODS = tuple(REGISTRY)


@dataclass
class Batch:
    volumes: torch.Tensor        # (N, 1, X, Y, Z) every scan of the batch
    index: torch.Tensor          # (B, K) row of ``volumes`` for each sequence position, -1 = padding
    months: torch.Tensor         # (B, K) acquisition times in months (0 at padding)
    valid: torch.Tensor          # (B, K) True for real scans
    views: list[AugmentParams]   # one augmentation draw per view, for every row of ``volumes``
    generator: torch.Generator   # seeded per step, for draws a method makes itself


@dataclass(frozen=True)
class Sampling:
    """What a method trains on: single scans (seq_len 1) or sequences of subjects with >= min_scans,
    and its augmented views of each scan, each named by the key of the method's settings that names
    the view's recipe in ``pretrain.augment`` (e.g. ``("augment", "augment")``)."""

    seq_len: int
    min_scans: int
    views: tuple[str, ...]


def draw_views(sampling: Sampling, n: int, hp: dict[str, Any], recipes: dict[str, dict[str, Any]],
               generator: torch.Generator) -> list[AugmentParams]:
    """One augmentation draw per view for ``n`` scans, each from the recipe the method's settings
    ``hp`` name for that view (``recipes``: pretrain.augment)."""
    return [draw(n, recipes[hp[key]], generator) for key in sampling.views]


def sequence_embeddings(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, D) scan encodings -> (B, K, D) by sequence position, zeros at padding."""
    out = h[index.clamp_min(0)]
    return out * (index >= 0).unsqueeze(-1).to(h.dtype)


def build(name: str, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> nn.Module:
    """The method module (it owns the encoder, so its parameters are everything to optimise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown pretraining method {name!r}; one of {', '.join(METHODS)}")
    cls = getattr(importlib.import_module(REGISTRY[name].module), REGISTRY[name].cls)
    return cls(encoder, aggregator, dim, hp)
