"""Self-supervised pretraining of one method: training loop, checkpoints and resume, DDP, outputs.

One process per GPU under torchrun (gloo on CPUs), one plain process otherwise. bf16 autocast on
CUDA, fp32 on CPU. A checkpoint under ``<out>/state/`` carries the epoch, weights, optimiser and
loss history; a rerun on the same inputs (settings, scans, times and array contents, see
``fingerprint``) continues from it, so a killed job loses at most ``checkpoint_every`` epochs. A
rerun whose inputs changed in any way starts afresh and logs why. The checkpoint only serves an
interrupted run: it is removed once the outputs are written, so a finished job that Snakemake
reruns (its inputs or code changed) always trains from scratch. It is read as data only
(``weights_only``: a planted file runs no code), and only the code and the torch and numpy versions
that wrote it resume it. The first non-finite loss stops the job (:class:`sslad.networks.Diverged`)
before it writes anything. Outputs (paths given by the caller, see :class:`Outputs`): the encoder
and, for the temporal methods, the aggregator they trained (for fine-tuning), and the metrics, which
carry the settings, the job's provenance (sslad.provenance) and the diagnostics of temporal learning
on held-out subjects (sslad.diagnostics, at initialisation and after training) so that the tracking
job (sslad.tracking) can log the run without touching this job.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslad import distributed, preflight, provenance
from sslad.diagnostics import diagnose, voxel_reference
from sslad.io import atomic_path, write_json
from sslad.loader import Stream, Volumes
from sslad.methods import architecture, build
from sslad.networks import bound_memory, build_aggregator, build_encoder, check_loss, feature_dim, save_encoder
from sslad.pretrain_data import ScanSet, assemble, epoch_batches, holdout, load_pretrain_scans, plan_step, units


@dataclass(frozen=True)
class Outputs:
    """Where a pretraining job writes: the encoder, the metrics and the resumable checkpoint (a
    scratch file, removed once the run is complete)."""

    encoder: Path
    metrics: Path
    checkpoint: Path

    @classmethod
    def under(cls, out_dir: str | Path) -> "Outputs":
        """The workflow's layout: encoder.pt, metrics.json and state/last.pt in one directory."""
        out = Path(out_dir)
        return cls(out / "encoder.pt", out / "metrics.json", out / "state" / "last.pt")


def arrays_digest(volumes: Volumes) -> str:
    """sha256 of the arrays' float16 bytes (with dtype and shape), read one scan at a time.

    Cost (AMD EPYC, 2 cores, sha_ni; hashlib at ~1.4 GB/s on one core): the demo's pretraining
    arrays (<= 177 scans of 24x26x21, 4.6 MB) take 4 ms, the tests' 24 arrays of 16^3 0.2 ms; one
    whole-brain 1-mm array (152x192x152 float16, 8.9 MB) 6.5 ms, so 10,000 of them (89 GB) ~65 s
    plus reading them once, once per job start, in the memory of one array (each DDP process hashes
    on its own, in parallel). CPUs without SHA extensions are several times slower.
    """
    h = hashlib.sha256(f"float16 {tuple(volumes.shape)}\n".encode())
    for row in range(len(volumes)):
        h.update(volumes[[row]].to(torch.float16).contiguous().numpy())
    return h.hexdigest()


def fingerprint(settings: dict[str, Any], scans: ScanSet) -> dict[str, str]:
    """What a checkpoint must match to be resumed, in parts so that the log can say what changed:
    the settings, the pretraining scans (participant, session, months) and the arrays' contents (a
    re-preprocessed cohort has the same names and new arrays); and the code and torch and numpy
    versions (:func:`sslad.provenance.resume_key`), which a run must not change halfway."""
    keys = "\n".join(f"{p}\t{s}\t{float(m)!r}" for (p, s), m in zip(scans.keys, scans.months))
    return {"settings": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
            "scans": hashlib.sha256(keys.encode()).hexdigest(),
            "arrays": arrays_digest(scans.volumes), **provenance.resume_key()}


_CHANGED = {"settings": "the settings changed",
            "scans": "the pretraining scans (participants, sessions or times) changed",
            "arrays": "the input arrays changed (content hash)",
            "source_sha256": "the sslad code changed"}


def _changed(part: str, found: Any, now: str) -> str:
    """Why one part of the fingerprint differs: a library's says from which version to which."""
    if part in _CHANGED:
        return _CHANGED[part]
    return f"{part.removesuffix('_version')} changed ({found or 'unrecorded'} -> {now})"


def _not_resumable(state: Any, key: dict[str, str], epochs: int) -> str | None:
    """Why a checkpoint must not be continued, or None when it is the interrupted run of these inputs."""
    found = state.get("fingerprint") if isinstance(state, dict) else None
    if not isinstance(found, dict):
        return "it has no content fingerprint (written by an older sslad)"
    changed = [_changed(part, found.get(part), now) for part, now in key.items() if found.get(part) != now]
    if changed:
        return ", ".join(changed)
    if state["epoch"] >= epochs:
        return f"it is the end of a completed run (epoch {state['epoch']} of {epochs}), not an interrupted one"
    return None


