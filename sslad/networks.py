"""Networks: a per-scan 3D ResNet encoder (MONAI's layout) or a 2D one over a scan's axial slices, a
temporal aggregator over 1..K scans, heads.

The encoder sees one scan; the aggregator turns the encodings of a subject's scans and their
acquisition times into one vector. Padding positions are masked everywhere and times are taken
relative to the last real scan, so a sequence gives the same result however much padding follows it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from sslad.io import atomic_path

RESNET_LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
CHECKPOINT_FORMAT = "sslad-encoder/1"


class Diverged(ArithmeticError):
    """Training gave non-finite numbers: a loss (the loop stops at the first) or the weights it saved.
    Any result computed from them would be meaningless, so the error says where they arose."""


def check_loss(loss: float, where: str) -> float:
    """``loss`` if finite, else :class:`Diverged` naming ``where`` (the loop, epoch and step)."""
    if not math.isfinite(loss):
        raise Diverged(f"{where}: the loss is {loss}")
    return loss


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of a state dict's floating-point tensors that hold NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def _norm(name: str, channels: int, dims: int = 3) -> nn.Module:
    return {"batch": lambda: (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels),
            "instance": lambda: (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True),
            "group": lambda: nn.GroupNorm(8, channels)}[name]()


class BasicBlock(nn.Module):
    """MONAI's ``ResNetBlock``: two 3x3(x3) convolutions and a residual (1x1(x1) conv + norm when the
    shape changes: MONAI's shortcut "B", with its biased convolution)."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, dims: int = 3) -> None:
        super().__init__()
        conv = CONV[dims]
        downsample = None  # built first, as MONAI does, so that a seed gives MONAI's initial weights
        if stride != 1 or in_planes != planes:
            downsample = nn.Sequential(conv(in_planes, planes, 1, stride=stride), _norm(norm, planes, dims))
        self.conv1 = conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, planes, dims)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, planes, dims)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.act(out)


class ResNetEncoder(nn.Module):
    """3D ResNet (basic blocks), one input channel, no classifier: (B, 1, X, Y, Z) -> (B, widths[-1]);
    with ``dims=2`` the same network in 2D (MONAI's ``spatial_dims=2``), for :class:`SliceEncoder`.

    Layer for layer MONAI's ``monai.networks.nets.ResNet`` (``block="basic"``, shortcut "B",
    ``feed_forward=False``): the same parameter names and initialisation, so MONAI and
    3D-Neuro-SimCLR state dicts load unchanged (tests check outputs against MONAI's class). Built
    here rather than imported because ``import monai`` loads every MONAI submodule (~4 s, paid by each
    of the study's hundreds of fine-tuning jobs), and MONAI 1.6.1 applies a non-batch ``norm`` to the
    stem only. The defaults are 3D-Neuro-SimCLR's encoder: ResNet-18, 512-d features, stride-1 stem.
    """

    def __init__(self, depth: int = 18, widths: Sequence[int] = (64, 128, 256, 512), stem_kernel: int = 7,
                 stem_stride: int = 1, max_pool: bool = True, norm: str = "batch", dims: int = 3) -> None:
        super().__init__()
        self.conv1 = CONV[dims](1, widths[0], stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False)
        self.bn1 = _norm(norm, widths[0], dims)
        self.act = nn.ReLU(inplace=True)
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.maxpool = pool(3, stride=2, padding=1) if max_pool else nn.Identity()
        planes = widths[0]
        for i, (width, blocks) in enumerate(zip(widths, RESNET_LAYERS[depth])):
            stages = []
            for b in range(blocks):
                stages.append(BasicBlock(planes, width, 2 if i > 0 and b == 0 else 1, norm, dims))
                planes = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*stages))
        self.avgpool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    # Pretraining's memory bounds (``bound_memory``), not part of the architecture: recompute each
    # stage in the backward pass instead of keeping its activations, and encode at most
    # ``micro_batch`` scans at a time (each chunk recomputed in the backward pass).
    checkpoint_stages = False
    micro_batch = 0

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act(self.bn1(self.conv1(x))))

    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The encoder's segments in order (stem, layer1..4): the units of activation checkpointing."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.micro_batch and torch.is_grad_enabled() and x.shape[0] > self.micro_batch:
            from torch.utils.checkpoint import checkpoint  # lazily: fine-tuning jobs never need it

            return torch.cat([checkpoint(self.encode, part, use_reentrant=False) for part in x.split(self.micro_batch)])
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.checkpoint_stages and torch.is_grad_enabled()
        if recompute:
            from torch.utils.checkpoint import checkpoint
        for stage in self.stages():
            x = checkpoint(stage, x, use_reentrant=False) if recompute else stage(x)
        return self.avgpool(x).flatten(1)


