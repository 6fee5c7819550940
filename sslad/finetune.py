"""Fine-tuning on one task x initialisation x seed: every label fraction, in every configured mode.

full: encoder, temporal aggregator and a linear head trained together (every init trains the same
aggregator architecture, from its pretrained weights where the init has them). probe: the encoder
frozen, a linear head on one readout for every init, the masked mean of the frozen scan features
over the sample's inputs (:func:`frozen_features`): a probe row then differs from another only by
the encoder, which is what a probe measures; reading a pretrained aggregator for the inits that
have one would compare encoder+aggregator with encoder alone. Both select the epoch with the best
validation AUC, weight positives by the class ratio, set the decision threshold on validation
(Youden) and report test metrics (their bootstrap intervals are aggregation's). No augmentation, as
in 3D-Neuro-SimCLR. Scores are logits, kept in float64 and written so that they round-trip: a
sigmoid saturates to 1.0 for large logits and ties what the model ranked apart.

Inputs (``settings["inputs"]``): ``history`` (the sample's scans up to the index visit and their
times, fractional months from :func:`sslad.visit_time.acquisition_months`), ``index`` (the index
scan alone) or ``time_shuffled`` (the history with its times permuted among its scans, a seeded
permutation per sample, in every split). The last two are the study's controls: whether the gain of
an init needs the history, and whether it needs the history's times.

One job runs the seed's label fractions one after the other: starting Python and torch costs more
CPU than a demo cell's training, and a new seed still adds jobs without rerunning the old ones.
Arrays stay on disk; each batch (full) or chunk of scans (probe, prediction) is streamed from them
(:mod:`sslad.loader`).

A task whose label-fraction subset, validation or test samples lack a class cannot be trained or
evaluated, nor can a cell whose training meets a non-finite loss or validation score, or whose
encoder.pt holds non-finite weights (:class:`sslad.networks.Diverged`): the job says why in
metrics.json (``skipped``) and the study goes on without the cell. Every metrics.json carries the
job's provenance (:func:`sslad.provenance.job_provenance`).
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sslad.distributed import pick_device
from sslad.io import read_tsv, write_json, write_tsv
from sslad.loader import Stream, Volumes, local_rows
from sslad.metrics import auc, binary_metrics, youden_threshold
from sslad.networks import Diverged, build_aggregator, build_encoder, check_loss, feature_dim, load_encoder
from sslad.optim import Adam
from sslad.provenance import job_provenance
from sslad.results import PREDICTION_COLUMNS
from sslad.schedule import SCHEDULE, fit_baseline
from sslad.visit_time import acquisition_months
from sslad.volumes import open_arrays, read_visits


@dataclass
class Samples:
    """Samples of one split: label, and their input scans as rows of the job's arrays."""

    table: pd.DataFrame
    labels: torch.Tensor   # (B,)
    index: torch.Tensor    # (B, K) rows of the job's arrays, -1 = padding
    months: torch.Tensor   # (B, K)
    valid: torch.Tensor    # (B, K)

    def to(self, device: torch.device) -> "Samples":
        return Samples(self.table, *(t.to(device) for t in (self.labels, self.index, self.months, self.valid)))


class NotEvaluable(ValueError):
    """A split of the task lacks a class: the cell is reported as skipped, not failed."""


def select_samples(task: pd.DataFrame, task_tsv: str, fraction_tsv: str) -> dict[str, pd.DataFrame]:
    """Training and validation rows = the label-fraction subset (validation subsampled with it or
    whole, as the label_fraction job wrote it); test = the task's whole test split."""
    frac = read_tsv(fraction_tsv)
    parts = {}
    for split in ("train", "val"):
        keys = set(zip(*(frac.loc[frac["split"] == split, c] for c in ("participant_id", "index_session"))))
        rows = task[np.array([k in keys for k in zip(task["participant_id"], task["index_session"])], dtype=bool)]
        if len(rows) != len(keys) or set(rows["split"]) - {split}:
            raise ValueError(f"{fraction_tsv}: rows that are not {split} samples of {task_tsv}")
        parts[split] = rows
    parts["test"] = task[task["split"] == "test"]
    for name, part in parts.items():
        counts = part["label"].value_counts()
        if counts.get(0, 0) == 0 or counts.get(1, 0) == 0:
            where = "of the task table" if name == "test" else "of the label-fraction subset"
            raise NotEvaluable(f"the {name} samples {where} need both classes, got {counts.get(1, 0)} positive and "
                               f"{counts.get(0, 0)} negative")
    return {k: v.reset_index(drop=True) for k, v in parts.items()}


