"""The atomic writers: the bytes and permissions under the final name, and nothing left beside it."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from sslad.io import atomic_dir, atomic_path, read_tsv, write_json, write_tsv


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_arrive_whole_with_shared_permissions_and_replace_the_old(tmp_path):
    umask = os.umask(0o022)
    try:
        out = tmp_path / "deep" / "table.tsv"
        write_tsv(pd.DataFrame({"participant_id": ["007"], "x": [0.5]}), out)
        assert out.read_bytes() == b"participant_id\tx\n007\t0.5\n" and _mode(out) == 0o644
        assert read_tsv(out)["participant_id"].tolist() == ["007"]
        write_json({"b": 1, "a": [True]}, out.with_suffix(".json"))
        assert json.loads(out.with_suffix(".json").read_text()) == {"a": [True], "b": 1}
        with atomic_path(out) as tmp:
            assert tmp.name.endswith(".tsv") and tmp.parent == out.parent
            tmp.write_bytes(b"new\n")
        assert out.read_bytes() == b"new\n" and _mode(out) == 0o644
        with atomic_dir(tmp_path / "dataset") as folder:
            (folder / "participants.tsv").write_text("participant_id\n")
        assert _mode(tmp_path / "dataset") == 0o755  # not mkdtemp's 0700
    finally:
        os.umask(umask)
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.json", "table.tsv"]


def test_a_failed_block_leaves_the_old_file_and_directory(tmp_path):
    out, folder = tmp_path / "a.npy", tmp_path / "dataset"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    with atomic_dir(folder) as tmp:
        (tmp / "sub-01" / "anat").mkdir(parents=True)
        (tmp / "sub-01" / "anat" / "T1w.nii.gz").write_bytes(b"scan")
        (tmp / "participants.tsv").write_text("participant_id\n")
        (tmp / "link").symlink_to(tmp / "missing")  # a dangling link is moved, not synced
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "participants.tsv").write_text("half")
        raise RuntimeError
    assert out.read_bytes() == b"old" and (folder / "participants.tsv").read_text() == "participant_id\n"
    assert (folder / "sub-01" / "anat" / "T1w.nii.gz").read_bytes() == b"scan" and (folder / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "dataset"]
