"""The workflow as a user runs it: a real Snakemake run of the tiny study in a fresh directory."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["dx_cn_ad", "det_mci_ad"]  # those of .test/config.yaml
INITS = ["scratch", "simclr", "top", "tcl", "tmp", "topc"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", ".test/config.yaml"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs a dry run plans (from its job-stats table)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    jobs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "all"):
            jobs[parts[0]] = int(parts[1])
    return jobs


def planned_rules(workdir: Path, *args: str) -> set[str]:
    return set(planned_jobs(workdir, *args))


def set_config(workdir: Path, block: str, key: str, value) -> None:
    """Edit config.yaml as a user would (``key`` may be dotted: methods.top.hidden)."""
    path = workdir / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = cfg[block]
    for p in parents:
        node = node[p]
    node[last] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A fresh copy of the workflow, run once end to end."""
    work = tmp_path_factory.mktemp("study")
    for item in ("Snakefile", "config.yaml", "workflow", "envs", ".test"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / item)
    snakemake(work)
    return work


def test_run_preprocesses_every_scan_and_gates_the_manifest(study):
    scans = (study / "results/cohort/scans.tsv").read_text().splitlines()[1:]
    qc = (study / "results/preproc/qc.tsv").read_text().splitlines()
    assert len(qc) - 1 == len(scans) > 20
    failed = [line.split("\t")[:2] for line in qc[1:] if "\tTrue\t" not in line]
    assert len(failed) <= len(scans) // 20  # at 6 mm an odd registration fails; QC must catch it ...
    excluded = (study / "results/manifest/excluded.tsv").read_text()
    assert all(f"{sub}\t{ses}\tqc\t" in excluded for sub, ses in failed)  # ... and list it with its reason
    assert len(list((study / "results/preproc").rglob("*_qc.png"))) == len(scans)
    visits = (study / "results/manifest/visits.tsv").read_text().splitlines()
    assert visits[0].endswith("\tarray") and len(visits) == len(qc) - len(failed)


def test_run_writes_every_task_table(study):
    for task in TASKS:
        t = (study / "results/manifest/tasks" / f"{task}.tsv").read_text().splitlines()
        assert t[0].startswith("participant_id\tindex_session\tinput_sessions")
        assert len(t) > 1
    log = (study / "results/logs/manifest.log").read_text()
    assert all(f"{t}: " in log and "subjects (train: " in log for t in TASKS)
    # the record keeps the simulated visits without an image; they are no model input
    record = (study / "results/cohort/record.tsv").read_text().splitlines()
    scans = (study / "results/cohort/scans.tsv").read_text().splitlines()
    assert len(record) > len(scans) and "no T1w image (clinical visit" in (study / "results/cohort/excluded.tsv").read_text()
    assert planned_rules(study) == set()  # nothing left to do


def test_run_produces_the_table_summary_figures_and_tracking(study):
    import pandas as pd

    table = pd.read_csv(study / "results/table.csv")
    assert len(table) == len(TASKS) * len(INITS) * 2  # x modes (full, probe), one fraction, one seed
    assert set(table["init"]) == set(INITS) and set(table["mode"]) == {"full", "probe"}
    assert table["fraction"].tolist() == [1.0] * len(table)
    for col in ("auc", "balanced_accuracy"):
        assert table[col].between(0, 1).all()
    assert (study / "results/summary.csv").exists() and (study / "results/summary.md").exists()
    assert sorted(p.name for p in (study / "results/figures").glob("*.png")) == sorted(f"{t}.png" for t in TASKS)
    assert (study / "results/preproc/qc_mosaic.png").stat().st_size > 10_000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'results/mlflow/mlflow.db'}")
    runs = {e: client.search_runs([client.get_experiment_by_name(e).experiment_id]) for e in ("pretrain", "finetune")}
    assert sorted(r.data.tags["method"] for r in runs["pretrain"]) == sorted(INITS[1:])
    assert len(runs["finetune"]) == len(TASKS) * len(INITS)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 2 for r in runs["pretrain"])


