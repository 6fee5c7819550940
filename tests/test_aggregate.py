"""Aggregation of fine-tuning results into table, summary, markdown and figures; the QC mosaic.

The statistics are checked where they can go wrong: duplicated samples must not narrow a
subject-level interval, and on simulated studies where two inits are exchangeable the headline must
rarely claim a difference (while a real difference is claimed).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sslad import aggregate, comparison, metrics, qc_mosaic, result_table, results, summary_report
from sslad.comparison import SeedPair

TASKS = ("dx_cn_ad", "fut_mci_ad")
INITS = ("scratch", "topc")
FRACTIONS = (0.5, 1.0)
# three seeds: with two, the seeds' spread has one degree of freedom and no difference here is claimed
SEEDS = (0, 1, 2)
# signal strength per (task, init): topc is much better than scratch on dx_cn_ad, worse on fut_mci_ad
EFFECT = {("dx_cn_ad", "scratch"): 0.2, ("dx_cn_ad", "topc"): 2.5,
          ("fut_mci_ad", "scratch"): 1.5, ("fut_mci_ad", "topc"): 0.5}
# test subjects: 0-15 positive, 16-39 negative; every third has a second index visit (ses-M012), and
# subject 3 is negative at its first visit and positive at its second (it counts in both classes)
N_SUBJECTS, N_POS_SUBJECTS = 40, 16
TEST = pd.DataFrame([{"participant_id": f"sub-{i:03d}", "index_session": ses,
                      "label": int(i < N_POS_SUBJECTS and not (i == 3 and ses == "ses-M000"))}
                     for i in range(N_SUBJECTS) for ses in (("ses-M000", "ses-M012") if i % 3 == 0 else ("ses-M000",))])
N_BOOT = 400
PRIMARY = {"init": "topc", "reference": "scratch", "mode": "full", "inputs": "history", "fraction": 1.0,
           "min_test_subjects": 10}
SETTINGS = {"n_bootstrap": N_BOOT, "primary": PRIMARY}
REASON = "the test samples need both classes, got 3 positive and 0 negative"
PNG = b"\x89PNG\r\n\x1a\n"


def _job_json(task: str, init: str, fraction: float, seed: int, rows: list, inputs: str = "history", **extra) -> str:
    curves = {"full": {"train_loss": [1.0, 0.5], "val_auc": [0.6, 0.7]}} if rows else {}
    return json.dumps({"task": task, "init": init, "fraction": fraction, "seed": seed, "inputs": inputs,
                       "rows": rows, "curves": curves, "settings": {"lr": 0.001, "epochs": 2},
                       "encoder": f"results/pretrain/{init}/encoder.pt", **extra})


def _write_job(root: Path, task: str, init: str, fraction: float, seed: int, test: pd.DataFrame = TEST,
               inputs: str = "history", effect: float | None = None) -> Path:
    """A job directory with predictions.tsv and the metrics.json that the fine-tuning module writes;
    ``effect`` replaces the signal strength of :data:`EFFECT` (a control job's)."""
    job = root / task / init / f"f{fraction:g}" / f"seed{seed}"
    job.mkdir(parents=True)
    labels = test["label"].to_numpy()
    subject = test["participant_id"].str[4:].astype(int).to_numpy()
    n_subjects = test["participant_id"].nunique()
    rows, preds = [], []
    for m, mode in enumerate(("full", "probe")):
        control = [len(inputs)] if inputs != "history" else []  # a control job's own noise
        rng = np.random.default_rng([TASKS.index(task), INITS.index(init), int(fraction * 10), seed, m, *control])
        strength = (EFFECT[task, init] if effect is None else effect) * (1.0 if mode == "full" else 0.8) * \
            (0.7 + 0.3 * fraction)
        logits = (strength * (labels - 0.5) + 0.5 * rng.normal(size=subject.max() + 1)[subject]
                  + rng.normal(size=len(test)))
        point = metrics.binary_metrics(labels, logits, 0.0)
        row = {"mode": mode, "val_auc": point["auc"], "best_epoch": 3, "threshold": 0.0,
               "n_train": int(40 * fraction), "n_val": 15, "n_test": len(test), "n_test_pos": int(labels.sum()),
               "n_train_subjects": int(30 * fraction), "n_val_subjects": 12, "n_test_subjects": n_subjects,
               "n_test_pos_subjects": test.loc[test["label"] == 1, "participant_id"].nunique(),
               "n_test_neg_subjects": test.loc[test["label"] == 0, "participant_id"].nunique()}
        row.update(point)
        rows.append(row)
        preds.append(test.assign(mode=mode, logit=logits))
    (job / "metrics.json").write_text(_job_json(task, init, fraction, seed, rows, inputs))
    pd.concat(preds)[list(results.PREDICTION_COLUMNS)].to_csv(job / "predictions.tsv", sep="\t", index=False,
                                                               float_format="%.17g")
    return job / "metrics.json"


def _write_skipped(root: Path, task: str, init: str, fraction: float, seed: int, reason: str = REASON) -> Path:
    """What a job writes when its task cannot be evaluated: no rows, the reason, a header-only predictions.tsv."""
    job = root / task / init / f"f{fraction:g}" / f"seed{seed}"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(_job_json(task, init, fraction, seed, [], skipped=reason))
    (job / "predictions.tsv").write_text("\t".join(results.PREDICTION_COLUMNS) + "\n")
    return job / "metrics.json"


def _outputs(root: Path) -> dict[str, Path]:
    return {"table_csv": root / "table.csv", "summary_csv": root / "summary.csv", "summary_md": root / "summary.md",
            "figures_dir": root / "figures"}


def _run(paths: list[str], out: dict[str, Path], settings: dict | None = None) -> None:
    aggregate.run(paths, **{k: str(v) for k, v in out.items()}, settings=settings or SETTINGS)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("aggregate")
    paths = [str(_write_job(root / "jobs", t, i, f, s)) for t in TASKS for i in INITS for f in FRACTIONS for s in SEEDS]
    out = _outputs(root / "results")
    _run(paths, out)
    return {"paths": paths, "root": root, **out}


def test_table(study):
    table = pd.read_csv(study["table_csv"])
    assert len(table) == len(TASKS) * len(INITS) * len(FRACTIONS) * len(SEEDS) * 2
    assert list(table.columns) == result_table.TABLE_COLUMNS
    for col in ("task", "init", "mode", "inputs", "fraction", "seed", "auc", "auc_low", "auc_high", "balanced_accuracy",
                "balanced_accuracy_low", "balanced_accuracy_high", "sensitivity", "specificity", "val_auc",
                "n_train", "n_test", "n_test_pos", "n_train_subjects", "n_val_subjects", "n_test_subjects",
                "n_test_pos_subjects", "n_test_neg_subjects"):
        assert col in table.columns
    assert (table["n_test_subjects"] == N_SUBJECTS).all() and (table["n_test_neg_subjects"] == 25).all()
    assert table["fraction"].dtype == float and set(table["fraction"]) == set(FRACTIONS)
    assert ",1,0," in study["table_csv"].read_text()  # fraction 1 and seed 0 written as plain numbers
    for col in result_table.UNIT_KEYS:
        assert table[col].between(0, 1).all(), col
    assert table["init"].iloc[0] == "scratch"
    assert table[["task", "init", "mode", "fraction", "seed"]].apply(tuple, axis=1).is_monotonic_increasing


def test_rerun_is_byte_identical(study, tmp_path):
    out = _outputs(tmp_path)
    _run(list(reversed(study["paths"])), out)
    for key in ("table_csv", "summary_csv", "summary_md"):
        assert out[key].read_bytes() == study[key].read_bytes(), key


def test_summary_statistics(study):
    summary = pd.read_csv(study["summary_csv"])
    assert list(summary.columns) == ["heldout", *comparison.SUMMARY_COLUMNS]
    assert len(summary) == len(TASKS) * len(INITS) * len(FRACTIONS) * 2
    table = pd.read_csv(study["table_csv"])
    for r in summary.itertuples():
        g = table[(table.task == r.task) & (table.init == r.init) & (table["mode"] == r.mode)
                  & (table.fraction == r.fraction)]
        assert r.n_seeds == len(SEEDS)
        assert r.auc_mean == pytest.approx(statistics.mean(g.auc), abs=1e-5)
        assert r.auc_sd == pytest.approx(statistics.stdev(g.auc), abs=1e-5)
        assert r.balanced_accuracy_mean == pytest.approx(statistics.mean(g.balanced_accuracy), abs=1e-5)
        assert r.balanced_accuracy_sd == pytest.approx(statistics.stdev(g.balanced_accuracy), abs=1e-5)
    scratch = summary[summary.init == "scratch"]
    assert scratch[["n_paired", "auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_p", "auc_diff_seed_sd",
                    "auc_diff_p_holm"]].isna().all().all()


def test_paired_comparison(study):
    summary = pd.read_csv(study["summary_csv"])
    table = pd.read_csv(study["table_csv"])
    topc = summary[summary.init == "topc"]
    assert topc["n_paired"].eq(len(SEEDS)).all()
    for r in topc.itertuples():
        pair = table[(table.task == r.task) & (table["mode"] == r.mode) & (table.fraction == r.fraction)]
        diff = (pair[pair.init == "topc"].set_index("seed").auc - pair[pair.init == "scratch"].set_index("seed").auc)
        assert r.auc_diff == pytest.approx(diff.mean(), abs=1e-5)
        assert r.auc_diff_seed_sd == pytest.approx(diff.std(ddof=1), abs=1e-5)
        assert r.auc_diff_low <= r.auc_diff_high and r.auc_diff_p <= r.auc_diff_p_holm
    designed = topc[topc.task == "dx_cn_ad"]
    assert (designed.auc_diff > 0.3).all()
    # the primary setting's row is found; on 3 seeds whose differences share little through the test subjects
    # (here the inits read them alike: that part is estimated near or below 0), an interval has 1-2 degrees
    # of freedom, and two of the four rows' intervals reach below 0
    primary = designed[(designed["mode"] == "full") & (designed.fraction == 1.0)].iloc[0]
    assert primary.auc_diff_low > 0 and primary.auc_diff_p < 0.05
    # Holm over every task x init compared with scratch at one mode, inputs and fraction
    for _, g in topc.groupby(comparison.FAMILY):
        expected = metrics.holm(g.auc_diff_p)
        assert g.auc_diff_p_holm.to_numpy() == pytest.approx(expected, rel=1e-5)


def test_primary_comparison_leads_the_summary(study):
    text = study["summary_md"].read_text()
    primary, exploratory = text.index("## Primary comparison (pre-specified)"), text.index("## Exploratory")
    assert primary < exploratory and "Tasks not evaluated" not in text
    assert "test AUC of **topc** vs **scratch**, full fine-tuning, history inputs, label fraction 1." in text
    assert ("**The primary comparison favours topc on 1 of 2 tasks** (Holm-adjusted; simultaneous 95% intervals "
            "above 0), and scratch on 1 of 2.") in text
    assert "ssl" not in text.lower() and "best" not in text.lower()  # no best-of-N headline
    head = text[primary:exploratory]
    assert "simultaneous 95% CI" in head and "(each at 97.5%)" in head  # Bonferroni over 2 tasks
    assert "| 16/25 |" in head  # test subjects +/-
    exploratory_table = text[exploratory:text.index("## Training convergence")]  # convergence comes last
    assert exploratory_table.count("| dx_cn_ad |") == len(INITS) * len(FRACTIONS) * 2
    assert "Not adjusted for choosing among inits" in text
    # the primary rows are the summary's rows at that setting: same seeds, same draws
    table, _ = result_table.build_table(study["paths"], N_BOOT)
    prim = comparison.primary_comparison(table, PRIMARY, N_BOOT)
    summary = pd.read_csv(study["summary_csv"])
    at = summary[(summary.init == "topc") & (summary["mode"] == "full") & (summary.fraction == 1.0)].set_index("task")
    assert list(prim.task) == list(TASKS) and prim.n_seeds.eq(len(SEEDS)).all()
    assert (prim.n_test_subjects_pos == N_POS_SUBJECTS).all() and (prim.n_test_subjects_neg == 25).all()
    for r in prim.itertuples():
        for col in ("auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_p", "auc_diff_seed_sd"):
            assert getattr(r, col) == pytest.approx(at.at[r.task, col], abs=1e-5), col
        assert r.auc_diff_adj_low <= r.auc_diff_low <= r.auc_diff_high <= r.auc_diff_adj_high
    assert prim.set_index("task").favours.to_dict() == {"dx_cn_ad": True, "fut_mci_ad": False}
    # fut_mci_ad's planted loss (-0.17) is found too: there the test subjects' part, known to 15 degrees of
    # freedom, dominates (13 in all); with the seeds' 2 alone it stayed within its simultaneous interval
    assert prim.set_index("task").favours_reference.to_dict() == {"dx_cn_ad": False, "fut_mci_ad": True}
    assert prim.set_index("task").at["fut_mci_ad", "auc_diff_df"] > 10
    assert (prim.auc_diff_adj_df == prim.auc_diff_df).all()  # 3 seeds: one df for both intervals
    assert prim.auc_diff_p_holm.to_numpy() == pytest.approx(metrics.holm(prim.auc_diff_p))


def test_the_primary_section_warns_below_three_seeds(study):
    """With 2 seeds the calibration measures the t approximation missing both ways; with 1 the seeds'
    variance is not in the interval at all. 3 seeds (the fixture) get no warning."""
    text = study["summary_md"].read_text()
    assert "**Two fine-tuning seeds**" not in text and "**One fine-tuning seed**" not in text
    table, _ = result_table.build_table(study["paths"], N_BOOT)
    for n, words in ((2, "**Two fine-tuning seeds**: the seeds' part is known to about one degree"),
                     (1, "**One fine-tuning seed**: the intervals carry the test subjects' variance only")):
        few = table[table["seed"].isin(SEEDS[:n])]
        prim = comparison.primary_comparison(few, PRIMARY, N_BOOT)
        assert prim.n_seeds.eq(n).all()
        assert (prim.auc_diff_adj_df <= prim.auc_diff_df).all()
        assert words in "\n".join(summary_report._primary_section(prim, PRIMARY, few, N_BOOT, 0.95))


def test_controls_sit_beside_the_primary_comparison(study, tmp_path):
    """Control jobs of topc and scratch on dx_cn_ad, where topc's gain (planted) needs the history and
    not the times: with the index scan alone topc falls to scratch's strength, with shuffled times it
    keeps its own. summary.md reports both beside the primary comparison, from the same draws as
    summary.csv's rows."""
    planted = {"index": {"topc": EFFECT["dx_cn_ad", "scratch"], "scratch": EFFECT["dx_cn_ad", "scratch"]},
               "time_shuffled": {"topc": EFFECT["dx_cn_ad", "topc"], "scratch": EFFECT["dx_cn_ad", "scratch"]}}
    controls = [str(_write_job(tmp_path / "jobs" / inputs, "dx_cn_ad", init, 1.0, s, inputs=inputs, effect=e))
                for inputs, effects in planted.items() for init, e in effects.items() for s in SEEDS]
    out = _outputs(tmp_path / "results")
    _run(study["paths"] + controls, out)
    table = pd.read_csv(out["table_csv"])
    assert set(table["inputs"]) == {"history", "index", "time_shuffled"}
    assert len(table) == len(pd.read_csv(study["table_csv"])) + len(controls) * 2  # both modes of each job
    t, _ = result_table.build_table(study["paths"] + controls, N_BOOT)
    ctl = comparison.control_comparisons(t, PRIMARY, N_BOOT).set_index("inputs")
    assert list(ctl.columns) == [c for c in comparison.CONTROL_COLUMNS if c != "inputs"]
    assert list(ctl.index) == ["index", "time_shuffled"] and set(ctl["task"]) == {"dx_cn_ad"}
    index, shuffled = ctl.loc["index"], ctl.loc["time_shuffled"]
    assert index.init_change_low > 0 and index.auc_diff_low < 0.05  # the gain went with the history
    assert index.reference_change_low < 0 < index.reference_change_high
    assert shuffled.auc_diff > 0.3 and shuffled.init_change_low < 0 < shuffled.init_change_high  # times: no
    # each number is the paired one on the same test samples and seeds
    full = t[(t["mode"] == "full") & (t.fraction == 1.0) & (t.task == "dx_cn_ad")]
    auc = full.set_index(["init", "inputs", "seed"])["auc"]
    assert index.init_change == pytest.approx(np.mean([auc["topc", "history", s] - auc["topc", "index", s]
                                                       for s in SEEDS]))
    summary = pd.read_csv(out["summary_csv"]).set_index(["task", "init", "mode", "inputs", "fraction"])
    row = summary.loc[("dx_cn_ad", "topc", "full", "index", 1.0)]
    assert (row.auc_diff, row.auc_diff_low, row.auc_diff_high) == pytest.approx(
        (index.auc_diff, index.auc_diff_low, index.auc_diff_high), abs=1e-5)
    text = out["summary_md"].read_text()
    start = text.index("## Controls of the primary comparison")
    assert text.index("## Primary comparison") < start < text.index("## Exploratory")
    section = text[start:text.index("## Exploratory")]
    assert "| dx_cn_ad | history (primary) |" in section and "| dx_cn_ad | index |" in section
    assert "| dx_cn_ad | time_shuffled |" in section and "fut_mci_ad" not in section  # no controls there
    assert "Controls" not in study["summary_md"].read_text()  # a study without controls has no section
    # the primary comparison itself is unchanged by the control jobs
    head = text[:start]
    assert head == study["summary_md"].read_text()[:len(head)]


@pytest.mark.parametrize("change,expected", [
    ({"init": "tmp"}, "**Not made: no results of tmp at this setting**"),
    ({"reference": "external", "fraction": 0.2}, "**Not made: no results of topc and external at this setting**")])
def test_primary_without_results_says_so(study, tmp_path, change, expected):
    out = _outputs(tmp_path)
    _run(study["paths"], out, {**SETTINGS, "primary": {**PRIMARY, **change}})
    text = out["summary_md"].read_text()
    assert expected in text and "favours" not in text[:text.index("## Exploratory")]  # the exploratory claims stay
    assert len(pd.read_csv(out["summary_csv"])) == len(TASKS) * len(INITS) * len(FRACTIONS) * 2


@pytest.mark.parametrize("settings,key", [({"n_bootstrap": 100}, "primary"),
                                          ({**SETTINGS, "primary": {**PRIMARY, "mode": "frozen"}}, "primary.mode"),
                                          ({**SETTINGS, "primary": {**PRIMARY, "reference": "topc"}}, "primary.init"),
                                          ({**SETTINGS, "n_bootstrap": 0}, "n_bootstrap")])
def test_settings_are_checked(study, tmp_path, settings, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        _run(study["paths"], _outputs(tmp_path), settings)
    assert not (tmp_path / "table.csv").exists()


def test_too_few_test_subjects_give_no_claim(tmp_path):
    """2 positive and 4 negative test subjects: the report shows the unadjusted subject-level interval
    (wide, as it must be) but no adjusted interval, Holm p or verdict; one subject of a class gives
    no interval at all (a bootstrap over it has one distinct resample)."""
    small = TEST[TEST["participant_id"].isin([f"sub-{i:03d}" for i in (0, 1, 20, 21, 22, 23)])]
    paths = [str(_write_job(tmp_path / "jobs", t, i, 1.0, s, small)) for t in TASKS for i in INITS for s in SEEDS]
    out = _outputs(tmp_path / "results")
    _run(paths, out)
    text = out["summary_md"].read_text()
    assert "**No primary claim: every task compared has fewer than 10 positive or negative test subjects**" in text
    assert "| 2/4 |" in text and "favours topc" not in text and "too few subjects |" in text
    summary = pd.read_csv(out["summary_csv"])
    topc = summary[summary.init == "topc"]
    assert topc[["auc_diff", "auc_diff_seed_sd", "auc_diff_low", "auc_diff_high", "auc_diff_p"]].notna().all().all()
    assert (topc["auc_diff_high"] - topc["auc_diff_low"] > 0.3).all()  # honest width for six subjects
    # one truth in both summaries: no adjusted p where summary.md makes no claim, and the CSV says why
    assert topc["auc_diff_p_holm"].isna().all()
    assert set(topc["claim"]) <= {"too few test subjects", "primary: too few test subjects"}
    assert "primary: too few test subjects" in set(topc["claim"])
    assert "too few test subjects |" in text  # the exploratory table's claim column
    single = TEST[TEST["participant_id"].isin([f"sub-{i:03d}" for i in (0, 20, 21, 22)])]
    paths = [str(_write_job(tmp_path / "jobs1", t, i, 1.0, s, single)) for t in TASKS for i in INITS for s in SEEDS]
    out = _outputs(tmp_path / "results1")
    _run(paths, out)
    topc = pd.read_csv(out["summary_csv"]).query("init == 'topc'")
    assert topc[["auc_diff_low", "auc_diff_high", "auc_diff_p", "auc_diff_p_holm"]].isna().all().all()


def test_without_reference_comparison_is_empty(study, tmp_path):
    paths = [p for p in study["paths"] if "/scratch/" not in p]
    out = _outputs(tmp_path)
    _run(paths, out, {**SETTINGS, "n_bootstrap": 100})
    summary = pd.read_csv(out["summary_csv"])
    assert len(summary) == len(TASKS) * len(FRACTIONS) * 2
    assert summary[["auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_p", "auc_diff_p_holm"]].isna().all().all()
    assert "**Not made: no results of scratch at this setting**" in out["summary_md"].read_text()


def test_skipped_jobs_are_listed_not_tabled(study, tmp_path):
    jobs = tmp_path / "jobs"
    skipped = [str(_write_skipped(jobs, "det_cn_mci", i, f, s)) for i in INITS for f in FRACTIONS for s in SEEDS]
    odd = str(_write_skipped(jobs, "dx_cn_ad", "topc", 0.5, 7, "the training subset has no positive sample"))
    out = _outputs(tmp_path / "results")
    _run(study["paths"] + skipped + [odd], out)
    text = out["summary_md"].read_text()
    section = text[text.index("## Tasks not evaluated"):text.index("## Exploratory")]
    assert text.index("## Primary comparison") < text.index("## Tasks not evaluated")
    assert section.splitlines()[2:4] == [f"- det_cn_mci: {REASON} (12 of 12 jobs)",
                                         "- dx_cn_ad: the training subset has no positive sample (1 of 13 jobs)"]
    assert "det_cn_mci" not in out["table_csv"].read_text() and "det_cn_mci" not in out["summary_csv"].read_text()
    assert "on 1 of 2 tasks" in text and not (out["figures_dir"] / "det_cn_mci.png").exists()
    assert out["table_csv"].read_bytes() == study["table_csv"].read_bytes()
    assert result_table.load_metrics(skipped[0]) == []
    job, _ = results.read_job(skipped[0], required=("settings", "encoder", "curves"))  # as track-finetune reads it
    assert job["skipped"] == REASON and job["curves"] == {}
    table, skipped_df = result_table.build_table(study["paths"] + skipped, N_BOOT)
    assert len(table) == len(TASKS) * len(INITS) * len(FRACTIONS) * len(SEEDS) * 2
    assert list(skipped_df.columns) == result_table.SKIPPED_COLUMNS and len(skipped_df) == 12


def test_study_with_every_job_skipped_still_reports(tmp_path):
    paths = [str(_write_skipped(tmp_path / "jobs", t, i, 1.0, 0)) for t in TASKS for i in INITS]
    out = _outputs(tmp_path / "results")
    _run(paths, out)
    assert out["table_csv"].read_text() == ",".join(result_table.TABLE_COLUMNS) + "\n"
    assert out["summary_csv"].read_text() == ",".join(["heldout", *comparison.SUMMARY_COLUMNS]) + "\n"
    text = out["summary_md"].read_text()
    assert "**Not made: no results of topc and scratch at this setting**" in text
    assert f"- dx_cn_ad: {REASON} (2 of 2 jobs)" in text and f"- fut_mci_ad: {REASON} (2 of 2 jobs)" in text
    assert out["figures_dir"].is_dir() and not list(out["figures_dir"].iterdir())


@pytest.mark.parametrize("change,key", [({"skipped": ""}, "skipped"), ({"skipped": 3}, "skipped"),
                                        ({"rows": []}, "rows"), ({"skipped": REASON}, "rows")])
def test_skipped_must_be_consistent(study, tmp_path, change, key):
    job = {**json.loads(Path(study["paths"][0]).read_text()), **change}
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps(job))
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}.*'{key}'"):
        results.read_job(bad)


