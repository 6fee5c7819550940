"""Peak host memory of pretraining and fine-tuning as the dataset grows, and the loader's data wait.

Writes N model-ready arrays (float16 .npy in Fortran order, noise in an ellipsoid brain, zero
outside, as preprocessing leaves them; by default N = 200, 800 and 1,600 on the paper grid 152x192x152, 8.9 MB
each) with the manifest tables that point at them, and runs on each N, in a fresh process:

- pretraining (``sslad.pretrain.run``, the job's code) on every scan of the train and val subjects,
  the first epoch cut to ``--steps`` batches (the only change to the job: its epoch would visit every
  subject), with ``--workers`` loader processes;
- fine-tuning (``sslad.finetune.run``, both modes, one epoch) of a task whose table uses every scan,
  on a label-fraction subset of 8 training samples (4 validation and 4 test subjects), as a 1% cell
  of a paper-scale study is.

It prints peak RSS (``getrusage``: the run's process, and its largest loader worker), the fraction
of the pretraining epoch spent waiting for data, and seconds per step. A small encoder keeps CPU
steps short. Arrays are read back from the page cache right after being written; a cluster reads
them from its filesystem. The arrays are removed at the end.

    python benchmarks/memory_scale.py                                   # the paper grid, ~14 GB on disk
    python benchmarks/memory_scale.py --scans 40 80 --shape 48 56 48    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sslad.registry import pretrain_run_settings

ROOT = Path(__file__).resolve().parents[1]
VISITS = 4           # scans per simulated subject
HELD_OUT = 4         # validation and test subjects each, whatever N (fewer in a tiny run)
SMALL_ENCODER = {"depth": 10, "widths": [4, 8, 16, 32], "stem_kernel": 3, "stem_stride": 2, "max_pool": True,
                 "norm": "batch", "temporal": "attention", "temporal_layers": 1, "temporal_heads": 2}


def split_of(subject: int, n_subjects: int) -> str:
    held_out = min(HELD_OUT, n_subjects // 5)
    if subject >= n_subjects - held_out:
        return "test"
    return "val" if subject >= n_subjects - 2 * held_out else "train"


def write_arrays(root: Path, start: int, stop: int, shape: tuple[int, int, int]) -> None:
    """Arrays ``start``..``stop - 1`` (scan i: subject i // VISITS, visit i % VISITS), each distinct."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    brain = sum(a ** 2 for a in axes) < 0.7
    for i in range(start, stop):
        x = np.random.default_rng(i).standard_normal(shape, dtype=np.float32)
        x[~brain] = 0
        # Fortran order, as preprocessing writes them (nibabel's arrays)
        np.save(root / f"sub-{i // VISITS:05d}_ses-{i % VISITS}.npy", np.asfortranarray(x.astype(np.float16)))


def write_tables(root: Path, n: int) -> dict[str, str]:
    """visits, splits and pretrain tables for the first ``n`` arrays, a task table whose samples
    (every scan an index visit, with its history) use them all, and a small label-fraction subset."""
    subjects = n // VISITS
    visits, samples = [], []
    for i in range(subjects * VISITS):
        s, v = divmod(i, VISITS)
        pid, split = f"sub-{s:05d}", split_of(s, subjects)
        visits.append({"participant_id": pid, "session_id": f"ses-{v}", "days_from_baseline": 365 * v,
                       "months": 12.0 * v, "split": split, "array": str(root / f"{pid}_ses-{v}.npy")})
        samples.append({"participant_id": pid, "index_session": f"ses-{v}",
                        "input_sessions": ";".join(f"ses-{u}" for u in range(v + 1)),
                        "input_days": ";".join(str(365 * u) for u in range(v + 1)), "n_inputs": v + 1,
                        "index_months": 12.0 * v, "index_diagnosis": "CN", "label": s % 2, "split": split})
    visits, task = pd.DataFrame(visits), pd.DataFrame(samples)
    tables = {name: str(root / f"{name}-{n}.tsv") for name in ("visits", "splits", "pretrain", "task", "fraction")}
    visits.to_csv(tables["visits"], sep="\t", index=False)
    visits.drop_duplicates("participant_id")[["participant_id", "split"]].to_csv(tables["splits"], sep="\t",
                                                                               index=False)
    visits[visits["split"] != "test"][["participant_id", "session_id", "days_from_baseline"]].to_csv(
        tables["pretrain"], sep="\t", index=False)
    task.to_csv(tables["task"], sep="\t", index=False)
    train = task[task["split"] == "train"].groupby("label").head(4)  # 8 samples, both classes
    pd.concat([train, task[task["split"] == "val"]])[["participant_id", "index_session", "label", "split"]].to_csv(
        tables["fraction"], sep="\t", index=False)
    return tables


def _peaks() -> dict[str, float]:
    """Peak RSS in MB of this process and of its largest child (a loader worker), as getrusage has them."""
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_pretrain(a: dict) -> dict:
    from sslad import pretrain

    cut = pretrain.epoch_batches
    pretrain.epoch_batches = lambda *args: cut(*args)[:a["steps"]]  # a few steps, not the whole epoch
    s = pretrain_run_settings(yaml.safe_load((ROOT / "config.yaml").read_text()), a["method"], 0)
    settings = {**s, "model": SMALL_ENCODER, "train": dict(s["train"], epochs=1, batch_size=a["batch"], device="cpu")}
    t = a["tables"]
    start = time.perf_counter()
    metrics = pretrain.run(settings, t["pretrain"], t["visits"], t["splits"], pretrain.Outputs.under(a["out"]),
                           threads=a["threads"], workers=a["workers"])
    epoch = metrics["history"][0]
    return {**_peaks(), "seconds": time.perf_counter() - start, "data_wait": epoch["data_wait"],
            "s_step": epoch["seconds"] / a["steps"]}


def run_finetune(a: dict) -> dict:
    from sslad import finetune

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())["finetune"]
    settings = {**{k: v for k, v in cfg.items() if k != "n_bootstrap"}, "epochs": 1, "batch_size": 4,
                "probe_epochs": 20, "device": "cpu", "modes": ["full", "probe"], "model": SMALL_ENCODER,
                "heldout": ""}
    out = Path(a["out"])
    cell = finetune.Cell(1.0, a["tables"]["fraction"], str(out / "metrics.json"), str(out / "predictions.tsv"))
    start = time.perf_counter()
    [metrics] = finetune.run(settings, "bench", "scratch", 0, [cell], a["tables"]["task"], a["tables"]["visits"],
                             None, threads=a["threads"], workers=a["workers"])
    if "skipped" in metrics:
        raise RuntimeError(f"fine-tuning skipped: {metrics['skipped']}")
    return {**_peaks(), "seconds": time.perf_counter() - start, "data_wait": None, "s_step": None}


