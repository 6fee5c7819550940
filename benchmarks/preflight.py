"""The pre-flight memory estimate (sslad.preflight) against the measured peak of one training step.

For each method and grid, one fresh process measures one fp32 CPU step as ``sslad pretrain`` runs
it (augmentation, forward, backward, Adam) on synthetic volumes: its peak resident memory (VmHWM)
minus the resident memory before the model and the data existed (after importing torch and a
warm-up convolution, with the peak reset). The estimate is computed in another process, so that
its probes do not raise the peak. Default: 3D-Neuro-SimCLR's ResNet-18 (stride-1 stem) on a
quarter and a third of the paper grid per axis.

With ``--paper``, it prints instead the estimate of every method at config/paper.yaml's settings
on its grid, per process, for bf16 autocast (a GPU's training), against an 80 GB GPU.

    python benchmarks/preflight.py
    python benchmarks/preflight.py --methods simclr --grids 24x26x21 --preset demo
    python benchmarks/preflight.py --paper
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from sslad.registry import pretrain_run_settings
from sslad.stage_settings import merge_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
MODELS = {"resnet18": {"depth": 18, "widths": [64, 128, 256, 512], "stem_stride": 1},
          "demo": {}}  # config.yaml's model


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def paper_settings(method: str) -> tuple[dict, tuple[int, ...]]:
    """A pretraining job's settings in the paper-scale study (config.yaml + config/paper.yaml), and
    its model grid."""
    cfg = merge_config(yaml.safe_load((ROOT / "config.yaml").read_text()),
                 yaml.safe_load((ROOT / "config/paper.yaml").read_text()))
    pre = cfg["preprocess"]
    grid = tuple(round((hi - lo) / pre["voxel_mm"]) for lo, hi in (pre["crop_mm"][a] for a in "xyz"))
    return pretrain_run_settings(cfg, method, cfg["pretrain"]["seeds"][0]), grid


def paper_table(gpu_gb: float) -> None:
    from sslad.methods import METHODS
    from sslad.preflight import GB, GPU_RESERVE

    limit = gpu_gb * (1 - GPU_RESERVE)
    rows = []
    for method in METHODS:
        s, grid = paper_settings(method)
        m, encoder = build(s)
        parts, _, plan = estimate_parts(s, m, encoder, grid)
        rows.append((method, plan, {k: v / GB for k, v in parts.items()}))
    tr = s["train"]
    print(f"\nconfig/paper.yaml, one process, bf16 autocast, grid {'x'.join(map(str, grid))}: batch "
          f"{tr['batch_size']}, checkpoint_activations {tr['checkpoint_activations']}, micro_batch "
          f"{tr['micro_batch']}; limit {limit:.0f} GB ({gpu_gb:.0f} GB less {100 * GPU_RESERVE:.0f}%)\n")
    print("| method | encoder passes per step | activations GB | data GB | weights+grads+Adam GB | total GB | fits |")
    print("|---|---|---|---|---|---|---|")
    for method, plan, gb in rows:
        print(f"| {method} | {plan.passes} | {gb['activations']:.1f} | {gb['data']:.1f} | "
              f"{gb['weights_grads_adam']:.2f} | {gb['total']:.1f} | {'yes' if gb['total'] <= limit else 'NO'} |")


def estimate_parts(s: dict, method, encoder, grid: tuple[int, ...]):
    """The pre-flight estimate for bf16 autocast (a GPU's step), probed on this machine's CPU."""
    from sslad.preflight import estimate as preflight_estimate

    return preflight_estimate(s, method, encoder, torch.device("cpu"), 1, s["train"]["batch_size"], grid, bf16=True)


def settings(method: str, preset: str, batch: int) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    s = pretrain_run_settings(cfg, method, cfg["pretrain"]["seeds"][0])
    return {**s, "model": dict(cfg["model"], **MODELS[preset]),
            "train": dict(s["train"], batch_size=batch, device="cpu")}


def build(s: dict):
    from sslad.methods import architecture
    from sslad.methods import build as build_method
    from sslad.networks import bound_memory, build_aggregator, build_encoder, feature_dim

    torch.manual_seed(0)
    arch = architecture(s["model"], s["hp"])  # dino2d's slice encoder, else the model block's
    encoder = bound_memory(build_encoder(arch), s["train"].get("checkpoint_activations", False),
                           s["train"].get("micro_batch", 0))
    return build_method(s["method"], encoder, build_aggregator(arch), feature_dim(arch), s["hp"]), encoder


def measure(s: dict, grid: tuple[int, ...]) -> float:
    """Bytes one step adds to the resident memory at its peak (this process must be fresh)."""
    from train_throughput import synthetic_scans

    from sslad.pretrain_data import step_batch

    conv = torch.nn.Conv3d(1, 2, 3)  # load the convolution kernels before the baseline
    conv(torch.zeros(1, 1, 4, 4, 4)).sum().backward()
    del conv
    seq_len = s["hp"].get("n_scans", 1)  # simclr: single scans
    scans = synthetic_scans(s["train"]["batch_size"], seq_len, grid, 0)
    scans_bytes = scans.volumes.numel() * scans.volumes.element_size()  # the loader's, not the step's
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    base = _status_kb("VmRSS") * 1024 - scans_bytes
    method, _ = build(s)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    batch = step_batch(scans, scans.volumes, scans.subjects, np.arange(len(scans.keys)), method.sampling, s, 0, 0)
    loss, _ = method(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return _status_kb("VmHWM") * 1024 - base


def estimate(s: dict, grid: tuple[int, ...]) -> float:
    from sslad.preflight import estimate as preflight_estimate

    method, encoder = build(s)
    parts, _, _ = preflight_estimate(s, method, encoder, torch.device("cpu"), 1, s["train"]["batch_size"], grid)
    return parts["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "topc"])
    parser.add_argument("--grids", nargs="+", default=["38x48x38", "51x64x51"], help="XxYxZ voxels")
    parser.add_argument("--preset", choices=sorted(MODELS), default="resnet18")
    parser.add_argument("--batch", type=int, default=2, help="scans (simclr) or subjects per step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", action="store_true", help="with activation checkpointing")
    parser.add_argument("--micro-batch", type=int, default=0)
    parser.add_argument("--paper", action="store_true", help="estimates at config/paper.yaml's settings instead")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="with --paper: the GPU's memory")
    parser.add_argument("--child", choices=["measure", "estimate"], help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--grid", help=argparse.SUPPRESS)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    if a.paper:
        paper_table(a.gpu_gb)
        return
    if a.child:
        grid = tuple(int(v) for v in a.grid.split("x"))
        print(json.dumps((measure if a.child == "measure" else estimate)(json.loads(a.settings), grid)))
        return
    print(f"\none fp32 CPU step, {a.preset} encoder, batch {a.batch}, checkpointing {a.checkpoint}, micro-batch "
          f"{a.micro_batch or '-'}, {a.threads} threads; each number from a fresh process\n")
    print("| method | grid | encoder passes | estimate GB | measured GB | estimate / measured |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for method in a.methods:
        s = settings(method, a.preset, a.batch)
        s["train"].update(checkpoint_activations=a.checkpoint, micro_batch=a.micro_batch)
        views = {"simclr": 2, "topc": 3}.get(method, 1)
        seq_len = {"simclr": 1, "dino2d": 1, "tcl": 2}.get(method) or s["hp"]["n_scans"]
        for grid in a.grids:
            got = {}
            for child in ("estimate", "measure"):
                out = subprocess.run([sys.executable, __file__, "--child", child, "--settings", json.dumps(s),
                                      "--grid", grid, "--threads", str(a.threads)],
                                     capture_output=True, text=True, check=True)
                got[child] = float(out.stdout.strip().splitlines()[-1])
            ratio = got["estimate"] / got["measure"]
            worst = max(worst, abs(ratio - 1))
            print(f"| {method} | {grid} | {a.batch * seq_len * views} | {got['estimate'] / 2**30:.2f} | "
                  f"{got['measure'] / 2**30:.2f} | {ratio:.2f} |")
    print(f"\nlargest deviation: {100 * worst:.0f}%")


if __name__ == "__main__":
    main()
