"""The benchmarks run and print their tables (tiny sizes here; figures are the benchmarks' job)."""

from __future__ import annotations

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
