"""Model-ready arrays: read the float16 .npy files that preprocessing wrote, for chosen visits only.

Loading goes through ``visits.tsv`` (QC-passed scans and their array paths), so training code can
only ever see what a manifest lists, and every problem names the file it comes from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sslad.io import read_tsv


def read_visits(visits_tsv: str | Path) -> pd.DataFrame:
    visits = read_tsv(visits_tsv)
    if "array" not in visits:
        raise ValueError(f"{visits_tsv}: no 'array' column (model-ready arrays); rerun preprocessing and manifest")
    return visits.set_index(["participant_id", "session_id"], drop=False)


def load_arrays(visits: pd.DataFrame, keys: list[tuple[str, str]], source: str) -> torch.Tensor:
    """(N, 1, X, Y, Z) float16 tensor of the arrays of ``keys`` (participant, session), in that order.

    ``source`` names the table that asked for them, for error messages."""
    missing = [k for k in keys if k not in visits.index]
    if missing:
        raise ValueError(f"{source}: {len(missing)} visits are not in visits.tsv (QC-passed scans), "
                         f"e.g. {missing[0][0]} {missing[0][1]}")
    out: torch.Tensor | None = None
    for i, key in enumerate(keys):
        path = visits.at[key, "array"]
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read the model-ready array of {key[0]} {key[1]} ({exc})") from exc
        if out is None:
            out = torch.empty((len(keys), 1, *arr.shape), dtype=torch.float16)
        if arr.shape != tuple(out.shape[2:]):
            raise ValueError(f"{path}: shape {arr.shape}, other arrays are {tuple(out.shape[2:])}")
        out[i, 0] = torch.from_numpy(arr.astype(np.float16, copy=False))
    if out is None:
        raise ValueError(f"{source}: no visits to load")
    return out
