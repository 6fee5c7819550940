"""MLflow side channel: one SQLite store, created once by its own rule; jobs only add tagged runs.

Results live in each job's declared outputs; MLflow is for browsing them. SQLite takes one writer at
a time and parallel jobs on a fresh store race on its schema migration, so the store is created
up front and every write happens in one short block under an exclusive lock on a sibling file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


def log_run(db: str | Path, experiment: str, name: str, tags: dict[str, str], params: dict[str, Any],
            curves: dict[str, list[float]], final: dict[str, float]) -> str:
    """Record one finished job as a run: params, per-epoch curves (step = epoch), final metrics, tags.

    Returns the run id. Retries a few times if another process holds the database."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, values in curves.items() for step, v in enumerate(values)]
    metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
    for attempt in range(5):
        try:
            with _locked(db):
                client = _client(db)
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise ValueError(f"{db}: no experiment {experiment!r}; the store is created by rule mlflow_store")
                run = client.create_run(exp.experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
                rid = run.info.run_id
                client.log_batch(rid, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])
                for i in range(0, len(metrics), 900):
                    client.log_batch(rid, metrics=metrics[i:i + 900])
                client.set_terminated(rid)
                return rid
        except Exception as exc:  # sqlalchemy's OperationalError arrives wrapped in MlflowException
            if "locked" not in str(exc) or attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise RuntimeError("unreachable")
