"""Manifest invariants on the default study's cohort: splits, leakage, fractions, determinism, QC."""

from __future__ import annotations

import filecmp

import pandas as pd
import pytest

from sslad.cohort import EXCLUDED_COLUMNS
from sslad.io import write_tsv
from sslad.manifest import build, fraction_name, fraction_table, run, task_table, write_task
from sslad.simulate import draw_cohort


def cohort_scans(sim_cfg: dict) -> pd.DataFrame:
    """scans.tsv for a simulated cohort, straight from its record (no images needed)."""
    rows = [{"participant_id": s.participant_id, "session_id": f"ses-M{m:03d}", "path": "x.nii.gz", "sex": s.sex,
             "age": s.age + d / 365.25, "days_from_baseline": d, "diagnosis": dx, "diagnosis_raw": dx, "cohort": "sim"}
            for s in draw_cohort(sim_cfg) for m, d, dx in zip(s.months, s.days, s.diagnoses)]
    return pd.DataFrame(rows)


def all_tables(scans: pd.DataFrame, qc: pd.DataFrame | None, cfg: dict) -> dict[str, pd.DataFrame]:
    """Every manifest table the workflow's manifest, task_table and label_fraction jobs write."""
    tables = build(scans, pd.DataFrame(columns=EXCLUDED_COLUMNS), qc, cfg)
    for task in cfg["tasks"]:
        t = tables[f"tasks/{task}.tsv"] = task_table(scans, tables["visits.tsv"], tables["splits.tsv"], task, cfg)
        for seed in cfg["seeds"]:
            for f in cfg["label_fractions"]:
                tables[f"fractions/{task}/seed-{seed}/frac-{fraction_name(f)}.tsv"] = fraction_table(t, f, seed, task)
    return tables


@pytest.fixture(scope="module")
def default_tables(default_config):
    cfg = {**default_config["manifest"], **default_config["study"]}
    return all_tables(cohort_scans(default_config["simulate"]), None, cfg), cfg


def test_every_task_has_both_classes_in_train_and_test(default_tables):
    tables, cfg = default_tables
    for task in cfg["tasks"]:
        t = tables[f"tasks/{task}.tsv"]
        for split in ("train", "test"):
            labels = set(t.loc[t["split"] == split, "label"])
            assert labels == {0, 1}, (task, split, labels)


def test_splits_by_subject_and_pretraining_never_sees_test(default_tables):
    tables, cfg = default_tables
    splits = tables["splits.tsv"]
    assert splits["participant_id"].is_unique
    assert set(splits["split"]) == {"train", "val", "test"}
    test_subjects = set(splits.loc[splits["split"] == "test", "participant_id"])
    assert not test_subjects & set(tables["pretrain.tsv"]["participant_id"])
    for task in cfg["tasks"]:
        t = tables[f"tasks/{task}.tsv"]
        assert t.groupby("participant_id")["split"].nunique().max() == 1
        assert (t["split"] == t["participant_id"].map(splits.set_index("participant_id")["split"])).all()


def test_fractions_nested_stratified_and_train_only(default_tables):
    tables, cfg = default_tables
    fractions = sorted(cfg["label_fractions"])
    for task in cfg["tasks"]:
        train = tables[f"tasks/{task}.tsv"].query("split == 'train'")
        for seed in cfg["seeds"]:
            subsets = [tables[f"fractions/{task}/seed-{seed}/frac-{fraction_name(f)}.tsv"] for f in fractions]
            keys = [set(zip(s["participant_id"], s["index_session"])) for s in subsets]
            for small, large in zip(keys, keys[1:]):
                assert small <= large
            assert keys[-1] == set(zip(train["participant_id"], train["index_session"]))  # 100% = all of train
            assert set(subsets[0]["label"]) == {0, 1}  # stratified: both classes even at the smallest
    # seeds draw different subsets (checked on the largest training set, where they must differ)
    small = [{s: set(tables[f"fractions/dx_cn_mci/seed-{s}/frac-{fraction_name(fractions[0])}.tsv"]["participant_id"])
              for s in cfg["seeds"]}][0]
    assert len({frozenset(v) for v in small.values()}) == len(cfg["seeds"])


def test_same_seed_byte_identical(tmp_path, default_config):
    cfg = {**default_config["manifest"], **default_config["study"]}
    scans = cohort_scans({**default_config["simulate"], "n_subjects": 30})
    write_tsv(scans, tmp_path / "scans.tsv")
    write_tsv(pd.DataFrame(columns=EXCLUDED_COLUMNS), tmp_path / "excluded.tsv")
    for out in ("a", "b"):
        run(tmp_path / "scans.tsv", tmp_path / "excluded.tsv", None, tmp_path / out, cfg)
        for task in cfg["tasks"]:
            write_task(tmp_path / "scans.tsv", tmp_path / out / "visits.tsv", tmp_path / out / "splits.tsv", task, cfg,
                       tmp_path / out / "tasks" / f"{task}.tsv")
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    files = [p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tsv")]
    assert len(files) > 10
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(f) for f in files], shallow=False)
    assert not mismatch and not errors and not cmp.left_only and not cmp.right_only


def test_qc_failures_excluded_with_reason(default_tables, default_config):
    _, cfg = default_tables
    scans = cohort_scans(default_config["simulate"])
    failed = scans.iloc[[3, 10]]
    qc = scans[["participant_id", "session_id"]].assign(qc_pass=True, qc_reason="")
    qc.loc[failed.index, "qc_pass"] = False
    qc.loc[failed.index, "qc_reason"] = "brain volume 300 ml outside [900, 2200]"
    qc = qc.drop(index=20)  # a scan with no QC result at all
    tables = all_tables(scans, qc, cfg)
    bad = set(zip(failed["participant_id"], failed["session_id"])) | {tuple(scans.loc[20, ["participant_id", "session_id"]])}
    excluded = tables["excluded.tsv"]
    assert set(zip(excluded["participant_id"], excluded["session_id"])) == bad
    assert "brain volume" in excluded["reason"].iloc[0] or "brain volume" in excluded["reason"].iloc[1]
    assert not bad & set(zip(tables["visits.tsv"]["participant_id"], tables["visits.tsv"]["session_id"]))
    assert not bad & set(zip(tables["pretrain.tsv"]["participant_id"], tables["pretrain.tsv"]["session_id"]))
    for task in cfg["tasks"]:
        t = tables[f"tasks/{task}.tsv"]
        used = {(p, s) for p, ss in zip(t["participant_id"], t["input_sessions"]) for s in ss.split(";")}
        assert not bad & used
