"""The benchmarks run and print their tables (tiny sizes here; figures are the benchmarks' job)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["simclr", "topc"])
def test_train_throughput_prints_its_table(method):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--method", method,
                          "--shape", "12", "14", "12", "--batch", "2", "--steps", "1", "--warmup", "0",
                          "--device", "cpu", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| cpu | fp32 | 12x14x12 | 2 |"))
    data, step = (float(row.split("|")[i]) for i in (5, 7))
    assert data > 0 and step > 0
    assert "the bottleneck" in out.stdout


def test_gpu_check_stops_clearly_without_cuda_and_runs_its_cpu_smoke_test():
    script = [sys.executable, str(ROOT / "benchmarks/gpu_check.py")]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(script, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert "gpu_check: no CUDA device is visible" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(script + ["--smoke", "--methods", "topc", "--steps", "1", "--workers", "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| topc |")]
    assert [r.split("|")[2].strip() for r in rows] == ["ncdhw", "cl3d"]
    assert all(float(r.split("|")[6]) > 0 for r in rows)  # volumes/s


def test_preflight_benchmark_prints_estimate_against_measured_memory():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/preflight.py"), "--preset", "demo", "--methods",
                          "simclr", "--grids", "20x24x20", "--threads", "1"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| simclr | 20x24x20 | 4 |"))
    estimate, measured = (float(row.split("|")[i]) for i in (4, 5))
    assert estimate > 0 and measured > 0
