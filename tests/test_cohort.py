"""BIDS ingestion: every bad input is excluded with a reason (or stops the run in strict mode)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from sslad.cohort import CohortError, ingest

ALIASES = {"CN": "CN", "EMCI": "MCI", "LMCI": "MCI", "MCI": "MCI", "DEMENTIA": "AD", "AD": "AD", "SMC": None}


def _scan(bids: Path, sub: str, ses: str) -> None:
    anat = bids / sub / ses / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    with gzip.open(anat / f"{sub}_{ses}_T1w.nii.gz", "wb") as fh:
        fh.write(b"not parsed here")


def _sessions(bids: Path, sub: str, text: str) -> None:
    (bids / sub).mkdir(parents=True, exist_ok=True)
    (bids / sub / f"{sub}_sessions.tsv").write_text(text)


@pytest.fixture
def messy_bids(tmp_path: Path) -> Path:
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tsex\tage\nsub-01\tF\t70\nsub-02\tM\t71\nsub-03\tF\t72\n")
    _sessions(bids, "sub-01", "session_id\tage\tdiagnosis\n"
              "ses-M000\t70\tCN\nses-M006\t70.5\tEMCI\nses-M012\t71\tDementia\n"
              "ses-M018\t71.5\tWeird\nses-M024\t\tAD\nses-M030\t72.5\tSMC\nses-M036\t73\tAD\nses-M036\t73\tAD\n")
    for ses in ("ses-M000", "ses-M006", "ses-M012", "ses-M018", "ses-M024", "ses-M030", "ses-M036", "ses-M048"):
        _scan(bids, "sub-01", ses)
    _sessions(bids, "sub-02",
              "session_id\tage\tdiagnosis\tdays_from_baseline\nses-M000\t71\tCN\t0\nses-M012\t72\tMCI\t370\n")
    _scan(bids, "sub-02", "ses-M000")  # ses-M012 has no image
    (bids / "sub-03").mkdir()
    (bids / "sub-03" / "sub-03_sessions.tsv").write_bytes(b"\x00\x01garbage")
    _scan(bids, "sub-03", "ses-M000")
    _scan(bids, "sub-99", "ses-M000")  # not in participants.tsv
    return bids


def test_messy_bids_everything_accounted_for(messy_bids: Path):
    scans, record, excluded = ingest(messy_bids, ALIASES, "test")
    got = dict(zip(scans["participant_id"] + "/" + scans["session_id"], scans["diagnosis"]))
    assert got == {"sub-01/ses-M000": "CN", "sub-01/ses-M006": "MCI", "sub-01/ses-M012": "AD", "sub-01/ses-M024": "AD",
                   "sub-02/ses-M000": "CN"}
    # the record keeps every visit with a diagnosis, imaged or not; a missing age removes nothing
    visits = dict(zip(record["participant_id"] + "/" + record["session_id"], record["has_image"]))
    assert visits == {**{k: True for k in got}, "sub-02/ses-M012": False}
    assert record.set_index("session_id").loc["ses-M012", "months"].tolist() == [12.0, 12.0]
    reasons = {f"{r.participant_id}/{r.session_id}": r.reason for r in excluded.itertuples()}
    assert reasons["sub-01/ses-M018"] == "unknown diagnosis 'Weird'"
    assert "sub-01/ses-M024" not in reasons
    assert "excluded by cohort.diagnosis_aliases" in reasons["sub-01/ses-M030"]
    assert reasons["sub-01/ses-M036"] == "duplicate session_id in sessions.tsv"
    assert reasons["sub-01/ses-M048"] == "session on disk but not listed in sessions.tsv"
    assert reasons["sub-02/ses-M012"].startswith("no T1w image (clinical visit")
    assert reasons["sub-03/ses-M000"].startswith("unreadable TSV")
    assert reasons["sub-99/ses-M000"] == "participant not listed in participants.tsv"
    # days from the visit code when the column is missing; from the column when present
    assert scans.set_index("session_id").loc["ses-M006", "days_from_baseline"] == 183
    assert scans.set_index("participant_id").loc["sub-02", "days_from_baseline"] == 0
    assert (excluded["file"] != "").all()


def test_strict_mode_names_the_file(messy_bids: Path):
    with pytest.raises(CohortError, match=r"participants\.tsv: participant not listed .*sub-99"):
        ingest(messy_bids, ALIASES, "test", strict=True)
    shutil.rmtree(messy_bids / "sub-99")
    shutil.rmtree(messy_bids / "sub-01" / "ses-M048")
    with pytest.raises(CohortError, match=r"sub-01_sessions\.tsv: unknown diagnosis 'Weird'"):
        ingest(messy_bids, ALIASES, "test", strict=True)
    # a clinical visit without an image is not a data problem: strict mode keeps it in the record
    (messy_bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\tdiagnosis\nses-M000\t70\tCN\n")
    shutil.rmtree(messy_bids / "sub-03")
    (messy_bids / "participants.tsv").write_text("participant_id\tsex\tage\nsub-01\tF\t70\nsub-02\tM\t71\n")
    for ses in ("ses-M006", "ses-M012", "ses-M018", "ses-M024", "ses-M030", "ses-M036"):
        shutil.rmtree(messy_bids / "sub-01" / ses)
    _, record, _ = ingest(messy_bids, ALIASES, "test", strict=True)
    assert ("sub-02", "ses-M012") in set(zip(record["participant_id"], record["session_id"]))


def test_not_a_bids_dataset(tmp_path: Path):
    with pytest.raises(CohortError, match="participants.tsv: missing"):
        ingest(tmp_path, ALIASES)
