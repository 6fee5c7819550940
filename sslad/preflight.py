"""Pre-flight memory check of a pretraining job: will one step fit on the device?

Before any epoch, the encoder is run forward on two small grids with the training dtype, and the
bytes autograd saves for the backward pass are counted per stage (stem, layer1..4) through
``torch.autograd.graph.saved_tensors_hooks``. Saved bytes grow linearly with the voxels, so the two
probes give each stage's bytes per scan on the configured grid. With the number of encoder passes
one process makes per step (units x scans x views), the activation checkpointing and micro-batch
settings, the augmentation's buffers and the weights, gradients and Adam state, that is the
estimate of the step's peak memory. A job whose estimate exceeds the memory it may use (a GPU's free
memory; on a CPU the least of the host's RAM, the cgroup's limit and the job's mem_mb; or
``pretrain.device_memory_gb``) stops at once with the estimate, the limit and settings that fit,
instead of running out of memory (or being killed by SLURM) hours into the run. Probing takes
seconds on a CPU.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

GB = 1024**3
# augmentation (sslad.augment.apply) of one view holds about this many bytes per voxel of every scan
# at once: the float32 copy, its mask, the sampling grid (3 floats), the 2-channel resampled pair
AUGMENT_BYTES_PER_VOXEL = 36
PROBE_SCANS = 2
GPU_RESERVE = 0.1
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


class DoesNotFit(ValueError):
    """One training step would need more memory than the device has."""


@dataclass(frozen=True)
class StageBytes:
    """Per scan, on the configured grid: what a stage saves for backward, and its output."""

    saved: float
    output: float


@dataclass(frozen=True)
class Plan:
    """What sizes one step of one process."""

    passes: int             # encoder passes per step (scans x views of this process's units)
    scans: int              # scans per step on this process (raw arrays on the device)
    voxels: int             # of the model grid
    checkpoint: bool
    micro_batch: int        # 0: the whole batch at once


def encoder_passes(sampling: Any, batch_size: int, world: int) -> tuple[int, int]:
    """(encoder passes, scans) of one process in one step, at most: every unit with its full
    sequence, every scan through each of the method's views, plus the single scans of a spatial
    term beside the sequences (topc: as many as the sequences hold, each through its views)."""
    scans = batch_size // world * sampling.seq_len
    spatial = scans if sampling.spatial_views else 0
    return scans * len(sampling.views) + spatial * len(sampling.spatial_views), scans + spatial


def _probe(encoder: nn.Module, grid: tuple[int, ...], device: torch.device, bf16: bool) -> list[tuple[int, int]]:
    """(saved bytes, output bytes) per stage for PROBE_SCANS scans of ``grid``, as training runs it
    (bf16 autocast on GPUs)."""
    params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}
    x = torch.randn(PROBE_SCANS, 1, *grid, generator=torch.Generator().manual_seed(0)).to(device)
    out = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for stage in encoder.stages():
            seen: dict[int, int] = {}

            def pack(t: torch.Tensor) -> torch.Tensor:
                storage = t.untyped_storage()
                if storage.data_ptr() not in params:
                    seen[storage.data_ptr()] = storage.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                y = stage(x)
            out.append((sum(seen.values()), y.numel() * y.element_size()))
            x = y.detach().requires_grad_()
    return out


def stage_bytes(encoder: nn.Module, grid: tuple[int, ...], device: torch.device, bf16: bool) -> list[StageBytes]:
    """Each stage's bytes per scan on ``grid``, extrapolated linearly in the voxels from two probes
    on grids of about 24^3 and 32^3 voxels shaped like ``grid`` (never larger than it). ``bf16``:
    under autocast, as on GPUs (a CPU's autocast gives the same sizes, for estimates made off the GPU)."""
    probe = copy.deepcopy(encoder).to(device).train()  # the probe must not move the job's BN statistics
    for p in probe.parameters():
        p.requires_grad_(True)
    voxels = float(torch.tensor(grid, dtype=torch.float64).prod())
    sizes = []
    for side in (24, 32):
        f = min(1.0, (side**3 / voxels) ** (1 / 3))
        sizes.append(tuple(max(8, round(d * f)) for d in grid))
    (g1, g2) = sizes
    v1, v2 = (float(torch.tensor(g, dtype=torch.float64).prod()) for g in sizes)
    m1, m2 = _probe(probe, g1, device, bf16), _probe(probe, g2, device, bf16)
    result = []
    for (s1, o1), (s2, o2) in zip(m1, m2):
        per = [(s1, s2), (o1, o2)]
        if v2 == v1:
            at_grid = [b / PROBE_SCANS for _, b in per]
        else:
            at_grid = [(a + (b - a) * (voxels - v1) / (v2 - v1)) / PROBE_SCANS for a, b in per]
        result.append(StageBytes(*at_grid))
    return result


def step_bytes(stages: list[StageBytes], plan: Plan, state_bytes: int) -> dict[str, float]:
    """The step's peak memory, by part. Forward keeps every stage's saved tensors (only each
    stage's input with checkpointing, only the encoder's input with micro-batching); backward adds
    the gradient of the stage it is in (twice its output) and, when recomputing, that stage's
    saved tensors for the passes recomputed together (the micro-batch, else all)."""
    n = plan.passes
    micro = plan.micro_batch if plan.micro_batch < plan.scans else 0  # each encoder call takes all the scans
    group = micro or n
    scan = plan.voxels * 4.0  # one augmented fp32 input: all a micro-batched pass keeps until backward
    inputs = [scan] + [s.output for s in stages[:-1]]  # what a checkpointed stage keeps
    if plan.checkpoint:
        per_scan = max(sum(inputs[:k + 1]) + s.saved + 2 * s.output for k, s in enumerate(stages))
    else:
        per_scan = max(sum(s.saved for s in stages[:k + 1]) + 2 * s.output for k, s in enumerate(stages))
    if micro:
        activations = n * scan + group * per_scan
    else:
        activations = n * per_scan
    data = plan.scans * plan.voxels * (2 + AUGMENT_BYTES_PER_VOXEL)
    parts = {"activations": activations, "data": data, "weights_grads_adam": float(state_bytes)}
    parts["total"] = sum(parts.values())
    return parts


def state_bytes(model: nn.Module) -> int:
    """Weights, gradients and Adam's two moments (fp32)."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def cgroup_limit(root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP) -> float | None:
    """The memory limit of this process's control group (the one SLURM or a container enforces), the
    tightest over its ancestors; None without one. cgroup v2: ``memory.max`` ("max": none) along the
    ``0::<path>`` line of /proc/self/cgroup; v1: ``memory.limit_in_bytes`` under ``memory/`` along the
    memory controller's line (no limit reads as about 2^63 there)."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files.append((root, path, "memory.max"))
        elif "memory" in controllers.split(","):
            files.append((root / "memory", path, "memory.limit_in_bytes"))
    limits = []
    for base, path, name in files:
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts) + 1):  # a container sees its own group as the root
            try:
                value = (base.joinpath(*parts[:depth]) / name).read_text().strip()
            except OSError:
                continue
            if value.isdigit() and 0 < int(value) < 2**60:
                limits.append(float(value))
    return min(limits, default=None)


