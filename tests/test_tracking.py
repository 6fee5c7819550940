"""MLflow logging by the tracking jobs: a run cut short never counts as logged, and its job is logged
again (with a real SQLite store)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sslad.tracking import create_store, log_pretrain_runs, uri


def _metrics(tmp_path: Path, method: str) -> str:
    path = tmp_path / method / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"method": method, "settings": {"hp": {"n_scans": 3}}, "encoder": "e.pt",
                                "loss": [2.0, 1.5], "history": [{"epoch": 1, "loss": 2.0, "seconds": 1.0},
                                                                {"epoch": 2, "loss": 1.5, "seconds": 1.0}]}))
    return str(path)


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, MlflowClient, str]:
    db = tmp_path / "mlflow.db"
    create_store(db)
    client = MlflowClient(tracking_uri=uri(db))
    return db, client, client.get_experiment_by_name("pretrain").experiment_id


def _fail_once(monkeypatch: pytest.MonkeyPatch, message: str, nth: int = 1) -> None:
    """The ``nth`` metric batch written raises ``message``; every other write goes through."""
    real, calls = MlflowClient.log_batch, []

    def log_batch(self, run_id, metrics=(), **kwargs):
        if metrics:
            calls.append(run_id)
            if len(calls) == nth:
                raise RuntimeError(message)
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)


def _runs(client: MlflowClient, exp_id: str) -> dict[str, str]:
    return {r.info.run_id: r.info.status for r in client.search_runs([exp_id])}


def test_a_run_cut_short_is_not_logged_and_is_failed_on_the_rerun(store, tmp_path, monkeypatch, capsys):
    db, client, exp_id = store
    paths, out = [_metrics(tmp_path, "simclr")], tmp_path / "runs.tsv"
    _fail_once(monkeypatch, "disk I/O error")
    with pytest.raises(RuntimeError, match="disk I/O error"):
        log_pretrain_runs(db, paths, out)
    assert not out.exists()
    [half] = client.search_runs([exp_id])
    assert half.info.status == "RUNNING" and "metrics_sha256" not in half.data.tags and not half.data.metrics
    monkeypatch.undo()
    log_pretrain_runs(db, paths, out)  # the rerun logs the job and fails the half-written run
    err = capsys.readouterr().err
    assert f"marked run {half.info.run_id} (simclr, {paths[0]}) FAILED" in err and "1 new MLflow runs" in err
    rows = pd.read_csv(out, sep="\t")
    assert rows["new"].tolist() == [True]
    done = client.get_run(rows["run_id"][0])
    assert _runs(client, exp_id) == {half.info.run_id: "FAILED", done.info.run_id: "FINISHED"}
    assert done.data.tags["metrics_sha256"] == hashlib.sha256(Path(paths[0]).read_bytes()).hexdigest()
    assert done.data.metrics["final_loss"] == 1.5 and done.data.params["hp.n_scans"] == "3"
    log_pretrain_runs(db, paths, out)
    assert pd.read_csv(out, sep="\t")["new"].tolist() == [False] and len(_runs(client, exp_id)) == 2


def test_a_locked_database_mid_run_is_retried_without_logging_a_job_twice(store, tmp_path, monkeypatch, capsys):
    db, client, exp_id = store
    paths, out = [_metrics(tmp_path, "simclr"), _metrics(tmp_path, "topc")], tmp_path / "runs.tsv"
    _fail_once(monkeypatch, "(sqlite3.OperationalError) database is locked", nth=2)  # the second job's metrics
    log_pretrain_runs(db, paths, out)
    rows = pd.read_csv(out, sep="\t")
    assert rows["job"].tolist() == ["simclr", "topc"] and rows["new"].tolist() == [True, True]
    runs = _runs(client, exp_id)
    assert sorted(runs.values()) == ["FAILED", "FINISHED", "FINISHED"]
    assert {rid for rid, status in runs.items() if status == "FINISHED"} == set(rows["run_id"])
    err = capsys.readouterr().err
    assert "(topc, " in err and "FAILED" in err and "2 new MLflow runs" in err


def test_a_half_written_run_of_an_older_sslad_is_logged_again(store, tmp_path, capsys):
    """Runs of older versions got their metrics_sha256 tag at creation: a RUNNING one is not logged."""
    db, client, exp_id = store
    path = _metrics(tmp_path, "simclr")
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    old = client.create_run(exp_id, run_name="simclr", tags={"metrics": path, "metrics_sha256": sha}).info.run_id
    log_pretrain_runs(db, [path], tmp_path / "runs.tsv")
    assert pd.read_csv(tmp_path / "runs.tsv", sep="\t")["new"].tolist() == [True]
    assert _runs(client, exp_id)[old] == "FAILED" and f"marked run {old}" in capsys.readouterr().err