def _unusable(exc: Exception) -> str:
    """One log line for a checkpoint that failed to load or apply. torch's refusal to unpickle an
    object spans lines and advises loading with weights_only=False, the very thing to avoid: keep
    only what it found."""
    text = " ".join(str(exc).split())
    refused = re.search(r"WeightsUnpickler error: (.*?\.)(?: |$)", text)
    if isinstance(exc, pickle.UnpicklingError) and refused:
        return f"it holds more than weights and plain data, so it was not unpickled ({refused.group(1)})"
    return f"cannot use it ({type(exc).__name__}: {text})"


def _resume(state_path: Path, key: dict[str, str], epochs: int, method: torch.nn.Module,
            opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]]] | str:
    """(epoch, history) of the interrupted run, its weights and optimiser state loaded into ``method``
    and ``opt``; or why the checkpoint is not used, the two left as they were (a load that fails
    halfway, on changed shapes, would otherwise leave some weights of the checkpoint behind)."""
    fresh = None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        why = _not_resumable(state, key, epochs)
        if why is not None:
            return why
        fresh = ({k: v.detach().to("cpu", copy=True) for k, v in method.state_dict().items()},
                 copy.deepcopy(opt.state_dict()))
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        return int(state["epoch"]), list(state["history"])
    except Exception as exc:  # refused unpickling, a damaged file (zip errors of every kind), changed shapes
        if fresh is not None:
            method.load_state_dict(fresh[0])
            opt.load_state_dict(fresh[1])
        return _unusable(exc)


def _remove_state(state_path: Path) -> None:
    """Drop the checkpoint of a finished run, and partial writes left by a job killed mid-save."""
    state_path.unlink(missing_ok=True)
    for part in state_path.parent.glob(f".{state_path.stem}.part-*"):
        part.unlink(missing_ok=True)
    try:
        state_path.parent.rmdir()
    except OSError:
        pass  # not empty (someone else's files) or already gone


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total)
    return "#" * filled + "-" * (width - filled)


