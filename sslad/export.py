"""The study's models as products another lab can load: weights, a description, training ids, a card.

An export is a directory (layout and fields: docs/export.md):

- ``model.safetensors``: the weights, no pickle (``encoder.*``, ``aggregator.*``, and ``head.*`` for a
  fine-tuned classifier); a loader never runs code from the file.
- ``description.json``: what rebuilds the model and feeds it: architecture, input grid and voxel size,
  template space and the template's digest, normalisation, the preprocessing and QC settings, the
  sequence inputs, the method and its settings, the decision threshold chosen on validation, the
  source job's and the export job's code and package versions.
- ``training.tsv``: every scan the model learned from (pretraining set, training and validation
  splits) with its participant id and image digest (:func:`image_digest`), for the leak check of
  :mod:`sslad.predict`.
- ``MODEL_CARD.md``: data, intended use, test metrics with their intervals beside the schedule-only
  baseline's, limitations.

Fine-tuning jobs keep no weights (the study's grid would write hundreds of models). A fine-tuned
export reruns the one cell it names with the job's own code, settings and seed, then checks that the
model it trained gives the study's test logits (predictions.tsv) before writing it: the export is
the study's model, or the job stops.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sslad.io import atomic_dir, read_tsv, write_json, write_tsv
from sslad.provenance import code_label, job_provenance

FORMAT = "sslad-export/1"
WEIGHTS, DESCRIPTION, TRAINING, CARD = "model.safetensors", "description.json", "training.tsv", "MODEL_CARD.md"
TRAINING_COLUMNS = ["participant_id", "session_id", "role", "sha256"]

if TYPE_CHECKING:  # torch is imported where weights are touched: digests and leak checks run without it
    import torch
    from torch import nn


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_digest(path: str | Path) -> str:
    """sha256 of a NIfTI image's uncompressed bytes: the same scan renamed, copied or recompressed
    has the same digest (a leak check that only compared file names or .gz bytes would miss it); a
    resampled or re-saved image does not."""
    h = hashlib.sha256()
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read the image to take its digest ({exc})") from exc
    return h.hexdigest()


def write_digests(scans_tsv: str, out: str) -> None:
    """The image digest of every scan the study ingested (results/cohort/scans.tsv), once for all exports."""
    scans = read_tsv(scans_tsv)
    digests = [image_digest(p) for p in scans["path"]]
    write_tsv(pd.DataFrame({"participant_id": scans["participant_id"], "session_id": scans["session_id"],
                            "sha256": digests}), out)


def training_table(roles: dict[str, pd.DataFrame], digests_tsv: str) -> pd.DataFrame:
    """Every (participant, session) of each role (pretrain, train, val) with its image digest; a scan
    without a digest is an error (the leak check would miss it)."""
    digests = read_tsv(digests_tsv).set_index(["participant_id", "session_id"])["sha256"]
    rows = pd.concat([df[["participant_id", "session_id"]].assign(role=role) for role, df in roles.items()],
                     ignore_index=True).drop_duplicates()
    keys = list(zip(rows["participant_id"], rows["session_id"]))
    missing = [k for k in keys if k not in digests.index]
    if missing:
        raise ValueError(f"{digests_tsv}: no image digest for {len(missing)} training scans, e.g. "
                         f"{missing[0][0]} {missing[0][1]}")
    return rows.assign(sha256=[digests[k] for k in keys])[TRAINING_COLUMNS].reset_index(drop=True)


def input_scans(table: pd.DataFrame) -> pd.DataFrame:
    """(participant, session) of every scan a task table's samples read (any of their inputs)."""
    rows = [(pid, s) for pid, sessions in zip(table["participant_id"], table["input_sessions"])
            for s in str(sessions).split(";")]
    return pd.DataFrame(list(dict.fromkeys(rows)), columns=["participant_id", "session_id"])


