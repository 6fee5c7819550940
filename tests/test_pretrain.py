"""Pretraining jobs as the workflow runs them: DDP equivalence, resume after a kill (and only on the
same inputs, code and libraries, from a file read as data only), the stop at a non-finite loss,
leakage guard, external checkpoints, provenance."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sslad import pretrain, provenance
from sslad.methods import METHODS
from sslad.networks import Diverged, build_encoder, import_external, load_encoder
from sslad.pretrain_data import load_pretrain_scans

MODEL = {"depth": 10, "widths": [8, 8, 16, 16], "stem_kernel": 3, "stem_stride": 1, "max_pool": True,
         "norm": "group", "temporal": "attention", "temporal_layers": 1, "temporal_heads": 2}
AUGMENT = {"min_crop": 0.7, "p_rotate": 0.5, "max_rotate_deg": 10, "p_flip": 0.5, "p_gamma": 0.8, "gamma": [0.7, 1.5],
           "p_shift": 0.0, "shift": 0.0}
HP = {"simclr": {"temperature": 0.5, "projection_dim": 8, "augment": "spatial", "center": True},
      "top": {"n_scans": 3, "hidden": 8, "augment": "spatial"},
      "tcl": {"n_scans": 3, "temperature": 0.5, "projection_dim": 8, "augment": "spatial"},
      "tmp": {"n_scans": 3, "temperature": 0.2, "projection_dim": 16, "augment": "spatial"},
      "topc": {"n_scans": 3, "hidden": 8, "temperature": 0.5, "projection_dim": 8, "spatial_weight": 1.0,
               "augment": "spatial", "spatial_augment": "spatial", "center": True}}


def settings(method: str, epochs: int = 2, batch: int = 4, every: int = 1) -> dict:
    return {"method": method, "hp": HP[method], "model": MODEL, "augment": {"spatial": AUGMENT},
            "train": {"epochs": epochs, "batch_size": batch, "lr": 1e-3, "weight_decay": 0.0, "seed": 3,
                      "checkpoint_every": every, "device": "cpu", "holdout_subjects": 0.25,
                      "checkpoint_activations": False, "micro_batch": 0}}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """8 pretraining subjects x 3 visits and 2 test subjects, 16^3 masked z-scored arrays."""
    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.8
    visits, splits = [], []
    for s in range(10):
        pid = f"sub-{s:02d}"
        split = "test" if s >= 8 else ("val" if s == 7 else "train")
        splits.append({"participant_id": pid, "split": split})
        for v, months in enumerate([0, 12, 24]):
            arr = np.where(brain, rng.normal(size=brain.shape) + (grid[0] > 0.3 * v - 0.5), 0)
            arr = np.where(brain, (arr - arr[brain].mean()) / arr[brain].std(), 0).astype(np.float16)
            path = root / f"{pid}_ses-{v}.npy"
            np.save(path, arr)
            visits.append({"participant_id": pid, "session_id": f"ses-{v}", "days_from_baseline": months * 30,
                           "months": months, "split": split, "array": str(path),
                           "diagnosis": "CN" if s % 2 else ["MCI", "MCI", "AD"][v]})
    visits = pd.DataFrame(visits)
    visits.to_csv(root / "visits.tsv", sep="\t", index=False)
    pd.DataFrame(splits).to_csv(root / "splits.tsv", sep="\t", index=False)
    visits[visits["split"] != "test"][["participant_id", "session_id", "days_from_baseline"]].to_csv(
        root / "pretrain.tsv", sep="\t", index=False)
    return root


def pretrain_cmd(manifest: Path, out: Path, s: dict, launcher: list[str] | None = None,
                 pretrain: Path | None = None) -> list[str]:
    launcher = launcher or [sys.executable, "-m", "sslad"]
    return [*launcher, "pretrain", "--settings", json.dumps(s),
            "--pretrain", str(pretrain or manifest / "pretrain.tsv"),
            "--visits", str(manifest / "visits.tsv"), "--splits", str(manifest / "splits.tsv"),
            "--encoder", str(out / "encoder.pt"), "--metrics", str(out / "metrics.json"),
            "--checkpoint", str(out / "state/last.pt"), "--threads", "1"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["encoder"]


def renormalised(manifest: Path, root: Path) -> Path:
    """The same scans under the same names after another normalisation (every array changes, as
    when the preprocessing is edited): the visits.tsv that points at them."""
    visits = pd.read_csv(manifest / "visits.tsv", sep="\t")
    (root / "arrays").mkdir(parents=True)
    for i, path in enumerate(visits["array"]):
        arr = np.load(path).astype(np.float32)
        new = root / "arrays" / Path(path).name
        np.save(new, np.where(arr != 0, 0.8 * arr + 0.1, 0).astype(np.float16))
        visits.loc[i, "array"] = str(new)
    visits.to_csv(root / "visits.tsv", sep="\t", index=False)
    return root / "visits.tsv"


class Interrupted(Exception):
    pass


def interrupt_at(line: str):
    """A ``log`` that kills the job (in process) when it reports ``line``."""
    def log(msg: str) -> None:
        if msg.startswith(line):
            raise Interrupted(msg)
    return log


# --- data-parallel training equals one process -------------------------------------------------
# Compared where float noise cannot grow: the first optimiser steps' losses and gradients (after
# DDP's averaging, before the step), and every step's loss over several epochs of a run whose
# learning rate is too small for noise to grow (the curve then follows the data each step draws, and
# the teacher and centre that dino2d updates). At a real learning rate Adam amplifies float noise
# until correct curves part (simclr on the tiny study: 8.4% at epoch 2, issue 30), and no tolerance
# tells a bug from noise.
PROBE_LR = 1e-8
# dino2d's head normalises a bottleneck of norm ~1e-3 at initialisation (DINO's trunc-normal 0.02
# weights), so its gradients reach 1e2 and one Adam step of 1e-8 moves its next gradient by 9%:
# at 1e-8 noise grows from the third step on (to 7e-4 in a step's loss between 2 ranks and one
# process); at 1e-10 it stays at 2e-7 while the steps still move the loss by up to 5e-4
PROBE_LR_OF = {"dino2d": 1e-10}
PROBE_GRAD_STEPS = 2  # optimiser steps whose whole gradient is recorded
# Tolerances: at least 9 times the largest difference measured between 2 ranks and one process, here
# and on the tiny study's data (tests/slurm/run.sh), and at least 8 times below the smallest a bug
# made (see test_data_parallel_training_equals_one_process)
PROBE_LOSS_RTOL = 1e-5  # every step's loss
PROBE_GRAD_RTOL = 1e-3  # |g2 - g1| / |g1| of each recorded step's whole gradient
PROBE_PARAM_RTOL = 1e-2  # the same per parameter (over max(|g1 of it|, 1e-3 |g1|))
DINO_HP = {"slice_encoder": {"depth": 10, "widths": [8, 8, 16, 16], "stem_kernel": 3, "stem_stride": 2,
                             "max_pool": True, "norm": "group", "min_brain_fraction": 0.25},
           "slices_per_scan": 2, "local_crops": 2, "global_scale": [0.4, 1.0], "local_scale": [0.1, 0.4],
           "local_size": 0.5, "jitter": 0.4, "out_dim": 32, "hidden": 32, "bottleneck": 16,
           # batch norm in the head: per process on CPUs (SyncBatchNorm is converted on GPUs only)
           "head_batch_norm": False, "student_temperature": 0.1, "teacher_temperature": [0.04, 0.07],
           "teacher_warmup": 0.1, "momentum": [0.996, 1.0], "center_momentum": 0.9, "augment": "spatial"}


def at_probe_lr(s: dict) -> dict:
    """``s`` with its method's probe learning rate."""
    return {**s, "train": {**s["train"], "lr": PROBE_LR_OF.get(s["method"], PROBE_LR)}}