def test_predictions_need_full_precision_logits(study, tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "metrics.json").write_text(Path(study["paths"][0]).read_text())
    logits = np.array([0.1 + 0.2, 1 / 3, -2 / 7, 1e-17, 123456.789012345678])
    df = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(5)], "index_session": "ses-M000", "mode": "full",
                       "label": [0, 1, 0, 1, 1], "logit": logits})
    df.to_csv(job / "predictions.tsv", sep="\t", index=False, float_format="%.17g")
    got = result_table.Predictions().get(str(job / "metrics.json"), "full")
    assert got["logit"].dtype == np.float64 and (got["logit"].to_numpy() == logits).all()  # bit for bit
    df.rename(columns={"logit": "score"}).to_csv(job / "predictions.tsv", sep="\t", index=False)
    missing = rf"{re.escape(str(job / 'predictions.tsv'))}: missing column\(s\) \['logit'\]"
    with pytest.raises(ValueError, match=missing):
        result_table.Predictions().get(str(job / "metrics.json"), "full")


def _clustered_pairs(rng: np.random.Generator, n_seeds: int, tag: str = "", gain: float = 0.0,
                     seed_sd: float = 0.3) -> list[SeedPair]:
    """One simulated task: 30-40 test subjects with 1-4 samples each (10% with both labels), a subject
    latent in the signal shared by both inits; per init and seed a signal gain (seed-to-seed
    variation of the AUC), per-subject and per-sample noise and a global shift (harmless to the AUC).
    ``gain`` > 0 plants an advantage of init a (more label in its logits); with 0 the inits are
    exchangeable."""
    n_subjects = int(rng.integers(30, 41))
    n = rng.integers(1, 5, size=n_subjects)
    sub = np.repeat(np.arange(n_subjects), n)
    visit = np.concatenate([np.arange(k) for k in n])
    both = (rng.random(n_subjects) < 0.1) & (n > 1)
    y = np.where(both[sub], visit >= n[sub] // 2, (rng.random(n_subjects) < 0.4)[sub])
    groups = np.char.add(f"{tag}sub-", sub.astype(str))
    signal = y + 0.8 * rng.normal(size=n_subjects)[sub] + 0.4 * rng.normal(size=y.size)

    def logits(g: float) -> np.ndarray:
        return ((1 + seed_sd * rng.normal()) * signal + g * y + 0.6 * rng.normal(size=n_subjects)[sub]
                + 0.5 * rng.normal(size=y.size) + 2 * rng.normal())

    return [SeedPair(y, groups, logits(gain), logits(0.0)) for _ in range(n_seeds)]


def _naive(pairs: list[SeedPair], n_boot: int) -> comparison.Comparison:
    """A known-invalid comparison for the negative control: samples as units, seeds as if independent
    and without their spread, normal quantiles."""
    per_sample = [p._replace(groups=np.char.add(p.groups, np.arange(p.groups.size).astype(str))) for p in pairs]
    each = [comparison.paired_auc_diff([p], n_boot) for p in per_sample]
    return comparison.Comparison(np.concatenate([c.auc_a for c in each]), np.concatenate([c.auc_b for c in each]),
                                 float(np.sqrt(np.mean([c.se ** 2 for c in each]) / len(each))), math.inf,
                                 each[0].n_pos_subjects, each[0].n_neg_subjects)


def test_primary_rows_adjust_for_the_number_of_tasks():
    """Three tasks: one clearly better, one better only without adjustment, one worse."""
    diff, se = {"a": 0.2, "b": 0.1, "c": -0.3}, {"a": 0.05, "b": 0.045, "c": 0.05}
    comps = {t: comparison.Comparison(np.array([0.8 + d, 0.8 + d]), np.array([0.8, 0.8]), se[t], 40.0, 10, 12)
             for t, d in diff.items()}
    rows = comparison.primary_rows(comps, min_subjects=10).set_index("task")
    for t, d in diff.items():
        assert rows.at[t, "auc_diff_low"] == pytest.approx(d - stats.t.ppf(0.975, 40) * se[t])
        assert rows.at[t, "auc_diff_adj_low"] == pytest.approx(d - stats.t.ppf(1 - 0.05 / 3 / 2, 40) * se[t])
        assert rows.at[t, "auc_diff_adj_high"] == pytest.approx(d + stats.t.ppf(1 - 0.05 / 3 / 2, 40) * se[t])
        assert rows.at[t, "auc_diff_p"] == pytest.approx(2 * stats.t.sf(abs(d) / se[t], 40))
    assert rows.at["b", "auc_diff_low"] > 0 and rows.at["b", "auc_diff_adj_low"] < 0  # the case adjustment is for
    assert rows.favours.to_dict() == {"a": True, "b": False, "c": False}
    assert rows.favours_reference.to_dict() == {"a": False, "b": False, "c": True}
    assert rows.auc_diff_p_holm.to_numpy() == pytest.approx(metrics.holm(rows.auc_diff_p))
    assert (rows.auc_diff_seed_sd == 0).all() and (rows.n_test_subjects_pos == 10).all()
    assert comparison.primary_rows({}, min_subjects=10).empty
    # a task with too few test subjects for a claim: its unadjusted interval, no verdict, not in the family
    comps["d"] = comparison.Comparison(np.array([0.9]), np.array([0.6]), 0.05, 10.0, 3, 12)
    rows4 = comparison.primary_rows(comps, min_subjects=10).set_index("task")
    assert rows4.at["d", "auc_diff"] == pytest.approx(0.3) and not rows4.at["d", "favours"]
    assert rows4.loc["d", ["auc_diff_low", "auc_diff_p"]].notna().all()
    assert rows4.loc["d", ["auc_diff_adj_low", "auc_diff_p_holm"]].isna().all()
    assert rows4.drop(index="d").equals(rows)  # m stays 3
    # the threshold is the study's (study.primary.min_test_subjects)
    assert comparison.primary_rows(comps, min_subjects=3).set_index("task").at["d", "favours"]


def test_duplicating_samples_leaves_paired_interval_unchanged():
    pairs = _clustered_pairs(np.random.default_rng(0), 3)
    doubled = [SeedPair(*(np.r_[x, x] for x in p)) for p in pairs]
    c, c2 = comparison.paired_auc_diff(pairs, 500, 1), comparison.paired_auc_diff(doubled, 500, 1)
    assert (c2.se, c2.df) == (c.se, c.df) and c2.interval(0.95) == c.interval(0.95) and c2.p == c.p  # exactly
    assert c2.diff == pytest.approx(c.diff, abs=1e-15) and c2.seed_sd == pytest.approx(c.seed_sd, abs=1e-15)
    # with every sample its own unit, copies count as evidence and the interval shrinks (one seed: the
    # test-subject part alone)
    unit = lambda ps: [p._replace(groups=np.char.add(p.groups, np.arange(p.groups.size).astype(str))) for p in ps]
    low, high = comparison.paired_auc_diff(unit(pairs[:1]), 500, 1).interval(0.95)
    low2, high2 = comparison.paired_auc_diff(unit(doubled[:1]), 500, 1).interval(0.95)
    assert high2 - low2 < 0.85 * (high - low)
    # one seed: no seed draws, the subject draws alone
    one = comparison.paired_auc_diff(pairs[:1], 500, 1)
    assert np.isnan(one.seed_sd) and one.n_seeds == 1


def test_crossed_seeds_widen_the_interval_when_pretraining_runs_differ():
    """3 pretraining runs x 2 fine-tuning seeds whose runs differ a lot: drawn as 6 independent seeds the
    interval ignores that pairs of one run share it; drawn as crossed factors it is wider. Same point
    estimate and per-seed AUCs either way; an incomplete grid is refused."""
    rng = np.random.default_rng(4)
    base = _clustered_pairs(rng, 2, seed_sd=0.0)
    run_gain = (-2.0, 0.0, 2.0)
    pairs = [p._replace(a=p.a + g * p.labels) for g in run_gain for p in base]
    levels = [(run, seed) for run in range(3) for seed in range(2)]
    iid = comparison.paired_auc_diff(pairs, 500, 2)
    crossed = comparison.paired_auc_diff(pairs, 500, 2, crossed=levels)
    assert crossed.diff == iid.diff and (crossed.auc_a == iid.auc_a).all()
    width = lambda c: np.subtract(*c.interval(0.95)[::-1])
    assert width(crossed) > 1.15 * width(iid), (width(crossed), width(iid))
    with pytest.raises(ValueError, match="complete grid"):
        comparison.paired_auc_diff(pairs[:5], 100, crossed=levels[:5])
    with pytest.raises(ValueError, match="one .* per pair"):
        comparison.paired_auc_diff(pairs, 100, crossed=levels[:5])


def test_simultaneous_intervals_with_two_seeds_count_the_subject_noise_the_seeds_carry():
    """With 2 seeds the seeds' spread has one degree of freedom; where it falls below the part of the test
    subjects' variance that the two cells do not share (each model's own reading of the subjects, which
    the spread contains), that is chance, and the simultaneous interval's degrees of freedom count that
    part instead: fewer than the 95% interval's, so a wider interval than a t on :attr:`df`. A spread
    above it leaves them alone, and with 3 seeds there is no second df. Without the rule the simultaneous
    intervals covered 0.86-0.92 at 2 seeds (benchmarks/calibration.py)."""
    rng = np.random.default_rng(11)
    low_spread = 0
    for _ in range(30):
        pairs = _clustered_pairs(rng, 3, seed_sd=0.0)
        c = comparison.paired_auc_diff(pairs[:2], 300, 3)
        level = 1 - 0.05 / 3
        on_df = c.diff + np.array([-1, 1]) * stats.t.ppf(0.5 + level / 2, c.df) * c.se
        d = c.auc_a - c.auc_b
        spread = (d[0] - d[1]) ** 2 / 4
        if c.df_simultaneous < c.df:
            low_spread += 1
            assert c.df_simultaneous >= 0.5
            low, high = c.interval(level, simultaneous=True)
            assert low < on_df[0] and high > on_df[1] or low == -1.0 or high == 1.0
        else:
            assert c.df_simultaneous == c.df and c.interval(level, simultaneous=True) == c.interval(level)
            assert spread > 0
        assert comparison.paired_auc_diff(pairs, 300, 3).df_simultaneous is None
    assert 3 <= low_spread <= 27, low_spread  # both cases occur


def _pretrained_study(root: Path, run_gain: tuple[float, ...]) -> list[str]:
    """dx_cn_ad, topc from len(run_gain) pretraining runs x SEEDS vs scratch (SEEDS): each run's logits
    gain ``run_gain[run]`` on the positives (a planted pretraining-seed effect); jobs as the workflow
    writes them (topc's metrics.json carry their pretrain_seed)."""
    paths = [str(_write_job(root, "dx_cn_ad", "scratch", 1.0, s)) for s in SEEDS]
    for run, gain in enumerate(run_gain):
        for s in SEEDS:
            path = _write_job(root / f"pretrain-seed-{run}", "dx_cn_ad", "topc", 1.0, s)
            job = json.loads(path.read_text())
            preds = pd.read_csv(path.parent / "predictions.tsv", sep="\t", dtype={"participant_id": str})
            preds["logit"] += gain * preds["label"]
            preds.to_csv(path.parent / "predictions.tsv", sep="\t", index=False, float_format="%.17g")
            for row in job["rows"]:
                part = preds[preds["mode"] == row["mode"]]
                row.update(metrics.binary_metrics(part["label"].to_numpy(), part["logit"].to_numpy(), 0.0))
            path.write_text(json.dumps({**job, "pretrain_seed": run}))
            paths.append(str(path))
    return paths


def test_pretraining_runs_are_crossed_with_seeds_and_their_spread_reported(tmp_path):
    """3 pretraining runs of topc x 2 seeds against scratch: table.csv keeps each run's rows, the primary
    comparison treats runs and seeds as crossed factors (the interval paired_auc_diff gives with
    ``crossed``), and a planted run effect shows as the pretraining sd and raises the standard error
    against the same study whose runs do not differ."""
    found = {}
    for name, gains in (("planted", (-1.5, 0.0, 1.5)), ("none", (0.0, 0.0, 0.0))):
        root = tmp_path / name
        paths = _pretrained_study(root, gains)
        out = _outputs(root)
        _run(paths, out)
        table = pd.read_csv(out["table_csv"])
        topc = table[table["init"] == "topc"]
        assert sorted(set(topc["pretrain_seed"])) == [0, 1, 2] and table.loc[table["init"] == "scratch",
                                                                               "pretrain_seed"].isna().all()
        summary = pd.read_csv(out["summary_csv"])
        row = summary[(summary["init"] == "topc") & (summary["mode"] == "full")].iloc[0]
        assert (row.n_seeds, row.n_pretrain_seeds, row.n_paired) == (3, 3, 9)
        found[name] = row
        built, _ = result_table.build_table(paths, N_BOOT)
        at = lambda init: built[(built["init"] == init) & (built["mode"] == "full")]
        cells = comparison.matched_cells(at("topc"), at("scratch"))
        assert [(c.run, c.seed) for c in cells] == [(r, s) for r in range(3) for s in SEEDS]
        preds = result_table.Predictions()
        direct = comparison.paired_auc_diff(comparison.seed_pairs(cells, "full", preds), N_BOOT, 0,
                                           crossed=[(c.run, c.seed) for c in cells])
        assert (row.auc_diff_low, row.auc_diff_high) == pytest.approx(direct.interval(0.95), abs=1e-6)  # csv: 6 digits
        found[name + " se"] = direct.se
        md = out["summary_md"].read_text()
        assert "pretraining sd" in md and "3 × 3" in md
    planted, none = found["planted"], found["none"]
    assert planted.auc_diff_pretrain_sd > 3 * none.auc_diff_pretrain_sd
    assert planted.auc_pretrain_sd > 3 * none.auc_pretrain_sd
    # its standard error (the interval's width also moves with the degrees of freedom, 1-2 with 2 seeds)
    assert found["planted se"] > 1.3 * found["none se"], (found["planted se"], found["none se"])


def test_planted_null_rarely_claims_a_task():
    """Exchangeable inits, 7 tasks x 3 seeds: the headline's false-claim rate must stay below 5%, and the
    unadjusted 95% intervals exclude 0 in about 5% of comparisons.

    Measured (n_boot 400): these 200 draws give 9 claims (4.5%), and the unadjusted intervals excluded 0
    in 2.8% of the 1,400 comparisons (2.3-2.7% on three other seeds of the test: this design has no
    subject x init interaction, where the t intervals are conservative; the bootstrap that resampled
    subjects and seeds together gave 1.7%). Negative control on the same data: samples as units, the
    seeds' spread left out, claims a task in 61 of 200 draws (30%), so the design can expose an invalid
    rule. Takes ~12 s.
    """
    rng, n_boot, n_draws = np.random.default_rng(11), 400, 200
    claims = naive_claims = rejected = 0
    for d in range(n_draws):
        tasks = {f"task{t}": _clustered_pairs(rng, 3, f"d{d}t{t}-") for t in range(7)}
        rows = comparison.primary_rows({t: comparison.paired_auc_diff(p, n_boot) for t, p in tasks.items()},
                                       min_subjects=10)
        claims += bool(rows["favours"].any())
        rejected += int((rows["auc_diff_p"] < 0.05).sum())
        naive = comparison.primary_rows({t: _naive(p, n_boot) for t, p in tasks.items()}, min_subjects=10)
        naive_claims += bool(naive["favours"].any())
    assert claims / n_draws <= 0.05
    assert 0.025 <= rejected / (7 * n_draws) <= 0.075, rejected
    assert naive_claims / n_draws > 0.1


def test_planted_effect_is_claimed():
    """A planted advantage of about +0.2 AUC on every task, 5 seeds, is claimed on most tasks in every
    draw (measured: 5-7 of 7, mean 6.3; 0-5, mean 2.6 with 3 seeds). The t intervals' degrees of freedom
    count the test subjects' part with its own (before, only the seeds': 1-6 of 7, mean 3, at 5 seeds)."""
    rng, n_boot = np.random.default_rng(12), 400
    claimed = []
    for d in range(10):
        tasks = {f"task{t}": _clustered_pairs(rng, 5, f"d{d}t{t}-", gain=1.5) for t in range(7)}
        rows = comparison.primary_rows({t: comparison.paired_auc_diff(p, n_boot) for t, p in tasks.items()},
                                       min_subjects=10)
        assert not rows["favours_reference"].any()
        claimed.append(int(rows["favours"].sum()))
    assert min(claimed) >= 4 and np.mean(claimed) >= 5, claimed


def test_intervals_come_from_aggregation_with_its_number_of_resamples(study):
    """The jobs write no interval; the table's are the subject bootstrap of each job's predictions at
    its threshold, with aggregation's n_bootstrap and the job's seed."""
    rows = json.loads(Path(study["paths"][0]).read_text())["rows"]
    assert rows and not any(k.endswith(("_low", "_high")) for r in rows for k in r)
    table = pd.read_csv(study["table_csv"])
    row = table.iloc[5]
    source = next(p for p in study["paths"] if f"/{row.task}/{row.init}/f{row.fraction:g}/seed{row.seed}/" in p)
    preds = pd.read_csv(Path(source).with_name("predictions.tsv"), sep="\t")
    preds = preds[preds["mode"] == row["mode"]]
    ci = metrics.bootstrap(preds["label"], preds["logit"], row.threshold, groups=preds["participant_id"], n=N_BOOT,
                           seed=int(row.seed))
    for m in metrics.METRICS:
        assert (row[f"{m}_low"], row[f"{m}_high"]) == pytest.approx(ci[m], abs=1e-6), m
    fewer = metrics.bootstrap(preds["label"], preds["logit"], row.threshold, groups=preds["participant_id"], n=100,
                              seed=int(row.seed))
    assert fewer["auc"] != ci["auc"]


def test_figures(study):
    for task in TASKS:
        png = study["figures_dir"] / f"{task}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000


@pytest.mark.parametrize("key,change", [("auc", None), ("specificity", 1.2), ("seed", "zero")])
def test_broken_metrics_json_names_file_and_key(study, tmp_path, key, change):
    job = json.loads(Path(study["paths"][0]).read_text())
    if key == "seed":
        job["seed"] = change
    elif change is None:
        del job["rows"][1][key]
    else:
        job["rows"][0][key] = change
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(job))
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}.*'{key}'"):
        _run(study["paths"][1:] + [str(bad)], _outputs(tmp_path))
    assert not (tmp_path / "table.csv").exists()