def in_fresh_process(stage: str, args: dict) -> dict:
    """Run one stage in a new Python process (its peak RSS is its own) and return what it measured."""
    proc = subprocess.run([sys.executable, __file__, "--one", stage, json.dumps(args)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    if proc.returncode:
        raise RuntimeError(f"{stage} on {args['n']} scans failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, nargs="+", default=[200, 800, 1600], help="dataset sizes (arrays)")
    parser.add_argument("--shape", type=int, nargs=3, default=[152, 192, 152], help="model grid (default: paper)")
    parser.add_argument("--method", default="topc", help="pretraining method")
    parser.add_argument("--batch", type=int, default=2, help="pretraining batch (subjects, or scans for simclr)")
    parser.add_argument("--steps", type=int, default=4, help="pretraining steps per run")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--dir", default=None, help="where to write the arrays (default: a temporary directory)")
    parser.add_argument("--one", nargs=2, metavar=("STAGE", "ARGS"), help=argparse.SUPPRESS)  # a fresh process
    a = parser.parse_args()
    if a.one:
        print(json.dumps({"pretrain": run_pretrain, "finetune": run_finetune}[a.one[0]](json.loads(a.one[1]))))
        return

    shape = tuple(a.shape)
    mb = int(np.prod(shape)) * 2 / 1e6
    root = Path(tempfile.mkdtemp(prefix="memory_scale-", dir=a.dir))
    rows = []
    try:
        written = 0
        for n in sorted(a.scans):
            start = time.perf_counter()
            write_arrays(root, written, n, shape)
            print(f"{n} arrays of {'x'.join(map(str, shape))} ({mb:.1f} MB each) on disk, {n - written} written in "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            written = n
            tables = write_tables(root, n)
            for stage in ("pretrain", "finetune"):
                args = {"n": n, "tables": tables, "out": str(root / f"{stage}-{n}"), "method": a.method,
                        "batch": a.batch, "steps": a.steps, "workers": a.workers, "threads": a.threads}
                rows.append({"stage": stage, "n": n, **in_fresh_process(stage, args)})
                print(f"{stage} on {n} scans: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root)

    print(f"\n{a.method} pretraining ({a.steps} steps of batch {a.batch}) and fine-tuning (full + probe, 1 epoch), "
          f"small encoder {SMALL_ENCODER['widths']}, grid {'x'.join(map(str, shape))}, {a.workers} loader workers, "
          f"{a.threads} torch threads\n")
    print("| stage | scans | arrays GB | peak RSS MB | largest worker MB | vs smallest | data wait | s/step | run s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = next(f for f in rows if f["stage"] == r["stage"])
        wait = f"{100 * r['data_wait']:.1f}%" if r["data_wait"] is not None else "-"
        step = f"{r['s_step']:.2f}" if r["s_step"] is not None else "-"
        print(f"| {r['stage']} | {r['n']} | {r['n'] * mb / 1e3:.2f} | {r['peak_mb']:.0f} | {r['worker_mb']:.0f} | "
              f"{100 * (r['peak_mb'] / first['peak_mb'] - 1):+.1f}% | {wait} | {step} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
