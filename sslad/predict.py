"""Scoring new scans with an exported classifier (``sslad predict``), in two steps.

``prepare`` (ANTs, no torch): ingest a BIDS tree as the study ingests a cohort (participant ids
``sub-<name><label>``), refuse the participants the model learned from (the leak check), and run the
study's preprocessing chain and QC on every scan, with the settings and template the export records.
``apply`` (torch, no ANTs): build each sample's inputs as the task tables do (each usable scan as the
index visit, with the participant's last ``max_inputs`` usable scans up to it) and score them with the
study's own fine-tuning code (:func:`sslad.finetune.build_samples`, :func:`sslad.finetune.predict`).

The leak check compares participant ids and image digests (:func:`sslad.export.image_digest`) with the
export's training.tsv (pretraining set, training and validation splits): a participant whose id is
there, or any of whose images is, would get a score the model's test metrics say nothing about.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.special import expit

from sslad.export import DESCRIPTION, TRAINING, file_digest, image_digest
from sslad.io import read_tsv, write_tsv

PREDICTION_COLUMNS = ["participant_id", "session_id", "bids_participant_id", "n_inputs", "input_sessions", "logit",
                      "probability", "class", "threshold", "qc_pass", "qc_reason", "trained_on"]


class LeakError(ValueError):
    """New scans include participants or images the model was trained or pretrained on."""


def description(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / DESCRIPTION
    try:
        desc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable export description ({exc})") from exc
    if desc.get("kind") != "classifier":
        raise ValueError(f"{export_dir}: an export of kind {desc.get('kind')!r}; predictions need a fine-tuned "
                         "classifier (results/export/finetuned/<task>/<init>)")
    return desc


def leak_check(scans: pd.DataFrame, export_dir: str | Path, allow: bool) -> list[str]:
    """Per scan, why its participant counts as seen by the model ("" if it does not): its id, or one of its
    images, is in the export's training.tsv. LeakError naming them unless ``allow``."""
    training = read_tsv(Path(export_dir) / TRAINING)
    roles = training.groupby("participant_id")["role"].agg(lambda r: "/".join(dict.fromkeys(r)))
    images = {d: f"{p} {s} ({r})" for p, s, r, d in training[["participant_id", "session_id", "role",
                                                               "sha256"]].itertuples(index=False)}
    why: dict[str, list[str]] = {}
    for pid, ses, digest in zip(scans["participant_id"], scans["session_id"], scans["sha256"]):
        if pid in roles.index:
            why.setdefault(pid, []).append(f"id in the {roles[pid]} data")
        if digest in images:
            why.setdefault(pid, []).append(f"{ses} is the image of {images[digest]}")
    why = {pid: list(dict.fromkeys(reasons)) for pid, reasons in why.items()}
    if why and not allow:
        listed = "; ".join(f"{pid}: {', '.join(r)}" for pid, r in list(why.items())[:10])
        raise LeakError(f"{len(why)} participants of the new scans were in the training or pretraining data of "
                        f"{export_dir} (leak check): {listed}{' ...' if len(why) > 10 else ''}. Their scores would "
                        "not be predictions: remove them, or score them anyway with --allow-trained "
                        "(config predict.allow_trained_participants: true)")
    return ["; ".join(why.get(pid, [])) for pid in scans["participant_id"]]


def prepare(bids_dir: str, name: str, export_dir: str, template: str, template_mask: str, out_dir: str,
            aliases: dict[str, str | None], allow_trained: bool, threads: int = 1) -> pd.DataFrame:
    """Ingest, leak-check and preprocess the new scans; writes and returns ``out_dir``/scans.tsv (one row
    per scan: ids, image digest, QC verdict, model-ready array), preprocessed files under ``out_dir``/preproc."""
    from sslad.cohort import ingest, qualify
    from sslad.preprocess import run, verdict

    desc = description(export_dir)
    inp = desc["input"]
    for path, key in ((template, "template_sha256"), (template_mask, "template_mask_sha256")):
        if file_digest(path) != inp[key]:
            raise ValueError(f"{path}: not the template the model's study registered to ({key} in "
                             f"{Path(export_dir) / DESCRIPTION}); use that study's results/template files")
    scans, _, excluded = ingest(bids_dir, aliases, name, diagnosis_required=False)  # what is predicted
    for row in excluded.itertuples():
        print(f"excluded {row.participant_id} {row.session_id}: {row.reason} ({row.file})", file=sys.stderr)
    if scans.empty:
        raise ValueError(f"{bids_dir}: no usable scan ({len(excluded)} excluded, listed above)")
    scans = qualify(scans, name)
    scans["sha256"] = [image_digest(p) for p in scans["path"]]
    scans["trained_on"] = leak_check(scans, export_dir, allow_trained)
    settings = {k: v for k, v in desc["preprocess"].items() if k != "qc"}
    verdicts = []
    for r in scans.itertuples():
        record = run(r.path, r.participant_id, r.session_id, template, template_mask, str(Path(out_dir) / "preproc"),
                     settings, inp["space"], threads)
        passed, reason = verdict(record, desc["preprocess"]["qc"])
        verdicts.append((passed, reason, record.get("outputs", {}).get("array", "") if passed else ""))
        print(f"{r.participant_id} {r.session_id}: QC {'pass' if passed else 'FAIL: ' + reason}", file=sys.stderr)
    scans[["qc_pass", "qc_reason", "array"]] = pd.DataFrame(verdicts, index=scans.index)
    columns = ["participant_id", "bids_participant_id", "session_id", "days_from_baseline", "path", "sha256",
               "trained_on", "qc_pass", "qc_reason", "array"]
    write_tsv(scans[columns], Path(out_dir) / "scans.tsv")
    return scans[columns]