def probe_settings(method: str, epochs: int = 3) -> dict:
    """A method's settings for the data-parallel probe: this file's tiny model at its probe learning rate
    (a method without settings here fails: a new method needs its entry in HP)."""
    s = settings("simclr", epochs=epochs, batch=4, every=100)
    return at_probe_lr({**s, "method": method, "hp": {**HP, "dino2d": DINO_HP}[method]})


def probe(runs: dict[str, dict], pretrain_tsv: str, visits_tsv: str, splits_tsv: str, out: Path,
          threads: int = 1) -> None:
    """Train each of ``runs`` (name -> settings) with sslad.pretrain.train as this process's part of a
    data-parallel run (torchrun's or srun's) or alone, recording every step's loss (the mean over
    ranks that the loop logs) and the first PROBE_GRAD_STEPS steps' gradients of every parameter
    (after DDP's averaging, as the optimiser receives them). Rank 0 writes {name: {"losses": [...],
    "grads": [{parameter: tensor}, ...], "curve": metrics' loss}} to ``out``/probe.pt. Run as a
    script: ``python tests/test_pretrain.py RUNS_JSON PRETRAIN VISITS SPLITS OUT [THREADS]``."""
    import torch.distributed as dist

    from sslad import distributed
    from sslad.networks import check_loss

    torch.set_num_threads(threads)
    if torch.cuda.is_available():  # as pretrain.run
        torch.use_deterministic_algorithms(True, warn_only=True)
    scans = load_pretrain_scans(pretrain_tsv, visits_tsv, splits_tsv)
    current: dict = {}
    built: list[torch.nn.Module] = []

    class Recording(torch.optim.Adam):
        def step(self, closure=None):
            if len(current["grads"]) < PROBE_GRAD_STEPS:
                current["grads"].append({name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                                         for name, p in built[-1].named_parameters() if p.requires_grad})
            return super().step(closure)

    def build(*args, **kwargs):
        built.append(pretrain_build(*args, **kwargs))
        return built[-1]

    def record_loss(value: float, message: str) -> float:
        current["losses"].append(value)
        return check_loss(value, message)

    results = {}
    pretrain_build = pretrain.build
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim, "Adam", Recording)
        mp.setattr(pretrain, "build", build)
        mp.setattr(pretrain, "check_loss", record_loss)
        for name, s in runs.items():
            current.update(losses=[], grads=[])
            metrics = pretrain.train(s, scans, pretrain.Outputs.under(out / name), log=lambda msg: None)
            results[name] = {**current, "curve": metrics["loss"], "world_size": metrics["world_size"]}
    if distributed.world()[0] == 0:
        torch.save(results, out / "probe.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


def probe_cmd(runs: dict[str, dict], manifest: Path, out: Path, launcher: list[str] | None = None,
              pretrain_tsv: Path | None = None, threads: int = 1) -> list[str]:
    return [*(launcher or [sys.executable]), __file__, json.dumps(runs), str(pretrain_tsv or manifest / "pretrain.tsv"),
            str(manifest / "visits.tsv"), str(manifest / "splits.tsv"), str(out), str(threads)]


def probe_differences(one: dict, two: dict) -> dict[str, dict[str, float]]:
    """Per run: the largest relative difference of a step's loss, of a step's whole gradient and of
    one parameter's gradient (relative to that parameter's, or to a thousandth of the whole
    gradient's norm for a parameter whose gradient is smaller), between probes ``one`` and ``two``."""
    out = {}
    for name, a in one.items():
        b = two[name]
        assert len(a["losses"]) == len(b["losses"]) and len(a["grads"]) == len(b["grads"]) == PROBE_GRAD_STEPS, name
        loss = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a["losses"], b["losses"]))
        whole = part = 0.0
        for ga, gb in zip(a["grads"], b["grads"]):
            assert ga.keys() == gb.keys(), name
            norm = float(torch.cat([g.flatten() for g in ga.values()]).norm())
            diff = float(torch.cat([(gb[k] - ga[k]).flatten() for k in ga]).norm())
            whole = max(whole, diff / norm)
            part = max(part, *(float((gb[k] - ga[k]).norm()) / max(float(ga[k].norm()), 1e-3 * norm) for k in ga))
        out[name] = {"loss": loss, "grad": whole, "param_grad": part}
    return out