def train(settings: dict[str, Any], scans: ScanSet, out: Outputs, log=print, memory_gb: float = 0.0,
          mem_mb: float = 0.0, workers: int = 0) -> dict[str, Any]:
    """Train, checkpointing as it goes; returns the metrics (also written by rank 0). Stops before
    training when one step would not fit in the device's memory (or ``memory_gb``): sslad.preflight.
    Each step's volumes are read from disk while the step before runs, by the job's ``workers``
    loader processes (shared evenly by its data-parallel processes)."""
    tr, model_cfg = settings["train"], architecture(settings["model"], settings["hp"])
    device = distributed.pick_device(tr["device"], "pretrain.train.device")
    rank, world = distributed.init(device.type)
    workers //= world
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(tr["seed"])
    encoder, aggregator = build_encoder(model_cfg), build_aggregator(model_cfg)
    bound_memory(encoder, tr["checkpoint_activations"], tr["micro_batch"])
    method = build(settings["method"], encoder, aggregator, feature_dim(model_cfg), settings["hp"])
    # SyncBatchNorm needs GPUs, and the same number of encoder calls on every rank (not so with
    # micro-batches of ranks that hold different numbers of scans)
    if world > 1 and device.type == "cuda" and not tr["micro_batch"]:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    elif world > 1 and model_cfg["norm"] == "batch":
        log("note: batch-norm statistics are per process (per micro-batch with micro_batch set)")
    method.to(device)
    sampling = method.sampling
    opt = torch.optim.Adam(method.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])
    ddp = torch.nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda"
                                                    else None, find_unused_parameters=True) if world > 1 else method

    held = holdout(scans, tr["holdout_subjects"], tr["seed"])
    pool = units(scans, sampling, held)
    scan_pool = np.flatnonzero(~np.isin(scans.subject_of(), held))
    if len(pool) < 2:
        raise ValueError(f"{settings['method']}: {len(pool)} pretraining units (subjects with >= "
                         f"{sampling.min_scans} scans) besides the {len(held)} subjects held out for the "
                         "diagnostics (pretrain.train.holdout_subjects); at least 2 are needed")
    batch_size = min(tr["batch_size"], len(pool))
    if batch_size % world:
        raise ValueError(f"pretrain batch size {batch_size} is not divisible by the {world} processes")
    memory = preflight.check(settings, method, encoder, device, world, batch_size, tuple(scans.volumes.shape[-3:]),
                             memory_gb, log, mem_mb)
    at_init = diagnose(method, encoder, scans, held, device) if rank == 0 else {}
    state_path = Path(out.checkpoint)
    key = fingerprint(settings, scans)
    start, history = 0, []
    epochs = tr["epochs"]
    if state_path.exists():
        resumed = _resume(state_path, key, epochs, method, opt)
        if isinstance(resumed, str):
            log(f"ignoring {state_path}: {resumed}; training from scratch")
        else:
            start, history = resumed
            log(f"resumed from {state_path} after epoch {start}")
    log(f"{settings['method']}: {len(scans.keys)} scans, {len(held)} subjects held out, {len(pool)} units, "
        f"batch {batch_size} x {world} process(es) on {device}, {workers} loader worker(s) each, "
        f"epochs {start + 1}..{epochs}")
    clock = time.perf_counter()
    seen = 0
    for epoch in range(start, epochs):
        method.train()
        t0, losses, stats = time.perf_counter(), [], {}
        plans = [plan_step(scans, [pool[i] for i in chosen], scan_pool, sampling, settings, epoch, step, rank, world)
                 for step, chosen in enumerate(epoch_batches(len(pool), batch_size, tr["seed"], epoch))]
        stream = Stream(scans.volumes, [plan.rows for plan in plans], device, workers)
        for step, volumes in enumerate(stream):
            batch = assemble(plans[step], volumes, (epoch + step / len(plans)) / epochs)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, extra = ddp(batch)
            # the mean over ranks: every rank sees the same value and stops at the same step
            losses.append(check_loss(distributed.mean(float(loss.detach())),
                                     f"{settings['method']} pretraining diverged at epoch {epoch + 1}, step "
                                     f"{step + 1} of {len(plans)} (lr {tr['lr']:g})"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in extra.items():
                stats.setdefault(k, []).append(distributed.mean(v))
            spatial = len(batch.spatial.volumes) if batch.spatial is not None else 0
            seen += world * (len(batch.volumes) * len(sampling.views) + spatial * len(sampling.spatial_views))
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": seconds,
                  "data_wait": stream.waited / seconds, **{k: float(np.mean(v)) for k, v in stats.items()}}
        history.append(record)
        rate = seen / max(time.perf_counter() - clock, 1e-9)
        extras = " ".join(f"{k} {record[k]:.3f}" for k in stats)
        log(f"epoch {epoch + 1}/{epochs} [{_bar(epoch + 1, epochs)}] loss {record['loss']:.4f} {extras} | "
            f"{rate:.1f} vol/s | {record['seconds']:.1f} s, {100 * record['data_wait']:.0f}% waiting for data")
        # the last epoch is not checkpointed: a finished run is never resumed
        if rank == 0 and epoch + 1 < epochs and (epoch + 1) % tr["checkpoint_every"] == 0:
            with atomic_path(state_path) as tmp:
                torch.save({"fingerprint": key, "epoch": epoch + 1, "history": history,
                            "model": method.state_dict(), "optimizer": opt.state_dict()}, tmp)
    elapsed = time.perf_counter() - clock
    diagnostic: dict[str, Any] = {}
    if rank == 0:
        diagnostic = {**diagnose(method, encoder, scans, held, device),
                      **{f"{k}_at_init": v for k, v in at_init.items() if k.endswith("accuracy")},
                      **voxel_reference(scans, held)}
        log("diagnostic on held-out subjects: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in sorted(diagnostic.items())))
    metrics = {"method": settings["method"], "epochs": epochs, "resumed_after_epoch": start,
               "history": history, "loss": [h["loss"] for h in history], "n_scans": len(scans.keys),
               "n_units": len(pool), "world_size": world, "device": device.type,
               "volumes_per_second": seen / elapsed if seen else None, "preflight_gb": memory,
               "encoder": str(out.encoder), "settings": settings,
               "diagnostic": diagnostic,
               "provenance": provenance.job_provenance(device=device.type, threads=torch.get_num_threads())}
    if rank == 0:
        trained_aggregator = aggregator if sampling.seq_len > 1 else None  # the temporal methods train it
        save_encoder(Path(out.encoder), model_cfg, encoder, trained_aggregator, settings["method"])
        write_json(metrics, Path(out.metrics))
        _remove_state(state_path)
    return metrics


def run(settings: dict[str, Any], pretrain_tsv: str, visits_tsv: str, splits_tsv: str, out: Outputs,
        threads: int, memory_gb: float = 0.0, workers: int = 0, mem_mb: float = 0.0) -> dict[str, Any]:
    """The ``sslad pretrain`` job: load, train, save (rank 0). No MLflow here: the job's metrics
    reach the tracking store through the tracking job, so no training job writes to a shared
    database (SQLite locking on NFS or Lustre is unreliable)."""
    torch.set_num_threads(max(1, threads))
    if torch.cuda.is_available():  # CPU kernels are deterministic already; asking imports TorchDynamo (~1.5 s a job)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    scans = load_pretrain_scans(pretrain_tsv, visits_tsv, splits_tsv)

    def log(msg: str) -> None:
        if distributed.world()[0] == 0:
            print(msg, file=sys.stderr, flush=True)

    return train(settings, scans, out, log, memory_gb, mem_mb, workers)
