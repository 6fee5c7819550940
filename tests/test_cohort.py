"""BIDS ingestion: every bad input is excluded with a reason (or stops the run in strict mode)."""

from __future__ import annotations

import gzip
import os
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
    assert "excluded by the diagnosis_aliases" in reasons["sub-01/ses-M030"]
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


def _tree(root: Path, rows: dict[str, str], images: dict[str, list[str]]) -> Path:
    """A small BIDS tree: rows[sub] = its sessions.tsv body (session_id, diagnosis[, days]); images[sub] =
    the file names in each session's anat/ (empty files: ingestion reads names, not voxels)."""
    root.mkdir(parents=True)
    (root / "participants.tsv").write_text("participant_id\tsex\n" + "".join(f"{s}\tF\n" for s in rows))
    for sub, body in rows.items():
        _sessions(root, sub, body)
    for sub, names in images.items():
        for name in names:
            ses = name.split("_")[1]
            (root / sub / ses / "anat").mkdir(parents=True, exist_ok=True)
            (root / sub / ses / "anat" / name).write_bytes(b"")
    return root


def test_real_bids_variety_two_cohorts_pooled(tmp_path: Path):
    """Two trees sharing sub-01; one session with two T1w runs (and an acq- entity), uncompressed
    .nii files, sessions without days_from_baseline, one cohort without MCI: each case is reported,
    the pooled ids stay apart, and the manifest builds with no MCI samples from that cohort."""
    from sslad.cohort import pooled_id, run, run_pool
    from sslad.io import read_tsv
    from sslad.manifest import build

    a = _tree(tmp_path / "ADNI", {
        "sub-01": "session_id\tdiagnosis\tdays_from_baseline\nses-M000\tCN\t0\nses-M012\tEMCI\t371\n"
                  "ses-M024\tLMCI\t735\n",
        "sub-02": "session_id\tdiagnosis\nses-M000\tMCI\nses-M012\tAD\n"},  # no days: from the visit codes
        {"sub-01": ["sub-01_ses-M000_run-02_T1w.nii.gz", "sub-01_ses-M000_acq-MPRAGE_run-01_T1w.nii.gz",
                    "sub-01_ses-M012_T1w.nii.gz", "sub-01_ses-M024_T1w.nii.gz"],
         "sub-02": ["sub-02_ses-M000_T1w.nii.gz", "sub-02_ses-M012_T1w.nii.gz"]})
    o = _tree(tmp_path / "OASIS3", {  # no MCI at all, .nii files
        "sub-01": "session_id\tdiagnosis\tdays_from_baseline\nses-M000\tCN\t0\nses-M036\tCN\t1100\n",
        "sub-03": "session_id\tdiagnosis\tdays_from_baseline\nses-M000\tAD\t0\nses-M024\tAD\t700\n"},
        {"sub-01": ["sub-01_ses-M000_T1w.nii", "sub-01_ses-M036_T1w.nii"],
         "sub-03": ["sub-03_ses-M000_T1w.nii", "sub-03_ses-M024_T1w.nii"]})
    paths = {}
    for name, bids in (("ADNI", a), ("OASIS3", o)):
        paths[name] = tuple(str(tmp_path / f"{name}_{t}.tsv") for t in ("scans", "record", "excluded"))
        run(bids, ALIASES, name, False, *paths[name])
    out = {t: str(tmp_path / f"{t}.tsv") for t in ("scans", "record", "excluded", "cohorts", "overlap")}
    run_pool(paths, {"ADNI": "both", "OASIS3": "both"}, out)

    scans, excluded = read_tsv(out["scans"]), read_tsv(out["excluded"])
    first = scans.set_index(["participant_id", "session_id"]).loc[("sub-ADNI01", "ses-M000")]
    assert first["path"].endswith("sub-01_ses-M000_acq-MPRAGE_run-01_T1w.nii.gz")  # the lowest run
    unused = excluded[excluded["file"].str.endswith("run-02_T1w.nii.gz")]
    assert len(unused) == 1 and "another T1w image of the session is used" in unused["reason"].iloc[0]
    assert scans.loc[scans["cohort"] == "OASIS3", "path"].str.endswith(".nii").all()
    assert scans.set_index("participant_id").loc["sub-ADNI02", "days_from_baseline"].tolist() == [0, 365]
    overlap = read_tsv(out["overlap"])
    assert overlap.to_dict("records") == [{"bids_participant_id": "sub-01", "cohorts": "ADNI,OASIS3",
                                           "participant_ids": "sub-ADNI01,sub-OASIS301"}]
    assert pooled_id("OASIS3", "sub-01") == "sub-OASIS301"
    report = read_tsv(out["cohorts"]).set_index("cohort")
    assert report.loc["OASIS3", "baseline_MCI"] == 0 and report.loc["ADNI", "baseline_MCI"] == 1

    cfg = {"horizon_months": 36, "visit_window_months": 3, "max_inputs": 3, "exclude_reverters": True,
           "split": {"val": 0.2, "test": 0.25}, "seed": 0, "index_visits": "all", "match_bin_months": 12,
           "cohort_use": {"ADNI": "both", "OASIS3": "both"}}
    tables = build(scans, read_tsv(out["record"]), excluded, None, cfg)
    assert set(tables["subjects.tsv"]["cohort"]) == {"ADNI", "OASIS3"}
    for task, mci_label in (("dx_cn_mci", 1), ("dx_mci_ad", 0)):  # OASIS3 brings no MCI sample, the rest
        t = tables[f"tasks/{task}.tsv"]
        assert mci_label not in set(t.loc[t["cohort"] == "OASIS3", "label"]) and len(t[t["cohort"] == "OASIS3"]), task


