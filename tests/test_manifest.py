"""Manifest invariants on the default study's cohort: splits, leakage, fractions, determinism, QC."""

from __future__ import annotations

import filecmp

import pandas as pd
import pytest

from sslad.cohort import EXCLUDED_COLUMNS
from sslad.io import write_tsv
from sslad.labels import TASKS
from sslad.manifest import SPLITS, build, evaluable, fraction_name, fraction_table, pretrain_set, run
from sslad.simulate import draw_cohort


def cohort_tables(sim_cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """scans.tsv and record.tsv for a simulated cohort, straight from its record (no images needed)."""
    record = pd.DataFrame([
        {"participant_id": s.participant_id, "session_id": f"ses-M{m:03d}", "days_from_baseline": d,
         "months": float(m), "diagnosis": dx, "diagnosis_raw": dx, "age": s.age + d / 365.25, "has_image": img,
         "cohort": "sim"}
        for s in draw_cohort(sim_cfg) for m, d, dx, img in zip(s.months, s.days, s.diagnoses, s.imaged)])
    scans = record[record["has_image"]].assign(path="x.nii.gz", sex="F")
    return scans.drop(columns=["months", "has_image"]).reset_index(drop=True), record


def all_tables(scans: pd.DataFrame, record: pd.DataFrame, qc: pd.DataFrame | None,
               cfg: dict) -> dict[str, pd.DataFrame]:
    """Every manifest table the workflow's manifest, pretrain_set and label_fraction jobs write."""
    tables = build(scans, record, pd.DataFrame(columns=EXCLUDED_COLUMNS), qc, cfg)
    tables["pretrain.tsv"] = pretrain_set(tables["visits.tsv"], cfg["pretrain_splits"])
    for task in cfg["tasks"]:
        t = tables[f"tasks/{task}.tsv"]
        for seed in cfg["seeds"]:
            for f in cfg["label_fractions"]:
                tables[f"fractions/{task}/seed-{seed}/frac-{fraction_name(f)}.tsv"] = fraction_table(
                    t, f, seed, task, cfg["subsample_validation"])
    return tables


@pytest.fixture(scope="module")
def default_tables(default_config):
    cfg = {**default_config["manifest"], **default_config["study"], "cohort_use": {"sim": "both"}}
    return all_tables(*cohort_tables(default_config["simulate"]), None, cfg), cfg


def test_every_task_has_both_classes_in_every_split(default_tables):
    tables, cfg = default_tables
    for task in cfg["tasks"]:
        t = tables[f"tasks/{task}.tsv"]
        assert evaluable(t) is None, (task, evaluable(t))
        for split in ("train", "val", "test"):
            labels = set(t.loc[t["split"] == split, "label"])
            assert labels == {0, 1}, (task, split, labels)


@pytest.mark.parametrize("sim_seed, split_seed", [(20261130, 7), (1, 1), (2, 3), (3, 11)])
def test_splits_serve_every_task_on_other_seeds(default_config, sim_seed, split_seed):
    """Other cohorts and splits of the default size: every task keeps both classes in every split
    (the split seed 7 with cohort 20261130 once left fut_mci_ad's test split without a negative)."""
    cfg = {**default_config["manifest"], **default_config["study"], "seed": split_seed, "cohort_use": {"sim": "both"}}
    tables = build(*cohort_tables({**default_config["simulate"], "seed": sim_seed}),
                   pd.DataFrame(columns=EXCLUDED_COLUMNS), None, cfg)
    for task in cfg["tasks"]:
        assert evaluable(tables[f"tasks/{task}.tsv"]) is None, (task, evaluable(tables[f"tasks/{task}.tsv"]))


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
    assert fractions[0] < 1
    for task in cfg["tasks"]:
        table = tables[f"tasks/{task}.tsv"]
        for seed in cfg["seeds"]:
            for split in ("train", "val"):  # validation follows the fraction as training does
                whole = table.query(f"split == '{split}'")
                subsets = [tables[f"fractions/{task}/seed-{seed}/frac-{fraction_name(f)}.tsv"]
                           .query(f"split == '{split}'")
                           for f in fractions]
                keys = [set(zip(s["participant_id"], s["index_session"])) for s in subsets]
                for small, large in zip(keys, keys[1:]):
                    assert small <= large
                assert keys[-1] == set(zip(whole["participant_id"], whole["index_session"]))  # 100% = the split
                assert set(subsets[0]["label"]) == {0, 1}  # stratified: both classes even at the smallest
                if whole["participant_id"].nunique() >= 10:
                    assert subsets[0]["participant_id"].nunique() < whole["participant_id"].nunique()
        full_val = fraction_table(table, fractions[0], 0, task, subsample_validation=False).query("split == 'val'")
        assert len(full_val) == (table["split"] == "val").sum()
    # seeds draw different subsets (checked on the largest training set, where they must differ)
    small = [{s: set(tables[f"fractions/dx_cn_mci/seed-{s}/frac-{fraction_name(fractions[0])}.tsv"]["participant_id"])
              for s in cfg["seeds"]}][0]
    assert len({frozenset(v) for v in small.values()}) == len(cfg["seeds"])
    for bad in (0.0, 1.5):  # outside (0, 1]: refused, naming the task, never a silent whole split
        with pytest.raises(ValueError, match=r"dx_cn_mci: label fractions must be in \(0, 1\]"):
            fraction_table(tables["tasks/dx_cn_mci.tsv"], bad, 0, "dx_cn_mci")


def test_same_seed_byte_identical(tmp_path, default_config):
    cfg = {**default_config["manifest"], **default_config["study"], "cohort_use": {"sim": "both"}}
    scans, record = cohort_tables({**default_config["simulate"], "n_subjects": 30})
    write_tsv(scans, tmp_path / "scans.tsv")
    write_tsv(record, tmp_path / "record.tsv")
    write_tsv(pd.DataFrame(columns=EXCLUDED_COLUMNS), tmp_path / "excluded.tsv")
    names = ["visits", "subjects", "splits", "excluded", "schedule", *(f"task_{task}" for task in TASKS)]
    for out in ("a", "b"):
        outputs = {name: str(tmp_path / out / f"{name}.tsv") for name in names}
        run(tmp_path / "scans.tsv", tmp_path / "record.tsv", tmp_path / "excluded.tsv", None, outputs, cfg)
    with pytest.raises(ValueError, match=r"missing \['task_dx_cn_ad'\]"):  # every table goes where it is told
        run(tmp_path / "scans.tsv", tmp_path / "record.tsv", tmp_path / "excluded.tsv", None,
            {k: v for k, v in outputs.items() if k != "task_dx_cn_ad"}, cfg)
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    files = [p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tsv")]
    assert len(files) > 10
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(f) for f in files], shallow=False)
    assert not mismatch and not errors and not cmp.left_only and not cmp.right_only


