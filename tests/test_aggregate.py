"""Aggregation of fine-tuning results into table, summary, markdown and figures; the QC mosaic."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sslad import aggregate, metrics, qc_mosaic

TASKS = ("dx_cn_ad", "fut_mci_ad")
INITS = ("scratch", "topc")
FRACTIONS = (0.5, 1.0)
SEEDS = (0, 1)
# signal strength per (task, init): topc is much better than scratch on dx_cn_ad, worse on fut_mci_ad
EFFECT = {("dx_cn_ad", "scratch"): 0.2, ("dx_cn_ad", "topc"): 2.5,
          ("fut_mci_ad", "scratch"): 1.5, ("fut_mci_ad", "topc"): 0.5}
N_TEST, N_POS = 60, 25
PNG = b"\x89PNG\r\n\x1a\n"


def _write_job(root: Path, task: str, init: str, fraction: float, seed: int) -> Path:
    """A job directory with predictions.tsv and the metrics.json that the fine-tuning module writes."""
    job = root / task / init / f"f{fraction:g}" / f"seed{seed}"
    job.mkdir(parents=True)
    labels = np.r_[np.ones(N_POS, int), np.zeros(N_TEST - N_POS, int)]
    ids = [f"sub-{i:03d}" for i in range(N_TEST)]
    rows, preds = [], []
    for m, mode in enumerate(("full", "probe")):
        rng = np.random.default_rng([TASKS.index(task), INITS.index(init), int(fraction * 10), seed, m])
        effect = EFFECT[task, init] * (1.0 if mode == "full" else 0.8) * (0.7 + 0.3 * fraction)
        scores = 1 / (1 + np.exp(-(effect * (labels - 0.5) + rng.normal(size=N_TEST))))
        point = metrics.binary_metrics(labels, scores, 0.5)
        ci = metrics.bootstrap(labels, scores, 0.5, n=200, seed=seed)
        row = {"mode": mode, "val_auc": point["auc"], "best_epoch": 3, "threshold": 0.5, "n_train": int(40 * fraction),
               "n_val": 15, "n_test": N_TEST, "n_test_pos": N_POS}
        for name, value in point.items():
            row.update({name: value, f"{name}_low": ci[name][0], f"{name}_high": ci[name][1]})
        rows.append(row)
        preds += [{"participant_id": p, "index_session": "ses-M000", "mode": mode, "label": y, "score": s}
                  for p, y, s in zip(ids, labels, scores)]
    (job / "metrics.json").write_text(json.dumps(
        {"task": task, "init": init, "fraction": fraction, "seed": seed, "inputs": "history", "rows": rows,
         "curves": {"full": {"train_loss": [1.0, 0.5], "val_auc": [0.6, 0.7]}},
         "settings": {"lr": 0.001, "epochs": 2}, "encoder": f"results/pretrain/{init}/encoder.pt"}))
    pd.DataFrame(preds).to_csv(job / "predictions.tsv", sep="\t", index=False)
    return job / "metrics.json"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("aggregate")
    paths = [str(_write_job(root / "jobs", t, i, f, s)) for t in TASKS for i in INITS for f in FRACTIONS for s in SEEDS]
    out = {"table_csv": root / "results" / "table.csv", "summary_csv": root / "results" / "summary.csv",
           "summary_md": root / "results" / "summary.md", "figures_dir": root / "results" / "figures"}
    aggregate.run(paths, **{k: str(v) for k, v in out.items()})
    return {"paths": paths, "root": root, **out}


def test_table(study):
    table = pd.read_csv(study["table_csv"])
    assert len(table) == len(TASKS) * len(INITS) * len(FRACTIONS) * len(SEEDS) * 2
    assert list(table.columns) == aggregate.TABLE_COLUMNS
    for col in ("task", "init", "mode", "inputs", "fraction", "seed", "auc", "auc_low", "auc_high", "balanced_accuracy",
                "balanced_accuracy_low", "balanced_accuracy_high", "sensitivity", "specificity", "val_auc",
                "n_train", "n_test", "n_test_pos"):
        assert col in table.columns
    assert table["fraction"].dtype == float and set(table["fraction"]) == set(FRACTIONS)
    assert ",1,0," in study["table_csv"].read_text()  # fraction 1 and seed 0 written as plain numbers
    for col in aggregate.UNIT_KEYS:
        assert table[col].between(0, 1).all(), col
    assert table["init"].iloc[0] == "scratch"
    assert table[["task", "init", "mode", "fraction", "seed"]].apply(tuple, axis=1).is_monotonic_increasing


def test_rerun_is_byte_identical(study, tmp_path):
    again = tmp_path / "table.csv"
    aggregate.run(list(reversed(study["paths"])), str(again), str(tmp_path / "s.csv"), str(tmp_path / "s.md"),
                  str(tmp_path / "fig"))
    assert again.read_bytes() == study["table_csv"].read_bytes()
    assert (tmp_path / "s.csv").read_bytes() == study["summary_csv"].read_bytes()
    assert (tmp_path / "s.md").read_bytes() == study["summary_md"].read_bytes()


def test_summary_statistics(study):
    summary = pd.read_csv(study["summary_csv"])
    assert list(summary.columns) == aggregate.SUMMARY_COLUMNS
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
    assert scratch[["n_paired", "auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_p"]].isna().all().all()


def test_paired_comparison(study):
    summary = pd.read_csv(study["summary_csv"])
    table = pd.read_csv(study["table_csv"])
    topc = summary[summary.init == "topc"]
    assert topc["n_paired"].eq(len(SEEDS)).all()
    for r in topc.itertuples():
        pair = table[(table.task == r.task) & (table["mode"] == r.mode) & (table.fraction == r.fraction)]
        diff = (pair[pair.init == "topc"].set_index("seed").auc - pair[pair.init == "scratch"].set_index("seed").auc)
        assert r.auc_diff == pytest.approx(diff.mean(), abs=1e-5)
        assert r.auc_diff_low <= r.auc_diff_high and 0 <= r.auc_diff_p <= 1
    designed = topc[topc.task == "dx_cn_ad"]
    assert (designed.auc_diff > 0.1).all() and (designed.auc_diff_low > 0).all() and (designed.auc_diff_p < 0.05).all()


def test_headline_and_markdown(study):
    summary = pd.read_csv(study["summary_csv"])
    assert aggregate.ssl_wins(summary) == (1, 2, 0.5)
    text = study["summary_md"].read_text()
    assert "At the lowest label fraction (0.5), the best SSL init beats scratch" in text
    assert "on 1 of 2 tasks" in text
    assert text.count("| dx_cn_ad |") == len(INITS) * len(FRACTIONS) * 2


def test_figures(study):
    for task in TASKS:
        png = study["figures_dir"] / f"{task}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000


def test_without_scratch_comparison_is_empty(study, tmp_path):
    paths = [p for p in study["paths"] if "/scratch/" not in p]
    aggregate.run(paths, str(tmp_path / "t.csv"), str(tmp_path / "s.csv"), str(tmp_path / "s.md"),
                  str(tmp_path / "fig"), n_boot=100)
    summary = pd.read_csv(tmp_path / "s.csv")
    assert len(summary) == len(TASKS) * len(FRACTIONS) * 2
    assert summary[["auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_p"]].isna().all().all()
    assert aggregate.ssl_wins(summary)[:2] == (0, 0)


@pytest.mark.parametrize("key,change", [("auc", None), ("specificity_high", 1.2), ("seed", "zero")])
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
        aggregate.run(study["paths"][1:] + [str(bad)], str(tmp_path / "t.csv"), str(tmp_path / "s.csv"),
                      str(tmp_path / "s.md"), str(tmp_path / "fig"))
    assert not (tmp_path / "t.csv").exists()


def test_duplicate_job_is_an_error(study):
    with pytest.raises(ValueError, match="more than once"):
        aggregate.build_table(study["paths"] + study["paths"][:1])


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
        ["sub-000", "sub-002", "sub-009"]


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