class SliceEncoder(nn.Module):
    """A 2D encoder of a scan's axial slices, as a per-scan encoder: (N, 1, X, Y, Z) -> (N, D), so that
    fine-tuning, the aggregator, the probe and the diagnostics take it as they take the 3D ResNet.

    Pooling rule: the mean of the slice features over the scan's brain slices, those whose brain
    (non-zero voxels: arrays are masked, background 0) covers at least ``min_brain_fraction`` of
    the slice; a scan without such a slice takes the mean over all its slices. Slices are the planes
    of constant Z (axial in the template's RAS orientation). Slices the rule leaves out are never
    encoded. Pretraining's memory bounds (``bound_memory``) are the 3D encoder's: dino2d trains
    ``net`` on crops of a few slices per scan.
    """

    def __init__(self, net: ResNetEncoder, min_brain_fraction: float) -> None:
        super().__init__()
        self.net, self.min_brain_fraction = net, min_brain_fraction

    @staticmethod
    def axial(x: torch.Tensor) -> torch.Tensor:
        """(N, 1, X, Y, Z) -> (N * Z, 1, X, Y), the slices of each scan in a row."""
        return x.permute(0, 4, 1, 2, 3).reshape(-1, 1, x.shape[2], x.shape[3])

    def brain_slices(self, x: torch.Tensor) -> torch.Tensor:
        """(N, Z) True for the slices the pooling rule keeps."""
        keep = (x != 0).float().mean(dim=(1, 2, 3)) >= self.min_brain_fraction
        return keep | ~keep.any(dim=1, keepdim=True)

    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The pre-flight check's segments (sslad.preflight), every slice of the scans through each."""
        return [lambda x: self.net.stem(self.axial(x)), *self.net.stages()[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.brain_slices(x)
        feats = self.net(self.axial(x)[keep.flatten()])
        owner = keep.nonzero()[:, 0]
        pooled = feats.new_zeros(x.shape[0], feats.shape[1]).index_add_(0, owner, feats)
        return pooled / keep.sum(dim=1, keepdim=True).to(feats.dtype)


def build_encoder(arch: dict[str, Any]) -> nn.Module:
    """The per-scan encoder from config.yaml's ``model`` block (depth, widths, stem_kernel,
    stem_stride, max_pool, norm). depth 18 with widths 64..512, stem stride 1 and batch norm is
    3D-Neuro-SimCLR's encoder. An architecture of ``kind`` ``slice2d`` (dino2d's, see
    ``sslad.methods.architecture``) is the same ResNet in 2D over axial slices (:class:`SliceEncoder`)."""
    if arch.get("kind") == "slice2d":
        net = ResNetEncoder(arch["depth"], list(arch["widths"]), arch["stem_kernel"], arch["stem_stride"],
                            arch["max_pool"], arch["norm"], dims=2)
        return SliceEncoder(net, arch["min_brain_fraction"])
    return ResNetEncoder(arch["depth"], list(arch["widths"]), arch["stem_kernel"], arch["stem_stride"],
                         arch["max_pool"], arch["norm"])


def bound_memory(encoder: nn.Module, checkpoint_stages: bool, micro_batch: int) -> nn.Module:
    """Trade compute for device memory in training (see ``ResNetEncoder``); the same function, so
    the same weights and outputs, up to batch-norm statistics: those are per micro-batch, and a
    recomputed stage updates the running statistics a second time."""
    encoder.checkpoint_stages, encoder.micro_batch = checkpoint_stages, micro_batch
    return encoder


def feature_dim(arch: dict[str, Any]) -> int:
    return int(arch["widths"][-1])


class TimeEncoding(nn.Module):
    """Sinusoids of the time (months) before the last scan, periods 1 month to 20 years, projected."""

    def __init__(self, dim: int, n_freq: int = 8) -> None:
        super().__init__()
        periods = torch.logspace(0, math.log10(240.0), n_freq)
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * n_freq, dim)

    def forward(self, months: torch.Tensor, undated: torch.Tensor | None = None) -> torch.Tensor:
        """``undated`` positions get all-zero sinusoids, the projection's bias alone: no real time
        gives it (each sin/cos pair of a real time has norm 1), so it reads as "time unknown"."""
        phase = months.unsqueeze(-1) * self.omega
        waves = torch.cat([phase.sin(), phase.cos()], dim=-1)
        if undated is not None:
            waves = waves.masked_fill(undated.unsqueeze(-1), 0.0)
        return self.proj(waves)


class TemporalAggregator(nn.Module):
    """Masked attention (CLS token + transformer) or masked mean pooling over a subject's scans.

    Inputs: ``emb`` (B, K, D) scan encodings, ``months`` (B, K) acquisition times, ``valid`` (B, K)
    True for real scans; every row needs at least one real scan.
    """

    def __init__(self, dim: int, kind: str = "attention", layers: int = 1, heads: int = 4) -> None:
        super().__init__()
        self.kind = kind
        self.time = TimeEncoding(dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        if kind == "attention":
            self.cls = nn.Parameter(torch.zeros(dim))
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        elif kind != "mean":
            raise ValueError(f"unknown temporal aggregator {kind!r} (attention or mean)")
        self.norm = nn.LayerNorm(dim)

    @staticmethod
    def relative_months(months: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Months before the last real scan (<= 0); padding gets 0."""
        last = months.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
        return (months - last).masked_fill(~valid, 0.0)

    def tokens(self, emb: torch.Tensor, months: torch.Tensor, valid: torch.Tensor,
               masked: torch.Tensor | None = None,
               undated: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, D), per-scan outputs (B, K, D)). ``masked`` (B, K) positions are replaced by a
        learned token (keeping their time) so that their content cannot reach any output;
        ``undated`` (B, K) positions keep their content and lose their own time (:class:`TimeEncoding`)."""
        if masked is not None:
            emb = torch.where(masked.unsqueeze(-1), self.mask_token.to(emb.dtype), emb)
        x = emb + self.time(self.relative_months(months, valid), undated).to(emb.dtype)
        if self.kind == "mean":
            # context = mean over the real, unmasked scans; each position's output adds it
            seen = valid if masked is None else valid & ~masked
            w = seen.unsqueeze(-1).to(x.dtype)
            pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
            return self.norm(pooled), x + pooled.unsqueeze(1)
        cls = self.cls.to(x.dtype).expand(x.shape[0], 1, -1)
        pad = torch.cat([torch.zeros_like(valid[:, :1]), ~valid], dim=1)  # (B, 1 + K), the CLS is never padding
        # padding as a per-head attention mask rather than key_padding_mask: the same masking, but
        # torch's key-padding check imports sympy (~0.7 s), a real cost for short fine-tuning jobs
        heads = self.transformer.layers[0].self_attn.num_heads
        mask = pad[:, None, :].expand(-1, pad.shape[1], -1).repeat_interleave(heads, dim=0)
        out = self.transformer(torch.cat([cls, x], dim=1), mask=mask)
        return self.norm(out[:, 0]), out[:, 1:]

    def forward(self, emb: torch.Tensor, months: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.tokens(emb, months, valid)[0]


class ProjectionHead(nn.Sequential):
    """SimCLR's two-layer projection (no biases), as in 3D-Neuro-SimCLR."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, out, bias=False))


def build_aggregator(arch: dict[str, Any]) -> TemporalAggregator:
    return TemporalAggregator(feature_dim(arch), arch["temporal"], arch["temporal_layers"], arch["temporal_heads"])


def save_encoder(path: str | Path, arch: dict[str, Any], encoder: nn.Module, aggregator: nn.Module | None,
                 source: str) -> None:
    """The hand-over to fine-tuning: architecture plus weights, written atomically."""
    state = {"format": CHECKPOINT_FORMAT, "arch": dict(arch), "source": source,
             "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
             "aggregator": None if aggregator is None else
             {k: v.detach().cpu() for k, v in aggregator.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_encoder(path: str | Path) -> tuple[nn.Module, TemporalAggregator, dict[str, Any], bool]:
    """Encoder and aggregator from an ``encoder.pt``; the bool says whether the aggregator was pretrained.
    :class:`Diverged` when a weight is NaN or inf (a diverged pretraining's), which would only give NaN
    scores downstream."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an sslad encoder checkpoint (format {CHECKPOINT_FORMAT})")
    bad = non_finite({**state["encoder"], **{f"aggregator.{k}": v for k, v in (state["aggregator"] or {}).items()}})
    if bad:
        raise Diverged(f"encoder {path} has non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    arch = state["arch"]
    encoder = build_encoder(arch)
    encoder.load_state_dict(state["encoder"])
    aggregator = build_aggregator(arch)
    if state["aggregator"] is not None:
        aggregator.load_state_dict(state["aggregator"])
    return encoder, aggregator, arch, state["aggregator"] is not None


def import_external(src: str | Path, dst: str | Path, model_cfg: dict[str, Any], stem_stride: int) -> dict[str, Any]:
    """Convert a 3D-Neuro-SimCLR checkpoint (``model_state_dict`` with ``encoder.*`` MONAI ResNet keys,
    maybe ``module.``-prefixed) into an ``encoder.pt``. Depth, widths and stem kernel are read from the
    weights; the stem stride cannot be, so it comes from config. Returns the architecture."""
    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ValueError(f"{src}: cannot read as a PyTorch checkpoint ({exc})") from exc
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{src}: no model_state_dict in the checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" not in state:
        raise ValueError(f"{src}: no ResNet encoder weights (conv1.weight) in model_state_dict")
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    depth = {tuple(v): k for k, v in RESNET_LAYERS.items()}.get(blocks)
    if depth is None:
        raise ValueError(f"{src}: ResNet with blocks {blocks} per stage is not one of depths {sorted(RESNET_LAYERS)}")
    arch = dict(model_cfg, depth=depth, widths=[int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5)],
                stem_kernel=int(state["conv1.weight"].shape[-1]), stem_stride=stem_stride,
                norm="batch" if "bn1.running_mean" in state else model_cfg["norm"],
                axes="zyx")  # 3D-Neuro-SimCLR transposes NIfTI arrays to (Z, Y, X) before its encoder
    encoder = build_encoder(arch)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{src}: weights do not fit a MONAI ResNet-{depth}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    save_encoder(dst, arch, encoder, None, f"external:{Path(src).name}")
    return arch
