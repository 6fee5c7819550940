"""Pretraining data: the scans of ``pretrain.tsv`` (never a test subject) and seeded batch sampling.

The scans' arrays stay on disk (:class:`sslad.volumes.ArrayFiles`); a training loop streams the rows
of each batch (:mod:`sslad.loader`).

Batches are a pure function of (seed, epoch, step), not of a running generator, so a resumed job
draws exactly what an uninterrupted one would, and every data-parallel rank can build the same
global batch and take its slice. Times are fractional months from the acquisition days
(:func:`sslad.visit_time.acquisition_months`), the unit fine-tuning gives the models too.

A seeded share of the subjects with two or more visits is held out of the SSL loss
(``pretrain.train.holdout_subjects``): the diagnostics (sslad.diagnostics) measure on them what
the encoder learned about time, on brains it never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from sslad.io import read_tsv
from sslad.loader import Volumes
from sslad.methods import Batch, Sampling, draw_views
from sslad.visit_time import acquisition_months
from sslad.volumes import open_arrays, read_visits


@dataclass
class ScanSet:
    volumes: Volumes                # (N, 1, X, Y, Z) float16: the files, or a tensor
    months: np.ndarray              # (N,) acquisition time
    subjects: list[np.ndarray]      # per subject, its rows sorted by time
    keys: list[tuple[str, str]]     # (participant, session) per row
    diagnoses: np.ndarray | None = None  # (N,) diagnosis at each visit (CN, MCI, AD): the diagnostics' strata

    def subject_of(self) -> np.ndarray:
        """(N,) the subject number (position in ``subjects``) of every row."""
        out = np.zeros(len(self.keys), dtype=np.int64)
        for s, rows in enumerate(self.subjects):
            out[rows] = s
        return out


def load_pretrain_scans(pretrain_tsv: str, visits_tsv: str, splits_tsv: str) -> ScanSet:
    """The pretraining scans and their arrays (checked, not read); refuse a pretraining table that
    names a test subject."""
    pretrain = read_tsv(pretrain_tsv)
    splits = read_tsv(splits_tsv).set_index("participant_id")["split"]
    leaked = sorted(set(pretrain["participant_id"]) & set(splits.index[splits == "test"]))
    if leaked:
        raise ValueError(f"{pretrain_tsv}: test participants must never be pretrained on: {', '.join(leaked[:5])}")
    return load_scans(list(zip(pretrain["participant_id"], pretrain["session_id"])), read_visits(visits_tsv),
                      pretrain_tsv)


def load_scans(keys: list[tuple[str, str]], visits: pd.DataFrame, source: str) -> ScanSet:
    """The scans ``keys`` (participant, session) of ``visits`` (:func:`sslad.volumes.read_visits`), by
    subject and time, their arrays checked, not read; ``source`` names the table in errors."""
    days = visits.loc[keys, "days_from_baseline"].to_numpy(dtype=float) if keys else np.zeros(0)
    months = acquisition_months(days)
    order = sorted(range(len(keys)), key=lambda i: (keys[i][0], months[i]))
    keys = [keys[i] for i in order]
    months = months[order]
    volumes = open_arrays(visits, keys, source)
    diagnoses = visits.loc[keys, "diagnosis"].astype(str).to_numpy() if "diagnosis" in visits else None
    groups = pd.Series(range(len(keys))).groupby([k[0] for k in keys], sort=True)
    subjects = [g.to_numpy() for _, g in groups]
    return ScanSet(volumes, months, subjects, keys, diagnoses)


def timed_subjects(scans: ScanSet) -> list[int]:
    """Subjects (positions in ``scans.subjects``) with visits at two or more times: an order to learn or measure."""
    return [s for s, rows in enumerate(scans.subjects) if len(np.unique(scans.months[rows])) >= 2]


def holdout(scans: ScanSet, fraction: float, seed: int) -> list[int]:
    """Subjects (positions in ``scans.subjects``) kept out of the SSL loss for the diagnostics: a
    seeded ``fraction`` (rounded, at least 2 when fraction > 0) of the subjects with two or more
    visits at different times, the ones that have an order to measure."""
    timed = timed_subjects(scans)
    n = min(len(timed), max(2, round(fraction * len(timed)))) if fraction > 0 else 0
    chosen = np.random.default_rng([seed, 15]).choice(len(timed), size=n, replace=False)  # a stream of its own
    return sorted(timed[i] for i in chosen)


def units(scans: ScanSet, sampling: Sampling, skip: list[int] | tuple[int, ...] = ()) -> list[np.ndarray]:
    """What one batch element is drawn from: a single scan, or a subject with enough scans; the
    subjects ``skip`` (held out) contribute nothing."""
    kept = [rows for s, rows in enumerate(scans.subjects) if s not in set(skip)]
    if sampling.seq_len == 1:
        return [np.array([i]) for i in sorted(int(r) for rows in kept for r in rows)]
    return [rows for rows in kept if len(rows) >= sampling.min_scans]


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, step])


def epoch_batches(n_units: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A seeded permutation of the units cut into full batches (at least one batch)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_units)
    n_steps = max(1, n_units // batch_size)
    return [perm[s * batch_size:(s + 1) * batch_size] for s in range(n_steps)]


def scan_batch(pool: np.ndarray, size: int, seed: int, epoch: int, step: int) -> np.ndarray:
    """Rows for a term over single scans beside the sequences (topc's spatial term): step ``step``'s
    ``size`` rows of a seeded per-epoch permutation of ``pool`` (every scan not held out), taken
    cyclically, so that an epoch's steps go through the scans as simclr's do."""
    perm = np.random.default_rng([seed, epoch, 1]).permutation(pool)
    return perm[(step * size + np.arange(size)) % len(pool)]


def make_batch(scans: ScanSet, chosen: list[np.ndarray], seq_len: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``scans`` to load, and the (B, K) sequence index (-1 = padding), months, valid mask.

    A subject contributes min(K, its scans) scans drawn at random, in shuffled positions, so that the
    position of a scan says nothing about its time."""
    b = len(chosen)
    index = np.full((b, seq_len), -1, dtype=np.int64)
    months = np.zeros((b, seq_len), dtype=np.float32)
    rows: list[int] = []
    for i, subject_rows in enumerate(chosen):
        k = min(seq_len, len(subject_rows))
        picked = rng.choice(subject_rows, size=k, replace=False) if k < len(subject_rows) else subject_rows
        picked = rng.permutation(picked)
        index[i, :k] = np.arange(len(rows), len(rows) + k)
        months[i, :k] = scans.months[picked]
        rows.extend(int(r) for r in picked)
    return np.array(rows, dtype=np.int64), index, months, index >= 0


@dataclass
class StepPlan:
    """Everything of one process's step but the volumes: which rows of the scans it reads (its
    sequences' scans, then the single scans of a spatial term) and how they form its batch."""

    rows: np.ndarray                # rows of the ScanSet to read, in this order
    n_seq: int                      # the first n_seq rows are the sequences' scans
    index: np.ndarray               # (B, K) into the sequence rows, -1 = padding
    months: np.ndarray
    valid: np.ndarray
    views: list                     # augmentation draws of the sequence rows
    spatial_views: list | None      # draws of the spatial rows (None: no spatial term)
    subjects: np.ndarray            # subject number of every row
    generator: torch.Generator


def plan_step(scans: ScanSet, chosen: list[np.ndarray], scan_pool: np.ndarray, sampling: Sampling,
              settings: dict[str, Any], epoch: int, step: int, rank: int = 0, world: int = 1) -> StepPlan:
    """This process's slice of step ``step``'s global batch: whole sequences of the units ``chosen``
    and their augmentation draws, and for methods with ``spatial_views`` (topc) a further batch of
    single scans, as many as the sequences' K slots, from ``scan_pool``. Every rank draws the whole
    global batch from the step's seeds and takes its part, so a data-parallel run matches a single
    process; the volumes are read afterwards (streamed, sslad.loader) for exactly ``rows``."""
    seed, hp, recipes = settings["train"]["seed"], settings["hp"], settings["augment"]
    subject_of = scans.subject_of()
    rows, index, months, valid = make_batch(scans, chosen, sampling.seq_len, step_rng(seed, epoch, step))
    gen = torch.Generator().manual_seed(int(step_rng(seed, epoch, step).integers(2**62)))
    views = draw_views(sampling, len(rows), hp, recipes, gen)
    extra, spatial_views = np.zeros(0, dtype=np.int64), None
    if sampling.spatial_views:
        size = len(chosen) * sampling.seq_len
        drawn = scan_batch(scan_pool, size, seed, epoch, step)
        draws = draw_views(Sampling(1, 1, sampling.spatial_views), size, hp, recipes, gen)
        mine = slice(rank * (size // world), (rank + 1) * (size // world))
        extra, spatial_views = drawn[mine], [v[mine] for v in draws]
    per = len(chosen) // world
    seq = slice(rank * per, (rank + 1) * per)
    used = index[seq][index[seq] >= 0]
    lo, hi = (int(used.min()), int(used.max()) + 1) if used.size else (0, 0)
    read = np.concatenate([rows[lo:hi], extra]).astype(np.int64)
    return StepPlan(read, hi - lo, np.where(index[seq] >= 0, index[seq] - lo, -1), months[seq], valid[seq],
                    [v[lo:hi] for v in views], spatial_views, subject_of[read], gen)


def assemble(plan: StepPlan, volumes: torch.Tensor, progress: float = 0.0) -> Batch:
    """The method's :class:`Batch` from a plan and the volumes of its ``rows`` (on the training device);
    ``progress``: the share of the run done (``Batch.progress``)."""
    device = volumes.device
    spatial = None
    subjects = torch.from_numpy(plan.subjects).to(device)
    if plan.spatial_views is not None:
        n = len(plan.rows) - plan.n_seq  # one-scan sequences
        spatial = Batch(volumes[plan.n_seq:], torch.arange(n, device=device).unsqueeze(1),
                        torch.zeros((n, 1), device=device), torch.ones((n, 1), dtype=torch.bool, device=device),
                        plan.spatial_views, plan.generator, subjects[plan.n_seq:])
    index, months, valid = (torch.from_numpy(a).to(device) for a in (plan.index, plan.months, plan.valid))
    return Batch(volumes[:plan.n_seq], index, months, valid, plan.views, plan.generator, subjects[:plan.n_seq], spatial,
                 progress)


def step_batch(scans: ScanSet, volumes: Volumes, chosen: list[np.ndarray], scan_pool: np.ndarray,
               sampling: Sampling, settings: dict[str, Any], epoch: int, step: int, rank: int = 0,
               world: int = 1) -> Batch:
    """:func:`plan_step` and :func:`assemble` in one, reading the rows from ``volumes`` (a tensor
    on the training device, or the array files): for tests and diagnostics; training streams."""
    plan = plan_step(scans, chosen, scan_pool, sampling, settings, epoch, step, rank, world)
    device = volumes.device if isinstance(volumes, torch.Tensor) else torch.device("cpu")
    return assemble(plan, volumes[torch.from_numpy(plan.rows).to(device)].to(device))