def scan_keys(table: pd.DataFrame, inputs: str) -> list[tuple[str, str]]:
    """(participant, session) of every scan the table's samples use, in order of first use: the rows
    of the volume tensor that a job loads once for all its cells."""
    keys: dict[tuple[str, str], None] = {}
    for pid, sessions in zip(table["participant_id"], table["input_sessions"]):
        for s in _sequence(str(sessions).split(";"), inputs):
            keys.setdefault((pid, s), None)
    return list(keys)


INPUTS = ("history", "index", "time_shuffled")


def _sequence(items: list, inputs: str) -> list:
    if inputs not in INPUTS:
        raise ValueError(f"finetune inputs must be one of {INPUTS}, got {inputs!r}")
    return items[-1:] if inputs == "index" else items


def build_samples(parts: dict[str, pd.DataFrame], inputs: str, row_of: dict[tuple[str, str], int],
                  seed: int = 0) -> dict[str, Samples]:
    """Input sequences of every split (whole history, the index scan alone, or the history with its
    times shuffled by ``seed``) as rows of the loaded volumes (``row_of``: the position of each scan
    in ``scan_keys`` of the task table). Splits are disjoint in subjects and keep the table's order,
    so a batch meets its scans in the same order whatever else the job loaded."""
    out = {}
    for name, part in parts.items():
        seqs = [(_sequence(str(r.input_sessions).split(";"), inputs),
                 _sequence([float(d) for d in str(r.input_days).split(";")], inputs)) for r in part.itertuples()]
        k = max(len(s) for s, _ in seqs)
        index = torch.full((len(seqs), k), -1, dtype=torch.long)
        months = torch.zeros((len(seqs), k))
        for i, ((sessions, days), pid) in enumerate(zip(seqs, part["participant_id"])):
            index[i, :len(sessions)] = torch.tensor([row_of[(pid, s)] for s in sessions])
            months[i, :len(days)] = torch.from_numpy(acquisition_months(days)).float()
        if inputs == "time_shuffled":
            months = shuffle_times(part, months, index >= 0, seed)
        out[name] = Samples(part, torch.tensor(part["label"].to_numpy(), dtype=torch.float32), index, months,
                            index >= 0)
    return out


def shuffle_times(table: pd.DataFrame, months: torch.Tensor, valid: torch.Tensor, seed: int) -> torch.Tensor:
    """The time-shuffled control: each sample's times permuted among its real scans (the scans keep
    their place, each gets another scan's time), so that a model trained and tested on them cannot
    draw on when each scan was taken. The permutation is drawn from the job's seed and the sample's
    key (participant, index session): every init sees the same shuffled inputs at a seed (their
    comparison stays paired), and the seeds, over which the study averages, shuffle anew."""
    out = months.clone()
    for i, (pid, session) in enumerate(zip(table["participant_id"], table["index_session"])):
        n = int(valid[i].sum())
        gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{pid}/{session}".encode()))
        out[i, :n] = months[i, :n][torch.randperm(n, generator=gen)]
    return out


