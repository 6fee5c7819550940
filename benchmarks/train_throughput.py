"""Throughput of one pretraining step against its data path, so the data path is never the bottleneck.

Pretraining augments on the training device (``sslad.augment``: ``draw`` then ``apply``) from
float16 volumes; that path must outrun the network, or a GPU sits idle waiting for crops. On
synthetic masked-z-scored volumes (an ellipsoid brain, zeros outside) this times, per variant:
the augmentation of a batch already on the device (and, on CUDA, the pageable host->device copy
of float16 batches, counted serially into the data path), a full step of the chosen method as
``sslad/pretrain.py`` builds it (forward, backward, Adam; volumes x views per step), and peak
memory. On CUDA it compares fp32 and bf16 autocast, each with and without channels_last_3d.
Note that the methods augment inside their forward, so the step time includes the augmentation.

    python benchmarks/train_throughput.py --method topc
    python benchmarks/train_throughput.py --device cuda --preset resnet18 --shape 150 192 192 --batch 6
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from sslad.augment import apply, masked_zscore
from sslad.distributed import pick_device
from sslad.methods import METHODS, architecture, build, draw_views
from sslad.networks import build_aggregator, build_encoder, feature_dim
from sslad.pretrain_data import ScanSet, assemble, plan_step

ROOT = Path(__file__).resolve().parents[1]


def synthetic_scans(n_subjects: int, seq_len: int, shape: tuple[int, int, int], seed: int) -> ScanSet:
    """``n_subjects`` x ``seq_len`` float16 volumes: noise inside a jittered ellipsoid, z-scored there."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, s) for s in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    n = n_subjects * seq_len
    vols = torch.empty(n, 1, *shape, dtype=torch.float16)
    for i in range(n):
        radii = (0.75 + 0.1 * torch.rand(3, 1, 1, 1, generator=g))
        mask = ((grid / radii) ** 2).sum(0, keepdim=True) <= 1
        x = 1 + torch.rand(1, *shape, generator=g)  # positive, so the brain has no exact zeros
        vols[i] = masked_zscore(x.unsqueeze(0), mask.unsqueeze(0).float())[0].half()
    rows = np.arange(n).reshape(n_subjects, seq_len)
    return ScanSet(vols, np.tile(np.arange(seq_len) * 12.0, n_subjects), list(rows),
                   [(f"sub-{i // seq_len}", f"ses-{i % seq_len}") for i in range(n)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def run_variant(a, cfg: dict, scans: ScanSet, device: torch.device, bf16: bool, channels_last: bool) -> dict:
    """Data-path and training-step rates of one precision / memory-format variant."""
    torch.manual_seed(a.seed)
    hp, recipes = cfg["pretrain"]["methods"][a.method], cfg["pretrain"]["augment"]
    # the 3D ResNet of the arguments, or dino2d's slice encoder (its config block)
    model_cfg = architecture(dict(cfg["model"], depth=a.depth, widths=a.widths, stem_stride=a.stem_stride), hp)
    encoder = build_encoder(model_cfg)
    method = build(a.method, encoder, build_aggregator(model_cfg), feature_dim(model_cfg), hp).to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last_3d)
        encoder.register_forward_pre_hook(lambda m, args: (args[0].contiguous(memory_format=torch.channels_last_3d),))
    opt = torch.optim.Adam(method.parameters(), lr=cfg["pretrain"]["train"]["lr"])
    sampling = method.sampling
    settings = {"train": {"seed": a.seed}, "hp": hp, "augment": recipes}
    plan = plan_step(scans, scans.subjects, np.arange(len(scans.keys)), sampling, settings, 0, 0)
    rows = plan.rows  # the sequences' scans, then topc's single scans
    host = scans.volumes[torch.from_numpy(rows)]  # float16, as the model-ready arrays are
    volumes = host.to(device)
    if channels_last:
        volumes = volumes.contiguous(memory_format=torch.channels_last_3d)
    gen = torch.Generator().manual_seed(a.seed)
    n_vol = plan.n_seq * len(sampling.views) + (len(rows) - plan.n_seq) * len(sampling.spatial_views)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def augment() -> None:
        with torch.no_grad(), autocast:
            for p in draw_views(sampling, plan.n_seq, hp, recipes, gen):
                apply(volumes[:plan.n_seq], p)

    def step() -> None:
        batch = assemble(plan, volumes)
        with autocast:
            loss, _ = method(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    aug_s = _timed(augment, device, a.steps, a.warmup)
    copy_s = _timed(lambda: host.to(device), device, a.steps, a.warmup) \
        if device.type == "cuda" else 0.0
    method.train()
    step_s = _timed(step, device, a.steps, a.warmup)
    peak = (torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)
    return {"aug": n_vol / aug_s, "h2d": len(rows) / copy_s if copy_s else None,
            # one copied volume feeds ``views`` augmented ones; copy and augmentation counted in series
            "data": n_vol / (aug_s + copy_s), "step": n_vol / step_s, "s_step": step_s, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 26, 21], help="volume size (voxels; default: "
                        "the demo's model grid)")
    parser.add_argument("--batch", type=int, default=8, help="scans (simclr) or subjects (temporal methods) per step")
    parser.add_argument("--depth", type=int, default=10, choices=[10, 18, 34])
    parser.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128])
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--preset", choices=["resnet18"], help="3D-Neuro-SimCLR's encoder (overrides the above)")
    parser.add_argument("--method", choices=METHODS, default="simclr")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count(), help="torch threads (default: all usable cores)")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    if a.preset == "resnet18":
        a.depth, a.widths, a.stem_stride = 18, [64, 128, 256, 512], 1

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as `sslad pretrain` runs
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")  # methods' float(loss)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    device = pick_device(a.device, "--device")
    seq_len = {"simclr": 1, "dino2d": 1, "tcl": 2}.get(a.method) or cfg["pretrain"]["methods"][a.method]["n_scans"]
    scans = synthetic_scans(a.batch, seq_len, tuple(a.shape), a.seed)
    variants = [("fp32", False, False)] if device.type == "cpu" else \
        [("fp32", False, False), ("bf16", True, False), ("fp32+cl3d", False, True), ("bf16+cl3d", True, True)]
    shape = "x".join(map(str, a.shape))
    print(f"\n{a.method}, ResNet-{a.depth} widths {a.widths} stem stride {a.stem_stride}, {len(scans.keys)} volumes "
          f"per step, {a.threads} threads, {a.steps} timed steps after {a.warmup} warm-up\n")
    print("| device | variant | shape | batch | data vol/s | (h2d vol/s) | step vol/s | s/step | peak mem GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for name, bf16, cl in variants:
        try:
            r = run_variant(a, cfg, scans, device, bf16, cl)
        except torch.cuda.OutOfMemoryError:
            r = None
        if r is None:  # freed only once the traceback that holds the variant's tensors is gone
            print(f"| {device.type} | {name} | {shape} | {a.batch} | out of memory | | | | |")
            torch.cuda.empty_cache()
            continue
        results.append(r)
        h2d = f"{r['h2d']:.1f}" if r["h2d"] else "-"
        print(f"| {device.type} | {name} | {shape} | {a.batch} | {r['data']:.1f} | {h2d} | {r['step']:.1f} | "
              f"{r['s_step']:.3f} | {r['peak']:.2f} |")
    if results:
        best = max(results, key=lambda r: r["step"])  # the fastest step asks most of the data path
        verdict = "data path is not the bottleneck" if best["data"] > best["step"] else "data path IS the bottleneck"
        print(f"\n{verdict}: {best['data']:.1f} vol/s vs {best['step']:.1f} vol/s "
              f"(augmentation is ~{100 * best['step'] / best['aug']:.0f}% of the step)")


if __name__ == "__main__":
    main()
