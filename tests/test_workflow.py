"""The workflow as a user runs it: a real Snakemake run of the tiny study in a fresh directory.

The jobs run in a venv built from the conda env files' pins alone (their PyPI names), without the
sslad package: the closest thing to ``--use-conda`` on a machine without conda. The code sits in a
checkout apart from the run directory (``snakemake -s checkout/Snakefile``), so the jobs can only
reach sslad through the workflow's own source tree, as in a conda env or on a cluster node.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_envs import pypi_requirements

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["dx_cn_ad", "det_mci_ad"]  # those of .test/config.yaml
INITS = ["scratch", "simclr", "top", "tcl", "tmp", "topc"]
GRID = [*INITS, "schedule"]  # every study fine-tunes the schedule-only baseline too
# the controls of the primary comparison (topc vs scratch) on its control task det_mci_ad: index and
# time_shuffled inputs x 2 inits x seed 0
CONTROL_INITS = ["scratch", "topc"]
CONTROLS = 2 * len(CONTROL_INITS)
# the jobs that read every pretraining run: the order probes' report and the loss curves
PRETRAIN_REPORTS = {"order_probe_report": 1, "pretrain_curves": 1}
CODE = ("Snakefile", "workflow", "envs", "sslad")  # what a clone holds and the jobs need
RUN = ("config.yaml", ".test")  # what a user edits in the run directory


# the other tiny studies preprocess as .test/config.yaml's (6 mm, registration and N4 coarse)
FAST_PREPROCESS = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())["preprocess"]


def make_study(root: Path) -> Path:
    """A clone's code in root/checkout and a run directory root/run (returned)."""
    for names, where in ((CODE, root / "checkout"), (RUN, root / "run")):
        where.mkdir(parents=True)
        for item in names:
            src = ROOT / item
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, where / item)
    return root / "run"


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Snakemake (from the test environment) on the run directory; its jobs find `python` in the
    env-pins venv next to it when there is one (as a conda env puts its own first on PATH)."""
    snakefile = workdir.parent / "checkout" / "Snakefile"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--cores", "2", *args,
           "--configfile", ".test/config.yaml"]
    venv = workdir.parent / "envs-venv" / "bin"
    jobs_bin = venv if venv.is_dir() else Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{jobs_bin}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def rule_envs() -> dict[str, str]:
    """Rule -> the env file its `conda:` names, read from workflow/rules/*.smk."""
    found = {}
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for name, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(), re.M):
            if m := re.search(r'conda:\s*\n\s*"[./]*envs/(\w+)\.yaml"', body):
                found[name] = m.group(1)
    return found


# a rule's variant for the inits the study pretrains (`use rule ... as ..._pretrained`) counts as the rule
VARIANTS = {"finetune_pretrained": "finetune", "finetune_control_pretrained": "finetune_control"}


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs a dry run plans (from its job-stats table), variants under their rule."""
    out = snakemake(workdir, *args, "-n", "--quiet", "rules").stdout
    rules: dict[str, int] = {}  # the job-stats table may be printed more than once
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "all"):
            rules[parts[0]] = int(parts[1])
    jobs: dict[str, int] = {}
    for rule, n in rules.items():
        jobs[VARIANTS.get(rule, rule)] = jobs.get(VARIANTS.get(rule, rule), 0) + n
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
    """A fresh copy of the workflow, run once end to end, stage by stage in a venv that grows from
    one env file's pins to the next: the core rules run with envs/core.yaml's packages only,
    preprocessing with envs/imaging.yaml's, the rest with envs/learning.yaml's added."""
    root = tmp_path_factory.mktemp("study")
    work = make_study(root)
    venv = root / "envs-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    envs = rule_envs()
    stages = [("core", ["cohort", "template"]), ("imaging", ["qc_table"]), ("learning", [])]
    assert {envs["simulate_cohort"], envs["cohort"], envs["template"], envs["qc_table"]} == {"core"}
    assert envs["preprocess"] == "imaging" and envs["finetune"] == envs["pretrain"] == "learning"
    for env, until in stages:
        reqs = pypi_requirements(ROOT / "envs" / f"{env}.yaml")
        subprocess.run([py, "-m", "pip", "install", "-q", "--no-compile", *reqs], check=True, capture_output=True)
        snakemake(work, *(["--until", *until] if until else []))
    lost = subprocess.run([py, "-c", "import sslad"], cwd=root, capture_output=True, text=True)
    assert lost.returncode != 0 and "No module named 'sslad'" in lost.stderr  # the jobs used the checkout
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
    excluded = (study / "results/cohort/excluded.tsv").read_text()
    assert len(record) > len(scans) and "no T1w image (clinical visit" in excluded
    assert planned_rules(study) == set()  # nothing left to do


def test_run_produces_the_table_summary_figures_and_tracking(study):
    import pandas as pd

    rows = pd.read_csv(study / "results/table.csv", keep_default_na=False)
    # each job's whole test split, then each test cohort's part of it (same model and threshold)
    table = rows[rows["test_cohort"] == "all"]
    per_cohort = rows[rows["test_cohort"] != "all"]
    assert set(per_cohort["test_cohort"]) == {"SiteA", "SiteB"} and (rows["heldout"] == "").all()
    for _, g in per_cohort.groupby(["task", "init", "mode", "inputs"]):
        whole = table.set_index(["task", "init", "mode", "inputs"]).loc[tuple(g.iloc[0][["task", "init", "mode",
                                                                                         "inputs"]])]
        assert g["n_test_subjects"].sum() <= whole["n_test_subjects"] and (g["threshold"] == whole["threshold"]).all()
    assert "## By test cohort" in (study / "results/summary.md").read_text()
    assert len(table) == len(TASKS) * len(GRID) * 2 + CONTROLS  # x modes (full, probe); controls: full only
    assert set(table["init"]) == set(GRID) and set(table["mode"]) == {"full", "probe"}
    controls = table[table["inputs"] != "history"]
    assert sorted(zip(controls["task"], controls["init"], controls["inputs"], controls["mode"])) == sorted(
        ("det_mci_ad", i, c, "full") for i in CONTROL_INITS for c in ("index", "time_shuffled"))
    assert table["fraction"].tolist() == [1.0] * len(table)
    for col in ("auc", "balanced_accuracy"):
        assert table[col].between(0, 1).all()
    assert (study / "results/summary.csv").exists() and (study / "results/summary.md").exists()
    assert "## Controls of the primary comparison" in (study / "results/summary.md").read_text()
    assert "## Training convergence" in (study / "results/summary.md").read_text()
    # simulated cohorts: what a reader of the true volumes makes of every task's split, in summary.md too
    truth = pd.read_csv(study / "results/ground_truth.tsv", sep="\t")
    assert truth["task"].tolist() == list(TASKS) and (truth[["n_train", "n_test"]] > 0).all().all()
    assert truth["test_auc"].dropna().between(0, 1).all() and truth["test_auc"].notna().any()
    assert "## What the split supports (simulated cohorts)" in (study / "results/summary.md").read_text()
    assert sorted(p.name for p in (study / "results/figures").glob("*.png")) == sorted(f"{t}.png" for t in TASKS)
    assert (study / "results/preproc/qc_mosaic.png").stat().st_size > 10_000
    # every result names its code: the checkout's source digest (the copy has no .git), one version
    prov = json.loads((study / "results/provenance.json").read_text())
    assert prov["one_code_version"] and set(prov["stages"]) == {"preprocess", "pretrain", "finetune"}
    assert sum(v["results"] for v in prov["stages"]["finetune"]) == len(TASKS) * len(GRID) + CONTROLS
    libs = {k for v in prov["stages"]["pretrain"] for k in v["provenance"]["packages"]}
    assert {"torch", "numpy"} <= libs
    assert any("antspyx" in v["provenance"]["packages"] for v in prov["stages"]["preprocess"])
    assert (table["code"] == prov["codes"][0]).all() and prov["codes"][0].startswith("no-git:")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'results/mlflow/mlflow.db'}")
    runs = {e: client.search_runs([client.get_experiment_by_name(e).experiment_id]) for e in ("pretrain", "finetune")}
    assert sorted(r.data.tags["method"] for r in runs["pretrain"]) == sorted(INITS[1:])
    assert len(runs["finetune"]) == len(TASKS) * len(GRID) + CONTROLS
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 2 for r in runs["pretrain"])


# The next two need the study up to date, as the fixture leaves it (later tests edit and rerun parts).
def test_results_page_section_is_written_from_the_study_outputs(study, tmp_path):
    """docs/results_page.py writes a study's section of docs/results.md from its outputs alone: the
    primary comparison's numbers are summary.csv's, and a rerun replaces the section in place."""
    import pandas as pd

    page = tmp_path / "results.md"
    page.write_text("# Measured results\n\nIntroduction.\n\n## An older section\n\ntext\n")
    cmd = [sys.executable, str(ROOT / "docs" / "results_page.py"), "--results", str(study / "results"),
           "--name", "tiny", "--title", "The tiny study", "--command", "snakemake", "--page", str(page)]
    for _ in range(2):
        subprocess.run(cmd, check=True, capture_output=True)
    text = page.read_text()
    assert text.count("<!-- results:tiny -->") == 1 and text.index("The tiny study") < text.index("An older section")
    summary = pd.read_csv(study / "results/summary.csv")
    prim = summary[summary["claim"].fillna("").str.startswith("primary:") & summary["auc_diff"].notna()]
    assert len(prim)
    for r in prim.itertuples():
        assert f"| {r.task} | {r.init} | {r.auc_diff:+.3f} [" in text
    assert "Pretraining loss" in text and "**Order probe" in text
    truth = pd.read_csv(study / "results/ground_truth.tsv", sep="\t")
    assert "**What the split supports**" in text
    for r in truth.itertuples():
        val, test = ("–" if pd.isna(x) else f"{x:.3f}" for x in (r.val_auc, r.test_auc))
        assert f"| {r.task} | {val} / {test} |" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 (its own SQLite backend), stopped afterwards."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # until it answers (6-8 s on an idle machine)
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited:\n{(tmp_path / 'server.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)  # the server and the workers it started, in their own session
        proc.wait(timeout=60)
        log.close()


def test_tracking_server_gets_every_pretraining_and_finetuning_run(study, mlflow_server):
    from mlflow.tracking import MlflowClient

    server = f"tracking={{uri: {mlflow_server}}}"
    assert planned_jobs(study, "--config", server) == {"track_pretrain": 1, "track_finetune": 1, "aggregate": 1,
                                                       "provenance": 1}
    snakemake(study, "--config", server)
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = {e: client.search_runs([client.get_experiment_by_name(e).experiment_id]) for e in ("pretrain", "finetune")}
    assert sorted(r.data.tags["method"] for r in runs["pretrain"]) == sorted(INITS[1:])
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 2 for r in runs["pretrain"])
    assert sorted(r.data.tags["init"] for r in runs["finetune"]) == sorted(GRID * len(TASKS) + CONTROL_INITS * 2)
    trained = [r for r in runs["finetune"] if r.data.tags["init"] != "schedule"]  # the baseline has no epochs
    assert {r.data.params["epochs"] for r in trained} == {"2"}
    # back to the SQLite store: the tracking jobs rerun and find every result logged already
    snakemake(study)
    for stage in ("pretrain", "finetune"):
        rows = (study / f"results/mlflow/{stage}_runs.tsv").read_text().splitlines()[1:]
        assert rows and all("\tFalse\t" in r for r in rows), stage
    assert planned_jobs(study) == {}


def test_stage_targets_and_benchmarks(study):
    for stage in ("cohort_all", "preprocess_all", "manifest_all", "pretrain_all", "finetune_all", "aggregate_all"):
        assert planned_jobs(study, stage) == {}, stage
    assert planned_jobs(study, "pretrain_all", "--forcerun", "pretrain") == {
        "pretrain": 5, "track_pretrain": 1, "order_probe": 5, **PRETRAIN_REPORTS, "pretrain_all": 1}
    for heavy in ("pretrain/topc_seed-0.tsv", "finetune/dx_cn_ad/scratch_seed-0.tsv", "simulate_cohort/SiteB.tsv",
                  "finetune/dx_cn_ad/topc_pretrain-seed-0_seed-0.tsv",
                  "finetune_control/det_mci_ad/topc_pretrain-seed-0_time_shuffled_frac-1_seed-0.tsv"):
        assert (study / "results/benchmarks" / heavy).read_text().startswith("s\th:m:s\tmax_rss"), heavy


def test_scores_are_full_precision_logits_and_counts_are_reported(study):
    import json

    import pandas as pd

    from sslad.metrics import auc

    table = pd.read_csv(study / "results/table.csv")
    for col in ("n_train", "n_val", "n_test", "n_train_subjects", "n_val_subjects", "n_test_subjects"):
        assert (table[col] > 0).all(), col
    assert (table["n_test_subjects"] <= table["n_test"]).all()
    job = study / "results/finetune" / TASKS[0] / "topc/pretrain-seed-0/frac-1/seed-0"
    text = (job / "predictions.tsv").read_text()
    preds = pd.read_csv(job / "predictions.tsv", sep="\t", dtype={"logit": "float64"})
    assert "logit" in preds.columns and "score" not in preds.columns
    assert all(repr(float(v)) in text or f"{v:.17g}" in text for v in preds["logit"])  # round-trips
    rows = {r["mode"]: r for r in json.loads((job / "metrics.json").read_text())["rows"]}
    for mode, part in preds.groupby("mode"):
        assert auc(part["label"], part["logit"]) == pytest.approx(rows[mode]["auc"], abs=1e-12)


def test_exports_predict_new_scans_and_serve_as_the_init_of_another_study(study, tmp_path, monkeypatch):
    """Exports rebuild the study's models; `snakemake predict` scores never-seen scans as the fine-tuning
    code does and refuses a training participant; an exported encoder is an init where the inputs match."""
    import pandas as pd
    import torch

    from sslad import export
    from sslad.finetune import Scans, build_samples, predict, scan_keys
    from sslad.labels import task_samples
    from sslad.networks import load_encoder
    from sslad.volumes import open_arrays, read_visits

    torch.set_num_threads(1)  # as the fine-tuning jobs
    monkeypatch.chdir(study)  # the study's tables name its files relative to it
    topc = "export={inits: [topc]}"  # every encoder, one fine-tuned model per task
    assert planned_jobs(study, "export_all", "--config", topc) == {
        "export_digests": 1, "export_encoder": len(INITS) - 1, "export_finetuned": len(TASKS), "export_all": 1}
    snakemake(study, "export_all", "--config", topc)
    x = torch.randn(2, 1, *export.load(study / "results/export/encoders/topc/seed-0").description["input"]["grid"])
    for method in INITS[1:]:
        out = study / f"results/export/encoders/{method}/seed-0"
        files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # but Snakemake's time stamp
        assert files == sorted([export.WEIGHTS, export.DESCRIPTION, export.TRAINING, export.CARD])
        encoder = load_encoder(study / f"results/pretrain/{method}/seed-0/encoder.pt")[0].eval()
        with torch.no_grad():
            assert torch.equal(export.load(out).encoder(x), encoder(x)), method
    # the fine-tuned export gives the study's test logits, through the fine-tuning code
    task, model_dir = TASKS[0], study / f"results/export/finetuned/{TASKS[0]}/topc"
    model = export.load(model_dir).classifier()
    table = pd.read_csv(study / f"results/manifest/tasks/{task}.tsv", sep="\t", dtype={"participant_id": str})
    keys = scan_keys(table, "history")
    scans = Scans(open_arrays(read_visits(study / "results/manifest/visits.tsv"), keys, "task"), torch.device("cpu"))
    test = build_samples({"test": table[table["split"] == "test"]}, "history", {k: i for i, k in enumerate(keys)})
    study_logits = pd.read_csv(study / f"results/finetune/{task}/topc/pretrain-seed-0/frac-1/seed-0/predictions.tsv",
                               sep="\t").query("mode == 'full'")["logit"].to_numpy()
    assert predict(model, scans, test["test"]) == pytest.approx(study_logits, abs=1e-6)
    assert "| schedule-only baseline (no image) |" in (model_dir / export.CARD).read_text()

    # two participants never in the study: the study's preprocessing, then the fine-tuning code's logits
    settings = yaml.safe_load((study / "config.yaml").read_text())["simulate"] | {"resolution_mm": 6, "n_subjects": 2,
                                                                                  "seed": 99}
    new = tmp_path / "new_bids"
    subprocess.run([sys.executable, "-m", "sslad", "simulate", "--settings", json.dumps(settings), "--out", str(new)],
                   check=True, capture_output=True)
    snakemake(study, "predict", "--config", topc, f"predict={{bids_dir: {new}, name: New}}")
    prepared = pd.read_csv(study / "results/predict/scans.tsv", sep="\t", keep_default_na=False)
    got = pd.read_csv(study / "results/predict/predictions.tsv", sep="\t", keep_default_na=False)
    assert len(got) == len(prepared) >= 4 and got["participant_id"].str.startswith("sub-New").all()
    assert {"logit", "probability", "class", "qc_pass", "qc_reason"} <= set(got.columns)
    usable = prepared[prepared["qc_pass"].astype(str) == "True"]
    record = prepared[["participant_id", "session_id", "days_from_baseline"]].assign(diagnosis="AD")
    samples = task_samples(record, set(zip(usable["participant_id"], usable["session_id"])), task, 36, 3, False)
    keys = scan_keys(samples, "history")
    arrays = open_arrays(usable.set_index(["participant_id", "session_id"], drop=False), keys, "prepared")
    want = predict(model, Scans(arrays, torch.device("cpu")),
                   build_samples({"new": samples}, "history", {k: i for i, k in enumerate(keys)})["new"])
    scored = got.set_index(["participant_id", "session_id"]).loc[list(zip(samples["participant_id"],
                                                                          samples["index_session"]))]
    assert len(want) >= 3 and scored["logit"].astype(float).to_numpy() == pytest.approx(want, abs=1e-6)
    threshold = json.loads((model_dir / export.DESCRIPTION).read_text())["decision"]["threshold"]
    assert (scored["class"].astype(int) == (scored["logit"].astype(float) >= threshold)).all()

    # a training participant is refused, by name
    leak = subprocess.run([sys.executable, "-m", "sslad", "predict", "--step", "prepare", "--model", str(model_dir),
                           "--bids", str(study / "results/cohort/SiteA/bids"), "--name", "SiteA",
                           "--template", str(next((study / "results/template").glob("*_T1w.nii.gz"))),
                           "--template-mask", str(next((study / "results/template").glob("*_mask.nii.gz"))),
                           "--out-dir", str(tmp_path / "leak")], capture_output=True, text=True)
    trained = pd.read_csv(model_dir / export.TRAINING, sep="\t").query("role == 'train'")["participant_id"].iloc[0]
    assert leak.returncode == 1 and "(leak check)" in leak.stderr and f"{trained}: id in the " in leak.stderr
    assert not (tmp_path / "leak/scans.tsv").exists()

    # an exported encoder as the init `external` of another study: refused on another grid, run on this one
    ext = f"pretrain={{external: {{checkpoint: {study / 'results/export/encoders/topc/seed-0'}}}}}"
    target = "results/pretrain/external/encoder.pt"
    proc = snakemake(study, target, "--config", ext, "preprocess={voxel_mm: 4.0}", check=False)
    log = (study / "results/logs/pretrain/external.log").read_text()
    assert proc.returncode != 0 and "voxel_mm 6.0 in the export, 4.0 here" in log and "grid" in log
    cell = f"results/finetune/{task}/external/frac-1/seed-0/metrics.json"
    snakemake(study, cell, "--config", ext, f"study={{inits: [{', '.join([*INITS, 'external'])}]}}")
    metrics = json.loads((study / cell).read_text())
    assert metrics["encoder"].endswith(target) and {r["mode"] for r in metrics["rows"]} == {"full", "probe"}


def test_learning_edits_rerun_only_what_they_affect(study):
    set_config(study, "finetune", "lr", 0.002)  # the controls are fine-tuning with the same settings
    assert planned_jobs(study) == {"finetune": len(TASKS) * len(INITS), "finetune_control": CONTROLS,
                                   "track_finetune": 1, "aggregate": 1, "provenance": 1}
    set_config(study, "finetune", "lr", 0.001)
    # the bootstrap is aggregation's: more resamples retrain nothing (.test/config.yaml sets it: --config)
    assert planned_jobs(study, "--config", "finetune={n_bootstrap: 300}") == {"aggregate": 1, "provenance": 1}
    # the splits pretraining draws on: the pretraining set and what follows, not scratch's fine-tuning
    set_config(study, "manifest", "pretrain_splits", ["train"])
    assert planned_jobs(study) == {"pretrain_set": 1, "pretrain": 5, "track_pretrain": 1, "finetune": 5 * len(TASKS),
                                   "finetune_control": CONTROLS // 2, "track_finetune": 1, "aggregate": 1,
                                   "provenance": 1, "order_probe": 5, **PRETRAIN_REPORTS}
    set_config(study, "manifest", "pretrain_splits", ["train", "val"])
    # a method's block: that method's pretraining and what fine-tunes from it, nothing else
    set_config(study, "pretrain", "methods.top.hidden", 32)
    assert planned_jobs(study) == {"pretrain": 1, "track_pretrain": 1, "finetune": len(TASKS), "track_finetune": 1,
                                   "aggregate": 1, "provenance": 1, "order_probe": 1, **PRETRAIN_REPORTS}
    set_config(study, "pretrain", "methods.top.hidden", 64)
    # an augmentation recipe reruns the methods that use it: the temporal one all but simclr
    set_config(study, "pretrain", "augment.temporal.p_gamma", 0.5)
    assert planned_jobs(study) == {"pretrain": 4, "track_pretrain": 1, "finetune": 4 * len(TASKS),
                                   "finetune_control": CONTROLS // 2, "track_finetune": 1, "aggregate": 1,
                                   "provenance": 1, "order_probe": 4, **PRETRAIN_REPORTS}
    set_config(study, "pretrain", "augment.temporal.p_gamma", 0.8)
    # validation subsampling: the fractions and what follows; the primary comparison: aggregation only
    set_config(study, "study", "subsample_validation", False)
    assert planned_jobs(study) == {"label_fraction": len(TASKS), "finetune": len(TASKS) * len(GRID),
                                   "finetune_control": CONTROLS, "track_finetune": 1, "aggregate": 1, "provenance": 1}
    set_config(study, "study", "subsample_validation", True)
    # another primary init: aggregation, and the controls of the new pair (top's; scratch's are there)
    set_config(study, "study", "primary.init", "top")
    assert planned_jobs(study) == {"finetune_control": CONTROLS // 2, "track_finetune": 1, "aggregate": 1,
                                   "provenance": 1}
    set_config(study, "study", "primary.init", "topc")
    # one new seed (the grid comes from .test/config.yaml, so --config it): only its jobs
    grown = planned_jobs(study, "--config", "study={seeds: [0, 1]}")
    assert grown == {"label_fraction": len(TASKS), "finetune": len(TASKS) * len(GRID), "finetune_control": CONTROLS,
                     "track_finetune": 1, "aggregate": 1, "provenance": 1}
    # a second pretraining run of each method: its pretraining and order probe, and the fine-tuning jobs
    # that start from it (crossed with the fine-tuning seeds), nothing of scratch's or the first run's
    grown = planned_jobs(study, "--config", "pretrain={seeds: [0, 1]}")
    assert grown == {"pretrain": 5, "track_pretrain": 1, "order_probe": 5, **PRETRAIN_REPORTS,
                     "finetune": 5 * len(TASKS), "finetune_control": CONTROLS // 2, "track_finetune": 1,
                     "aggregate": 1, "provenance": 1}
    # and a new fraction: each seed's job runs its fractions, the old one again too (and the controls
    # read the primary fraction's subset, which those jobs rewrite)
    grown = planned_jobs(study, "--config", "study={seeds: [0, 1], label_fractions: [0.5, 1.0]}")
    assert grown == {"label_fraction": 2 * len(TASKS), "finetune": 2 * len(TASKS) * len(GRID),
                     "finetune_control": 2 * CONTROLS, "track_finetune": 1, "aggregate": 1, "provenance": 1}
    assert planned_jobs(study) == {}


def test_control_edits_rerun_only_control_jobs(study):
    """study.controls and the primary comparison's mode reach the control jobs only: no job of the
    grid (finetune) is planned."""
    set_config(study, "study", "controls.tasks", ["dx_cn_ad", "det_mci_ad"])  # a task more: its controls
    assert planned_jobs(study) == {"finetune_control": CONTROLS, "track_finetune": 1, "aggregate": 1, "provenance": 1}
    set_config(study, "study", "controls.tasks", ["det_cn_mci", "det_mci_ad", "fut_cn_mci", "fut_mci_ad"])
    set_config(study, "study", "controls.inputs", ["index"])  # one control less: nothing to train
    assert planned_jobs(study) == {"track_finetune": 1, "aggregate": 1, "provenance": 1}
    set_config(study, "study", "controls.inputs", ["index", "time_shuffled"])
    set_config(study, "study", "primary.mode", "probe")  # the controls run the primary's mode
    assert planned_jobs(study) == {"finetune_control": CONTROLS, "track_finetune": 1, "aggregate": 1, "provenance": 1}
    set_config(study, "study", "primary.mode", "full")
    assert planned_jobs(study) == {}


def test_finetuning_is_deterministic_and_the_report_builds(study):
    before = (study / "results/table.csv").read_bytes()
    # scratch, the schedule baseline and every control (seeded shuffles, from topc's encoder and from
    # scratch) again: the same table; the other pretrained inits' jobs share the code of topc's controls
    snakemake(study, "--forcerun", "finetune", "finetune_control", "finetune_control_pretrained")
    assert (study / "results/table.csv").read_bytes() == before
    tracked = (study / "results/mlflow/finetune_runs.tsv").read_text().splitlines()
    assert len(tracked) == 1 + len(TASKS) * len(GRID) + CONTROLS
    assert all("\tFalse\t" in r for r in tracked[1:])  # no duplicates
    snakemake(study, "--report", "results/report.html")
    html = (study / "results/report.html").read_text(errors="replace")
    for name in ("table.csv", "summary.csv", "summary.md", "order_probe.md", "pretrain_curves.png", "qc_mosaic.png",
                 "dx_cn_ad.png", "learned about time on subjects it never saw"):  # and the report: directive's page
        assert name in html, name


def test_config_edit_reruns_only_affected_stages(study):
    bids_files = sorted((study / "results/cohort").rglob("bids/**/*"))
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
    assert {p: p.stat().st_mtime_ns for p in sorted((study / "results/cohort").rglob("bids/**/*"))} == mtimes
    set_config(study, "preprocess", "registration", "rigid")
    planned = planned_rules(study)
    assert {"preprocess", "qc_table", "manifest"} <= planned and "simulate_cohort" not in planned
    set_config(study, "preprocess", "registration", "affine")
    set_config(study, "simulate", "noise", 0.04)  # the shared block: SiteA's (SiteB sets its own)
    # preprocess jobs appear once the cohort checkpoint has rerun; a dry run shows what leads there
    assert {"simulate_cohort", "ingest_cohort", "cohort", "manifest"} <= planned_rules(study)
    assert planned_jobs(study)["simulate_cohort"] == 1
    set_config(study, "simulate", "noise", 0.03)
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
    ("study={inits: [scratch, simclr2]}", "study.inits.1"),  # the registry's methods are the valid inits
    ("tracking={uri: mlflow.example.org}", "tracking.uri"),
    ("study={controls: {inputs: [history], tasks: [det_mci_ad]}}", "study.controls.inputs.0"),
])
def test_bad_config_fails_before_any_job(tmp_path, override, key):
    work = make_study(tmp_path)
    proc = snakemake(work, "--config", override, check=False)
    assert proc.returncode != 0
    assert f"config key {key}:" in proc.stderr + proc.stdout
    assert not (work / "results").exists()


