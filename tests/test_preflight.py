"""The pre-flight memory check: its estimate, the memory bounds it suggests, and the clear stop of a
job whose batch cannot fit (benchmarks/preflight.py checks the estimate against measured memory)."""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_pretrain import MODEL, manifest, pretrain_cmd, settings  # noqa: F401 (manifest is a fixture)

from sslad import preflight
from sslad.methods import build
from sslad.networks import bound_memory, build_aggregator, build_encoder, feature_dim

CPU = torch.device("cpu")


def test_stage_bytes_extrapolate_to_the_probe_on_the_grid_itself():
    encoder = build_encoder(MODEL)
    grid = (40, 48, 40)
    direct = preflight._probe(encoder, grid, CPU, False)  # (saved, output) bytes of PROBE_SCANS scans per stage
    got = preflight.stage_bytes(encoder, grid, CPU, False)  # per scan, from probes on 24^3 and 32^3 voxels
    total = sum(g.saved + g.output for g in got) * preflight.PROBE_SCANS
    assert abs(total / sum(s + o for s, o in direct) - 1) < 0.03
    for g, (saved, _) in zip(got, direct):  # the deep stages' rounded sizes drift, but they weigh little
        if saved > 0.05 * total:
            assert abs(g.saved * preflight.PROBE_SCANS / saved - 1) < 0.1


def test_checkpointing_and_micro_batches_bound_the_activations():
    encoder = build_encoder(dict(MODEL, stem_stride=1))
    stages = preflight.stage_bytes(encoder, (64, 64, 64), CPU, False)
    plan = preflight.Plan(passes=36, scans=12, voxels=64**3, checkpoint=False, micro_batch=0)
    full = preflight.step_bytes(stages, plan, 0)["activations"]
    ckpt = preflight.step_bytes(stages, preflight.Plan(36, 12, 64**3, True, 0), 0)["activations"]
    micro = preflight.step_bytes(stages, preflight.Plan(36, 12, 64**3, False, 4), 0)["activations"]
    both = preflight.step_bytes(stages, preflight.Plan(36, 12, 64**3, True, 4), 0)["activations"]
    assert both < micro < full and ckpt < full
    assert micro < full / 4  # only the inputs of all 36 passes, and 4 passes' activations at a time