def test_scores_are_full_precision_logits_and_counts_are_reported(study):
    import json

    import pandas as pd

    from sslad.metrics import auc

    table = pd.read_csv(study / "results/table.csv")
    for col in ("n_train", "n_val", "n_test", "n_train_subjects", "n_val_subjects", "n_test_subjects"):
        assert (table[col] > 0).all(), col
    assert (table["n_test_subjects"] <= table["n_test"]).all()
    job = study / "results/finetune" / TASKS[0] / "topc/frac-1/seed-0"
    text = (job / "predictions.tsv").read_text()
    preds = pd.read_csv(job / "predictions.tsv", sep="\t", dtype={"logit": "float64"})
    assert "logit" in preds.columns and "score" not in preds.columns
    assert all(repr(float(v)) in text or f"{v:.17g}" in text for v in preds["logit"])  # round-trips
    rows = {r["mode"]: r for r in json.loads((job / "metrics.json").read_text())["rows"]}
    for mode, part in preds.groupby("mode"):
        assert auc(part["label"], part["logit"]) == pytest.approx(rows[mode]["auc"], abs=1e-12)


def test_learning_edits_rerun_only_what_they_affect(study):
    set_config(study, "finetune", "lr", 0.002)
    assert planned_jobs(study) == {"finetune": len(TASKS) * len(INITS), "track_finetune": 1, "aggregate": 1}
    set_config(study, "finetune", "lr", 0.001)
    set_config(study, "pretrain", "methods.top.hidden", 32)
    assert planned_jobs(study) == {"pretrain": 1, "finetune": len(TASKS), "track_finetune": 1, "aggregate": 1}
    set_config(study, "pretrain", "methods.top.hidden", 64)
    # an augmentation recipe reruns the methods that use it: the temporal one all but simclr
    set_config(study, "pretrain", "augment.temporal.p_gamma", 0.5)
    assert planned_jobs(study) == {"pretrain": 4, "finetune": 4 * len(TASKS), "track_finetune": 1, "aggregate": 1}
    set_config(study, "pretrain", "augment.temporal.p_gamma", 0.8)
    # validation subsampling: the fractions and what follows; the primary comparison: aggregation only
    set_config(study, "study", "subsample_validation", False)
    assert planned_jobs(study) == {"label_fraction": len(TASKS), "finetune": len(TASKS) * len(INITS),
                                   "track_finetune": 1, "aggregate": 1}
    set_config(study, "study", "subsample_validation", True)
    set_config(study, "study", "primary.init", "top")
    assert planned_jobs(study) == {"aggregate": 1}
    set_config(study, "study", "primary.init", "topc")
    # one new fraction and one new seed (the grid comes from .test/config.yaml, so --config it):
    # only the three new (fraction, seed) cells per task x init
    grown = planned_jobs(study, "--config", "study={seeds: [0, 1], label_fractions: [0.5, 1.0]}")
    assert grown == {"label_fraction": 3 * len(TASKS), "finetune": 3 * len(TASKS) * len(INITS),
                     "track_finetune": 1, "aggregate": 1}
    assert planned_jobs(study) == {}


def test_finetuning_is_deterministic_and_the_report_builds(study):
    before = (study / "results/table.csv").read_bytes()
    snakemake(study, "--forcerun", "finetune")
    assert (study / "results/table.csv").read_bytes() == before
    tracked = (study / "results/mlflow/finetune_runs.tsv").read_text().splitlines()
    assert len(tracked) == 1 + len(TASKS) * len(INITS) and all("\tFalse\t" in r for r in tracked[1:])  # no duplicates
    snakemake(study, "--report", "results/report.html")
    html = (study / "results/report.html").read_text(errors="replace")
    for name in ("table.csv", "summary.csv", "qc_mosaic.png", "dx_cn_ad.png"):
        assert name in html