def test_qc_failures_excluded_with_reason(default_tables, default_config):
    _, cfg = default_tables
    scans, record = cohort_tables(default_config["simulate"])
    failed = scans.iloc[[3, 10]]
    qc = scans[["participant_id", "session_id"]].assign(qc_pass=True, qc_reason="")
    qc.loc[failed.index, "qc_pass"] = False
    qc.loc[failed.index, "qc_reason"] = "brain volume 300 ml outside [900, 2200]"
    qc = qc.drop(index=20)  # a scan with no QC result at all
    tables = all_tables(scans, record, qc, cfg)
    bad = (set(zip(failed["participant_id"], failed["session_id"]))
           | {tuple(scans.loc[20, ["participant_id", "session_id"]])})
    excluded = tables["excluded.tsv"]
    assert set(zip(excluded["participant_id"], excluded["session_id"])) == bad
    assert "brain volume" in excluded["reason"].iloc[0] or "brain volume" in excluded["reason"].iloc[1]
    assert not bad & set(zip(tables["visits.tsv"]["participant_id"], tables["visits.tsv"]["session_id"]))
    assert not bad & set(zip(tables["pretrain.tsv"]["participant_id"], tables["pretrain.tsv"]["session_id"]))
    for task in cfg["tasks"]:
        t = tables[f"tasks/{task}.tsv"]
        used = {(p, s) for p, ss in zip(t["participant_id"], t["input_sessions"]) for s in ss.split(";")}
        assert not bad & used


