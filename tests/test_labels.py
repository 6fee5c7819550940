"""Label semantics of the seven tasks on hand-made records."""

from __future__ import annotations

import pandas as pd
import pytest

from sslad.labels import is_reverter, task_samples

M = 30.4375  # days per month


def record(subjects: dict[str, list[tuple[int, str]]]) -> pd.DataFrame:
    rows = [{"participant_id": sub, "session_id": f"ses-M{m:03d}", "days_from_baseline": round(m * M), "diagnosis": dx}
            for sub, visits in subjects.items() for m, dx in visits]
    return pd.DataFrame(rows)


def labels(rec: pd.DataFrame, task: str, usable=None, horizon=36, k=3, exclude_reverters=True) -> dict[str, int]:
    usable = usable if usable is not None else set(zip(rec["participant_id"], rec["session_id"]))
    t = task_samples(rec, usable, task, horizon, k, exclude_reverters)
    return {f"{r.participant_id}/{r.index_session}": r.label for r in t.itertuples()}


REC = record({
    "conv": [(0, "MCI"), (12, "MCI"), (24, "AD"), (48, "AD")],
    "smci": [(0, "MCI"), (24, "MCI"), (36, "MCI"), (48, "MCI")],
    "cens": [(0, "MCI"), (24, "MCI")],
    "late": [(0, "MCI"), (24, "MCI"), (48, "AD")],
    "rev": [(0, "MCI"), (12, "AD"), (24, "MCI"), (48, "MCI")],
    "cn": [(0, "CN"), (12, "MCI"), (60, "CN")],
})


def test_future_mci_ad_horizon_and_censoring():
    got = labels(REC, "fut_mci_ad")
    assert got["conv/ses-M000"] == 1 and got["conv/ses-M012"] == 1
    assert got["smci/ses-M000"] == 0  # still MCI at month 36
    assert "smci/ses-M024" not in got  # only 24 months of follow-up after it: censored
    assert not any(k.startswith("cens/") for k in got)  # never called stable
    assert got["late/ses-M024"] == 1 and "late/ses-M000" not in got  # converts at 48 > 36: unknown
    assert not any(k.startswith("rev/") for k in got)  # reverters left out by default
    assert "rev/ses-M000" in labels(REC, "fut_mci_ad", exclude_reverters=False)


def test_horizon_is_a_parameter():
    assert labels(REC, "fut_mci_ad", horizon=48)["late/ses-M000"] == 1


def test_detection_sequences():
    got = labels(REC, "det_mci_ad")
    assert got["conv/ses-M024"] == 1  # MCI, MCI, AD
    assert got["conv/ses-M012"] == 0  # MCI, MCI
    assert "conv/ses-M000" not in got  # a sequence needs two scans
    assert got["conv/ses-M048"] == 1  # window of 3: MCI, AD, AD
    assert labels(REC, "det_mci_ad", k=2).get("conv/ses-M048") is None  # AD, AD: neither


def test_diagnosis_tasks_keep_reverters_and_use_index_dx():
    got = labels(REC, "dx_mci_ad")
    assert got["rev/ses-M012"] == 1 and got["rev/ses-M024"] == 0
    assert labels(REC, "dx_cn_mci")["cn/ses-M012"] == 1
    assert "conv/ses-M000" not in labels(REC, "dx_cn_ad")


def test_labels_use_full_record_but_inputs_only_usable_scans():
    usable = set(zip(REC["participant_id"], REC["session_id"])) - {("conv", "ses-M024")}
    got = labels(REC, "fut_mci_ad", usable=usable)
    assert got["conv/ses-M012"] == 1  # the conversion visit failed QC but still defines the label
    t = task_samples(REC, usable, "dx_mci_ad", 36, 3, True).set_index(["participant_id", "index_session"])
    assert ("conv", "ses-M024") not in t.index
    assert t.loc[("conv", "ses-M048"), "input_sessions"] == "ses-M000;ses-M012;ses-M048"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_input_window(k):
    t = task_samples(REC, set(zip(REC["participant_id"], REC["session_id"])), "dx_mci_ad", 36, k, True)
    assert t["n_inputs"].max() == k
    last = t.set_index(["participant_id", "index_session"]).loc[("smci", "ses-M048")]
    assert last["input_sessions"].split(";")[-1] == "ses-M048"


def test_reverter():
    assert is_reverter(["MCI", "AD", "MCI"]) and is_reverter(["CN", "MCI", "CN"])
    assert not is_reverter(["CN", "CN", "MCI", "AD"])