def test_config_edit_reruns_only_affected_stages(study):
    bids_files = sorted((study / "results/cohort/bids").rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in bids_files}
    before = (study / "results/manifest/tasks" / f"{TASKS[-1]}.tsv").stat().st_mtime_ns
    # a label setting: the splits are stratified on the labels, so the manifest, and pretraining
    # (which must not see the test split), rerun; never the cohort or preprocessing
    set_config(study, "manifest", "horizon_months", 24)
    planned = planned_rules(study)
    assert {"manifest", "label_fraction", "pretrain", "finetune"} <= planned
    assert not planned & {"simulate_cohort", "cohort", "preprocess", "qc_table"}
    snakemake(study, f"results/manifest/tasks/{TASKS[-1]}.tsv")
    assert (study / "results/manifest/tasks" / f"{TASKS[-1]}.tsv").stat().st_mtime_ns > before
    assert {p: p.stat().st_mtime_ns for p in sorted((study / "results/cohort/bids").rglob("*"))} == mtimes
    set_config(study, "preprocess", "registration", "rigid")
    planned = planned_rules(study)
    assert {"preprocess", "qc_table", "manifest"} <= planned and "simulate_cohort" not in planned
    set_config(study, "preprocess", "registration", "affine")
    set_config(study, "simulate", "seed", 7)
    # preprocess jobs appear once the cohort checkpoint has rerun; a dry run shows what leads there
    assert {"simulate_cohort", "cohort", "manifest"} <= planned_rules(study)
    set_config(study, "simulate", "seed", 42)
    assert not planned_rules(study) & {"simulate_cohort", "cohort", "template", "preprocess", "qc_table", "manifest"}


def test_qc_threshold_edit_reruns_no_preprocessing(study):
    # the verdict is the QC table's: a threshold edit re-judges the scans without registering them again
    set_config(study, "preprocess", "qc.min_template_correlation", 0.7)
    planned = planned_jobs(study)
    assert "preprocess" not in planned and planned.get("qc_table") == 1, planned
    set_config(study, "preprocess", "qc.min_template_correlation", 0.6)
    set_config(study, "preprocess", "qc.brain_volume_ml", [700, 2600])
    planned = planned_jobs(study)
    assert "preprocess" not in planned and planned.get("qc_table") == 1, planned
    set_config(study, "preprocess", "qc.brain_volume_ml", [800, 2500])
    assert not planned_rules(study) & {"preprocess", "qc_table"}


def test_manifest_rerun_is_byte_identical(study):
    snakemake(study, "results/manifest/visits.tsv")
    first = study / "first"
    shutil.copytree(study / "results/manifest", first)
    # the target first: --forcerun takes every name after it, and would leave the default target
    snakemake(study, "results/manifest/visits.tsv", "--forcerun", "manifest")
    assert not (study / "results/table.csv").stat().st_mtime_ns > (first / "visits.tsv").stat().st_mtime_ns
    files = [str(p.relative_to(first)) for p in first.rglob("*.tsv")]
    _, mismatch, errors = filecmp.cmpfiles(first, study / "results/manifest", files, shallow=False)
    assert files and not mismatch and not errors


@pytest.mark.parametrize("override, key", [
    ("study={label_fractions: [0.5, 1.5]}", "study.label_fractions.1"),
    ("study={tasks: [dx_cn_ad, dx_cn_pd]}", "study.tasks.1"),
    ("manifest={split: {val: 0.2, test: 0.9}}", "manifest.split.test"),
])
def test_bad_config_fails_before_any_job(tmp_path, override, key):
    for item in ("Snakefile", "config.yaml", "workflow", "envs", ".test"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / item)
    proc = snakemake(tmp_path, "--config", override, check=False)
    assert proc.returncode != 0
    assert f"config key {key}:" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_lint_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    test_cmd = next(line for line in ci.splitlines() if line.startswith("python3.11 -m venv"))
    assert test_cmd in readme