def test_leave_one_cohort_out_keeps_the_held_out_cohort_out_of_training_and_pretraining(default_config):
    """Two simulated cohorts pooled: in each fold, the held-out cohort's subjects are all test and in no
    training, validation, label-fraction or pretraining table; test rows come from it alone."""
    from sslad.cohort import pooled_id, resolve_cohorts
    from sslad.manifest import fold_tables

    scans, record = [], []
    for c in resolve_cohorts(default_config):
        s, r = cohort_tables(c["simulate"])
        scans.append(s.assign(cohort=c["name"], participant_id=[pooled_id(c["name"], p) for p in s["participant_id"]]))
        record.append(r.assign(cohort=c["name"], participant_id=[pooled_id(c["name"], p) for p in r["participant_id"]]))
    cfg = {**default_config["manifest"], **default_config["study"], "cohort_use": {"SiteA": "both", "SiteB": "both"}}
    pooled = build(pd.concat(scans), pd.concat(record), pd.DataFrame(columns=EXCLUDED_COLUMNS), None, cfg)
    assert set(pooled["splits.tsv"].groupby("cohort")["split"].apply(frozenset)) == {frozenset(SPLITS)}
    for heldout in ("SiteA", "SiteB"):
        fold = fold_tables({k: v for k, v in pooled.items() if k != "subjects.tsv"}, heldout)
        held = set(pooled["subjects.tsv"].loc[pooled["subjects.tsv"]["cohort"] == heldout, "participant_id"])
        assert set(fold["splits.tsv"].loc[fold["splits.tsv"]["split"] == "test", "participant_id"]) == held
        assert not held & set(pretrain_set(fold["visits.tsv"], cfg["pretrain_splits"])["participant_id"])
        for task in cfg["tasks"]:
            t = fold[f"tasks/{task}.tsv"]
            assert set(t.loc[t["split"] == "test", "cohort"]) <= {heldout}
            assert not held & set(t.loc[t["split"] != "test", "participant_id"])
            for seed in cfg["seeds"]:
                frac = fraction_table(t, 1.0, seed, task, cfg["subsample_validation"])
                assert not held & set(frac["participant_id"])  # training and validation subsets
            # every subject of the other cohorts trains or validates (validation as pooled)
            pooled_t = pooled[f"tasks/{task}.tsv"]
            others = pooled_t[pooled_t["cohort"] != heldout]
            assert set(t.loc[t["split"] != "test", "participant_id"]) == set(others["participant_id"])
            assert set(t.loc[t["split"] == "val", "participant_id"]) == set(others.loc[others["split"] == "val",
                                                                                        "participant_id"])
    with pytest.raises(ValueError, match="no subject"):
        fold_tables(pooled, "SiteC")


def test_a_pretraining_only_cohort_is_in_no_task_table_and_a_downstream_only_one_never_pretrained(default_config):
    from sslad.cohort import resolve_cohorts

    (a, b) = resolve_cohorts(default_config)
    sa, ra = cohort_tables(a["simulate"])
    sb, rb = cohort_tables(b["simulate"])
    scans, record = (pd.concat([x.assign(cohort="SiteA"),
                                y.assign(cohort="SiteB", participant_id="B" + y["participant_id"])])
                     for x, y in ((sa, sb), (ra, rb)))
    cfg = {**default_config["manifest"], "cohort_use": {"SiteA": "downstream", "SiteB": "pretrain"}}
    tables = build(scans, record, pd.DataFrame(columns=EXCLUDED_COLUMNS), None, cfg)
    assert set(tables["splits.tsv"].loc[tables["splits.tsv"]["cohort"] == "SiteB", "split"]) == {"pretrain"}
    assert all(set(tables[f"tasks/{t}.tsv"]["cohort"]) <= {"SiteA"} for t in TASKS)
    assert set(tables["tasks/dx_cn_mci.tsv"]["cohort"]) == {"SiteA"}
    chosen = pretrain_set(tables["visits.tsv"], ["train", "val"], ["SiteA"])
    assert set(tables["visits.tsv"].set_index("participant_id").loc[chosen["participant_id"], "cohort"]) == {"SiteB"}