def save_weights(state: dict[str, torch.Tensor], path: Path) -> str:
    """Write a state dict as safetensors (contiguous CPU copies: safetensors refuses shared or strided
    tensors); returns the file's sha256."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path),
              metadata={"format": FORMAT})
    return file_digest(path)


def grid_of(visits_tsv: str) -> list[int]:
    """The model grid (X, Y, Z): the shape of the study's model-ready arrays (the first of visits.tsv)."""
    path = str(read_tsv(visits_tsv)["array"].iloc[0])
    return [int(n) for n in np.load(path, mmap_mode="r", allow_pickle=False).shape]


def input_description(settings: dict[str, Any], arch: dict[str, Any], grid: list[int], template: str,
                      template_mask: str) -> dict[str, Any]:
    """What a scan must be before the model reads it."""
    pre = settings["preprocess"]
    return {"grid": grid, "voxel_mm": pre["voxel_mm"], "crop_mm": pre["crop_mm"], "space": settings["space"],
            "template_sha256": file_digest(template), "template_mask_sha256": file_digest(template_mask),
            "normalisation": pre["normalisation"], "registration": pre["registration"],
            "axes": arch.get("axes", "xyz"),
            "array": "float16 (X, Y, Z) in the template space (RAS), zero outside the brain mask, read as float32; "
                     "axes zyx: transposed to (Z, Y, X) before the encoder"}


def sequence_description(settings: dict[str, Any]) -> dict[str, Any]:
    return {"max_inputs": settings["max_inputs"],
            "time": "acquisition months (days from baseline / 30.4375), taken relative to the last input; "
                    "inputs in chronological order, the index scan last"}


def _study_row(table_csv: str, task: str, init: str, fraction: float, seed: int, inputs: str) -> dict[str, Any]:
    """The table.csv row of a full-mode cell on the whole test split (with its interval), {} if absent."""
    t = pd.read_csv(table_csv, keep_default_na=False)
    hit = t[(t["task"] == task) & (t["init"] == init) & (t["mode"] == "full") & (t["inputs"] == inputs)
            & (t["test_cohort"] == "all") & np.isclose(pd.to_numeric(t["fraction"]), fraction)
            & (pd.to_numeric(t["seed"]) == seed)]
    return hit.iloc[0].to_dict() if len(hit) else {}


@dataclass
class Exported:
    """A loaded export: its description and the rebuilt networks (``head`` only for a classifier)."""

    description: dict[str, Any]
    encoder: nn.Module
    aggregator: nn.Module
    head: nn.Module | None

    def classifier(self) -> nn.Module:
        """The fine-tuned model as the study's fine-tuning code uses it (sslad.finetune.Classifier)."""
        from sslad.finetune import Classifier
        from sslad.networks import feature_dim

        if self.head is None:
            raise ValueError("an encoder export has no classification head")
        model = Classifier(self.encoder, self.aggregator, feature_dim(self.description["architecture"]))
        model.head = self.head
        return model.eval()


def load(path: str | Path) -> Exported:
    """Rebuild an export's networks from description.json and model.safetensors (no pickle); the
    weights must match their recorded digest and the architecture key for key."""
    from safetensors.torch import load_file
    from torch import nn

    from sslad.networks import build_aggregator, build_encoder, feature_dim, non_finite

    root = Path(path)
    try:
        desc = json.loads((root / DESCRIPTION).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root / DESCRIPTION}: not a readable export description ({exc})") from exc
    if desc.get("format") != FORMAT:
        raise ValueError(f"{root / DESCRIPTION}: format {desc.get('format')!r}, this sslad reads {FORMAT}")
    weights = root / desc["weights"]["file"]
    if file_digest(weights) != desc["weights"]["sha256"]:
        raise ValueError(f"{weights}: its sha256 is not the one description.json records (the file changed)")
    state = load_file(str(weights))
    bad = non_finite(state)
    if bad:
        raise ValueError(f"{weights}: non-finite weights ({', '.join(bad[:3])})")
    arch = desc["architecture"]
    parts: dict[str, nn.Module] = {"encoder": build_encoder(arch), "aggregator": build_aggregator(arch)}
    if desc["kind"] == "classifier":
        parts["head"] = nn.Linear(feature_dim(arch), 1)
    for name, module in parts.items():
        prefix = f"{name}."
        own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if name == "aggregator" and not own and not desc["weights"]["aggregator_trained"]:
            continue  # an encoder whose method trains no aggregator: fine-tuning starts a new one
        try:
            module.load_state_dict(own)
        except RuntimeError as exc:
            raise ValueError(f"{weights}: the {name} weights do not fit the architecture of description.json "
                             f"({str(exc).splitlines()[0]})") from exc
    extra = [k for k in state if k.split(".")[0] not in parts]
    if extra:
        raise ValueError(f"{weights}: weights of no module of a {desc['kind']}: {extra[:3]}")
    for module in parts.values():
        module.eval()
    return Exported(desc, parts["encoder"], parts["aggregator"], parts.get("head"))