def test_memory_bounds_keep_the_encoders_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_encoder(MODEL)  # group norm: no batch statistics, so micro-batches are exact
    bounded = bound_memory(copy.deepcopy(plain), checkpoint_stages=True, micro_batch=3)
    x = torch.randn(7, 1, 16, 16, 16)
    a, b = plain(x), bounded(x)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    (a ** 2).sum().backward()
    (b ** 2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), bounded.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_a_batch_that_cannot_fit_stops_the_job_at_once_saying_what_would(manifest, tmp_path):  # noqa: F811
    s = settings("topc", epochs=50, batch=6)
    method = build("topc", build_encoder(MODEL), build_aggregator(MODEL), feature_dim(MODEL), s["hp"])
    need = {b: preflight.estimate(settings("topc", batch=b), method, method.order.encoder, CPU, 1, b,
                                  (16, 16, 16))[0]["total"] for b in (2, 6)}
    limit_gb = (need[2] + need[6]) / 2 / preflight.GB  # batch 2 fits, 6 does not
    cmd = pretrain_cmd(manifest, tmp_path / "out", s) + ["--mem-mb", f"{limit_gb * preflight.GB / 1e6:.6f}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert time.perf_counter() - start < 60
    assert proc.returncode == 1
    err = proc.stderr
    assert "sslad pretrain: error: topc: one training step needs ~" in err, err[-2000:]
    assert f"more than the job mem_mb {limit_gb:.1f} GB" in err  # the job's allowance, not the host's RAM
    assert "Settings that would fit: pretrain.train.batch_size: " in err
    suggested = int(err.split("pretrain.train.batch_size: ")[1].split(";")[0].split(".")[0])
    assert 2 <= suggested < 6
    assert "pretrain.train.micro_batch: " in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written, not even a checkpoint
    # the suggested batch runs, under pretrain.device_memory_gb, which overrides the job's allowance
    ok = subprocess.run(pretrain_cmd(manifest, tmp_path / "ok", settings("topc", epochs=1, batch=suggested))
                        + ["--device-memory-gb", f"{limit_gb:.6f}", "--mem-mb", "1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "pre-flight: one step needs ~" in ok.stderr
    assert f"limit pretrain.device_memory_gb {limit_gb:.1f} GB" in ok.stderr


def _cgroups(root: Path, proc: str, limits: dict[str, str]) -> Path:
    """A fake /sys/fs/cgroup (files at their paths under ``root``) and /proc/self/cgroup."""
    for path, value in limits.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(value + "\n")
    (root / "self-cgroup").write_text(proc)
    return root / "self-cgroup"


HOST = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_on_a_cpu_the_limit_is_the_least_of_host_cgroup_and_job(tmp_path):
    quarter = str(HOST // 4)
    # cgroup v2 under SLURM: the job's group limits it, its step's group says "max"
    v2 = _cgroups(tmp_path / "v2", "0::/system.slice/slurmstepd.scope/job_7/step_0\n",
                  {"system.slice/slurmstepd.scope/job_7/memory.max": quarter,
                   "system.slice/slurmstepd.scope/job_7/step_0/memory.max": "max"})
    assert preflight.cgroup_limit(tmp_path / "v2", v2) == HOST // 4
    assert preflight.device_limit(CPU, 0, 0, tmp_path / "v2", v2) == (HOST // 4, "cgroup")
    assert preflight.device_limit(CPU, 0, HOST / 8e6, tmp_path / "v2", v2) == (pytest.approx(HOST / 8), "job mem_mb")
    assert preflight.device_limit(CPU, 0.5, HOST / 8e6, tmp_path / "v2", v2) == (0.5 * preflight.GB,
                                                                                 "pretrain.device_memory_gb")
    # cgroup v1 (memory controller only), unlimited at the root (2^63 rounded to pages)
    v1 = _cgroups(tmp_path / "v1", "4:memory:/slurm/uid_0/job_7\n1:cpu,cpuacct:/\n0::/\n",
                  {"memory/memory.limit_in_bytes": "9223372036854771712",
                   "memory/slurm/uid_0/job_7/memory.limit_in_bytes": quarter, "cpu/memory.limit_in_bytes": "1"})
    assert preflight.device_limit(CPU, 0, 0, tmp_path / "v1", v1) == (HOST // 4, "cgroup")
    # a container's own group seen as the root, under a path that is not there
    inside = _cgroups(tmp_path / "ct", "0::/docker/0123abc\n", {"memory.max": quarter})
    assert preflight.cgroup_limit(tmp_path / "ct", inside) == HOST // 4
    # no limit: "max", an unlimited v1 group, no cgroup file at all
    free = _cgroups(tmp_path / "none", "0::/user.slice\n3:memory:/user.slice\n",
                    {"user.slice/memory.max": "max", "memory/user.slice/memory.limit_in_bytes": "9223372036854771712"})
    assert preflight.cgroup_limit(tmp_path / "none", free) is None
    assert preflight.cgroup_limit(tmp_path, tmp_path / "missing") is None
    assert preflight.device_limit(CPU, 0, 0, tmp_path / "none", free) == (HOST, "host RAM")
    assert preflight.device_limit(CPU, 0, 10 * HOST / 1e6, tmp_path / "none", free) == (HOST, "host RAM")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_limit_is_its_free_memory_less_the_reserve():
    gpu = torch.device("cuda", torch.cuda.current_device())
    held = torch.empty(2**28, dtype=torch.uint8, device=gpu)  # 256 MiB this process holds: the estimate counts it
    limit, which = preflight.device_limit(gpu, 0, 1)  # the job's host allowance is no GPU limit
    free, total = torch.cuda.mem_get_info(gpu)
    assert which.startswith("cuda free memory")
    assert limit == pytest.approx(free + torch.cuda.memory_reserved(gpu) - preflight.GPU_RESERVE * total, rel=0.01)
    assert held.numel() < limit <= (1 - preflight.GPU_RESERVE) * total
