"""The schedule confound: measured, removed by matching on the default and the validation study's
cohorts, and the schedule-only baseline that reads it."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT
from test_manifest import cohort_tables

from sslad.cohort import EXCLUDED_COLUMNS, resolve_cohorts
from sslad.labels import TASKS
from sslad.manifest import build, schedule_report
from sslad.metrics import auc
from sslad.schedule import confound_limit, fit_baseline, match_schedule, null_se


def _merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _study_tables(cfg: dict) -> dict[str, pd.DataFrame]:
    """The manifest of a study's simulated cohorts, every imaged scan usable (no images rendered)."""
    scans, records = [], []
    for i, cohort in enumerate(resolve_cohorts(cfg)):
        s, r = cohort_tables(cohort["simulate"])
        prefix = {"participant_id": lambda d: f"c{i}" + d["participant_id"], "cohort": cohort["name"]}
        scans.append(s.assign(**prefix))
        records.append(r.assign(**prefix))
    uses = {"cohort_use": {c["name"]: c["use"] for c in resolve_cohorts(cfg)}}
    return build(pd.concat(scans), pd.concat(records), pd.DataFrame(columns=EXCLUDED_COLUMNS), None,
                 {**cfg["manifest"], **uses})


@pytest.mark.parametrize("study", ["config.yaml", "config/validation.yaml"])
def test_matched_task_tables_leak_no_schedule(default_config, study):
    """On the default and the validation study's cohorts: with every usable visit an index visit, a
    schedule feature alone reads some task's label; after matching (the default) none exceeds its
    limit, and every task keeps samples of both classes."""
    cfg = default_config if study == "config.yaml" else _merged(default_config,
                                                                yaml.safe_load((ROOT / study).read_text()))
    confound = _study_tables(cfg)["schedule.tsv"]
    before, after = confound[confound["samples"] == "all"], confound[confound["samples"] == "matched"]
    assert before["confounded"].any(), before
    assert not after["confounded"].any(), schedule_report(after)
    assert set(after["task"]) == set(TASKS) and (after[["n_pos", "n_neg"]] > 0).all().all()
    assert (after["auc"] <= after["limit"]).all()


def test_matching_balances_cells_and_keeps_the_rare_subjects():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"participant_id": [f"s{i // 3}" for i in range(300)], "n_inputs": rng.integers(1, 4, 300),
                      "span_months": rng.choice([0, 12, 24, 36], 300),
                      "index_months": rng.choice([0, 12, 24, 48], 300)})
    t["label"] = (rng.random(300) < 0.2 + 0.2 * (t["n_inputs"] - 1)).astype(int)  # planted: more inputs, positive
    assert auc(t["label"], t["n_inputs"]) > 0.65
    m = match_schedule(t, "x", 12, 0)
    cells = m.groupby(["n_inputs", "span_months", "index_months"])["label"].agg(["sum", "size"])
    assert (cells["sum"] * 2 == cells["size"]).all()  # as many positives as negatives in every cell
    assert auc(m["label"], m["n_inputs"]) == 0.5
    assert match_schedule(t, "x", 12, 0).equals(m) and not match_schedule(t, "x", 12, 1).equals(m)
    lone = pd.DataFrame({"participant_id": ["a", "a", "b"], "n_inputs": [1, 1, 1], "span_months": [0, 0, 0],
                         "index_months": [0, 0, 0], "label": [0, 0, 1]})
    assert set(match_schedule(lone, "x", 12, 0)["participant_id"]) == {"a", "b"}


def test_confound_limit():
    assert null_se(50, 50) == pytest.approx(np.sqrt(101 / (12 * 2500)))
    assert confound_limit(500, 500) == 0.65  # large tables: the fixed floor
    assert confound_limit(5, 5) == pytest.approx(0.5 + 2.5 * np.sqrt(11 / 300))


def test_schedule_baseline_reads_a_planted_schedule_and_nothing_else():
    rng = np.random.default_rng(1)

    def split(n: int, planted: bool) -> pd.DataFrame:
        t = pd.DataFrame({"n_inputs": rng.integers(1, 4, n), "span_months": rng.integers(0, 48, n),
                          "index_months": rng.integers(0, 96, n), "index_age": rng.normal(73, 6, n),
                          "sex": rng.choice(["F", "M"], n), "cohort": rng.choice(["A", "B"], n)})
        t["label"] = (t["n_inputs"] > 1).astype(int) if planted else rng.integers(0, 2, n)
        return t

    for planted, lo, hi in ((True, 0.99, 1.0), (False, 0.4, 0.6)):
        parts = {name: split(400, planted) for name in ("train", "val", "test")}
        scores = fit_baseline(parts, 0)
        assert lo <= auc(parts["test"]["label"], scores["test"]) <= hi
    parts["test"].loc[0, "index_age"] = np.nan  # an unknown age takes train's mean, never stops the fit
    assert np.isfinite(fit_baseline(parts, 0)["test"]).all()
