"""The result files of a fine-tuning job, as the job writes them and aggregation reads them.

Why a module of its own: the contract between training and reporting (the keys of metrics.json, the
columns of predictions.tsv) is read by both; here neither imports the other. :func:`read_job` checks
a file and names the file and key that break it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sslad.metrics import (
    METRICS,
)

MODES = ("full", "probe")


# metric keys of a metrics.json row; each must be a finite number in [0, 1]
JOB_METRIC_KEYS = (*METRICS, "val_auc")


# n_train, n_val, n_test, n_test_pos count samples; the *_subjects keys count subjects (a subject is
# "positive" in the test split if it has at least one positive test sample, likewise negative)
COUNT_KEYS = ("best_epoch", "n_train", "n_val", "n_test", "n_test_pos", "n_train_subjects", "n_val_subjects",
              "n_test_subjects", "n_test_pos_subjects", "n_test_neg_subjects")


JOB_KEYS = ("task", "init", "fraction", "seed", "inputs", "rows")


PREDICTION_COLUMNS = ("participant_id", "index_session", "mode", "label", "logit")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_job(path: str | Path, required: tuple[str, ...] = ()) -> tuple[dict[str, Any], bytes]:
    """A fine-tuning job's metrics.json, parsed and checked, and its bytes (for callers that
    fingerprint it); ValueError naming the file and key if malformed. ``required``: keys a caller
    needs beyond the table's.

    A job whose task could not be evaluated has ``"rows": []`` and the reason in ``"skipped"``; it is
    a result (the study must say which tasks it could not evaluate), not an error.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        job = json.loads(raw)
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or UTF-8
        raise ValueError(f"{path}: cannot read metrics ({exc})") from exc
    if not isinstance(job, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in (*JOB_KEYS, *required):
        if key not in job:
            raise ValueError(f"{path}: missing key '{key}'")
    for key in ("task", "init", "inputs"):
        if not isinstance(job[key], str) or not job[key]:
            raise ValueError(f"{path}: '{key}' must be a non-empty string, got {job[key]!r}")
    if not isinstance(job.get("heldout", ""), str):
        raise ValueError(f"{path}: 'heldout' must be a string (a cohort name), got {job['heldout']!r}")
    if not is_number(job["fraction"]) or not 0 < job["fraction"] <= 1:
        raise ValueError(f"{path}: 'fraction' must be in (0, 1], got {job['fraction']!r}")
    if not isinstance(job["seed"], int) or isinstance(job["seed"], bool):
        raise ValueError(f"{path}: 'seed' must be an integer, got {job['seed']!r}")
    run = job.get("pretrain_seed")
    if run is not None and (not isinstance(run, int) or isinstance(run, bool) or run < 0):
        raise ValueError(f"{path}: 'pretrain_seed' must be a non-negative integer or null, got {run!r}")
    skipped = job.get("skipped")
    if skipped is not None and (not isinstance(skipped, str) or not skipped.strip()):
        raise ValueError(f"{path}: 'skipped' must be a non-empty string (the reason), got {skipped!r}")
    if not isinstance(job["rows"], list):
        raise ValueError(f"{path}: 'rows' must be a list")
    if skipped is None and not job["rows"]:
        raise ValueError(f"{path}: 'rows' must be a non-empty list (or 'skipped' must give the reason)")
    if skipped is not None and job["rows"]:
        raise ValueError(f"{path}: 'rows' must be empty in a skipped job, got {len(job['rows'])}")
    for i, row in enumerate(job["rows"]):
        where = f"{path}: rows[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object")
        for key in ("mode", *JOB_METRIC_KEYS, "threshold", *COUNT_KEYS):
            if key not in row:
                raise ValueError(f"{where}: missing key '{key}'")
        if row["mode"] not in MODES:
            raise ValueError(f"{where}: 'mode' must be one of {MODES}, got {row['mode']!r}")
        for key in JOB_METRIC_KEYS:
            if not is_number(row[key]) or not 0 <= row[key] <= 1:
                raise ValueError(f"{where}: '{key}' must be a number in [0, 1], got {row[key]!r}")
        if not is_number(row["threshold"]):
            raise ValueError(f"{where}: 'threshold' must be a finite number, got {row['threshold']!r}")
        for key in COUNT_KEYS:
            if not isinstance(row[key], int) or isinstance(row[key], bool) or row[key] < 0:
                raise ValueError(f"{where}: '{key}' must be a non-negative integer, got {row[key]!r}")
    return job, raw