def test_duplicate_job_is_an_error(study):
    with pytest.raises(ValueError, match="more than once"):
        result_table.build_table(study["paths"] + study["paths"][:1], N_BOOT)


def test_qc_mosaic(tmp_path):
    rows = []
    for i, ok in enumerate((True, True, False)):
        arr = tmp_path / f"sub-{i:03d}.npy"
        vol = np.zeros((12, 14, 10), np.float16)
        vol[3:9, 3:11, 2:8] = 1 + i
        np.save(arr, vol)
        rows.append({"participant_id": f"sub-{i:03d}", "session_id": "ses-M000", "qc_pass": str(ok),
                     "qc_reason": "" if ok else "template correlation 0.41 < 0.6", "array": str(arr)})
    rows.append({"participant_id": "sub-009", "session_id": "ses-M006", "qc_pass": "False",
                 "qc_reason": "preprocessing failed (RuntimeError: registration diverged)", "array": ""})
    qc = tmp_path / "qc.tsv"
    pd.DataFrame(rows).to_csv(qc, sep="\t", index=False)
    out = tmp_path / "qc" / "mosaic.png"
    qc_mosaic.run(str(qc), str(out), max_scans=2)
    data = out.read_bytes()
    assert data[:8] == PNG and 5_000 < len(data) < 5_000_000
    shown = qc_mosaic.select(pd.read_csv(qc, sep="\t", keep_default_na=False), 2)
    assert list(shown["participant_id"]) == ["sub-002", "sub-009"]  # both failures, no room for passes
    assert list(qc_mosaic.select(pd.read_csv(qc, sep="\t", keep_default_na=False), 3)["participant_id"]) == \
        ["sub-002", "sub-009", "sub-000"]  # failures first


