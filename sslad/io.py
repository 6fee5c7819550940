"""Atomic writers and readers shared by every stage.

Every output is written to a temporary sibling, flushed to disk and renamed into place, so a killed
job, a crash or a power loss never leaves a half-written (or, on a filesystem that writes data after
the rename, an empty) file that a later run could mistake for a result.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk. A directory on a filesystem that
    cannot sync one (EINVAL, ENOTSUP: some network and FUSE filesystems) is left to the filesystem."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (path.is_dir() and exc.errno in (errno.EINVAL, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the suffixes (.nii.gz, .npy) so that writers that go by extension still work
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[: len(path.name) - len(suffix)]}.part-", suffix=suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)  # the data reaches the disk before the name does
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared on clusters
        os.replace(tmp_path, path)
        _fsync(path.parent)  # and the rename itself
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; results are shared on clusters
    try:
        yield tmp
        for root, _, files in os.walk(tmp):  # every file's data and every entry reach the disk first
            for file in (Path(root, name) for name in files):
                if not file.is_symlink():  # a link's target is not the writer's to sync
                    _fsync(file)
            _fsync(Path(root))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_tsv(df: pd.DataFrame, path: str | Path, float_format: str = "%.6g") -> None:
    """Write a tab-separated table atomically, without index, with stable float formatting
    (``"%.17g"`` where floats must round-trip exactly, e.g. model scores)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, lineterminator="\n", float_format=float_format)


def read_tsv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Read a TSV written by this package (IDs stay strings)."""
    return pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session_id": str}, **kwargs)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically, keys sorted so that reruns are byte-identical."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