def test_a_control_must_change_the_inputs(tmp_path):
    work = make_study(tmp_path)
    proc = snakemake(work, "--config", "finetune={inputs: index}", "study={primary: {inputs: index}}", "-n",
                     check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "study.controls.inputs lists 'index', the inputs of every job" in out


def test_resources_in_the_config_are_refused_with_where_they_went(tmp_path):
    work = make_study(tmp_path)
    proc = snakemake(work, "--config", "pretrain={gpu: 2}", "-n", check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "pretrain.gpu are resources" in out and "--set-resources pretrain:gpu=" in out


def test_lint_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    test_cmd = next(line for line in ci.splitlines() if line.startswith("python3.11 -m venv"))
    assert test_cmd in readme


def test_gpu_count_of_a_profile_or_the_command_line_drives_torchrun(study):
    out = snakemake(study, "-n", "-p", "results/pretrain/top/seed-0/encoder.pt", "--forcerun", "pretrain",
                    "--set-resources", "pretrain:gpu=4").stdout
    assert "gpu=4" in out and "--nproc_per_node=4 -m sslad" in out
    out = snakemake(study, "-n", "-p", "--profile", str(ROOT / "profiles/slurm"), "--jobs", "2",
                    "results/pretrain/top/seed-0/encoder.pt", "--forcerun", "pretrain").stdout
    assert re.search(r"mem_mb=64000\b.*runtime=1440\b.*gpu=1\b", out)  # the profile's, attempt 1


def test_preprocessed_scans_form_a_bids_derivatives_dataset(study):
    from bids import BIDSLayout

    description = json.loads((study / "results/preproc/dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "sslad"
    layout = BIDSLayout(study / "results/cohort/SiteA/bids", derivatives=study / "results/preproc")
    files = sorted(str(p) for p in (study / "results/preproc").rglob("*_desc-preproc_T1w.nii.gz"))
    found = layout.get(scope="derivatives", desc="preproc", suffix="T1w", extension=".nii.gz")
    assert len(files) > 20 and sorted(f.path for f in found) == files
    first = next(f for f in found if f.get_entities()["subject"].startswith("SiteA"))
    one = first.get_entities()
    assert one["space"] == "MNI152NLin2009aSym" and f"sub-{one['subject']}_ses-{one['session']}" in first.filename
    # the raw scan it came from, in the same layout: its cohort's tree names it without the cohort
    raw = layout.get(scope="raw", subject=one["subject"].removeprefix("SiteA"), session=one["session"],
                     suffix="T1w", extension=".nii.gz")
    assert len(raw) == 1


def test_leave_one_cohort_out_keeps_the_held_out_cohort_out_of_training_and_pretraining(study):
    """The tiny study's two cohorts, each held out in turn: the fold tables the jobs would read hold
    no held-out subject outside test (training, validation, label fractions, pretraining), and the
    test split is the held-out cohort. Only the manifest stage runs here; the grid is counted."""
    import pandas as pd

    pooled = planned_jobs(study)  # earlier tests' edits may have left some jobs to do
    loco = ("--config", "study={evaluation: leave_one_cohort_out}")
    planned = planned_jobs(study, *loco)
    assert (planned["fold"], planned["pretrain_set"], planned["pretrain"]) == (2, 2, 10)
    assert planned["finetune"] == 2 * len(TASKS) * len(GRID) and planned["finetune_control"] == 2 * CONTROLS
    snakemake(study, "manifest_all", *loco)  # the target before --config, which takes every word after it
    for heldout in ("SiteA", "SiteB"):
        fold = study / "results/manifest" / f"heldout-{heldout}"
        splits = pd.read_csv(fold / "splits.tsv", sep="\t")
        held = set(splits.loc[splits["cohort"] == heldout, "participant_id"])
        assert held and set(splits.loc[splits["split"] == "test", "participant_id"]) == held
        assert not held & set(pd.read_csv(fold / "pretrain.tsv", sep="\t")["participant_id"])
        for table in (fold / "fractions").rglob("*.tsv"):
            assert not held & set(pd.read_csv(table, sep="\t")["participant_id"]), table
        for task in TASKS:
            t = pd.read_csv(fold / "tasks" / f"{task}.tsv", sep="\t")
            assert set(t.loc[t["split"] == "test", "cohort"]) == {heldout}
            assert not held & set(t.loc[t["split"] != "test", "participant_id"])
    assert planned_jobs(study) == pooled  # the pooled study's files are untouched


def _variety_trees(root: Path, checkout: Path) -> tuple[Path, Path]:
    """Two small simulated BIDS trees made as messy as real conversions: ADNI with one session's T1w
    as two runs (run-01 acq-MPRAGE, run-02) and one subject without days_from_baseline; OASIS3 with
    uncompressed .nii images, no MCI subject at all, and one participant label that ADNI has too."""
    import gzip

    import pandas as pd

    base = yaml.safe_load((ROOT / "config.yaml").read_text())["simulate"]
    base.update(n_subjects=3, resolution_mm=6, visits={**base["visits"], "max": 3})
    no_mci = {"cn": 1, "cn_mci": 0, "mci": 0, "mci_ad": 0, "ad": 1}
    exact = {"label_noise": 0.0, "diagnosis_noise": {"subject_sd": 0.0, "visit_sd": 0.0}}  # the courses' diagnoses
    oasis = {**base, "seed": 43, **exact, "group_mix": no_mci}
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    trees = root / "ADNI", root / "OASIS3"
    for out, cfg in zip(trees, (base, oasis)):
        subprocess.run([sys.executable, "-m", "sslad", "simulate", "--settings", json.dumps(cfg), "--out", str(out)],
                       check=True, env=env, capture_output=True)
    adni, oas = trees
    first = sorted(adni.glob("sub-*/ses-M000/anat/*_T1w.nii.gz"))[0]
    first.rename(first.with_name(first.name.replace("_T1w", "_acq-MPRAGE_run-01_T1w")))
    shutil.copy(first.with_name(first.name.replace("_T1w", "_acq-MPRAGE_run-01_T1w")),
                first.with_name(first.name.replace("_T1w", "_run-02_T1w")))
    sessions = sorted(adni.glob("sub-*/sub-*_sessions.tsv"))[-1]
    pd.read_csv(sessions, sep="\t").drop(columns="days_from_baseline").to_csv(sessions, sep="\t", index=False)
    for image in oas.rglob("sub-*_T1w.nii.gz"):
        image.with_suffix("").write_bytes(gzip.decompress(image.read_bytes()))
        image.unlink()
    old, new = sorted(p.name for p in oas.glob("sub-*"))[0], first.name.split("_")[0]
    for path in sorted(oas.rglob(f"*{old}*"), key=lambda p: -len(p.parts)):
        path.rename(path.with_name(path.name.replace(old, new)))
    (oas / "participants.tsv").write_text((oas / "participants.tsv").read_text().replace(old, new))
    return trees


def test_real_bids_variety_study_completes(tmp_path):
    """Two BIDS trees sharing a participant label, one with two T1w runs in a session and a session
    without days_from_baseline, one with .nii files and no MCI subject: ingestion reports each case
    and the study runs to table.csv (a short grid: one task, scratch and simclr, full mode)."""
    import pandas as pd

    work = make_study(tmp_path)
    adni, oasis = _variety_trees(tmp_path, work.parent / "checkout")
    (work / ".test/config.yaml").write_text(yaml.safe_dump({
        "cohorts": [{"name": "ADNI", "bids_dir": str(adni)}, {"name": "OASIS3", "bids_dir": str(oasis)}],
        "preprocess": FAST_PREPROCESS,
        "study": {"tasks": ["dx_cn_ad"], "label_fractions": [1.0], "seeds": [0], "inits": ["scratch", "simclr"],
                  "primary": {"init": "simclr"}, "controls": {"inputs": []}},
        "model": {"widths": [8, 8, 16, 16]},
        "pretrain": {"train": {"epochs": 1, "batch_size": 4, "checkpoint_every": 1}},
        "finetune": {"modes": ["full"], "epochs": 1, "n_bootstrap": 100}}))
    snakemake(work)
    log = {c: (work / f"results/logs/ingest_cohort/{c}.log").read_text() for c in ("ADNI", "OASIS3")}
    assert "another T1w image of the session is used" in log["ADNI"] and "acquisition entity" in log["ADNI"]
    assert "day 365 from the visit code" in log["ADNI"] or "day 0 from the visit code" in log["ADNI"]
    assert "uncompressed image" in log["OASIS3"] and "no MCI visit" in log["OASIS3"]
    overlap = pd.read_csv(work / "results/cohort/overlap.tsv", sep="\t")
    assert len(overlap) == 1 and overlap["cohorts"].iloc[0] == "ADNI,OASIS3"
    assert "participant_ids" in overlap and "never merged" in (work / "results/logs/cohort.log").read_text()
    scans = pd.read_csv(work / "results/cohort/scans.tsv", sep="\t")
    label = overlap["bids_participant_id"].iloc[0]
    assert set(scans.loc[scans["bids_participant_id"] == label, "participant_id"]) == {
        label.replace("sub-", "sub-ADNI"), label.replace("sub-", "sub-OASIS3")}  # kept apart
    assert (work / "results/table.csv").exists() and (work / "results/summary.md").exists()
    # no simulated cohort, no ground truth: the reader of true volumes is not run, and summary.md says nothing of it
    assert not (work / "results/ground_truth.tsv").exists()
    assert "What the split supports" not in (work / "results/summary.md").read_text()


def _hostile_tree(root: Path, checkout: Path) -> tuple[Path, dict[str, str]]:
    """A simulated BIDS tree of 6 subjects at 6 mm, made hostile: a session label carrying a shell
    command (listed in its sessions.tsv, with an image), two participants whose labels are no BIDS
    labels, and a 1 MB image whose header declares 1000^3 float32 voxels (4 GB). Returns the tree
    and {what: label} of the planted cases."""
    import pandas as pd
    from test_preprocess import _declared_huge

    base = yaml.safe_load((ROOT / "config.yaml").read_text())["simulate"]
    cfg = {**base, "n_subjects": 6, "resolution_mm": 6, "seed": 5, "visits": {**base["visits"], "max": 3}}
    bids = root / "HOSTILE"
    subprocess.run([sys.executable, "-m", "sslad", "simulate", "--settings", json.dumps(cfg), "--out", str(bids)],
                   check=True, env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True)
    subs = sorted(p.name for p in bids.glob("sub-*"))
    first, second = subs[0], subs[1]
    evil = "ses-M000$(touch PWNED)"  # run in the job's directory if it ever reached a shell
    image = next((bids / first / "ses-M000" / "anat").glob("*_T1w.nii.gz"))
    (bids / first / evil / "anat").mkdir(parents=True)
    shutil.copy(image, bids / first / evil / "anat" / f"{first}_{evil}_T1w.nii.gz")
    sessions = bids / first / f"{first}_sessions.tsv"
    table = pd.read_csv(sessions, sep="\t", dtype=str)
    row = table.iloc[[0]].assign(session_id=evil, days_from_baseline="900")
    pd.concat([table, row]).to_csv(sessions, sep="\t", index=False)
    participants = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    bad = ["sub-002_S_0295", "sub-01.5"]
    for label in bad:
        shutil.copytree(bids / second, bids / label)
        for path in sorted((bids / label).rglob(f"*{second}*"), key=lambda p: -len(p.parts)):
            path.rename(path.with_name(path.name.replace(second, label)))
        participants = pd.concat([participants, participants.iloc[[1]].assign(participant_id=label)])
    participants.to_csv(bids / "participants.tsv", sep="\t", index=False)
    huge = next((bids / second / "ses-M000" / "anat").glob("*_T1w.nii.gz"))
    _declared_huge(huge)
    return bids, {"evil": evil, "first": first, "huge": second, "bad1": bad[0], "bad2": bad[1]}


def _run_measured(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """A Snakemake run and the peak resident memory (GB) of its largest process, jobs included."""
    wrap = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")
    snakefile = workdir.parent / "checkout" / "Snakefile"
    cmd = [sys.executable, "-c", wrap, sys.executable, "-m", "snakemake", "-s", str(snakefile), "--cores", "2",
           *args, "--configfile", ".test/config.yaml"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    return proc, int(proc.stderr.split()[-1]) / 2**20


def test_hostile_dataset_runs_no_command_and_reports_every_bad_case(tmp_path):
    """A session label with a shell command, two invalid participant labels and an image declaring 4
    GB: nothing is executed, each case is reported with its reason, the good subjects reach the
    manifest, the run's largest process stays under 3 GB and it exits 0. Then a diagnosis corrected
    in place (same time stamp) reruns ingestion and what depends on labels, never preprocessing."""
    import pandas as pd

    work = make_study(tmp_path)
    bids, case = _hostile_tree(tmp_path, work.parent / "checkout")
    (work / ".test/config.yaml").write_text(yaml.safe_dump({
        "cohorts": [{"name": "HOSTILE", "bids_dir": str(bids)}],
        "preprocess": FAST_PREPROCESS,
        "manifest": {"index_visits": "all"},
        "study": {"tasks": ["dx_cn_ad"], "label_fractions": [1.0], "seeds": [0], "inits": ["scratch"],
                  "primary": {"init": "scratch", "reference": "schedule"}, "controls": {"inputs": []}}}))
    proc, peak_gb = _run_measured(work, "results/manifest/visits.tsv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"largest process: {peak_gb:.2f} GB")  # shown with pytest -s
    assert peak_gb < 3, peak_gb
    assert not list(tmp_path.rglob("PWNED")) and not (work / "PWNED").exists()
    excluded = pd.read_csv(work / "results/cohort/excluded.tsv", sep="\t", dtype=str)
    reasons = dict(zip(excluded["bids_participant_id"] + "/" + excluded["session_id"], excluded["reason"]))
    assert reasons[f"{case['first']}/{case['evil']}"].startswith("session label")
    for bad in (case["bad1"], case["bad2"]):
        assert reasons[f"{bad}/ses-M000"].startswith(f"participant label '{bad}' is not a BIDS label")
    qc = pd.read_csv(work / "results/preproc/qc.tsv", sep="\t", keep_default_na=False)
    huge = qc[(qc["participant_id"] == f"sub-HOSTILE{case['huge'][4:]}") & (qc["session_id"] == "ses-M000")]
    assert not huge["qc_pass"].iloc[0] and "more than the 100 million" in huge["qc_reason"].iloc[0]
    visits = pd.read_csv(work / "results/manifest/visits.tsv", sep="\t")
    good = {f"sub-HOSTILE{p.name[4:]}" for p in bids.glob("sub-*") if p.name.replace("-", "").isalnum()}
    assert set(visits["participant_id"]) == good and len(good) == 6
    assert planned_jobs(work, "results/manifest/visits.tsv") == {}
    # a diagnosis corrected in place, its file's time stamp kept (as a copy with preserved times)
    sessions = next(bids.glob(f"{case['first']}/*_sessions.tsv"))
    stat, table = sessions.stat(), pd.read_csv(sessions, sep="\t", dtype=str)
    table.loc[table.index[-2], "diagnosis"] = "AD" if table["diagnosis"].iloc[-2] != "AD" else "CN"
    table.to_csv(sessions, sep="\t", index=False)
    os.utime(sessions, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    planned = planned_jobs(work, "results/manifest/visits.tsv")
    assert {"ingest_cohort", "cohort", "manifest"} <= set(planned), planned
    assert "preprocess" not in planned and "template" not in planned
    downstream = planned_rules(work, "results/finetune/dx_cn_ad/scratch/frac-1/seed-0/metrics.json")
    assert {"manifest", "label_fraction", "finetune"} <= downstream and "preprocess" not in downstream


# shell placeholders that need no quoting: numbers, and params that quote their own parts (shlex)
PRE_QUOTED = {"threads", "resources.runtime", "resources.mem_mb", "resources.gpu", "resources.loader_workers",
              "resources.nodes", "resources.tasks_per_node", "params.cells", "params.outputs", "params.inputs",
              "params.cohorts", "params.encoder", "params.device_memory_gb", "params.stages",
              "params.pretrain_seed",  # an int, formatted by pretrain_seed_arg
              "params.files",  # NAME=PATH pairs, each shlex-quoted (export_finetuned)
              "params.truth"}  # --ground-truth PATH, shlex-quoted, or nothing (aggregate)


def test_every_value_that_reaches_a_shell_command_is_quoted():
    """A value from a dataset or a config (a path, a label, a setting) reaches a rule's command only
    through `:q` or a params function that quotes it: no label can run a command."""
    unquoted = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for body in re.findall(r"^    shell:\n((?:        .*\n)+)", smk.read_text(), re.M):
            for name in re.findall(r"(?<!\{)\{([A-Za-z_.\[\]0-9]+)\}(?!\})", body):
                if name not in PRE_QUOTED:
                    unquoted.add(f"{smk.name}: {{{name}}}")
    assert not unquoted, sorted(unquoted)