def test_track_finetune_logs_each_result_once_and_names_broken_files(study, tmp_path):
    from mlflow.tracking import MlflowClient

    from sslad.tracking import create_store, log_finetune_runs, uri

    db, out = tmp_path / "mlflow.db", tmp_path / "runs.tsv"
    create_store(db)
    log_finetune_runs(db, study["paths"][:3], out)
    log_finetune_runs(db, study["paths"][:5], out)  # a rerun: only the two new results are logged
    runs = pd.read_csv(out, sep="\t")
    assert runs["new"].tolist() == [False, False, False, True, True]
    client = MlflowClient(tracking_uri=uri(db))
    logged = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    assert sorted(r.info.run_id for r in logged) == sorted(runs["run_id"])
    assert {r.data.tags["init"] for r in logged} <= set(INITS) and all(r.data.params["lr"] == "0.001" for r in logged)
    broken = tmp_path / "metrics.json"
    broken.write_text(json.dumps({k: v for k, v in json.loads(Path(study["paths"][0]).read_text()).items()
                                  if k != "settings"}))
    with pytest.raises(ValueError, match=f"{broken}: missing key 'settings'"):
        log_finetune_runs(db, [str(broken)], out)
    broken.write_text("{ not json")
    with pytest.raises(ValueError, match=f"{broken}: cannot read metrics"):
        log_finetune_runs(db, [str(broken)], out)


