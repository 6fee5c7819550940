"""Streaming the model-ready arrays from disk: what a batch reads, that any number of loader
workers gives the same batches (and so the same weights and predictions), clear errors on bad
files, and the memory-scale benchmark's table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sslad import finetune, pretrain
from sslad.io import write_tsv
from sslad.loader import Stream, local_rows
from sslad.pretrain_data import load_pretrain_scans
from sslad.volumes import open_arrays, read_visits

ROOT = Path(__file__).resolve().parents[1]
GRID = (12, 14, 10)
MODEL = {"depth": 10, "widths": [8, 8, 16, 16], "stem_kernel": 3, "stem_stride": 1, "max_pool": True,
         "norm": "batch", "temporal": "attention", "temporal_layers": 1, "temporal_heads": 2}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """12 subjects x 3 visits of masked z-scored float16 arrays, their visits.tsv, splits.tsv and
    pretrain.tsv (subjects 10 and 11 are test), and a task table whose samples use histories."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in GRID], indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.8
    visits, splits, samples = [], [], []
    for s in range(12):
        pid, split = f"sub-{s:02d}", "test" if s >= 10 else ("val" if s >= 8 else "train")
        splits.append({"participant_id": pid, "split": split})
        for v in range(3):
            arr = np.where(brain, rng.normal(size=GRID) + (s % 2) * (grid[0] > 0.5 - 0.3 * v), 0)
            arr = np.where(brain, (arr - arr[brain].mean()) / arr[brain].std(), 0).astype(np.float16)
            np.save(root / f"{pid}_ses-{v}.npy", arr)
            visits.append({"participant_id": pid, "session_id": f"ses-{v}", "days_from_baseline": 365 * v,
                           "months": 12.0 * v, "split": split, "array": str(root / f"{pid}_ses-{v}.npy")})
            samples.append({"participant_id": pid, "index_session": f"ses-{v}",
                            "input_sessions": ";".join(f"ses-{u}" for u in range(v + 1)),
                            "input_days": ";".join(str(365 * u) for u in range(v + 1)), "n_inputs": v + 1,
                            "index_months": 12.0 * v, "index_diagnosis": "CN", "label": s % 2, "split": split})
    visits = pd.DataFrame(visits)
    write_tsv(visits, root / "visits.tsv")
    write_tsv(pd.DataFrame(splits), root / "splits.tsv")
    write_tsv(visits[visits["split"] != "test"][["participant_id", "session_id", "days_from_baseline"]],
              root / "pretrain.tsv")
    task = pd.DataFrame(samples)
    write_tsv(task, root / "task.tsv")
    write_tsv(task[task["split"] != "test"][["participant_id", "index_session", "label", "split"]], root / "frac.tsv")
    return root


def test_a_batch_reads_its_rows_in_order(cohort, tmp_path):
    visits = read_visits(cohort / "visits.tsv")
    keys = list(zip(visits["participant_id"], visits["session_id"]))
    files = open_arrays(visits, keys, "test")
    assert files.shape == (36, 1, *GRID) and len(files) == 36
    whole = torch.stack([torch.from_numpy(np.load(p))[None] for p in visits["array"]])
    rows = [np.array([5, 0, 5, 35]), np.array([], dtype=np.int64), np.array([7])]
    for workers in (0, 2):
        stream = Stream(files, rows, torch.device("cpu"), workers)
        got = list(stream)
        assert len(got) == 3 and stream.waited > 0
        for r, x in zip(rows, got):
            assert x.dtype == torch.float16 and torch.equal(x, whole[torch.from_numpy(r)])
    # preprocessing writes Fortran-order arrays (nibabel's): read the same, mixed with C-order ones
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(whole[3, 0].numpy()))
    assert not np.load(fortran, mmap_mode="r").flags.c_contiguous
    mixed = open_arrays(visits.assign(array=[str(fortran) if i == 3 else p for i, p in enumerate(visits["array"])]),
                        keys, "test")
    assert torch.equal(mixed[[3, 2, 3]], whole[[3, 2, 3]])
    # the sequences of a batch index the distinct rows they use, nothing else
    index = torch.tensor([[9, 4, -1], [4, 30, 2]])
    used, local = local_rows(index, index >= 0)
    assert used.tolist() == [2, 4, 9, 30] and local.tolist() == [[2, 1, -1], [1, 3, 0]]