@dataclass(frozen=True)
class Scans:
    """Where a job's scans come from: its arrays, the device, the loader's workers and the axis
    order the encoder was trained on (``zyx``: 3D-Neuro-SimCLR's (Z, Y, X))."""

    volumes: Volumes
    device: torch.device
    workers: int = 0
    zyx: bool = False

    def stream(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The volumes of each list of rows, on the device, in the encoder's axis order."""
        for x in Stream(self.volumes, batches, self.device, self.workers):
            yield x.permute(0, 1, 4, 3, 2).contiguous() if self.zyx else x


class Classifier(nn.Module):
    """Encoder per scan -> aggregator over the sequence -> one logit."""

    def __init__(self, encoder: nn.Module, aggregator: nn.Module, dim: int) -> None:
        super().__init__()
        self.encoder, self.aggregator, self.head = encoder, aggregator, nn.Linear(dim, 1)

    def forward(self, volumes: torch.Tensor, index: torch.Tensor, months: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        # samples of one subject share scans (overlapping histories): encode each scan once
        rows, inverse = torch.unique(index[valid], return_inverse=True)
        h = self.encoder(volumes[rows].float())
        seq = torch.zeros(*index.shape, h.shape[-1], dtype=h.dtype, device=h.device)
        seq[valid] = h[inverse]
        return self.sequence_logits(seq, months, valid)

    def sequence_logits(self, seq: torch.Tensor, months: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.head(self.aggregator(seq, months, valid)).squeeze(-1)


def _weighted_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Positives weighted by negatives/positives, so both classes weigh the same."""
    pos = labels.sum().clamp_min(1)
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=(len(labels) - pos) / pos)


def _val_auc(labels: torch.Tensor, scores: np.ndarray, where: str) -> float:
    """The validation AUC; :class:`Diverged` when a score is not finite (the epoch's last update broke
    the weights, and no loss will show it before the AUC would fail on NaN)."""
    if not np.isfinite(scores).all():
        raise Diverged(f"{where}: validation scores are not finite ({scores[~np.isfinite(scores)][0]})")
    return auc(labels.cpu().numpy(), scores)


def train_full(model: Classifier, scans: Scans, data: dict[str, Samples], cfg: dict[str, Any],
               seed: int) -> tuple[Classifier, dict[str, Any]]:
    """End-to-end fine-tuning; returns the model of the best validation epoch and the curves. Each
    batch reads only the scans its samples use. :class:`Diverged` at the first non-finite loss.
    With ``cfg["patience"]`` > 0 it stops once that many epochs passed without a better validation
    AUC (the curves then end there: :mod:`sslad.convergence` reads a shorter run as one that stopped)."""
    opt = Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    tr = data["train"]
    pos = tr.labels.sum().clamp_min(1)
    weights = (len(tr.labels) - pos) / pos
    best, best_state, curves = -np.inf, None, {"train_loss": [], "val_auc": []}
    for epoch in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(len(tr.labels), generator=gen)
        losses = []
        batches = [perm[start:start + cfg["batch_size"]] for start in range(0, len(perm), cfg["batch_size"])]
        batches = [b for b in batches if len(b) >= 2 or len(perm) == 1]  # batch norm needs two samples
        local = [local_rows(tr.index[b], tr.valid[b]) for b in batches]
        for step, (volumes, b, (_, index)) in enumerate(zip(scans.stream([rows for rows, _ in local]), batches, local)):
            logits = model(volumes, index, tr.months[b], tr.valid[b])
            loss = F.binary_cross_entropy_with_logits(logits, tr.labels[b], pos_weight=weights)  # train-set ratio
            losses.append(check_loss(float(loss.detach()), f"full fine-tuning diverged at epoch {epoch + 1}, step "
                                     f"{step + 1} of {len(batches)} (lr {cfg['lr']:g})"))
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = _val_auc(data["val"].labels, predict(model, scans, data["val"]),
                       f"full fine-tuning diverged at epoch {epoch + 1} (lr {cfg['lr']:g})")
        curves["train_loss"].append(float(np.mean(losses)))
        curves["val_auc"].append(val)
        if val > best:
            best, best_state, curves["best_epoch"] = val, copy.deepcopy(model.state_dict()), epoch + 1
        elif cfg["patience"] and epoch + 1 - curves["best_epoch"] >= cfg["patience"]:
            break  # early stopping: validation has not improved for `patience` epochs
    model.load_state_dict(best_state)
    return model, curves


@torch.no_grad()
def encode_scans(encoder: nn.Module, scans: Scans, s: Samples, chunk: int = 32) -> torch.Tensor:
    """Eval-mode features of every scan the samples use, each encoded once, ``chunk`` scans read at a
    time: (B, K, D), 0 at padding."""
    encoder.eval()
    rows, inverse = torch.unique(s.index[s.valid], return_inverse=True)
    feats = torch.cat([encoder(x.float()) for x in scans.stream(list(rows.split(chunk)))])
    seq = torch.zeros(*s.index.shape, feats.shape[-1], dtype=feats.dtype, device=feats.device)
    seq[s.valid] = feats[inverse]
    return seq


@torch.no_grad()
def predict(model: Classifier, scans: Scans, s: Samples) -> np.ndarray:
    """Logits of every sample, as float64."""
    model.eval()
    logits = model.sequence_logits(encode_scans(model.encoder, scans, s), s.months, s.valid)
    return logits.double().cpu().numpy()


@torch.no_grad()
def frozen_features(s: Samples, seq: torch.Tensor) -> torch.Tensor:
    """The probe's readout, the same for every init: the mean of the frozen scan features
    (``encode_scans``) over the sample's real inputs. Parameter-free, so a probe row measures the
    encoder alone: scratch, simclr, dino2d and external have no pretrained aggregator, and a random one
    would be a random projection; the aggregator's worth shows in full fine-tuning instead, where
    every init trains the same aggregator architecture."""
    return seq.sum(1) / s.valid.sum(1, keepdim=True)


def train_probe(reps: dict[str, torch.Tensor], data: dict[str, Samples], cfg: dict[str, Any],
                seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Logistic regression (Adam, full batch) on standardised frozen representations.
    :class:`Diverged` at the first non-finite loss."""
    torch.manual_seed(seed)
    mu, sd = reps["train"].mean(0), reps["train"].std(0).clamp_min(1e-6)
    x = {k: (v - mu) / sd for k, v in reps.items()}
    head = nn.Linear(x["train"].shape[1], 1).to(x["train"].device)
    opt = Adam(head.parameters(), lr=cfg["probe_lr"], weight_decay=cfg["weight_decay"])
    y = data["train"].labels
    best, best_state, curves = -np.inf, None, {"train_loss": [], "val_auc": []}
    for epoch in range(cfg["probe_epochs"]):
        where = f"linear probe diverged at epoch {epoch + 1}, step 1 of 1 (lr {cfg['probe_lr']:g})"
        loss = _weighted_bce(head(x["train"]).squeeze(-1), y)
        curves["train_loss"].append(check_loss(loss.item(), where))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = _val_auc(data["val"].labels, head(x["val"]).squeeze(-1).double().cpu().numpy(), where)
        curves["val_auc"].append(val)
        if val > best:
            best, best_state, curves["best_epoch"] = val, copy.deepcopy(head.state_dict()), epoch + 1
    head.load_state_dict(best_state)
    with torch.no_grad():
        return {k: head(v).squeeze(-1).double().cpu().numpy() for k, v in x.items()}, curves


def fit_probe(encoder: nn.Module, scans: Scans, data: dict[str, Samples], cfg: dict[str, Any],
              seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The probe mode: the frozen encoder's readout (:func:`frozen_features`) of every split, and a
    linear head trained on it (:func:`train_probe`); the encoder's weights and statistics stay as
    they were."""
    reps = {k: frozen_features(s, encode_scans(encoder, scans, s)) for k, s in data.items()}
    return train_probe(reps, data, cfg, seed)


def evaluate(scores: dict[str, np.ndarray], data: dict[str, Samples]) -> dict[str, Any]:
    """Threshold from validation, test metrics at it, and the sizes of the splits. The intervals
    come later, from the predictions (sslad.aggregate), so that their resampling retrains nothing."""
    yv, yt = data["val"].labels.cpu().numpy(), data["test"].labels.cpu().numpy()
    test = data["test"].table
    threshold = youden_threshold(yv, scores["val"])
    row: dict[str, Any] = dict(binary_metrics(yt, scores["test"], threshold))
    row.update(val_auc=auc(yv, scores["val"]), threshold=float(threshold), n_train=len(data["train"].labels),
               n_val=len(yv), n_test=len(yt), n_test_pos=int(yt.sum()))
    for name in ("train", "val", "test"):
        row[f"n_{name}_subjects"] = int(data[name].table["participant_id"].nunique())
    row["n_test_pos_subjects"] = int(test.loc[test["label"] == 1, "participant_id"].nunique())
    row["n_test_neg_subjects"] = int(test.loc[test["label"] == 0, "participant_id"].nunique())
    return row


@dataclass(frozen=True)
class Cell:
    """One label fraction of the job's seed: its subset table and the two files it writes."""

    fraction: float
    fraction_tsv: str
    metrics: str
    predictions: str


def write_outputs(metrics: dict[str, Any], predictions: pd.DataFrame, metrics_path: str, predictions_path: str,
                  device: str | None = None) -> dict[str, Any]:
    """metrics.json and predictions.tsv (logits at full precision: %.17g round-trips a float64); the
    metrics get the job's provenance on ``device``, taken now, and are returned so."""
    metrics = {**metrics, "provenance": job_provenance(device=device, threads=torch.get_num_threads())}
    write_tsv(predictions, predictions_path, float_format="%.17g")
    write_json(metrics, metrics_path)
    return metrics


def job_device(settings: dict[str, Any], threads: int) -> torch.device:
    """The job's device and CPU threads, deterministic kernels on a GPU: what every fine-tuning of a
    cell runs under, so that a rerun of the cell (sslad.export) gives the job's model."""
    torch.set_num_threads(max(1, threads))
    device = pick_device(settings["device"], "finetune.device")
    if device.type == "cuda":  # CPU kernels here are deterministic already; asking imports TorchInductor (~1.4 s)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def initial_networks(settings: dict[str, Any], encoder_pt: str | None) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Encoder, aggregator and architecture a mode starts from: the pretrained ones of ``encoder_pt``,
    else new ones of ``settings["model"]`` (scratch), drawn from the global seed set just before."""
    if encoder_pt:
        encoder, aggregator, arch, _ = load_encoder(encoder_pt)
    else:
        arch = settings["model"]
        encoder, aggregator = build_encoder(arch), build_aggregator(arch)
    return encoder, aggregator, arch


def run(settings: dict[str, Any], task: str, init: str, seed: int, cells: list[Cell], task_tsv: str,
        visits_tsv: str, encoder_pt: str | None, threads: int, workers: int = 0,
        pretrain_seed: int | None = None) -> list[dict[str, Any]]:
    """The ``sslad finetune`` job: every label fraction (``cells``) and mode of one task x init x seed,
    its scans read from disk per batch by ``workers`` loader processes. ``pretrain_seed``: the
    pretraining run the encoder comes from, recorded in each metrics.json (aggregation crosses runs
    with seeds)."""
    if pretrain_seed is not None and not encoder_pt:
        raise ValueError(f"{task} {init}: a pretraining seed ({pretrain_seed}) without an encoder")
    if init == SCHEDULE:  # no image: neither device nor arrays
        table = read_tsv(task_tsv)
        return [run_schedule_cell(settings, task, seed, cell, table, task_tsv) for cell in cells]
    device = job_device(settings, threads)
    table = read_tsv(task_tsv)
    keys = scan_keys(table, settings["inputs"])
    row_of = {key: i for i, key in enumerate(keys)}

    @functools.cache
    def arrays() -> Volumes:  # checked once, and only if a cell can be evaluated
        return open_arrays(read_visits(visits_tsv), keys, task_tsv)

    return [run_cell(settings, task, init, seed, cell, table, task_tsv, arrays, row_of, encoder_pt, device, workers,
                     pretrain_seed) for cell in cells]


def _skip(job: dict[str, Any], cell: Cell, reason: str, device: str) -> dict[str, Any]:
    """The metrics of a cell that could not be evaluated, written with empty predictions."""
    print(f"{job['task']} {job['init']} frac {cell.fraction:g} seed {job['seed']}: not evaluated: {reason}",
          file=sys.stderr)
    metrics = {**job, "rows": [], "curves": {}, "skipped": reason}
    return write_outputs(metrics, pd.DataFrame(columns=list(PREDICTION_COLUMNS)), cell.metrics, cell.predictions,
                         device)


def _parts_or_skip(job: dict[str, Any], table: pd.DataFrame, task_tsv: str, cell: Cell,
                   device: str) -> tuple[dict[str, pd.DataFrame] | None, dict[str, Any]]:
    """The cell's samples by split; or None and the metrics written to say why it cannot be evaluated."""
    try:
        return select_samples(table, task_tsv, cell.fraction_tsv), {}
    except NotEvaluable as exc:
        return None, _skip(job, cell, str(exc), device)


def _finish_cell(job: dict[str, Any], cell: Cell, mode: str, scores: dict[str, np.ndarray], data: dict[str, Samples],
                 best_epoch: int, rows: list[dict[str, Any]], predictions: list[pd.DataFrame]) -> None:
    """One mode's metrics row and test predictions, added to ``rows`` and ``predictions``."""
    row = evaluate(scores, data)
    row.update(mode=mode, best_epoch=best_epoch)
    rows.append(row)
    test = data["test"].table
    predictions.append(pd.DataFrame({"participant_id": test["participant_id"], "index_session": test["index_session"],
                                     "mode": mode, "label": test["label"], "logit": scores["test"]}))
    print(f"{job['task']} {job['init']} frac {cell.fraction:g} seed {job['seed']} {mode}: test AUC {row['auc']:.3f}, "
          f"balanced accuracy {row['balanced_accuracy']:.3f}, "
          f"val AUC {row['val_auc']:.3f} at epoch {row['best_epoch']}", file=sys.stderr)


def run_schedule_cell(settings: dict[str, Any], task: str, seed: int, cell: Cell, table: pd.DataFrame,
                      task_tsv: str) -> dict[str, Any]:
    """The ``schedule`` init's cell: the schedule-only baseline (:func:`sslad.schedule.fit_baseline`) on
    the cell's samples, thresholded on validation and scored on test as an image model is. It has no
    mode of its own: its one fit is the row of every configured mode, so each image model's row has
    its schedule reference at the same task, fraction, seed and mode."""
    job = {"task": task, "init": SCHEDULE, "fraction": cell.fraction, "seed": seed, "inputs": settings["inputs"],
           "heldout": settings["heldout"], "encoder": "", "settings": settings}
    parts, skipped = _parts_or_skip(job, table, task_tsv, cell, "cpu")
    if parts is None:
        return skipped
    scores = fit_baseline(parts, seed)
    data = {k: Samples(v, torch.tensor(v["label"].to_numpy(), dtype=torch.float32), *(torch.empty(0),) * 3)
            for k, v in parts.items()}
    rows: list[dict[str, Any]] = []
    predictions: list[pd.DataFrame] = []
    for mode in settings["modes"]:
        _finish_cell(job, cell, mode, scores, data, 0, rows, predictions)
    metrics = {**job, "rows": rows, "curves": {mode: {"train_loss": [], "val_auc": []} for mode in settings["modes"]}}
    return write_outputs(metrics, pd.concat(predictions)[list(PREDICTION_COLUMNS)], cell.metrics, cell.predictions,
                         "cpu")


def run_cell(settings: dict[str, Any], task: str, init: str, seed: int, cell: Cell, table: pd.DataFrame,
             task_tsv: str, arrays: Callable[[], Volumes], row_of: dict[tuple[str, str], int],
             encoder_pt: str | None, device: torch.device, workers: int = 0,
             pretrain_seed: int | None = None) -> dict[str, Any]:
    """Every mode of one grid cell; writes its metrics.json and predictions.tsv. A mode that diverges,
    or an encoder.pt with non-finite weights, skips the whole cell (a skipped cell has no rows)."""
    fraction = cell.fraction
    job = {"task": task, "init": init, "fraction": fraction, "seed": seed, "pretrain_seed": pretrain_seed,
           "inputs": settings["inputs"], "heldout": settings["heldout"], "encoder": encoder_pt or "",
           "settings": settings}
    parts, skipped = _parts_or_skip(job, table, task_tsv, cell, device.type)
    if parts is None:
        return skipped
    data = {k: s.to(device) for k, s in build_samples(parts, settings["inputs"], row_of, seed).items()}
    rows, curves, predictions = [], {}, []
    for mode in settings["modes"]:
        torch.manual_seed(seed)
        try:
            encoder, aggregator, arch = initial_networks(settings, encoder_pt)
            scans = Scans(arrays(), device, workers, arch.get("axes") == "zyx")
            if mode == "full":
                model = Classifier(encoder, aggregator, feature_dim(arch)).to(device)
                model, curve = train_full(model, scans, data, settings, seed)
                scores = {k: predict(model, scans, s) for k, s in data.items()}
            else:
                scores, curve = fit_probe(encoder.to(device), scans, data, settings, seed)
        except Diverged as exc:
            return _skip(job, cell, str(exc), device.type)
        _finish_cell(job, cell, mode, scores, data, curve.pop("best_epoch"), rows, predictions)
        curves[mode] = curve
    metrics = {**job, "rows": rows, "curves": curves}
    return write_outputs(metrics, pd.concat(predictions)[list(PREDICTION_COLUMNS)], cell.metrics, cell.predictions,
                         device.type)
