"""MLflow side channel: tracking jobs log the training jobs' results, the training jobs never do.

Results live in each job's declared outputs; MLflow is for browsing them. One tracking job per stage
(``track-pretrain``, ``track-finetune``) logs every job of that stage after the jobs are done, and
runs on the machine that runs Snakemake (a local rule). The target is either an MLflow tracking
server (``http://host:port``, what a cluster should use) or a SQLite file. SQLite takes one writer
at a time, its locking is unreliable on network filesystems (NFS, Lustre), and parallel writers on a
fresh store race on its schema migration: the store is created up front by its own rule and every
write happens in one short block under an exclusive lock on a sibling file.
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


def is_server(target: str | Path) -> bool:
    """True for a tracking server URI (http://, https://), False for a SQLite file's path."""
    return str(target).startswith(("http://", "https://"))


def uri(target: str | Path) -> str:
    """The MLflow tracking URI of a server URI (unchanged) or of a SQLite file's path."""
    return str(target) if is_server(target) else f"sqlite:///{Path(target).resolve()}"


@contextmanager
def _locked(target: str | Path) -> Iterator[None]:
    """Exclusive access to a SQLite store (a server serialises its own writes)."""
    if is_server(target):
        yield
        return
    with open(f"{target}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(target: str | Path) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri(target))


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
         curves: dict[str, list[float]], final: dict[str, float], sha: str) -> str:
    """A run whose content tag ``metrics_sha256`` and status FINISHED come only after its last
    write: a run cut short (a locked database, a killed job) is never taken for a logged job."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, values in curves.items() for step, v in enumerate(values)]
    metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
    run = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i:i + 900])
    client.set_tag(rid, "metrics_sha256", sha)
    client.set_terminated(rid)
    return rid


def _experiment(client: Any, target: str | Path, experiment: str) -> str:
    """The experiment's id; on a server it is created when missing (the server owns where its
    artefacts go), in a SQLite store it must exist (created with the store, artefacts beside it)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None and is_server(target):
        return client.create_experiment(experiment)
    if exp is None:
        raise ValueError(f"{target}: no experiment {experiment!r}; the store is created by rule mlflow_store")
    return exp.experiment_id


def _logged(client: Any, exp_id: str) -> dict[str, str]:
    """metrics_sha256 tag -> run id of every complete run (FINISHED, with the tag) in the experiment.

    A run of ours that an earlier attempt left unfinished (RUNNING: it has the ``metrics`` tag of
    every run this module creates) is marked FAILED, so that its job is logged again and the
    half-written run no longer looks like a run in progress."""
    logged, token = {}, None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        for r in page:
            sha = r.data.tags.get("metrics_sha256")
            if r.info.status == "FINISHED" and sha:
                logged[sha] = r.info.run_id
            elif r.info.status in ("RUNNING", "SCHEDULED") and "metrics" in r.data.tags:
                client.set_terminated(r.info.run_id, "FAILED")
                print(f"marked run {r.info.run_id} ({r.info.run_name}, {r.data.tags['metrics']}) FAILED: "
                      "an earlier attempt left it half-written; its job is logged again", file=sys.stderr)
        token = page.token
        if not token:
            return logged


def _log_jobs(target: str | Path, experiment: str, jobs: list[tuple[str, bytes, dict[str, Any]]],
              describe: Any, out: str | Path) -> None:
    """One tagged run per job result (path, bytes, parsed metrics) not yet in the experiment, and a
    TSV of job, run id, whether it is new, and the metrics file. ``describe(metrics)`` gives the
    run's (name, tags, params, curves, final metrics).

    A job result already logged (same metrics bytes) is not logged again, so a rerun adds runs for
    the jobs that changed and keeps the history of earlier ones; on a server the lookup is one
    paged search, as in SQLite. A retry after a locked database looks the runs up again: what the
    failed attempt completed counts as logged (and new), what it left half-written is marked FAILED
    and logged again.
    """
    rows, created = [], set()  # created: run ids this call completed, in any attempt
    for attempt in range(5):
        try:
            with _locked(target):
                client = _client(target)
                exp_id = _experiment(client, target, experiment)
                logged = _logged(client, exp_id)
                for path, raw, m in jobs:
                    sha = hashlib.sha256(raw).hexdigest()
                    name, tags, params, curves, final = describe(m)
                    if sha not in logged:
                        logged[sha] = _log(client, exp_id, name, {**tags, "metrics": path}, params, curves, final,
                                           sha)
                        created.add(logged[sha])
                    rows.append({"job": name, "run_id": logged[sha], "new": logged[sha] in created, "metrics": path})
            break
        except Exception as exc:  # sqlalchemy's OperationalError arrives wrapped in MlflowException
            if "locked" not in str(exc) or attempt == 4:
                raise
            rows = []
            time.sleep(1 + attempt)
    write_tsv(pd.DataFrame(rows, columns=["job", "run_id", "new", "metrics"]), out)
    print(f"{len(created)} new MLflow runs, {len(rows)} {experiment} jobs in {uri(target)}",
          file=sys.stderr)


