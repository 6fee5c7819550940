"""The reader of a simulated cohort's true volumes: what each task's split supports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sslad import ground_truth


def _cohort(root, n: int = 90, seed: int = 0, signal: str = "index") -> pd.DataFrame:
    """A simulated tree's ground truth (two scans a subject, two years apart) and a task table over its
    subjects (ids pooled as cohort SIM), the label planted in the index volume, or in its change alone
    (the index volume the same in both classes)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    base = rng.normal(0, 0.05, (n, 3))
    loss = 0.01 + 0.03 * label if signal == "change" else np.full(n, 0.02)
    shift = -0.08 * label if signal == "index" else np.zeros(n)
    rows = []
    for i in range(n):
        index = base[i] + shift[i]
        first = index + 2 * loss[i]
        for ses, v in (("ses-M000", first), ("ses-M024", index)):
            rows.append({"participant_id": f"sub-{i:03d}", "session_id": ses, "cohort": "SIM",
                         **dict(zip(ground_truth.VOLUMES, np.exp(v)))})
    truth = root / "derivatives" / "simulation"
    truth.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(truth / "scans.tsv", sep="\t", index=False)
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    return pd.DataFrame({"participant_id": [f"sub-SIM{i:03d}" for i in range(n)], "index_session": "ses-M024",
                         "input_sessions": "ses-M000;ses-M024", "input_days": "0;730", "label": label,
                         "split": split})


@pytest.mark.parametrize("signal", ["index", "change"])
def test_a_planted_volume_or_atrophy_rate_is_read_and_a_shuffled_label_is_not(tmp_path, signal):
    task = _cohort(tmp_path / "bids", signal=signal)
    path = tmp_path / "dx_cn_ad.tsv"
    task.to_csv(path, sep="\t", index=False)
    row = ground_truth.run([str(path)], {"SIM": str(tmp_path / "bids")}, str(tmp_path / "gt.tsv")).iloc[0]
    assert row["task"] == "dx_cn_ad" and (row["n_train"], row["n_val"], row["n_test"]) == (30, 30, 30)
    assert row["val_auc"] > 0.9 and row["test_auc"] > 0.9
    truth = ground_truth.read_truth({"SIM": tmp_path / "bids"})
    shuffled = task.assign(label=np.random.default_rng(1).permutation(task["label"].to_numpy()))
    null = ground_truth.reference("dx_cn_ad", shuffled, truth)
    assert abs(null["test_auc"] - 0.5) < 0.25


def test_samples_without_truth_are_left_out_and_a_split_without_both_classes_reads_nothing(tmp_path):
    task = _cohort(tmp_path / "bids", n=30)
    truth = ground_truth.read_truth({"SIM": tmp_path / "bids"})
    real = task.assign(participant_id=lambda d: d["participant_id"].str.replace("SIM", "ADNI"))
    both = pd.concat([task, real.head(6)], ignore_index=True)  # a real cohort's subjects: no truth
    row = ground_truth.reference("t", both, truth)
    assert (row["n_train"], row["n_val"], row["n_test"], row["n_without_truth"]) == (10, 10, 10, 6)
    # read on part of the validation samples: not cited beside the models' validation AUC
    partial = pd.DataFrame([row], columns=ground_truth.COLUMNS)
    assert ground_truth.val_auc(partial) == {}
    assert "simulated samples only" in "\n".join(ground_truth.section(partial))
    one_class = task.assign(label=np.where(task["split"] == "val", 1, task["label"]))
    assert np.isnan(ground_truth.reference("t", one_class, truth)["val_auc"])
    assert np.isnan(ground_truth.reference("t", real, truth)["test_auc"])  # nothing to fit on


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="derivatives/simulation/scans.tsv.*cohort 'SIM'"):
        ground_truth.read_truth({"SIM": tmp_path / "real_bids"})
    task = _cohort(tmp_path / "bids", n=12)
    path = tmp_path / "fut_cn_mci.tsv"
    task.drop(columns="split").to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="fut_cn_mci.tsv: missing column.*split"):
        ground_truth.run([str(path)], {"SIM": str(tmp_path / "bids")}, str(tmp_path / "gt.tsv"))


def test_the_summary_section_lists_every_task_and_is_absent_without_truth():
    table = pd.DataFrame([{"task": "fut_cn_mci", "n_train": 26, "n_val": 12, "n_test": 24, "n_without_truth": 0,
                           "val_auc": 0.306, "test_auc": float("nan")}], columns=ground_truth.COLUMNS)
    text = "\n".join(ground_truth.section(table))
    assert "| fut_cn_mci | 26 / 12 / 24 | 0.306 | – |" in text and "simulated samples only" not in text
    assert ground_truth.section(table.iloc[:0]) == []
    assert ground_truth.val_auc(table) == {"fut_cn_mci": 0.306} and ground_truth.val_auc(None) == {}
