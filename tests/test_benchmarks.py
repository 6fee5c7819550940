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


def _rows(text: str, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table under the heading that starts with ``title``, by column name."""
    lines = text.split(title, 1)[1].split("\n\n", 2)[1].splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_calibration_measures_error_rates_within_monte_carlo_bounds():
    """150 simulated studies of 4 settings through the functions that write summary.csv: the type-I error,
    coverage and power of the AUC comparison, and the order probe's coverage, are near nominal (bounds
    about 3 Monte-Carlo sd wide, fixed seed). Samples as units without the seeds' spread (an invalid
    method) gave 18-23% type-I error and 76-80% coverage on the first two settings; a method that never
    rejects fails the power bounds of the second and third. With 2 seeds and 10 test subjects per class the
    method has little power (the full grid: 12% at a planted 0.10), so that setting has no power bound.
    The first two settings have a subject x init interaction, the last two none; with 3 pretraining runs,
    runs and seeds are crossed factors. Takes ~35 s."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/calibration.py"), "--quick", "--replicates", "150",
                          "--n-boot", "200"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "n_boot 200" in out.stdout
    rows = _rows(out.stdout, "## AUC difference")
    assert [(r["pretrain seeds"], r["finetune seeds"], r["subjects/class"], r["subject x init sd"]) for r in rows] == [
        ("1", "2", "10", "0.75"), ("1", "3", "20", "0.75"), ("3", "2", "50", "0"), ("1", "2", "50", "0")]
    for r in rows:
        assert float(r["type-I (p<0.05, Δ=0)"]) <= 0.10, r
        assert float(r["coverage 95%"]) >= 0.90 and float(r["simult. coverage (3 tasks)"]) >= 0.90, r
    for r in rows[:2] + rows[3:]:
        assert r["type-I, runs as independent seeds"] == "–"
    # 2 seeds without the interaction, the seeds' spread dominant: simultaneous intervals on the 95% ones'
    # degrees of freedom covered 0.86-0.88 here (1,000 studies); they count the subjects' noise the spread
    # carries (sslad.comparison.paired_auc_diff)
    assert float(rows[3]["simult. coverage (3 tasks)"]) >= 0.93, rows[3]
    # the full grid (1,000 studies): power at a planted 0.10 of 0.30 at 3 seeds x 20, 0.48 at 3 runs x 2 seeds x 50
    assert float(rows[1]["power Δ=0.10"]) >= max(0.1, 2 * float(rows[1]["type-I (p<0.05, Δ=0)"])), rows[1]
    assert float(rows[2]["power Δ=0.10"]) >= 0.2, rows[2]
    probe = _rows(out.stdout, "## Order probe")
    assert [r["subjects"] for r in probe] == ["6", "10", "20", "40", "100"]
    assert all(float(r["coverage"]) >= 0.88 and float(r["coverage, paired difference"]) >= 0.88 for r in probe), probe


def test_dag_scale_times_the_paper_grid_dry_run():
    """The paper-scale grid's DAG on a stand-in cohort of 8 scans: both dry runs plan every job (the grid,
    not the cohort, makes most of them)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/dag_scale.py"), "--scans", "8", "--timeout", "300"],
                         capture_output=True, text=True, timeout=700)
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| 8 | local |")]
    assert len(rows) == 2 and rows[0][4] == rows[1][4] and int(rows[0][4]) > 300, out.stdout


def test_preprocess_benchmark_scores_its_chain_on_a_simulated_scan():
    """One simulated 4-mm scan through `sslad preprocess` in a fresh process (no reference chain, no Colin27:
    minutes each): its row has the steps' seconds and a brain-mask Dice against the simulation's truth."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/preprocess.py"), "--resolution", "4",
                          "--subjects", "1", "--max-scans", "1", "--reference-scans", "0", "--real-seeds", ""],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| sslad preprocess (affine, 4 mm) | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "registration" in cells[4] and float(cells[6]) > 0.95, row


def test_split_support_prints_how_often_the_true_volumes_beat_the_schedule():
    """A well-separated task clears in every cohort of the validation design; a bad count, or a design of
    two cohorts (config.yaml's), is refused."""
    script = [sys.executable, str(ROOT / "benchmarks/split_support.py"),
              "--config", str(ROOT / "config/validation.yaml")]
    out = subprocess.run(script + ["--sizes", "160", "--cohorts", "2", "--tasks", "dx_cn_ad", "fut_cn_mci"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "simulate.seed 100-101 (never 42)" in out.stdout
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.stdout.splitlines() if "| 160 | 2 (" in line}
    assert set(rows) == {"dx_cn_ad", "fut_cn_mci"} and rows["dx_cn_ad"][7].strip() == "100%"
    truth_val = float(rows["dx_cn_ad"][5].split("/")[0])
    assert 0.8 < truth_val <= 1.0
    bad = subprocess.run(script + ["--cohorts", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "0 is not a positive integer" in bad.stderr
    two = subprocess.run(script[:2] + ["--config", str(ROOT / "config.yaml"), "--cohorts", "1"], capture_output=True,
                         text=True, timeout=60)
    assert two.returncode == 1 and "has 2 cohort(s); it needs exactly one, simulated" in two.stderr