def device_limit(device: torch.device, memory_gb: float, mem_mb: float = 0.0, cgroup_root: Path = CGROUP_ROOT,
                 proc_cgroup: Path = PROC_CGROUP) -> tuple[float, str]:
    """Bytes the step may use and which limit that is: ``memory_gb`` when set; on a GPU, the memory
    free to this process (what the driver has free and what PyTorch holds already: the probes and
    the weights, which the estimate counts) less GPU_RESERVE of the total (cuDNN workspaces, the
    allocator's fragmentation); on a CPU, the tightest of the host's RAM, the process's cgroup
    limit and the job's ``mem_mb`` (the rule's resources.mem_mb, megabytes as Snakemake counts
    them): a job given 4 GB on a large node must fit in 4 GB, not in the node."""
    if memory_gb:
        return memory_gb * GB, "pretrain.device_memory_gb"
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        limit = free + torch.cuda.memory_reserved(device) - GPU_RESERVE * total
        return float(limit), f"cuda free memory (less a {GPU_RESERVE:.0%} reserve)"
    limits = {"host RAM": float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))}
    cgroup = cgroup_limit(cgroup_root, proc_cgroup)
    if cgroup:
        limits["cgroup"] = cgroup
    if mem_mb:
        limits["job mem_mb"] = mem_mb * 1e6
    name = min(limits, key=limits.get)
    return limits[name], name


def _fits(stages: list[StageBytes], plan: Plan, state: int, limit: float) -> bool:
    return step_bytes(stages, plan, state)["total"] <= limit