def assert_trains_as_one_process(one: dict, two: dict) -> dict[str, dict[str, float]]:
    """The data-parallel criterion (also tests/test_distributed.py's and tests/slurm/run.sh's): every
    step's loss within PROBE_LOSS_RTOL, the first steps' gradients within PROBE_GRAD_RTOL (whole) and
    PROBE_PARAM_RTOL (per parameter), the epoch curve within PROBE_LOSS_RTOL."""
    found = probe_differences(one, two)
    for name, d in found.items():
        assert d["loss"] < PROBE_LOSS_RTOL and d["grad"] < PROBE_GRAD_RTOL and d["param_grad"] < PROBE_PARAM_RTOL, \
            f"{name}: {d} (losses {one[name]['losses']} vs {two[name]['losses']})"
        np.testing.assert_allclose(two[name]["curve"], one[name]["curve"], rtol=PROBE_LOSS_RTOL, err_msg=name)
    return found


def test_data_parallel_training_equals_one_process(manifest, tmp_path):
    """Every method (sslad.registry) trained by torchrun's 2 processes (gloo) equals one process:
    every step's loss over 3 epochs at the probe learning rate and the first 2 steps' gradients.

    Largest differences measured (AMD EPYC, 2 cores, torch 2.13 CPU), 2 ranks against one process:
    a step's loss 1.7e-7 (dino2d), a step's whole gradient 4.0e-5 (tcl, step 2; step 1 of every
    method <= 9.2e-6), one parameter's 3.8e-4 (tmp, step 2); one process with 2 threads against 1:
    0, 2.2e-5, 2.0e-4 (tmp, step 2). On the tiny study's data (tests/slurm/run.sh), 2 ranks: 8.4e-7,
    1.1e-4, 2.0e-4 (tcl, step 2); 2 threads: 1.3e-7, 4.7e-5 (tmp, step 1), 6.8e-5. The training the
    probe does: its steps move step 2's gradient by 2e-4 (tmp) to 1e-3 (simclr) from that of learning
    rate 0 (dino2d: 7%). Measured with a bug: without gradient averaging (DDP replaced by the bare
    module) step 1's whole gradient differs by 0.37 (dino2d) to 1.5 (tmp, topc); with gather returning
    each rank's own rows (and row offsets 0) a step's loss by 0.02 (dino2d, from step 2: its centre) to
    0.88 (simclr), every method but top, which gathers nothing; with global_mean averaging each rank's
    own terms, where ranks hold different numbers of terms, a step's loss by 1e-3 (topc; its gradient
    by 7.9e-3) to 1.2e-2 (tcl)."""
    # sub-00 keeps two of its three scans, so topc's two processes hold different numbers of scans
    # in some steps (their per-scan contrastive terms are gathered across processes); tmp: each
    # process hides every visit of its own sequences in turn; tcl, tmp: targets are rows of the
    # gathered candidates (each process's rows offset by the earlier processes')
    table = pd.read_csv(manifest / "pretrain.tsv", sep="\t")
    table = table[(table["participant_id"] != "sub-00") | (table["session_id"] != "ses-2")]
    table.to_csv(tmp_path / "pretrain.tsv", sep="\t", index=False)
    runs = {method: probe_settings(method) for method in METHODS}
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]
    for side, launcher in (("single", None), ("ddp", torchrun)):
        proc = subprocess.run(probe_cmd(runs, manifest, tmp_path / side, launcher, tmp_path / "pretrain.tsv"),
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (torch.load(tmp_path / side / "probe.pt", weights_only=True) for side in ("single", "ddp"))
    assert set(one) == set(two) == set(METHODS)
    assert {r["world_size"] for r in one.values()} == {1} and {r["world_size"] for r in two.values()} == {2}
    assert_trains_as_one_process(one, two)


def test_killed_job_resumes_from_its_checkpoint_and_matches(manifest, tmp_path):
    s = settings("top", epochs=30, batch=4, every=1)
    reference = tmp_path / "reference"
    subprocess.run(pretrain_cmd(manifest, reference, s), check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(pretrain_cmd(manifest, out, s), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "state/last.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "encoder.pt").exists(), "the job finished before it could be killed"
    rerun = subprocess.run(pretrain_cmd(manifest, out, s), capture_output=True, text=True, check=True)
    resumed = int(rerun.stderr.split("after epoch ")[1].split()[0])
    assert 1 <= resumed < 30
    for key, value in weights(reference / "encoder.pt").items():
        torch.testing.assert_close(weights(out / "encoder.pt")[key], value, msg=key)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 31))
    assert not (out / "state").exists() and not (reference / "state").exists()


def test_rerun_on_renormalised_arrays_trains_afresh(manifest, tmp_path, capsys):
    # the workflow's case: pretrain, edit the preprocessing's normalisation, rerun the job (same scan
    # names, new array contents); it once resumed the finished run and trained nothing
    s, out = settings("simclr", epochs=2), tmp_path / "out"
    paths = [str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"), str(manifest / "splits.tsv")]
    pretrain.run(s, *paths, pretrain.Outputs.under(out), 1)
    assert not (out / "state").exists(), "a completed run leaves no checkpoint to resume"
    first = weights(out / "encoder.pt")
    capsys.readouterr()
    paths[1] = str(renormalised(manifest, tmp_path))
    metrics = pretrain.run(s, *paths, pretrain.Outputs.under(out), 1)
    log = capsys.readouterr().err
    assert metrics["resumed_after_epoch"] == 0 and "resumed" not in log and "epochs 1..2" in log
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert not (out / "state").exists()
    second = weights(out / "encoder.pt")
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # the job's provenance: the checkout's commit and the torch it ran
    git = subprocess.run(["git", "-C", str(Path(pretrain.__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    made = json.loads((out / "metrics.json").read_text())["provenance"]
    assert made["commit"] == (git.stdout.strip() if git.returncode == 0 else "unknown")
    assert made["packages"]["torch"] == importlib.metadata.version("torch")  # the installed distribution's
    assert made["device"] == "cpu" and made["threads"] == 1
    assert set(made) == set(provenance.PROVENANCE_KEYS)


def test_interrupted_run_resumes_only_on_the_same_inputs(manifest, tmp_path):
    s = settings("simclr", epochs=4, every=1)
    tables = str(manifest / "pretrain.tsv"), str(manifest / "splits.tsv")
    scans = load_pretrain_scans(tables[0], str(manifest / "visits.tsv"), tables[1])
    pretrain.train(s, scans, pretrain.Outputs.under(tmp_path / "reference"), log=lambda msg: None)
    out = tmp_path / "out"
    state = out / "state/last.pt"
    with pytest.raises(Interrupted):  # dies while reporting epoch 3, after epoch 2 was checkpointed
        pretrain.train(s, scans, pretrain.Outputs.under(out), interrupt_at("epoch 3/4"))
    # the real checkpoint is plain data (tensors, dicts, lists, numbers, strings): it loads as such
    assert torch.load(state, weights_only=True)["epoch"] == 2 and not (out / "encoder.pt").exists()
    saved = state.read_bytes()

    def rerun(s: dict, scans) -> tuple[dict, list[str]]:
        state.parent.mkdir(exist_ok=True)
        state.write_bytes(saved)
        log: list[str] = []
        metrics = pretrain.train(s, scans, pretrain.Outputs.under(out), log.append)
        log = [line for line in log if not line.startswith("pre-flight:")]
        assert not state.parent.exists(), "a completed run leaves no checkpoint to resume"
        assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
        return metrics, log

    # same inputs: continues the interrupted run and ends where an uninterrupted one does
    metrics, log = rerun(s, scans)
    assert log[0] == f"resumed from {state} after epoch 2" and metrics["resumed_after_epoch"] == 2
    for key, value in weights(tmp_path / "reference/encoder.pt").items():
        torch.testing.assert_close(weights(out / "encoder.pt")[key], value, rtol=0, atol=0, msg=key)
    # the same names with re-normalised arrays: the checkpoint is not theirs
    changed = load_pretrain_scans(tables[0], str(renormalised(manifest, tmp_path)), tables[1])
    metrics, log = rerun(s, changed)
    assert log[0] == f"ignoring {state}: the input arrays changed (content hash); training from scratch"
    assert metrics["resumed_after_epoch"] == 0
    # other settings: neither
    metrics, log = rerun(settings("simclr", epochs=4, every=2), scans)
    assert log[0] == f"ignoring {state}: the settings changed; training from scratch"
    assert metrics["resumed_after_epoch"] == 0


def test_what_a_checkpoint_must_match(manifest):
    scans = load_pretrain_scans(str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"),
                                str(manifest / "splits.tsv"))
    s = settings("top", epochs=4)
    key = pretrain.fingerprint(s, scans)
    assert pretrain._not_resumable({"fingerprint": key, "epoch": 3}, key, 4) is None
    # a finished run (as older versions left it) is not an interrupted one
    assert "completed run (epoch 4 of 4)" in pretrain._not_resumable({"fingerprint": key, "epoch": 4}, key, 4)
    assert "older sslad" in pretrain._not_resumable({"fingerprint": "0123456789abcdef", "epoch": 1}, key, 4)
    # each input is covered: times, array contents (one value of one scan), settings
    later = dataclasses.replace(scans, months=scans.months + (np.arange(len(scans.months)) == 5))
    assert pretrain.fingerprint(s, later)["scans"] != key["scans"]
    volumes = scans.volumes[np.arange(len(scans.keys))]  # read into memory: streamed or not, one digest
    assert pretrain.arrays_digest(volumes) == key["arrays"]
    volumes[7, 0, 8, 8, 8] += 1
    other = pretrain.fingerprint(s, dataclasses.replace(scans, volumes=volumes))
    assert other["arrays"] != key["arrays"] and other["scans"] == key["scans"]
    why = pretrain._not_resumable({"fingerprint": other, "epoch": 1}, key, 4)
    assert why == "the input arrays changed (content hash)"
    assert pretrain.fingerprint(settings("top", epochs=5), scans)["settings"] != key["settings"]


def test_no_test_participant_is_ever_loaded(manifest, tmp_path, monkeypatch):
    loaded: list[str] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: loaded.append(str(path)) or real_load(path, *a, **k))
    metrics = pretrain.run(settings("tmp", epochs=1), str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"),
                           str(manifest / "splits.tsv"), pretrain.Outputs.under(tmp_path), 1)
    assert metrics["n_scans"] == 24 and len(loaded) == 24
    assert not [p for p in loaded if "sub-08" in p or "sub-09" in p]
    assert load_encoder(tmp_path / "encoder.pt")[3]  # tmp hands its aggregator over
    # the diagnostics ran on 2 of the 8 subjects (25%), held out of the loss: 6 units were trained on
    d = metrics["diagnostic"]
    assert d["holdout_subjects"] == 2 and d["holdout_scans"] == 6 and d["order_probe_pairs"] == 6
    assert metrics["n_units"] == 6
    assert d["order_probe_low"] <= d["order_probe_accuracy"] <= d["order_probe_high"]
    hits = d["order_probe_accuracy"] * d["order_probe_pairs"]  # a share of the 6 held-out pairs
    assert hits == pytest.approx(round(hits), abs=1e-9)
    # tmp: each query among the two visits hidden with it (the subjects have 3 visits: context 1)
    assert d["retrieval_chance"] == pytest.approx(1 / 2) and "order_probe_accuracy_at_init" in d
    voxel_hits = d["order_probe_voxels"] * d["order_probe_pairs"]  # the voxels' reach, on the same pairs
    assert voxel_hits == pytest.approx(round(voxel_hits), abs=1e-9)
    # by course (stable CN or MCI vs the others): the held-out pairs split between them, the overall
    # accuracy their pair-weighted mean, for the encoder and the voxels alike
    courses = ["stable", "progressing"]  # one held-out subject of each here
    assert sum(d[f"order_probe_pairs_{c}"] for c in courses) == d["order_probe_pairs"]
    for key in ("order_probe_accuracy", "order_probe_voxels"):
        mean = sum(d[f"{key}_{c}"] * d[f"order_probe_pairs_{c}"] for c in courses) / d["order_probe_pairs"]
        assert mean == pytest.approx(d[key])

    leaky = pd.read_csv(manifest / "visits.tsv", sep="\t")[["participant_id", "session_id", "days_from_baseline"]]
    leaky.to_csv(tmp_path / "leaky.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="leaky.tsv: test participants must never be pretrained on: sub-08, sub-09"):
        pretrain.run(settings("top"), str(tmp_path / "leaky.tsv"), str(manifest / "visits.tsv"),
                     str(manifest / "splits.tsv"), pretrain.Outputs.under(tmp_path / "x"), 1)


def test_external_neuro_simclr_checkpoint_becomes_an_encoder(tmp_path):
    from monai.networks.nets.resnet import ResNet

    torch.manual_seed(0)
    net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=3, n_input_channels=1, num_classes=0)
    state = {f"module.encoder.{k}": v for k, v in net.state_dict().items()}
    state["module.projector.0.weight"] = torch.zeros(512, 512)
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {}}, tmp_path / "latest.tar")
    arch = import_external(tmp_path / "latest.tar", tmp_path / "encoder.pt", MODEL, stem_stride=1)
    assert (arch["depth"], arch["widths"], arch["stem_kernel"], arch["norm"]) == (18, [64, 128, 256, 512], 7, "batch")
    encoder, _, loaded_arch, pretrained_agg = load_encoder(tmp_path / "encoder.pt")
    assert loaded_arch["axes"] == "zyx" and not pretrained_agg
    x = torch.randn(2, 1, 20, 24, 20)
    net.fc = None
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), net.eval()(x))
    torch.save({"model_state_dict": {"encoder.conv1.weight": torch.zeros(8, 1, 3, 3, 3)}}, tmp_path / "bad.tar")
    with pytest.raises(ValueError, match="bad.tar: ResNet with blocks"):
        import_external(tmp_path / "bad.tar", tmp_path / "x.pt", MODEL, 1)
    (tmp_path / "junk.tar").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.tar: cannot read"):
        import_external(tmp_path / "junk.tar", tmp_path / "x.pt", MODEL, 1)
    assert build_encoder(MODEL)(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 16)


@pytest.mark.parametrize("method", ["top", "tcl", "topc"])
def test_every_temporal_method_hands_over_its_trained_aggregator(manifest, tmp_path, method):
    from sslad.networks import build_aggregator

    s = settings(method, epochs=1)
    metrics = pretrain.run(s, str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"),
                           str(manifest / "splits.tsv"), pretrain.Outputs.under(tmp_path), 1)
    _, aggregator, _, pretrained = load_encoder(tmp_path / "encoder.pt")
    assert pretrained
    torch.manual_seed(s["train"]["seed"])  # the aggregator as built before training: it moved
    build_encoder(MODEL)
    initial = build_aggregator(MODEL).state_dict()
    moved = [k for k, v in aggregator.state_dict().items() if not torch.equal(v, initial[k])]
    assert "norm.weight" in moved and "cls" in moved, moved  # the readout fine-tuning reads was trained
    assert ("retrieval_accuracy" in metrics["diagnostic"]) == (method == "tcl")


def test_simclr_hands_over_no_aggregator(manifest, tmp_path):
    pretrain.run(settings("simclr", epochs=1), str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"),
                 str(manifest / "splits.tsv"), pretrain.Outputs.under(tmp_path), 1)
    assert not load_encoder(tmp_path / "encoder.pt")[3]


def test_pretraining_times_are_fractional_months_of_the_acquisition_days(manifest):
    # fine-tuning's unit (sslad.visit_time.acquisition_months), not visits.tsv's rounded or coded months
    from sslad.visit_time import acquisition_months

    scans = load_pretrain_scans(str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"),
                                str(manifest / "splits.tsv"))
    days = pd.read_csv(manifest / "visits.tsv", sep="\t").set_index(["participant_id", "session_id"])
    expected = acquisition_months(days.loc[scans.keys, "days_from_baseline"].to_numpy())
    np.testing.assert_array_equal(scans.months, expected)
    assert not np.allclose(scans.months, np.round(scans.months))  # 360 days = 11.83 months, not 12


def test_a_method_block_may_set_its_own_epochs(manifest, tmp_path):
    """A temporal method's epoch is a pass over subjects (a few steps), so its block may ask for more:
    the run's settings carry them as train.epochs, and the run trains that many."""
    from sslad.registry import pretrain_run_settings

    base = settings("top", epochs=1)
    cfg = {"pretrain": {"methods": {"top": {**base["hp"], "epochs": 3}}, "train": base["train"],
                        "augment": base["augment"]}, "model": base["model"]}
    s = pretrain_run_settings(cfg, "top", 3)
    assert s["train"]["epochs"] == 3 and "epochs" not in s["hp"]
    assert pretrain_run_settings({**cfg, "pretrain": {**cfg["pretrain"], "methods": {"top": base["hp"]}}},
                                 "top", 3)["train"]["epochs"] == 1
    metrics = pretrain.run(s, str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"),
                           str(manifest / "splits.tsv"), pretrain.Outputs.under(tmp_path), 1)
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3


def test_two_process_ddp_stops_every_process_at_the_diverged_step(manifest, tmp_path):
    """Each process checks the loss averaged over processes: all of them stop at the same step,
    none waits for the others in the next collective."""
    s = settings("simclr", epochs=2)
    s["train"]["lr"] = 1e20
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "sslad"]
    proc = subprocess.run(pretrain_cmd(manifest, tmp_path, s, torchrun), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("simclr pretraining diverged at epoch 1, step 2 of 4 (lr 1e+20)") == 2, proc.stderr[-3000:]
    assert not (tmp_path / "encoder.pt").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("method, lr, where", [("simclr", 1e20, "epoch 1, step 2 of 4"),
                                               ("tcl", 1e6, "epoch 2, step 1 of 1")], ids=["simclr", "tcl"])
def test_a_diverging_run_stops_at_its_first_non_finite_loss_and_writes_nothing(manifest, tmp_path, method, lr, where):
    s = settings(method, epochs=3)
    s["train"]["lr"] = lr
    message = f"{method} pretraining diverged at {where} (lr {lr:g}): the loss is nan"
    with pytest.raises(Diverged, match=f"^{re.escape(message)}$"):
        pretrain.run(s, str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"), str(manifest / "splits.tsv"),
                     pretrain.Outputs.under(tmp_path), 1)
    assert not (tmp_path / "encoder.pt").exists() and not (tmp_path / "metrics.json").exists()


class Payload:
    """Unpickled, it writes ``marker``: what a planted checkpoint could do with any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture
def interrupted(manifest, tmp_path):
    """A simclr run killed after its epoch-1 checkpoint (the checkpoint's contents and where it lies),
    the scans and settings, and the encoder of the same run trained without interruption."""
    s = settings("simclr", epochs=2)
    scans = load_pretrain_scans(str(manifest / "pretrain.tsv"), str(manifest / "visits.tsv"),
                                str(manifest / "splits.tsv"))
    pretrain.train(s, scans, pretrain.Outputs.under(tmp_path / "reference"), log=lambda msg: None)
    out = pretrain.Outputs.under(tmp_path / "out")
    with pytest.raises(Interrupted):
        pretrain.train(s, scans, out, interrupt_at("epoch 2/2"))
    return {"state": torch.load(out.checkpoint, weights_only=True), "out": out, "scans": scans, "settings": s,
            "reference": weights(tmp_path / "reference/encoder.pt")}


def _rerun(run: dict) -> tuple[dict, list[str]]:
    log: list[str] = []
    metrics = pretrain.train(run["settings"], run["scans"], run["out"], log.append)
    return metrics, [line for line in log if line.startswith(("ignoring", "resumed"))]


def _from_scratch(run: dict, metrics: dict) -> None:
    """The run trained from scratch: all its epochs, ending where the uninterrupted run did."""
    assert metrics["resumed_after_epoch"] == 0 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    for key, value in run["reference"].items():
        torch.testing.assert_close(weights(run["out"].encoder)[key], value, rtol=0, atol=0, msg=key)


def test_a_planted_checkpoint_runs_no_code(interrupted, tmp_path):
    marker = tmp_path / "marker"
    state = interrupted["out"].checkpoint
    torch.save({**interrupted["state"], "model": Payload(marker)}, state)
    metrics, log = _rerun(interrupted)
    assert not marker.exists()
    [line] = log  # torch's wording of what it refused varies between versions: it names the callable
    assert line.startswith(f"ignoring {state}: it holds more than weights and plain data, so it was not unpickled (")
    assert "exec" in line and line.endswith("); training from scratch") and "weights_only" not in line
    _from_scratch(interrupted, metrics)
    # the plant is live: read as torch.load reads by default before 2.6, it runs its code
    torch.save({"model": Payload(marker)}, tmp_path / "plant.pt")
    torch.load(tmp_path / "plant.pt", weights_only=False)
    assert marker.read_text() == "ran"


def _code(state: dict) -> None:
    state["fingerprint"]["source_sha256"] = "0" * 64


def _torch(state: dict) -> None:
    state["fingerprint"]["torch_version"] = "2.0.0"


def _shape(state: dict) -> None:
    name = next(k for k, v in state["model"].items() if v.dim() == 5)  # a convolution's weight
    state["model"][name] = torch.cat([state["model"][name]] * 2)


def _optimizer(state: dict) -> None:  # the weights load, then the optimiser's state does not
    state["optimizer"]["param_groups"] = []


@pytest.mark.parametrize("change, why", [
    (_code, "the sslad code changed"),
    (_torch, f"torch changed (2.0.0 -> {provenance.resume_key()['torch_version']})"),
    (_shape, "cannot use it (RuntimeError: Error(s) in loading state_dict for SimCLR: size mismatch for "),
    (_optimizer, "cannot use it (ValueError: loaded state dict has a different number of parameter groups)"),
    (None, "cannot use it (")], ids=["code", "torch", "shape", "optimizer", "damaged"])
def test_a_checkpoint_of_other_code_or_libraries_or_damaged_trains_afresh(interrupted, change, why):
    state = interrupted["out"].checkpoint
    if change is None:  # cut short, as by a full disk
        state.write_bytes(state.read_bytes()[:1000])
    else:
        change(interrupted["state"])
        torch.save(interrupted["state"], state)
    metrics, log = _rerun(interrupted)
    assert len(log) == 1 and "\n" not in log[0], log
    assert log[0].startswith(f"ignoring {state}: {why}") and log[0].endswith("; training from scratch"), log
    _from_scratch(interrupted, metrics)


def test_a_genuine_checkpoint_resumes(interrupted):
    """The control of the two tests above: their checkpoint, untouched, is resumed."""
    metrics, log = _rerun(interrupted)
    assert log == [f"resumed from {interrupted['out'].checkpoint} after epoch 1"]
    assert metrics["resumed_after_epoch"] == 1
    for key, value in interrupted["reference"].items():
        torch.testing.assert_close(weights(interrupted["out"].encoder)[key], value, rtol=0, atol=0, msg=key)


if __name__ == "__main__":  # one process of the data-parallel probe (see probe)
    probe(json.loads(sys.argv[1]), *sys.argv[2:5], Path(sys.argv[5]), int(sys.argv[6]) if len(sys.argv) > 6 else 1)