def test_ingestion_log_reports_each_case(tmp_path: Path, capsys):
    from sslad.cohort import run
    from sslad.io import read_tsv

    bids = _tree(tmp_path / "NACC", {"sub-01": "session_id\tdiagnosis\nses-M000\tCN\nses-M012\tAD\n"},
                 {"sub-01": ["sub-01_ses-M000_run-01_T1w.nii", "sub-01_ses-M000_run-02_T1w.nii",
                             "sub-01_ses-M012_acq-fast_T1w.nii.gz"]})
    run(bids, ALIASES, "NACC", False, *(tmp_path / f"{t}.tsv" for t in ("scans", "record", "excluded")))
    log = capsys.readouterr().err
    assert "another T1w image of the session is used: sub-01_ses-M000_run-01_T1w.nii" in log
    assert "uncompressed image sub-01_ses-M000_run-01_T1w.nii" in log
    assert "acquisition entity in sub-01_ses-M012_acq-fast_T1w.nii.gz" in log
    assert "no days_from_baseline" in log and "day 365 from the visit code" in log
    assert "no MCI visit: tasks that need it get no samples from this cohort" in log
    assert read_tsv(tmp_path / "scans.tsv")["participant_id"].tolist() == ["sub-NACC01", "sub-NACC01"]


def test_old_single_cohort_config_is_converted_and_names_checked(default_config):
    import copy

    from sslad.cohort import convert_single_cohort, resolve_cohorts

    cfg = copy.deepcopy(default_config)
    cfg["cohort"] = {"bids_dir": "/data/ADNI", "name": "ADNI", "strict": True, "diagnosis_aliases": {"CN": "CN"}}
    warning = convert_single_cohort(cfg)
    assert "cohorts: [{name: ADNI, bids_dir: '/data/ADNI'" in warning and "cohort" not in cfg
    (adni,) = resolve_cohorts(cfg)
    assert adni == {"name": "ADNI", "bids_dir": "/data/ADNI", "strict": True, "use": "both",
                    "diagnosis_aliases": {"CN": "CN"}, "simulate": default_config["simulate"]}
    assert convert_single_cohort(cfg) is None
    a, b = resolve_cohorts(default_config)  # the default study: the shared block, updated per cohort
    assert a["diagnosis_aliases"] == default_config["diagnosis_aliases"] and a["simulate"]["n_subjects"] == 22
    assert b["simulate"]["visits"]["gap_months"] == [12, 24] and b["simulate"]["visits"]["max"] == 6
    for names in (["AD", "ADNI"], ["X", "X"]):
        with pytest.raises(ValueError, match="cohort"):
            resolve_cohorts({**default_config, "cohorts": [{"name": n} for n in names]})


