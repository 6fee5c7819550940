"""Pretraining data: the scans of ``pretrain.tsv`` (never a test subject) and seeded batch sampling.

The scans' arrays stay on disk (:class:`sslad.volumes.ArrayFiles`); a training loop streams the rows
of each batch (:mod:`sslad.loader`).

Batches are a pure function of (seed, epoch, step), not of a running generator, so a resumed job
draws exactly what an uninterrupted one would, and every data-parallel rank can build the same
global batch and take its slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sslad.io import read_tsv
from sslad.loader import Volumes
from sslad.methods import Sampling
from sslad.volumes import open_arrays, read_visits


@dataclass
class ScanSet:
    volumes: Volumes                # (N, 1, X, Y, Z) float16: the files, or a tensor
    months: np.ndarray              # (N,) acquisition time
    subjects: list[np.ndarray]      # per subject, its rows sorted by time
    keys: list[tuple[str, str]]     # (participant, session) per row


def load_pretrain_scans(pretrain_tsv: str, visits_tsv: str, splits_tsv: str) -> ScanSet:
    """The pretraining scans and their arrays (checked, not read); refuse a pretraining table that
    names a test subject."""
    pretrain = read_tsv(pretrain_tsv)
    splits = read_tsv(splits_tsv).set_index("participant_id")["split"]
    leaked = sorted(set(pretrain["participant_id"]) & set(splits.index[splits == "test"]))
    if leaked:
        raise ValueError(f"{pretrain_tsv}: test participants must never be pretrained on: {', '.join(leaked[:5])}")
    visits = read_visits(visits_tsv)
    keys = list(zip(pretrain["participant_id"], pretrain["session_id"]))
    months = visits.loc[keys, "months"].to_numpy(dtype=float) if keys else np.zeros(0)
    order = sorted(range(len(keys)), key=lambda i: (keys[i][0], months[i]))
    keys = [keys[i] for i in order]
    months = months[order]
    volumes = open_arrays(visits, keys, pretrain_tsv)
    groups = pd.Series(range(len(keys))).groupby([k[0] for k in keys], sort=True)
    subjects = [g.to_numpy() for _, g in groups]
    return ScanSet(volumes, months, subjects, keys)


def units(scans: ScanSet, sampling: Sampling) -> list[np.ndarray]:
    """What one batch element is drawn from: a single scan, or a subject with enough scans."""
    if sampling.seq_len == 1:
        return [np.array([i]) for i in range(len(scans.keys))]
    return [rows for rows in scans.subjects if len(rows) >= sampling.min_scans]


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, step])


def epoch_batches(n_units: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A seeded permutation of the units cut into full batches (at least one batch)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_units)
    n_steps = max(1, n_units // batch_size)
    return [perm[s * batch_size:(s + 1) * batch_size] for s in range(n_steps)]


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
