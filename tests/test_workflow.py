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
TASKS = ["dx_cn_ad", "det_mci_ad", "fut_mci_ad"]  # those of .test/config.yaml


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", ".test/config.yaml"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_rules(workdir: Path, *args: str) -> set[str]:
    out = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0] in
            {"simulate_cohort", "cohort", "template", "preprocess", "qc_table", "manifest"}}


def set_config(workdir: Path, block: str, key: str, value) -> None:
    path = workdir / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg[block][key] = value
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
    assert all("\tTrue\t" in line for line in qc[1:])  # the simulated scans all pass QC
    assert len(list((study / "results/preproc").rglob("*_qc.png"))) == len(scans)
    visits = (study / "results/manifest/visits.tsv").read_text().splitlines()
    assert visits[0].endswith("\tarray") and len(visits) == len(qc)


def test_run_writes_every_task_table(study):
    for task in TASKS:
        t = (study / "results/manifest/tasks" / f"{task}.tsv").read_text().splitlines()
        assert t[0].startswith("participant_id\tindex_session\tinput_sessions")
        assert len(t) > 1
    assert (study / "results/logs/manifest.log").read_text().count("samples of") == len(TASKS)
    assert planned_rules(study) == set()  # nothing left to do


def test_config_edit_reruns_only_affected_stages(study):
    bids_files = sorted((study / "results/cohort/bids").rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in bids_files}
    before = (study / "results/manifest/tasks/fut_mci_ad.tsv").stat().st_mtime_ns
    set_config(study, "manifest", "horizon_months", 24)
    assert planned_rules(study) == {"manifest"}
    snakemake(study)
    assert (study / "results/manifest/tasks/fut_mci_ad.tsv").stat().st_mtime_ns > before
    assert {p: p.stat().st_mtime_ns for p in sorted((study / "results/cohort/bids").rglob("*"))} == mtimes
    set_config(study, "preprocess", "registration", "rigid")
    assert planned_rules(study) == {"preprocess", "qc_table", "manifest"}
    set_config(study, "preprocess", "registration", "affine")
    set_config(study, "simulate", "seed", 7)
    # preprocess jobs appear once the cohort checkpoint has rerun; a dry run shows what leads there
    assert {"simulate_cohort", "cohort", "manifest"} <= planned_rules(study)
    set_config(study, "simulate", "seed", 42)
    assert planned_rules(study) == set()


def test_manifest_rerun_is_byte_identical(study):
    snakemake(study, "results/manifest/visits.tsv")
    first = study / "first"
    shutil.copytree(study / "results/manifest", first)
    snakemake(study, "--forcerun", "manifest", "results/manifest/visits.tsv")
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