def test_labels_that_are_not_bids_labels_are_excluded_and_never_run(tmp_path: Path):
    """A session label carrying a shell command and participant labels with '_' or '.': each is
    excluded with its reason (strict mode: the run stops naming the file); nothing is executed."""
    bids = tmp_path / "bids"
    bids.mkdir()
    evil = "ses-M000$(touch PWNED)"
    (bids / "participants.tsv").write_text("participant_id\tsex\tage\nsub-01\tF\t70\nsub-002_S_0295\tM\t71\n"
                                           "sub-01.5\tF\t72\n")
    _sessions(bids, "sub-01", f"session_id\tage\tdiagnosis\nses-M000\t70\tCN\n{evil}\t71\tAD\n")
    for sub, ses in (("sub-01", "ses-M000"), ("sub-01", evil), ("sub-002_S_0295", "ses-M000"),
                     ("sub-01.5", "ses-M000")):
        _scan(bids, sub, ses)
    for sub in ("sub-002_S_0295", "sub-01.5"):
        _sessions(bids, sub, "session_id\tage\tdiagnosis\nses-M000\t70\tCN\n")
    scans, record, excluded = ingest(bids, ALIASES, "test")
    assert list(scans["session_id"]) == ["ses-M000"] and list(scans["participant_id"]) == ["sub-01"]
    reasons = {(r.participant_id, r.session_id): r.reason for r in excluded.itertuples()}
    assert reasons[("sub-01", evil)].startswith(f"session label {evil!r} is not a BIDS label")
    for sub in ("sub-002_S_0295", "sub-01.5"):
        assert reasons[(sub, "ses-M000")].startswith(f"participant label {sub!r} is not a BIDS label")
    with pytest.raises(CohortError, match=r"participants\.tsv: participant label 'sub-002_S_0295'"):
        ingest(bids, ALIASES, "test", strict=True)
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()


def test_the_clinical_digest_follows_in_place_edits(messy_bids: Path):
    from sslad.cohort import clinical_digest

    before = clinical_digest(messy_bids)
    assert clinical_digest(messy_bids) == before
    sessions = messy_bids / "sub-02" / "sub-02_sessions.tsv"
    stat = sessions.stat()
    sessions.write_text(sessions.read_text().replace("MCI", "AD"))
    os.utime(sessions, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time stamp: the content decides
    assert clinical_digest(messy_bids) != before
    edited = clinical_digest(messy_bids)
    _scan(messy_bids, "sub-02", "ses-M012")
    assert clinical_digest(messy_bids) != edited


def test_an_empty_cohort_writes_its_exclusions_before_the_error(tmp_path: Path):
    from sslad.cohort import run

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tsex\tage\nsub-01\tF\t70\n")
    _sessions(bids, "sub-01", "session_id\tage\tdiagnosis\nses-M000\t70\tWeird\n")
    _scan(bids, "sub-01", "ses-M000")
    out = tmp_path / "out"
    with pytest.raises(CohortError, match=r"no usable scan \(1 excluded, listed in .*excluded\.no-usable-scan\.tsv; "
                                          r"most often: 1 x unknown diagnosis 'Weird'\)"):
        run(bids, ALIASES, "test", False, out / "scans.tsv", out / "record.tsv", out / "excluded.tsv")
    assert "unknown diagnosis" in (out / "excluded.no-usable-scan.tsv").read_text()


def test_new_participants_to_score_need_no_diagnosis(tmp_path: Path):
    """A study's cohorts need a known diagnosis at every visit; new participants to score (sslad predict)
    do not: their diagnosis is what is predicted, and a sessions.tsv without the column is read."""
    bids = tmp_path / "new"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tsex\nsub-01\tF\n")
    _sessions(bids, "sub-01", "session_id\tdays_from_baseline\nses-M000\t0\nses-M012\t365\n")
    for ses in ("ses-M000", "ses-M012"):
        _scan(bids, "sub-01", ses)
    scans, _, excluded = ingest(bids, ALIASES, "new")
    assert scans.empty and set(excluded["reason"]) == {"unknown diagnosis None"}
    scans, record, excluded = ingest(bids, ALIASES, "new", diagnosis_required=False)
    assert list(scans["session_id"]) == ["ses-M000", "ses-M012"] and excluded.empty
    assert set(record["diagnosis"]) == {""} and list(scans["days_from_baseline"]) == [0, 365]
