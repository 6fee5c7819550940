"""MLflow side channel: one SQLite store, created once by its own rule; pretraining jobs add their
tagged runs, one job adds every fine-tuning run.

Results live in each job's declared outputs; MLflow is for browsing them. SQLite takes one writer at
a time and parallel jobs on a fresh store race on its schema migration, so the store is created
up front and every write happens in one short block under an exclusive lock on a sibling file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from sslad.io import write_tsv

EXPERIMENTS = ("pretrain", "finetune")


def uri(db: str | Path) -> str:
    return f"sqlite:///{Path(db).resolve()}"


@contextmanager
def _locked(db: str | Path) -> Iterator[None]:
    with open(f"{db}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(db: str | Path) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri(db))


def create_store(db: str | Path) -> None:
    """Create the database and its experiments (artefacts next to it, never in the working directory)."""
    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    with _locked(db):
        client = _client(db)
        for name in EXPERIMENTS:
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name, artifact_location=(db.parent / "artifacts" / name).resolve().as_uri())


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings -> {"a.b": "value"} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, bool)) else str(value)
    return out


def _log(client: Any, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any],
         curves: dict[str, list[float]], final: dict[str, float]) -> str:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, values in curves.items() for step, v in enumerate(values)]
    metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
    run = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i:i + 900])
    client.set_terminated(rid)
    return rid


def _experiment(client: Any, db: str | Path, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"{db}: no experiment {experiment!r}; the store is created by rule mlflow_store")
    return exp.experiment_id


def log_run(db: str | Path, experiment: str, name: str, tags: dict[str, str], params: dict[str, Any],
            curves: dict[str, list[float]], final: dict[str, float]) -> str:
    """Record one finished job as a run: params, per-epoch curves (step = epoch), final metrics, tags.

    Returns the run id. Retries a few times if another process (``mlflow ui``) holds the database."""
    for attempt in range(5):
        try:
            with _locked(db):
                client = _client(db)
                return _log(client, _experiment(client, db, experiment), name, tags, params, curves, final)
        except Exception as exc:  # sqlalchemy's OperationalError arrives wrapped in MlflowException
            if "locked" not in str(exc) or attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise RuntimeError("unreachable")


def log_finetune_runs(db: str | Path, metrics_files: list[str], out: str | Path) -> None:
    """One tagged run per fine-tuning job, written by a single process once the jobs are done.

    Why not from each job: importing MLflow costs a job ~2 s (minutes over the demo's 84 fine-tuning jobs), and
    hundreds of cluster jobs writing one SQLite file on a shared filesystem is where SQLite's locking
    is weakest. A job result already in the store (same job, same metrics.json bytes) is not logged
    again, so a rerun adds runs for the jobs that changed and keeps the history of earlier ones.
    """
    from sslad.aggregate import read_job

    jobs = []
    for path in metrics_files:
        m, raw = read_job(path, required=("settings", "encoder", "curves"))  # a broken file names itself
        jobs.append((path, hashlib.sha256(raw).hexdigest(), m, f"{m['task']}/{m['init']}/frac-{m['fraction']:g}/seed-{m['seed']}"))
    rows = []
    with _locked(db):
        client = _client(db)
        exp_id = _experiment(client, db, "finetune")
        logged, token = {}, None
        while True:
            page = client.search_runs([exp_id], max_results=1000, page_token=token)
            logged.update({r.data.tags.get("metrics_sha256"): r.info.run_id for r in page})
            token = page.token
            if not token:
                break
        for path, sha, m, job in jobs:
            rid, new = logged.get(sha), sha not in logged
            if new:
                tags = {"stage": "finetune", "task": m["task"], "init": m["init"], "fraction": f"{m['fraction']:g}",
                        "seed": str(m["seed"]), "encoder": m["encoder"], "metrics": path, "metrics_sha256": sha,
                        **({"skipped": m["skipped"]} if m.get("skipped") else {})}
                final = {f"{r['mode']}_{k}": r[k] for r in m["rows"] for k in ("auc", "balanced_accuracy", "val_auc")}
                curves = {f"{mode}_{k}": v for mode, c in m["curves"].items() for k, v in c.items()}
                rid = _log(client, exp_id, job, tags, m["settings"], curves, final)
            rows.append({"job": job, "run_id": rid, "new": new, "metrics": path})
    write_tsv(pd.DataFrame(rows), out)
    print(f"{sum(r['new'] for r in rows)} new MLflow runs, {len(rows)} jobs in {db}", file=sys.stderr)