def samples(scans: pd.DataFrame, max_inputs: int) -> pd.DataFrame:
    """One sample per usable scan as the index visit, its inputs the participant's last ``max_inputs``
    usable scans up to and including it, in the columns of a task table (sslad.labels.task_samples)."""
    from sslad.visit_time import chronological

    usable = chronological(scans[scans["qc_pass"]][["participant_id", "session_id", "days_from_baseline"]])
    rows = []
    for pid, visits in usable.groupby("participant_id", sort=True):
        sessions, days = visits["session_id"].tolist(), visits["days_from_baseline"].tolist()
        for i in range(len(sessions)):
            inputs = list(range(i + 1))[-max_inputs:]
            rows.append({"participant_id": pid, "index_session": sessions[i],
                         "input_sessions": ";".join(sessions[k] for k in inputs),
                         "input_days": ";".join(str(int(days[k])) for k in inputs), "n_inputs": len(inputs),
                         "label": 0})
    return pd.DataFrame(rows, columns=["participant_id", "index_session", "input_sessions", "input_days", "n_inputs",
                                       "label"])


def apply(scans_tsv: str, export_dir: str, out: str, allow_trained: bool, threads: int = 1) -> pd.DataFrame:
    """Score every usable scan of a prepared scans.tsv as an index visit; writes ``out`` (predictions.tsv:
    logit, probability, class at the model's threshold, QC verdict; no score for a scan that failed QC)."""
    import torch

    from sslad.distributed import pick_device
    from sslad.export import load
    from sslad.finetune import Scans, build_samples, predict, scan_keys
    from sslad.volumes import open_arrays

    desc = description(export_dir)
    scans = pd.read_csv(scans_tsv, sep="\t", keep_default_na=False,
                        dtype={"participant_id": str, "session_id": str, "qc_reason": str, "array": str})
    scans["qc_pass"] = scans["qc_pass"].astype(str) == "True"
    scans["trained_on"] = leak_check(scans, export_dir, allow_trained)  # the model may not be prepare's
    torch.set_num_threads(max(1, threads))
    model = load(export_dir).classifier()
    inputs, threshold = desc["sequence"]["inputs"], desc["decision"]["threshold"]
    table = samples(scans, desc["sequence"]["max_inputs"])
    result = pd.DataFrame(columns=["participant_id", "index_session", "n_inputs", "input_sessions", "logit"])
    if len(table):
        keys = scan_keys(table, inputs)
        visits = scans.set_index(["participant_id", "session_id"], drop=False)
        arrays = open_arrays(visits, keys, scans_tsv)
        if list(arrays.grid) != list(desc["input"]["grid"]):
            raise ValueError(f"{scans_tsv}: arrays of grid {list(arrays.grid)}, the model reads "
                             f"{desc['input']['grid']}: prepared with other preprocessing settings")
        device = pick_device(desc["finetune"]["settings"]["device"], "finetune.device")
        data = build_samples({"new": table}, inputs, {k: i for i, k in enumerate(keys)})["new"].to(device)
        model = model.to(device)
        scores = Scans(arrays, device, 0, desc["input"]["axes"] == "zyx")
        result = table[["participant_id", "index_session", "n_inputs", "input_sessions"]].assign(
            logit=predict(model, scores, data))
    out_df = scans.merge(result.rename(columns={"index_session": "session_id"}), how="left",
                         on=["participant_id", "session_id"])
    logit = out_df["logit"].astype(float)
    out_df["probability"] = expit(logit)
    out_df["class"] = (logit >= threshold).astype("Int64").where(logit.notna())
    out_df["threshold"] = threshold
    out_df = out_df[PREDICTION_COLUMNS]
    write_tsv(out_df, out, float_format="%.17g")
    n = int(logit.notna().sum())
    print(f"{out}: {n} of {len(out_df)} scans scored by {desc['name']} (threshold {threshold:.6g}); "
          f"{int((~scans['qc_pass']).sum())} failed QC", file=sys.stderr)
    return out_df