def log_finetune_runs(target: str | Path, metrics_files: list[str], out: str | Path) -> None:
    """One tagged run per fine-tuning job, written by a single process once the jobs are done.

    Why not from each job: importing MLflow costs a job ~2 s (minutes over the demo's 84 fine-tuning jobs), and
    hundreds of cluster jobs writing one SQLite file on a shared filesystem is where SQLite's locking
    is weakest.
    """
    from sslad.results import read_job

    jobs = []
    for path in metrics_files:
        m, raw = read_job(path, required=("settings", "encoder", "curves"))  # a broken file names itself
        jobs.append((path, raw, m))

    def describe(m: dict[str, Any]) -> tuple:
        run = "" if m.get("pretrain_seed") is None else f"pretrain-seed-{m['pretrain_seed']}/"
        name = f"{m['task']}/{m['init']}/{run}{m['inputs']}/frac-{m['fraction']:g}/seed-{m['seed']}"
        tags = {"stage": "finetune", "task": m["task"], "init": m["init"], "inputs": m["inputs"],
                "fraction": f"{m['fraction']:g}", "seed": str(m["seed"]), "encoder": m["encoder"]}
        if m.get("pretrain_seed") is not None:  # one of the init's pretraining runs
            tags["pretrain_seed"] = str(m["pretrain_seed"])
        if m.get("skipped"):
            tags["skipped"] = m["skipped"]
        if m.get("heldout"):  # a leave-one-cohort-out fold's job
            name, tags["heldout"] = f"heldout-{m['heldout']}/{name}", m["heldout"]
        final = {f"{r['mode']}_{k}": r[k] for r in m["rows"] for k in ("auc", "balanced_accuracy", "val_auc")}
        curves = {f"{mode}_{k}": v for mode, c in m["curves"].items() for k, v in c.items()}
        return name, tags, m["settings"], curves, final

    _log_jobs(target, "finetune", jobs, describe, out)


def read_pretrain_metrics(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """A pretraining job's metrics.json and its bytes; ValueError naming the file and key if malformed."""
    try:
        raw = Path(path).read_bytes()
        m = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read pretraining metrics ({exc})") from exc
    for key in ("method", "settings", "history", "loss", "encoder"):
        if not isinstance(m, dict) or key not in m:
            raise ValueError(f"{path}: missing key '{key}' (written by an older sslad? rerun its pretraining)")
    if not m["history"]:
        raise ValueError(f"{path}: 'history' is empty")
    return m, raw


def log_pretrain_runs(target: str | Path, metrics_files: list[str], out: str | Path) -> None:
    """One tagged run per pretraining job (loss and the method's statistics per epoch, the final loss
    and the diagnostics as metrics, the settings as params), from the jobs' metrics.json, by a single
    process once the jobs are done."""
    jobs = []
    for path in metrics_files:
        m, raw = read_pretrain_metrics(path)
        jobs.append((path, raw, m))

    def describe(m: dict[str, Any]) -> tuple:
        curves = {k: [h[k] for h in m["history"]] for k in m["history"][0] if k not in ("epoch", "seconds")}
        final = {"final_loss": m["loss"][-1]}
        # the diagnostics of temporal learning on held-out subjects (sslad.diagnostics), numbers only
        final.update({f"diagnostic_{k}": v for k, v in m.get("diagnostic", {}).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if m.get("volumes_per_second"):
            final["volumes_per_second"] = m["volumes_per_second"]
        tags = {"stage": "pretrain", "method": m["method"], "encoder": m["encoder"]}
        seed = m["settings"].get("train", {}).get("seed")  # one run per method and pretrain.seeds entry
        if seed is None:
            return m["method"], tags, m["settings"], curves, final
        tags["seed"] = str(seed)
        return f"{m['method']}/seed-{seed}", tags, m["settings"], curves, final

    _log_jobs(target, "pretrain", jobs, describe, out)