def test_bad_arrays_are_refused_naming_the_file(cohort, tmp_path):
    visits = read_visits(cohort / "visits.tsv")
    key = ("sub-00", "ses-0")
    for name, arr, message in [("f32.npy", np.zeros(GRID, np.float32), "a 3-d float32 array"),
                               ("small.npy", np.zeros((4, 4, 4), np.float16), r"shape \(4, 4, 4\), other arrays")]:
        np.save(tmp_path / name, arr)
        bad = visits.copy()
        bad.at[key, "array"] = str(tmp_path / name)
        with pytest.raises(ValueError, match=f"{tmp_path / name}: .*{message}"):
            open_arrays(bad, [("sub-01", "ses-0"), key], "task.tsv")
    with pytest.raises(ValueError, match="task.tsv: 1 visits are not in visits.tsv"):
        open_arrays(visits, [("sub-99", "ses-0")], "task.tsv")
    # a file cut short after it was opened (rewritten by a rerun of preprocessing meanwhile)
    path = tmp_path / "cut.npy"
    np.save(path, np.ones(GRID, np.float16))
    bad = visits.copy()
    bad.at[key, "array"] = str(path)
    files = open_arrays(bad, [key], "task.tsv")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{path}: .* bytes of data; the file changed or is truncated"):
        files[[0]]


def test_pretraining_is_the_same_whatever_the_loader(cohort, tmp_path):
    """Streamed with 0 or 2 workers, or held in memory as before streaming: the same weights and
    losses, bit for bit (batches are the caller's, workers only read)."""
    s = {"method": "topc", "model": MODEL, "augment": {"a": {"min_crop": 0.7, "p_rotate": 0.5, "max_rotate_deg": 10,
                                                             "p_flip": 0.5, "p_gamma": 0.8, "gamma": [0.7, 1.5],
                                                             "p_shift": 0.0, "shift": 0.0}},
         "hp": {"n_scans": 3, "hidden": 8, "temperature": 0.5, "projection_dim": 8, "spatial_weight": 1.0,
                "augment": "a", "spatial_augment": "a", "center": False},
         "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "seed": 3, "checkpoint_every": 1,
                   "device": "cpu", "holdout_subjects": 0.0, "checkpoint_activations": False, "micro_batch": 0}}
    scans = load_pretrain_scans(str(cohort / "pretrain.tsv"), str(cohort / "visits.tsv"), str(cohort / "splits.tsv"))
    in_memory = dataclasses.replace(scans, volumes=scans.volumes[np.arange(len(scans.keys))])
    runs = {}
    for name, source, workers in [("memory", in_memory, 0), ("files", scans, 0), ("workers", scans, 2)]:
        metrics = pretrain.train(s, source, pretrain.Outputs.under(tmp_path / name), log=lambda msg: None,
                                 workers=workers)
        runs[name] = metrics["loss"], torch.load(tmp_path / name / "encoder.pt", weights_only=True)["encoder"]
    for name in ("files", "workers"):
        assert runs[name][0] == runs["memory"][0], name
        for key, value in runs["memory"][1].items():
            assert torch.equal(runs[name][1][key], value), (name, key)


def test_finetuning_predictions_do_not_depend_on_the_workers(cohort, tmp_path):
    settings = {"device": "cpu", "inputs": "history", "modes": ["full", "probe"], "epochs": 2, "batch_size": 4,
                "lr": 1e-3, "probe_lr": 1e-2, "probe_epochs": 5, "weight_decay": 1e-4, "model": MODEL,
                "heldout": "", "patience": 0}
    out = {}
    for workers in (0, 2):
        cell = finetune.Cell(1.0, str(cohort / "frac.tsv"), str(tmp_path / f"m{workers}.json"),
                             str(tmp_path / f"p{workers}.tsv"))
        [metrics] = finetune.run(settings, "dx_cn_ad", "scratch", 0, [cell], str(cohort / "task.tsv"),
                                 str(cohort / "visits.tsv"), None, 1, workers)
        assert [r["mode"] for r in metrics["rows"]] == ["full", "probe"]
        out[workers] = ((tmp_path / f"p{workers}.tsv").read_text(),
                        json.loads((tmp_path / f"m{workers}.json").read_text()))
    assert out[0][0] == out[2][0] and out[0][1]["rows"] == out[2][1]["rows"]


def test_memory_scale_benchmark_prints_its_table(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/memory_scale.py"), "--scans", "40", "80",
                          "--shape", "16", "18", "14", "--steps", "2", "--workers", "1", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| pretrain") or
            line.startswith("| finetune")]
    assert sorted((r[1].strip(), int(r[2])) for r in rows) == [("finetune", 40), ("finetune", 80),
                                                               ("pretrain", 40), ("pretrain", 80)]
    assert all(float(r[4]) > 0 for r in rows)  # peak RSS, MB
    assert not list(tmp_path.glob("**/*.npy")), "the benchmark removes the arrays it wrote"
