"""First run on a GPU: every pretraining method at the paper's settings, as a pretraining job runs.

One command, a few minutes on one H100 or H200. For each method, at config/paper.yaml's grid,
per-GPU batch, model and memory settings: the pre-flight estimate (sslad.preflight, probed on the
GPU), then training steps as ``sslad pretrain`` takes them (bf16 autocast, DDP over NCCL with one
rank, deterministic algorithms), batches streamed from memory-mapped float16 arrays on disk by a
DataLoader (worker processes, pinned memory, prefetching), in both memory formats (NCDHW and
channels-last-3d; the faster one is the verdict). It prints volumes/s, peak device memory against
the estimate, and the fraction of the step spent waiting for data (blocked on the loader and the
host-to-device copy). Without CUDA it stops with a message (``--smoke`` runs the same code on the
CPU at a tiny size, gloo and fp32, to check the script itself).

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --smoke         # anywhere, in a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preflight import build, paper_settings  # noqa: E402 (benchmarks/preflight.py)
from train_throughput import synthetic_scans  # noqa: E402

from sslad import preflight  # noqa: E402
from sslad.methods import METHODS  # noqa: E402
from sslad.pretrain_data import assemble, plan_step  # noqa: E402


class Arrays(Dataset):
    """One batch's scans per item, read from memory-mapped float16 .npy files (no decoding)."""

    def __init__(self, paths: list[Path], rows: np.ndarray, steps: int) -> None:
        self.paths, self.rows, self.steps = paths, rows, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.load(self.paths[r], mmap_mode="r") for r in self.rows]))


def write_arrays(scans, root: Path) -> list[Path]:
    paths = []
    for i, vol in enumerate(scans.volumes):
        paths.append(root / f"scan-{i:04d}.npy")
        np.save(paths[-1], vol.numpy())
    return paths


def run_method(method_name: str, s: dict, grid: tuple[int, ...], device: torch.device, channels_last: bool,
               steps: int, workers: int, root: Path) -> dict:
    torch.manual_seed(0)
    method, encoder = build(s)
    est, _, plan = preflight.estimate(s, method, encoder, device, 1, s["train"]["batch_size"], grid)
    method.to(device)
    if channels_last:  # weights, and the augmented views as the encoder gets them
        method.to(memory_format=torch.channels_last_3d)
        encoder.register_forward_pre_hook(lambda m, args: (args[0].contiguous(memory_format=torch.channels_last_3d),))
    ddp = torch.nn.parallel.DistributedDataParallel(
        method, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    opt = torch.optim.Adam(method.parameters(), lr=s["train"]["lr"])
    seq_len = method.sampling.seq_len
    scans = synthetic_scans(s["train"]["batch_size"], seq_len, grid, 0)
    # the sequences' scans, then topc's single scans; augmentation draws fixed with the plan
    step_plan = plan_step(scans, scans.subjects, np.arange(len(scans.keys)), method.sampling, s, 0, 0)
    loader = DataLoader(Arrays(write_arrays(scans, root), step_plan.rows, steps + 1), batch_size=None,
                        num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None,
                        persistent_workers=False)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    wait = total = 0.0
    it = iter(loader)
    for step in range(steps + 1):  # the first is a warm-up (cuDNN plans, workers starting)
        sync()
        t0 = time.perf_counter()
        host = next(it)
        volumes = host.to(device, non_blocking=True)
        if channels_last:
            volumes = volumes.contiguous(memory_format=torch.channels_last_3d)
        sync()
        t1 = time.perf_counter()
        batch = assemble(step_plan, volumes)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = ddp(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if step:
            wait += t1 - t0
            total += time.perf_counter() - t0
    passes = plan.passes
    peak = torch.cuda.max_memory_allocated(device) if cuda else float("nan")  # not tracked on CPUs
    return {"vol_s": passes * steps / total, "wait": wait / total, "peak": peak / preflight.GB,
            "estimate": est["total"] / preflight.GB, "passes": passes, "loss": float(loss.detach())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per method and memory format")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--smoke", action="store_true", help="CPU, gloo, fp32, the demo encoder on 24x28x24")
    a = parser.parse_args()
    if not a.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU "
                 "node, or with --smoke to check the script on the CPU")
    device = torch.device("cpu") if a.smoke else torch.device("cuda", 0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29000 + os.getpid() % 1000))
    dist.init_process_group("gloo" if a.smoke else "nccl", rank=0, world_size=1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as `sslad pretrain` runs
    if not a.smoke:
        torch.cuda.set_device(device)
    name = "CPU (smoke test)" if a.smoke else torch.cuda.get_device_name(device)
    print(f"\n{name}, torch {torch.__version__}, {'gloo' if a.smoke else 'NCCL'} with one rank, "
          f"{'fp32' if a.smoke else 'bf16 autocast'}, {a.workers} loader workers, {a.steps} timed steps\n")
    print("| method | format | grid | batch | encoder passes/step | vol/s | peak GB | estimate GB | data wait |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for method in a.methods:
            s, grid = paper_settings(method)
            if a.smoke:
                s = dict(s, model=dict(s["model"], depth=10, widths=[8, 8, 16, 16], stem_stride=2),
                         train=dict(s["train"], batch_size=2, micro_batch=2))
                grid = (24, 28, 24)
            ran = 0
            for cl in (False,) if "slice_encoder" in s["hp"] else (False, True):  # cl3d: a 3D format
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        r = run_method(method, s, grid, device, cl, a.steps, a.workers, Path(tmp))
                    except torch.cuda.OutOfMemoryError:
                        print(f"| {method} | {'cl3d' if cl else 'ncdhw'} | {'x'.join(map(str, grid))} | "
                              f"{s['train']['batch_size']} | | out of memory | | | |")
                        continue
                print(f"| {method} | {'cl3d' if cl else 'ncdhw'} | {'x'.join(map(str, grid))} | "
                      f"{s['train']['batch_size']} | {r['passes']} | {r['vol_s']:.1f} | {r['peak']:.2f} | "
                      f"{r['estimate']:.2f} | {100 * r['wait']:.0f}% |", flush=True)
                if not np.isfinite(r["loss"]):
                    sys.exit(f"gpu_check: {method} gave a non-finite loss")
                ran += 1
            if not ran:
                sys.exit(f"gpu_check: {method} ran out of memory in both formats at the paper's settings")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