def test_rows_per_test_cohort_and_held_out_sections(study, tmp_path):
    """With each test subject's cohort, every job row is followed by one row per test cohort: the same
    logits and threshold scored on that cohort's subjects; a cohort part with one class is reported in
    summary.md, not scored. Jobs that hold out a cohort are summarised per held-out cohort."""
    subjects = tmp_path / "subjects.tsv"
    # cohort B: positives 0-5 and negatives 16-23; cohort C: the rest; cohort D: subject 39 alone (negative)
    cohort = {f"sub-{i:03d}": "B" if i < 6 or 16 <= i < 24 else ("D" if i == 39 else "C") for i in range(N_SUBJECTS)}
    pd.DataFrame({"participant_id": list(cohort), "cohort": list(cohort.values())}).to_csv(subjects, sep="\t",
                                                                                          index=False)
    out = _outputs(tmp_path / "results")
    aggregate.run(study["paths"], **{k: str(v) for k, v in out.items()}, settings=SETTINGS,
                  subjects_tsv=str(subjects))
    table = pd.read_csv(out["table_csv"], keep_default_na=False)
    whole, parts = table[table["test_cohort"] == "all"], table[table["test_cohort"] != "all"]
    assert len(whole) == len(TASKS) * len(INITS) * len(FRACTIONS) * len(SEEDS) * 2
    assert set(parts["test_cohort"]) == {"B", "C"}
    assert table["test_cohort"].tolist()[:3] == ["all", "B", "C"]  # a job's rows together, the whole split first
    first = whole.iloc[0]
    preds = pd.read_csv(Path(study["paths"][0]).parent / "predictions.tsv", sep="\t")
    job = json.loads(Path(study["paths"][0]).read_text())
    assert (job["task"], job["init"]) == (first["task"], first["init"])
    p = preds[(preds["mode"] == first["mode"]) & preds["participant_id"].map(cohort).eq("B").to_numpy()]
    row = parts[(parts["task"] == first["task"]) & (parts["init"] == first["init"]) & (parts["mode"] == first["mode"])
                & (parts["fraction"] == first["fraction"]) & (parts["seed"] == first["seed"])
                & (parts["test_cohort"] == "B")].iloc[0]
    assert row["auc"] == pytest.approx(metrics.auc(p["label"], p["logit"]), abs=1e-6)
    assert row["threshold"] == first["threshold"] and row["n_test_subjects"] == 14 and row["n_test"] == len(p)
    md = out["summary_md"].read_text()
    assert "## By test cohort" in md and "on D: not scored (1 test subjects, all negative" in md
    # the same jobs as a leave-one-cohort-out study holding out X (two folds: X and Y)
    folds = []
    for path in study["paths"]:
        job = json.loads(Path(path).read_text())
        for heldout in ("X", "Y"):
            d = tmp_path / "loco" / heldout / Path(path).parent.relative_to(study["root"])
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({**job, "heldout": heldout}))
            shutil.copy(Path(path).parent / "predictions.tsv", d / "predictions.tsv")
            folds.append(str(d / "metrics.json"))
    out = _outputs(tmp_path / "loco-results")
    _run(folds, out)
    table = pd.read_csv(out["table_csv"])
    assert set(table["heldout"]) == {"X", "Y"} and len(table) == 2 * len(whole)
    md = out["summary_md"].read_text()
    assert "## Held-out cohort X" in md and "## Held-out cohort Y" in md and "### Primary comparison" in md
    assert set(pd.read_csv(out["summary_csv"])["heldout"]) == {"X", "Y"}
