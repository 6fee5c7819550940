"""Self-supervised pretraining methods, one module each, registered in :mod:`sslad.registry`;
``build`` picks one by name.

Every method takes a :class:`Batch` (the scans of a global-batch slice, how they form subject
sequences, their times and augmentation draws) and returns its loss and a few statistics.

What the temporal methods share, so that subject identity alone cannot meet their objectives: the
targets are other visits *of the same subject* (an order, or the visit at a given time), and the
same subject's other visits are candidates the model must rule out (every query has at least one
besides its target: tcl makes no query of a subject with two visits, tmp hides two or more). Each
temporal method trains the temporal aggregator it hands to fine-tuning through the aggregator's
pooled readout, the vector fine-tuning reads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslad import distributed
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
    subjects: torch.Tensor       # (N,) subject number of each row of ``volumes`` (equal = same subject)
    spatial: "Batch | None" = None  # single scans for a spatial term beside sequences (``Sampling.spatial_views``)
    progress: float = 0.0        # share of the run done at this step, (epoch + step / steps) / epochs: schedules


@dataclass(frozen=True)
class Sampling:
    """What a method trains on: single scans (seq_len 1) or sequences of subjects with >= min_scans,
    and its augmented views of each scan, each named by the key of the method's settings that names
    the view's recipe in ``pretrain.augment`` (e.g. ``("augment", "augment")``)."""

    seq_len: int
    min_scans: int
    views: tuple[str, ...]
    spatial_views: tuple[str, ...] = ()  # views of a further batch of single scans from every scan (topc)


def draw_views(sampling: Sampling, n: int, hp: dict[str, Any], recipes: dict[str, dict[str, Any]],
               generator: torch.Generator) -> list[AugmentParams]:
    """One augmentation draw per view for ``n`` scans, each from the recipe the method's settings
    ``hp`` name for that view (``recipes``: pretrain.augment)."""
    return [draw(n, recipes[hp[key]], generator) for key in sampling.views]


def step_draw(batch: Batch, shape: tuple[int, int]) -> torch.Tensor:
    """Uniform draws for this process's (B, K) sequences, taken from one draw for the global batch
    (the generator is seeded per step, the same on every rank): each data-parallel rank gets its own
    numbers, the ones a single process would give those sequences."""
    rank, world = distributed.world()
    u = torch.rand((shape[0] * world, shape[1]), generator=batch.generator)
    return u[rank * shape[0]:(rank + 1) * shape[0]].to(batch.valid.device)


def masked_readout(aggregator: nn.Module, seq: torch.Tensor, months: torch.Tensor, valid: torch.Tensor,
                   masked: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2D): the aggregator's pooled readout (what fine-tuning reads) beside its output at position
    ``at`` (B,) of each row, by default the one masked position; masked positions' content is hidden
    and their time kept. Both carry the target's time (the mean aggregator's pool does not), and
    training through both trains the readout."""
    pooled, tokens = aggregator.tokens(seq, months, valid, masked)
    at = masked.int().argmax(1) if at is None else at
    return torch.cat([pooled, tokens[torch.arange(len(at), device=at.device), at]], dim=1)


def unseen_nce(queries: torch.Tensor, keys: torch.Tensor, target: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor],
               temperature: float) -> tuple[torch.Tensor, float]:
    """Summed InfoNCE of the (Q, P) queries against the (N, P) keys (cosine / ``temperature``), query q's
    right key ``target[q]``, and the share of queries whose best key is the right one. ``seen``
    (query rows, key rows) takes each listed key out of that query's candidates: the scans it was
    computed from, which the model could rule out by their content alone, without time."""
    logits = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T / temperature
    logits = logits.index_put(seen, logits.new_tensor(float("-inf")))
    hits = float((logits.argmax(1) == target).float().mean()) if len(target) else 0.0
    return F.cross_entropy(logits, target, reduction="sum"), hits


def sequence_embeddings(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, D) scan encodings -> (B, K, D) by sequence position, zeros at padding."""
    out = h[index.clamp_min(0)]
    return out * (index >= 0).unsqueeze(-1).to(h.dtype)


def architecture(model: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
    """The encoder a method trains and hands to fine-tuning (``encoder.pt``'s ``arch``): the
    ``model`` block's 3D ResNet, or for a method whose settings hold a ``slice_encoder`` block
    (dino2d) that 2D ResNet over axial slices; the temporal aggregator is ``model``'s either way."""
    if "slice_encoder" in hp:
        return {**model, **hp["slice_encoder"], "kind": "slice2d"}
    return dict(model)


def build(name: str, encoder: nn.Module, aggregator: nn.Module, dim: int, hp: dict[str, Any]) -> nn.Module:
    """The method module (it owns the encoder, so its parameters are everything to optimise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown pretraining method {name!r}; one of {', '.join(METHODS)}")
    cls = getattr(importlib.import_module(REGISTRY[name].module), REGISTRY[name].cls)
    return cls(encoder, aggregator, dim, hp)
