"""Model-ready arrays: the float16 .npy files that preprocessing wrote, read from disk per batch.

Loading goes through ``visits.tsv`` (QC-passed scans and their array paths), so training code can
only ever see what a manifest lists, and every problem names the file it comes from. Nothing here
holds a dataset in memory: :class:`ArrayFiles` checks each file's header once and then reads just
the rows a batch asks for (a whole-brain 1-mm array is 8.9 MB; a paper-scale cohort ~90 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from sslad.io import read_tsv


def read_visits(visits_tsv: str | Path) -> pd.DataFrame:
    visits = read_tsv(visits_tsv)
    if "array" not in visits:
        raise ValueError(f"{visits_tsv}: no 'array' column (model-ready arrays); rerun preprocessing and manifest")
    return visits.set_index(["participant_id", "session_id"], drop=False)


@dataclass(frozen=True)
class ArrayFiles:
    """Rows of float16 (1, X, Y, Z) volumes backed by .npy files, indexed like an (N, 1, X, Y, Z)
    tensor: ``files[rows]`` reads those rows (in that order, repeats allowed) into a new tensor.
    Reads go straight from the file into the tensor (no memory map stays open: mapped pages would
    count towards the process's memory for as long as the map lives); a Fortran-order file (as
    preprocessing writes them: nibabel's arrays are) is read as its (Z, Y, X) transpose and turned
    back."""

    paths: tuple[str, ...]
    offsets: tuple[int, ...]   # where each file's data start (after the .npy header)
    fortran: tuple[bool, ...]  # each file's memory order
    grid: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), 1, *self.grid)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = torch.empty((len(rows), 1, *self.grid), dtype=torch.float16)
        transposed = torch.empty(self.grid[::-1], dtype=torch.float16) if any(self.fortran[r] for r in rows) else None
        for i, row in enumerate(rows):
            path = self.paths[row]
            buffer = transposed if self.fortran[row] else out[i, 0]
            target = memoryview(buffer.numpy()).cast("B")
            try:
                with open(path, "rb", buffering=0) as f:
                    f.seek(self.offsets[row])
                    got = f.readinto(target)
            except OSError as exc:
                raise ValueError(f"{path}: cannot read the model-ready array ({exc})") from exc
            if got != target.nbytes:
                raise ValueError(f"{path}: {got} of {target.nbytes} bytes of data; the file changed or is truncated")
            if self.fortran[row]:
                out[i, 0] = transposed.permute(2, 1, 0)
        return out


def open_arrays(visits: pd.DataFrame, keys: list[tuple[str, str]], source: str) -> ArrayFiles:
    """The arrays of ``keys`` (participant, session), in that order, checked but not read: every file
    must be a 3-d float16 .npy of one common shape. ``source`` names the table that asked for
    them, for error messages."""
    missing = [k for k in keys if k not in visits.index]
    if missing:
        raise ValueError(f"{source}: {len(missing)} visits are not in visits.tsv (QC-passed scans), "
                         f"e.g. {missing[0][0]} {missing[0][1]}")
    if not keys:
        raise ValueError(f"{source}: no visits to load")
    paths, offsets, fortran, grid = [], [], [], None
    for key in keys:
        path = str(visits.at[key, "array"])
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only: no data are read
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read the model-ready array of {key[0]} {key[1]} ({exc})") from exc
        if arr.dtype != np.dtype("<f2") or arr.ndim != 3:
            raise ValueError(f"{path}: a {arr.ndim}-d {arr.dtype} array; model-ready arrays are 3-d float16 "
                             "(rerun preprocessing)")
        grid = grid or arr.shape
        if arr.shape != grid:
            raise ValueError(f"{path}: shape {arr.shape}, other arrays are {grid}")
        paths.append(path)
        offsets.append(int(arr.offset))
        fortran.append(not arr.flags.c_contiguous)
        del arr
    return ArrayFiles(tuple(paths), tuple(offsets), tuple(fortran), grid)