def suggestions(stages: list[StageBytes], plan: Plan, state: int, limit: float, batch_size: int, world: int,
                per_unit: int, scans_per_unit: int) -> list[str]:
    """Settings that would fit, each changing as little as possible."""
    out = []
    fitting = [b for b in range(world, batch_size, world)  # a contrastive batch needs two
               if b >= 2 and _fits(stages, replace(plan, passes=per_unit * b // world,
                                                   scans=scans_per_unit * b // world), state, limit)]
    if fitting:
        out.append(f"pretrain.train.batch_size: {fitting[-1]}")
    if not plan.checkpoint and _fits(stages, replace(plan, checkpoint=True), state, limit):
        out.append("pretrain.train.checkpoint_activations: true")
    for checkpoint in ((plan.checkpoint,) if plan.checkpoint else (False, True)):
        # the encoder takes a view of the process's scans at a time: chunks of fewer scans than that
        micro = [m for m in range(1, plan.scans) if _fits(stages, replace(plan, checkpoint=checkpoint, micro_batch=m),
                                                          state, limit)]
        if micro:
            extra = ", checkpoint_activations: true" if checkpoint and not plan.checkpoint else ""
            out.append(f"pretrain.train.micro_batch: {micro[-1]}{extra}")
            break
    for more in range(2, 65):
        if batch_size % (world * more) == 0 and _fits(
                stages, replace(plan, passes=plan.passes // more, scans=plan.scans // more), state, limit):
            out.append(f"{world * more} GPUs (processes) for the same global batch")
            break
    return out


def estimate(settings: dict[str, Any], method: nn.Module, encoder: nn.Module, device: torch.device,
             world: int, batch_size: int, grid: tuple[int, ...],
             bf16: bool | None = None) -> tuple[dict[str, float], list[StageBytes], Plan]:
    """The estimate of one step's peak memory (bytes, by part), probed on ``device``, with what it
    was built from; ``bf16`` defaults to training's choice (autocast on GPUs)."""
    tr = settings["train"]
    passes, scans = encoder_passes(method.sampling, batch_size, world)
    voxels = int(torch.tensor(grid).prod())
    plan = Plan(passes, scans, voxels, bool(tr["checkpoint_activations"]), int(tr["micro_batch"]))
    stages = stage_bytes(encoder, grid, device, device.type == "cuda" if bf16 is None else bf16)
    return step_bytes(stages, plan, state_bytes(method)), stages, plan


def check(settings: dict[str, Any], method: nn.Module, encoder: nn.Module, device: torch.device, world: int,
          batch_size: int, grid: tuple[int, ...], memory_gb: float, log=print, mem_mb: float = 0.0) -> dict[str, float]:
    """Estimate the step's memory; raise DoesNotFit (estimate, limit, settings that fit) when it
    exceeds what the job may use (device_limit; ``mem_mb``: the rule's resources.mem_mb, as
    every process of the job gets it). Returns the estimate in GB by part (3 significant digits), for
    the metrics."""
    parts, stages, plan = estimate(settings, method, encoder, device, world, batch_size, grid)
    limit, which = device_limit(device, memory_gb, mem_mb)
    gb = {k: float(f"{v / GB:.3g}") for k, v in parts.items()}
    where = f"{which} {limit / GB:.1f} GB"
    log(f"pre-flight: one step needs ~{gb['total']:g} GB per process ({plan.passes} encoder passes on "
        f"{'x'.join(map(str, grid))}: activations {gb['activations']:g}, data {gb['data']:g}, weights/gradients/"
        f"Adam {gb['weights_grads_adam']:g} GB); limit {where}")
    if parts["total"] > limit:
        per_unit = plan.passes // max(1, batch_size // world)
        fits = suggestions(stages, plan, state_bytes(method), limit, batch_size, world, per_unit,
                           plan.scans // max(1, batch_size // world))
        raise DoesNotFit(
            f"{settings['method']}: one training step needs ~{gb['total']:g} GB per process at batch "
            f"{batch_size} over {world} process(es) on {'x'.join(map(str, grid))} (activations "
            f"{gb['activations']:g} GB for {plan.passes} encoder passes), more than the {where}. "
            + ("Settings that would fit: " + "; ".join(fits) if fits else "No batch of this model fits: "
               "use a smaller grid or model") + ".")
    return gb
