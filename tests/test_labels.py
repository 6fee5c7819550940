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