def _finish(out_dir: str, desc: dict[str, Any], state: dict[str, torch.Tensor], training: pd.DataFrame,
            card: str) -> None:
    """Write the export's four files into ``out_dir`` at once (the directory appears complete or not at all)."""
    with atomic_dir(out_dir) as tmp:
        desc["weights"]["sha256"] = save_weights(state, tmp / WEIGHTS)
        write_tsv(training, tmp / TRAINING)
        write_json(desc, tmp / DESCRIPTION)
        (tmp / CARD).write_text(card)


def _counts(training: pd.DataFrame) -> str:
    parts = [f"{role}: {g['participant_id'].nunique()} participants, {len(g)} scans"
             for role, g in training.groupby("role", sort=False)]
    return "; ".join(parts)


def export_encoder(encoder_pt: str, metrics_json: str, pretrain_tsv: str, digests_tsv: str, visits_tsv: str,
                   template: str, template_mask: str, settings: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Export one pretraining run's encoder (and the aggregator a temporal method trained); returns the
    description."""
    import torch

    from sslad.networks import load_encoder

    encoder, aggregator, arch, trained = load_encoder(encoder_pt)
    metrics = json.loads(Path(metrics_json).read_text())
    run = metrics["settings"]
    training = training_table({"pretrain": read_tsv(pretrain_tsv)}, digests_tsv)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    if trained:
        state.update({f"aggregator.{k}": v for k, v in aggregator.state_dict().items()})
    desc = {"format": FORMAT, "kind": "encoder", "name": f"{run['method']} pretrain seed {run['train']['seed']}",
            "architecture": arch, "weights": {"file": WEIGHTS, "aggregator_trained": trained},
            "input": input_description(settings, arch, grid_of(visits_tsv), template, template_mask),
            "sequence": sequence_description(settings), "preprocess": settings["preprocess"],
            "method": {"name": run["method"], "seed": run["train"]["seed"], "settings": run,
                       "final_loss": metrics["loss"][-1] if metrics.get("loss") else None},
            "training": {"file": TRAINING, "counts": _counts(training)},
            "source": {"job": str(encoder_pt), "provenance": metrics.get("provenance")},
            "provenance": job_provenance(threads=torch.get_num_threads())}
    card = encoder_card(desc, training)
    _finish(out_dir, desc, state, training, card)
    print(f"{out_dir}: {desc['name']}, {len(training)} pretraining scans", file=sys.stderr)
    return desc


def retrain(settings: dict[str, Any], task_tsv: str, fraction_tsv: str, visits_tsv: str, encoder_pt: str | None,
            seed: int, threads: int) -> tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """The full mode of one fine-tuning cell, as ``sslad finetune`` trains it (the same functions, seed,
    device and thread count): model, architecture, samples by split and their logits."""
    import torch

    from sslad.finetune import (
        Classifier,
        Scans,
        build_samples,
        initial_networks,
        job_device,
        predict,
        scan_keys,
        select_samples,
        train_full,
    )
    from sslad.networks import feature_dim
    from sslad.volumes import open_arrays, read_visits

    device = job_device(settings, threads)
    table = read_tsv(task_tsv)
    keys = scan_keys(table, settings["inputs"])
    parts = select_samples(table, task_tsv, fraction_tsv)
    data = {k: s.to(device) for k, s in
            build_samples(parts, settings["inputs"], {key: i for i, key in enumerate(keys)}, seed).items()}
    torch.manual_seed(seed)
    encoder, aggregator, arch = initial_networks(settings, encoder_pt)
    scans = Scans(open_arrays(read_visits(visits_tsv), keys, task_tsv), device, 0, arch.get("axes") == "zyx")
    model, _ = train_full(Classifier(encoder, aggregator, feature_dim(arch)).to(device), scans, data, settings, seed)
    return model, arch, data, {k: predict(model, scans, s) for k, s in data.items()}


def check_reproduced(logits: np.ndarray, test: pd.DataFrame, predictions_tsv: str, tolerance: float) -> float:
    """The largest difference between the retrained model's test logits and the study's (predictions.tsv,
    full mode); ValueError above ``tolerance``: the export would not be the model the study evaluated."""
    study = pd.read_csv(predictions_tsv, sep="\t", dtype={"participant_id": str, "index_session": str,
                                                         "logit": "float64"})
    study = study[study["mode"] == "full"].set_index(["participant_id", "index_session"])["logit"]
    keys = list(zip(test["participant_id"], test["index_session"]))
    if len(study) != len(keys) or any(k not in study.index for k in keys):
        raise ValueError(f"{predictions_tsv}: its full-mode test samples are not those of the task table")
    diff = float(np.max(np.abs(study.loc[keys].to_numpy() - logits)))
    if not diff <= tolerance:
        raise ValueError(f"{predictions_tsv}: the rerun of this cell gives test logits up to {diff:.3g} away from "
                         f"the study's (export.tolerance {tolerance:g}): not the model the study evaluated "
                         "(another device, thread count or code version?)")
    return diff


def export_classifier(settings: dict[str, Any], task: str, init: str, files: dict[str, str], threads: int,
                      out_dir: str) -> dict[str, Any]:
    """Export the full-mode model of one cell (task x init at the export's fraction and seed, from its
    pretraining run). ``files``: task, fraction, visits, metrics and predictions (the study's cell),
    digests, table (table.csv), template, template_mask, and for a pretrained init encoder, pretrain
    (pretrain.tsv) and pretrain_metrics."""
    import torch

    from sslad.labels import TASKS
    from sslad.metrics import youden_threshold

    ft, ex = settings["finetune"], settings["export"]
    if "full" not in ft["modes"]:
        raise ValueError(f"finetune.modes {ft['modes']} has no full mode, the one a fine-tuned export holds")
    study = json.loads(Path(files["metrics"]).read_text())
    if study.get("skipped"):
        raise ValueError(f"{files['metrics']}: the study could not evaluate this cell ({study['skipped']}): "
                         "nothing to export")
    seed, fraction = int(study["seed"]), float(study["fraction"])
    # the job's own CPU thread count (a sum's order, hence its rounding, follows it), else ours
    threads = int((study.get("provenance") or {}).get("threads") or threads)
    model, arch, data, scores = retrain(ft, files["task"], files["fraction"], files["visits"], files.get("encoder"),
                                        seed, threads)
    diff = check_reproduced(scores["test"], data["test"].table, files["predictions"], ex["tolerance"])
    row = next(r for r in study["rows"] if r["mode"] == "full")
    threshold = float(youden_threshold(data["val"].labels.cpu().numpy(), scores["val"]))
    if not np.isclose(threshold, row["threshold"], rtol=0, atol=max(ex["tolerance"], 1e-12)):
        raise ValueError(f"{files['metrics']}: threshold {row['threshold']} but the rerun chose {threshold}")
    roles = {"train": input_scans(data["train"].table), "val": input_scans(data["val"].table)}
    if files.get("pretrain"):
        roles = {"pretrain": read_tsv(files["pretrain"]), **roles}
    training = training_table(roles, files["digests"])
    definition = TASKS[task]
    pretrain = json.loads(Path(files["pretrain_metrics"]).read_text())["settings"] if files.get(
        "pretrain_metrics") else None
    desc = {"format": FORMAT, "kind": "classifier", "name": f"{task} from {init}", "architecture": arch,
            "weights": {"file": WEIGHTS, "aggregator_trained": True},
            "input": input_description(settings, arch, grid_of(files["visits"]), files["template"],
                                       files["template_mask"]),
            "sequence": {**sequence_description(settings), "inputs": ft["inputs"]},
            "preprocess": settings["preprocess"],
            "method": {"name": init, "seed": study.get("pretrain_seed"), "settings": pretrain},
            "task": {"id": task, "family": definition.family, "negative": definition.neg,
                     "positive": definition.pos, "horizon_months": settings["horizon_months"]},
            "finetune": {"init": init, "mode": "full", "fraction": fraction, "seed": seed,
                         "pretrain_seed": study.get("pretrain_seed"), "settings": ft},
            "decision": {"threshold": threshold, "rule": "Youden's J on the validation split",
                         "val_auc": row["val_auc"]},
            "test": {"metrics": {k: row[k] for k in ("auc", "balanced_accuracy", "sensitivity", "specificity")},
                     "study": _study_row(files["table"], task, init, fraction, seed, ft["inputs"]),
                     "schedule_baseline": _study_row(files["table"], task, "schedule", fraction, seed, ft["inputs"]),
                     "reproduced_max_logit_difference": diff},
            "training": {"file": TRAINING, "counts": _counts(training)},
            "source": {"job": files["metrics"], "provenance": study.get("provenance")},
            "provenance": job_provenance(threads=torch.get_num_threads())}
    card = classifier_card(desc, training)
    _finish(out_dir, desc, {k: v for k, v in model.state_dict().items()}, training, card)
    print(f"{out_dir}: {desc['name']}, test logits reproduced within {diff:.3g}", file=sys.stderr)
    return desc


def _interval(row: dict[str, Any], metric: str) -> str:
    if not row or row.get(metric, "") == "":
        return "n/a"
    return f"{float(row[metric]):.3f} [{float(row[f'{metric}_low']):.3f}, {float(row[f'{metric}_high']):.3f}]"


def _common_card(desc: dict[str, Any], training: pd.DataFrame) -> list[str]:
    i, prov = desc["input"], desc["provenance"]
    return [
        "## Inputs",
        "",
        f"T1w scans preprocessed by sslad's chain with the settings in description.json (`preprocess`): "
        f"{i['registration']} registration to {i['space']} (template sha256 {i['template_sha256'][:12]}), "
        f"{i['normalisation']} normalisation, a {i['voxel_mm']} mm grid of {' x '.join(map(str, i['grid']))} voxels "
        f"over {i['crop_mm']} (mm). `sslad predict` runs that chain on new scans.",
        "",
        "## Data",
        "",
        f"{_counts(training)} (ids and image digests in {TRAINING}). "
        "`sslad predict` refuses these participants and images unless told otherwise.",
        "",
        "## Code",
        "",
        f"Exported by sslad {prov.get('sslad_version')} (code {code_label(prov)}), torch "
        f"{prov.get('packages', {}).get('torch', 'n/a')}; the "
        "job that trained it: `source` in description.json.",
        "",
    ]


LIMITS = ("## Limitations\n\nA research model, not a medical device: no use in the care of a person. Trained on "
          "the study's cohorts only (a simulated cohort unless the study named real BIDS trees); scans from other "
          "scanners, protocols or populations may shift its outputs, and its intervals say nothing about them. "
          "Images that fail the preprocessing QC get no score.\n")


def encoder_card(desc: dict[str, Any], training: pd.DataFrame) -> str:
    m = desc["method"]
    return "\n".join([
        f"# Encoder: {desc['name']}",
        "",
        f"A {desc['architecture']['depth']}-layer ResNet encoder (features {desc['architecture']['widths'][-1]}-d)"
        f"{' and the temporal aggregator it trained' if desc['weights']['aggregator_trained'] else ''}, pretrained "
        f"self-supervised with `{m['name']}` (settings in description.json). Intended use: the init of a "
        "fine-tuning in another study with the same inputs (`pretrain.external.checkpoint: <this directory>`, "
        "checked against the grid, space and normalisation); it makes no prediction itself.",
        "",
        *_common_card(desc, training),
        LIMITS,
    ])


def classifier_card(desc: dict[str, Any], training: pd.DataFrame) -> str:
    t, f, d, test = desc["task"], desc["finetune"], desc["decision"], desc["test"]
    rows = [f"| {name} | {_interval(row, 'auc')} | {_interval(row, 'balanced_accuracy')} | "
            f"{_interval(row, 'sensitivity')} | {_interval(row, 'specificity')} |"
            for name, row in ((f"this model ({f['init']})", test["study"]),
                              ("schedule-only baseline (no image)", test["schedule_baseline"]))]
    n = test["study"]
    return "\n".join([
        f"# Classifier: {desc['name']}",
        "",
        f"Task `{t['id']}` ({t['family']}): positive {t['positive']}, negative {t['negative']} (horizon "
        f"{t['horizon_months']} months for future conversion; definitions in sslad's docs/study.md). Input: "
        f"a participant's last {desc['sequence']['max_inputs']} usable scans up to the index visit "
        f"({desc['sequence']['inputs']}). Output: a logit; class 1 at logit >= {d['threshold']:.6g} "
        f"({d['rule']}, validation AUC {d['val_auc']:.3f}). Fine-tuned in full mode from `{f['init']}` at "
        f"label fraction {f['fraction']:g}, seed {f['seed']}. Intended use: research on longitudinal MRI "
        "in Alzheimer's disease, scoring participants that the model never saw (`sslad predict`).",
        "",
        "## Test metrics",
        "",
        f"On the study's test split ({n.get('n_test_subjects', 'n/a')} subjects, {n.get('n_test', 'n/a')} "
        "samples), with subject-level bootstrap intervals at the validation threshold. A gain the schedule-only "
        "baseline also has is not a gain of the images.",
        "",
        "| model | AUC | balanced accuracy | sensitivity | specificity |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *_common_card(desc, training),
        LIMITS,
    ])


# --- reuse: an exported encoder as the external init of another study ---

def grid_shape(voxel_mm: float, crop_mm: dict[str, list[float]]) -> list[int]:
    """The grid preprocessing gives at ``voxel_mm`` over ``crop_mm`` (sslad.preprocess.template_grid's,
    without ANTs, which the learning stages do not install)."""
    lo, hi = (np.array([crop_mm[a][i] for a in "xyz"], dtype=float) for i in (0, 1))
    return [int(n) for n in np.maximum(np.round((hi - lo) / voxel_mm).astype(int), 1)]


def mismatches(desc: dict[str, Any], preprocess: dict[str, Any], space: str) -> list[str]:
    """What differs between an export's inputs and a study's preprocessing: grid (voxel size and box),
    template space, normalisation."""
    i = desc["input"]
    here = {"grid": grid_shape(preprocess["voxel_mm"], preprocess["crop_mm"]),
            "voxel_mm": preprocess["voxel_mm"], "crop_mm": preprocess["crop_mm"], "space": space,
            "normalisation": preprocess["normalisation"]}
    return [f"{k} {i[k]} in the export, {v} here" for k, v in here.items()
            if (list(i[k]) if k == "grid" else i[k]) != v]


def import_encoder(src: str | Path, dst: str | Path, preprocess: dict[str, Any], space: str) -> dict[str, Any]:
    """An exported encoder (or the encoder of an exported classifier) as an ``encoder.pt`` of this
    study; ValueError naming every input setting that differs. Returns the architecture."""
    from sslad.networks import save_encoder

    exp = load(src)
    bad = mismatches(exp.description, preprocess, space)
    if bad:
        raise ValueError(f"{src}: the exported encoder was trained on other inputs than this study's: "
                         f"{'; '.join(bad)}. Preprocess with the export's settings (description.json: preprocess) "
                         "or choose another init")
    trained = exp.description["weights"]["aggregator_trained"]
    save_encoder(dst, exp.description["architecture"], exp.encoder, exp.aggregator if trained else None,
                 f"export:{exp.description['name']}")
    return exp.description["architecture"]


def is_export(path: str | Path) -> bool:
    return (Path(path) / DESCRIPTION).is_file()