# A BIDS tree on a real schedule: follow-ups up to +-60 days off their visit code, conversions and a
# reversion seen only at visits without an image, and two subjects whose sessions have no code.
# (participant, session, days from baseline, diagnosis, has an image)
OFF_SCHEDULE = [
    ("sub-A", "ses-M000", 0, "MCI", True), ("sub-A", "ses-M012", 415, "MCI", True),
    ("sub-A", "ses-M024", 675, "MCI", True), ("sub-A", "ses-M036", 1154, "AD", False),  # day 1154 = month 37.9
    ("sub-A", "ses-M048", 1440, "AD", True),
    ("sub-B", "ses-M000", 0, "MCI", True), ("sub-B", "ses-M012", 330, "MCI", True),
    ("sub-B", "ses-M036", 1036, "MCI", True),  # day 1036 = month 34.0: still the month-36 visit
    ("sub-C", "ses-M000", 0, "CN", True), ("sub-C", "ses-M006", 243, "CN", True),
    ("sub-C", "ses-M012", 305, "MCI", False), ("sub-C", "ses-M024", 790, "MCI", True),
    ("sub-D", "ses-M000", 0, "MCI", True), ("sub-D", "ses-M012", 400, "AD", False),  # reverts, seen without image
    ("sub-D", "ses-M024", 700, "MCI", True), ("sub-D", "ses-M048", 1490, "MCI", True),
    ("sub-E", "ses-M000", 0, "CN", True), ("sub-E", "ses-M036", 1037, "CN", True),
    ("sub-F", "ses-01", 0, "MCI", True), ("sub-F", "ses-02", 1040, "MCI", True),  # 34.2 months: within the window
    ("sub-G", "ses-01", 0, "MCI", True), ("sub-G", "ses-02", 900, "MCI", True),  # 29.6 months: censored
]
EXPECTED = {
    "fut_mci_ad": {"sub-A/ses-M000": 1, "sub-A/ses-M012": 1, "sub-A/ses-M024": 1, "sub-B/ses-M000": 0,
                   "sub-F/ses-01": 0},
    "fut_cn_mci": {"sub-C/ses-M000": 1, "sub-C/ses-M006": 1, "sub-E/ses-M000": 0},
    "det_mci_ad": {"sub-A/ses-M012": 0, "sub-A/ses-M024": 0, "sub-A/ses-M048": 1, "sub-B/ses-M012": 0,
                   "sub-B/ses-M036": 0, "sub-F/ses-02": 0, "sub-G/ses-02": 0},
    "det_cn_mci": {"sub-C/ses-M006": 0, "sub-C/ses-M024": 1, "sub-E/ses-M036": 0},
}


def test_labels_follow_visit_codes_and_the_whole_record(tmp_path):
    """Through ingestion and the manifest, as the workflow runs them (images are stand-ins: only
    their presence matters here)."""
    from sslad.cohort import ingest
    from sslad.manifest import build

    bids = tmp_path / "bids"
    subjects = sorted({v[0] for v in OFF_SCHEDULE})
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tsex\tage\n" + "".join(f"{s}\tF\t70\n" for s in subjects))
    for sub in subjects:
        visits = [v for v in OFF_SCHEDULE if v[0] == sub]
        (bids / sub).mkdir()
        (bids / sub / f"{sub}_sessions.tsv").write_text("session_id\tdiagnosis\tdays_from_baseline\n" + "".join(
            f"{ses}\t{dx}\t{days}\n" for _, ses, days, dx, _ in visits))
        for _, ses, _, _, imaged in visits:
            if imaged:
                (bids / sub / ses / "anat").mkdir(parents=True)
                (bids / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz").write_bytes(b"stand-in")
    scans, record, excluded = ingest(bids, {"CN": "CN", "MCI": "MCI", "AD": "AD"}, "test", strict=True)
    assert len(record) == len(OFF_SCHEDULE) and len(scans) == sum(v[4] for v in OFF_SCHEDULE)
    cfg = {"seed": 0, "horizon_months": 36, "visit_window_months": 3, "max_inputs": 3, "exclude_reverters": True,
           "split": {"val": 0.2, "test": 0.25}, "pretrain_splits": ["train", "val"],
           "index_visits": "all", "match_bin_months": 12,  # every labelled visit, unmatched
           "cohort_use": {"test": "both"}}
    tables = build(scans, record, excluded, None, cfg)
    for task, expected in EXPECTED.items():
        t = tables[f"tasks/{task}.tsv"]
        assert dict(zip(t["participant_id"] + "/" + t["index_session"], t["label"])) == expected, task
    # rounding days to months (the old rule) would have called sub-A's conversion late and sub-B censored
    assert round(1154 / M) == 38 and round(1036 / M) == 34


def test_window_applies_to_uncoded_sessions_only():
    rec = pd.DataFrame([
        {"participant_id": "u", "session_id": "ses-a", "days_from_baseline": 0, "diagnosis": "MCI"},
        {"participant_id": "u", "session_id": "ses-b", "days_from_baseline": 1040, "diagnosis": "MCI"},
        {"participant_id": "c", "session_id": "ses-M000", "days_from_baseline": 0, "diagnosis": "MCI"},
        {"participant_id": "c", "session_id": "ses-M030", "days_from_baseline": 1040, "diagnosis": "MCI"},
    ])
    usable = set(zip(rec["participant_id"], rec["session_id"]))
    assert labels_w(rec, usable, 3) == {"u/ses-a": 0}  # uncoded: 34.2 months meets 36 within 3
    assert labels_w(rec, usable, 1) == {}  # ... but not within 1
    # coded: ses-M030 is the month-30 visit whatever its day: censored


def labels_w(rec: pd.DataFrame, usable: set, window: float) -> dict[str, int]:
    t = task_samples(rec, usable, "fut_mci_ad", 36, 3, True, window)
    return {f"{r.participant_id}/{r.index_session}": r.label for r in t.itertuples()}
