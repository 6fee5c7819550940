"""Command line: one subcommand per pipeline stage, as the Snakemake rules call them.

Each stage takes its file paths as flags and its settings as one JSON object (``--settings``), the
same block of ``config.yaml`` that the rule passes through ``params``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _settings(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--settings is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def _cmd_simulate(a: argparse.Namespace) -> None:
    from sslad.simulate import simulate_cohort

    subjects = simulate_cohort(a.settings, a.out, threads=a.threads, cohort=a.cohort)
    print(f"simulated {len(subjects)} subjects, {sum(len(s.months) for s in subjects)} scans in {a.out}",
          file=sys.stderr)


def _cmd_cohort(a: argparse.Namespace) -> None:
    from sslad.cohort import run

    s = a.settings
    run(a.bids, s["diagnosis_aliases"], s["name"], s["strict"], a.scans, a.record, a.excluded)


def _named(pairs: list[str], flag: str = "--out") -> dict[str, str]:
    """NAME=PATH arguments as a dict."""
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not path:
            raise ValueError(f"{flag} {pair!r}: expected NAME=PATH")
        out[name] = path
    return out


def _cmd_cohort_pool(a: argparse.Namespace) -> None:
    from sslad.cohort import run_pool

    run_pool({name: tuple(paths) for name, *paths in a.cohort}, a.settings["uses"], _named(a.out))


def _cmd_manifest(a: argparse.Namespace) -> None:
    from sslad.manifest import run

    run(a.scans, a.record, a.cohort_excluded, a.qc, _named(a.out), a.settings)


def _cmd_fold(a: argparse.Namespace) -> None:
    from sslad.manifest import run_fold

    run_fold(_named(a.input, "--input"), a.heldout, _named(a.out))


def _cmd_pretrain_set(a: argparse.Namespace) -> None:
    from sslad.io import read_tsv, write_tsv
    from sslad.manifest import pretrain_set

    chosen = pretrain_set(read_tsv(a.visits), a.settings["pretrain_splits"], a.settings["exclude_cohorts"])
    write_tsv(chosen, a.out)
    print(f"{len(chosen)} scans for pretraining", file=sys.stderr)


def _cmd_label_fraction(a: argparse.Namespace) -> None:
    from sslad.manifest import write_fraction

    for fraction, out in a.cell:
        write_fraction(a.task_table, a.task, float(fraction), a.seed, a.settings["subsample_validation"],
                       out)


def _cmd_template(a: argparse.Namespace) -> None:
    from sslad.template import write_template

    write_template(a.out_t1w, a.out_mask, a.settings["template"], a.settings["template_mask"])


def _cmd_preprocess(a: argparse.Namespace) -> None:
    from sslad.preprocess import Outputs, run, run_participant

    if len(a.sessions) != len(a.t1w):
        raise SystemExit(f"sslad preprocess: {len(a.sessions)} sessions but {len(a.t1w)} T1w files")
    if a.worker:  # the scans one after the other, in this process
        for session, t1w in zip(a.sessions, a.t1w):
            record = run(t1w, a.participant, session, a.template, a.template_mask, a.out_dir, a.settings, a.space,
                         a.threads)
            state = (f"FAILED ({record['reason']})" if record["failed_stage"] else f"done (template correlation "
                     f"{record['template_correlation']}, brain {record['brain_volume_ml']} ml)")
            print(f"{a.participant} {session}: {state}; {record.get('seconds', {})}", file=sys.stderr, flush=True)
        return
    for session in a.sessions:  # a record left by an earlier run must not pass for this one's
        Outputs.for_scan(a.out_dir, a.participant, session, a.space).qc_json.unlink(missing_ok=True)
    worker = [sys.executable, "-m", "sslad", "preprocess", "--worker", "--settings", json.dumps(a.settings),
              "--participant", a.participant, "--template", a.template, "--template-mask", a.template_mask,
              "--space", a.space, "--out-dir", a.out_dir, "--threads", str(a.threads)]
    budget = a.runtime_min * 60 * 0.9 - 30 if a.runtime_min else None  # time to write the records left
    records = run_participant(worker, a.participant, list(zip(a.sessions, a.t1w)), a.out_dir, a.space, budget)
    failed = [r for r in records if r["failed_stage"]]
    print(f"{a.participant}: {len(records) - len(failed)} of {len(records)} scans preprocessed"
          + "".join(f"; {r['session_id']} FAILED ({r['reason']})" for r in failed), file=sys.stderr)


def _cmd_qc_table(a: argparse.Namespace) -> None:
    from sslad.preprocess import qc_table

    if not a.settings:
        raise SystemExit("sslad qc-table: --settings (the QC thresholds, config preprocess.qc) is required")
    qc_table(a.scans, a.preproc_dir, a.space, a.out, a.settings)


def _cmd_dataset_description(a: argparse.Namespace) -> None:
    from sslad.derivatives import write

    write(a.settings, a.out)


def _cmd_mlflow_store(a: argparse.Namespace) -> None:
    from sslad.tracking import create_store

    create_store(a.db)


def _cmd_pretrain(a: argparse.Namespace) -> None:
    from sslad.pretrain import Outputs, run

    run(a.settings, a.pretrain, a.visits, a.splits, Outputs(a.encoder, a.metrics, a.checkpoint), threads=a.threads,
        memory_gb=a.device_memory_gb, workers=a.workers, mem_mb=a.mem_mb)


def _cmd_import_external(a: argparse.Namespace) -> None:
    from sslad.export import import_encoder, is_export
    from sslad.networks import import_external

    if is_export(a.checkpoint):  # an sslad export: checked against this study's inputs
        if "preprocess" not in a.settings or "space" not in a.settings:
            raise ValueError("--settings needs preprocess and space to check an exported encoder against this study")
        arch = import_encoder(a.checkpoint, a.out, a.settings["preprocess"], a.settings["space"])
    else:
        arch = import_external(a.checkpoint, a.out, a.settings["model"], a.settings["stem_stride"])
    print(f"{a.checkpoint}: MONAI ResNet-{arch['depth']}, widths {arch['widths']} -> {a.out}", file=sys.stderr)


def _cmd_finetune(a: argparse.Namespace) -> None:
    from sslad.finetune import Cell, run

    cells = [Cell(float(fraction), table, metrics, predictions) for fraction, table, metrics, predictions in a.cell]
    run(a.settings, a.task, a.init, a.seed, cells, a.task_table, a.visits, a.encoder, a.threads, a.workers,
        a.pretrain_seed)


def _cmd_export_digests(a: argparse.Namespace) -> None:
    from sslad.export import write_digests

    write_digests(a.scans, a.out)


def _cmd_export_encoder(a: argparse.Namespace) -> None:
    from sslad.export import export_encoder

    export_encoder(a.encoder, a.metrics, a.pretrain, a.digests, a.visits, a.template, a.template_mask, a.settings,
                   a.out_dir)


def _cmd_export_finetuned(a: argparse.Namespace) -> None:
    from sslad.export import export_classifier

    export_classifier(a.settings, a.task, a.init, _named(a.file, "--file"), a.threads, a.out_dir)


def _cmd_predict(a: argparse.Namespace) -> None:
    from sslad.predict import apply, prepare

    out_dir = Path(a.out_dir)
    allow = a.allow_trained or bool(a.settings.get("allow_trained_participants"))  # by hand: the flag
    scans = a.prepared or str(out_dir / "scans.tsv")
    if a.step in ("all", "prepare"):
        if not a.bids or not a.template or not a.template_mask:
            raise ValueError("--bids, --template and --template-mask are needed to prepare new scans")
        aliases = a.settings.get("diagnosis_aliases") or {dx: dx for dx in ("CN", "MCI", "AD")}
        prepare(a.bids, a.name, a.model, a.template, a.template_mask, str(out_dir), aliases, allow, a.threads)
    if a.step in ("all", "apply"):
        apply(scans, a.model, a.out or str(out_dir / "predictions.tsv"), allow, a.threads)


def _cmd_track_finetune(a: argparse.Namespace) -> None:
    from sslad.tracking import log_finetune_runs

    log_finetune_runs(a.tracking, a.metrics, a.out)


def _cmd_track_pretrain(a: argparse.Namespace) -> None:
    from sslad.tracking import log_pretrain_runs

    log_pretrain_runs(a.tracking, a.metrics, a.out)


def _cmd_aggregate(a: argparse.Namespace) -> None:
    from sslad.aggregate import run

    run(a.metrics, a.table, a.summary, a.summary_md, a.figures_dir, a.settings, a.predictions, a.subjects,
        a.ground_truth)


def _cmd_ground_truth(a: argparse.Namespace) -> None:
    from sslad.ground_truth import run

    table = run(a.tasks, dict(a.cohort), a.out)
    print(table.to_string(index=False), file=sys.stderr)


def _cmd_order_probe(a: argparse.Namespace) -> None:
    from sslad.order_probe import run

    r = run(a.encoder, a.pretrain_metrics, a.pretrain, a.visits, a.splits, a.out, a.threads)
    print(f"{r['method']} seed {r['pretrain_seed']}: order probe on {r['n_subjects']} unseen subjects "
          f"({r['n_pairs']} pairs): encoder {r['encoder']}, untrained {r['untrained']}, voxels {r['voxels']}",
          file=sys.stderr)


def _cmd_order_probe_report(a: argparse.Namespace) -> None:
    from sslad.order_probe import report

    report(a.probes, a.tsv, a.md)


def _cmd_pretrain_curves(a: argparse.Namespace) -> None:
    from sslad.pretrain_curves import plot

    plot(a.metrics, a.out)


def _cmd_provenance(a: argparse.Namespace) -> None:
    from sslad.io import read_tsv, write_json
    from sslad.provenance import report

    stages = {name: files for name, *files in a.stage}
    if a.qc:
        stages["preprocess"] = list(read_tsv(a.qc, keep_default_na=False)["file"])
    write_json(report(stages, a.settings["config_sha256"]), a.out)


def _cmd_qc_mosaic(a: argparse.Namespace) -> None:
    from sslad.qc_mosaic import run

    run(a.qc, a.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--settings", type=_settings, default={},
                       help="JSON object with this stage's settings (the matching block of config.yaml)")
        p.set_defaults(func=func)
        return p

    p = add("simulate", _cmd_simulate, "Simulate a longitudinal BIDS cohort from the MNI152 template.")
    p.add_argument("--out", required=True, help="BIDS directory to write (replaced atomically)")
    p.add_argument("--threads", type=int, default=1, help="worker processes")
    p.add_argument("--cohort", default="simulated", help="cohort name the ground truth gives every scan")

    p = add("cohort", _cmd_cohort, "Ingest a Clinica-style BIDS tree into scans.tsv and excluded.tsv.")
    p.add_argument("--bids", required=True, help="BIDS directory")
    p.add_argument("--scans", required=True, help="output: one row per scan that can be a model input")
    p.add_argument("--record", required=True, help="output: every visit with a diagnosis, imaged or not")
    p.add_argument("--excluded", required=True, help="output: scans left out, with the reason")

    p = add("cohort-pool", _cmd_cohort_pool,
            "Pool the cohorts' tables; report each cohort and every participant label found in several.")
    p.add_argument("--cohort", nargs=4, action="append", required=True, metavar=("NAME", "SCANS", "RECORD", "EXCLUDED"),
                   help="one cohort's tables (repeat per cohort)")
    p.add_argument("--out", nargs="+", required=True, metavar="NAME=PATH",
                   help="where each table goes: scans, record, excluded, cohorts, overlap")

    p = add("template", _cmd_template,
            "Write the registration template and its brain mask (nilearn's MNI152 by default).")
    p.add_argument("--out-t1w", required=True)
    p.add_argument("--out-mask", required=True)

    p = add("preprocess", _cmd_preprocess,
            "Preprocess a participant's T1w scans, one by one: N4, registration, skull strip, normalisation, QC.")
    p.add_argument("--participant", required=True, help="participant_id (sub-...)")
    p.add_argument("--sessions", nargs="+", required=True, help="session_ids (ses-...), one per --t1w file")
    p.add_argument("--t1w", nargs="+", required=True, help="raw T1w NIfTI files, in the order of --sessions")
    p.add_argument("--template", required=True, help="template T1w (from the template stage)")
    p.add_argument("--template-mask", required=True, help="template brain mask")
    p.add_argument("--space", required=True, help="space label for output names, e.g. MNI152NLin2009aSym")
    p.add_argument("--out-dir", required=True, help="derivatives root (results/preproc)")
    p.add_argument("--threads", type=int, default=1, help="ITK threads")
    p.add_argument("--runtime-min", type=float, default=0.0,
                   help="the job's time limit (minutes): scans not done within 90%% of it are recorded as failed")
    p.add_argument("--worker", action="store_true",
                   help="run the scans in this process (the job runs one worker and outlives it)")

    p = add("qc-table", _cmd_qc_table,
            "Collect per-scan qc.json files into one QC table, with the verdict under --settings (preprocess.qc).")
    p.add_argument("--scans", required=True)
    p.add_argument("--preproc-dir", required=True)
    p.add_argument("--space", required=True)
    p.add_argument("--out", required=True)

    p = add("dataset-description", _cmd_dataset_description,
            "Write results/preproc/dataset_description.json (a BIDS-Derivatives dataset).")
    p.add_argument("--out", required=True)

    p = add("manifest", _cmd_manifest,
            "Build visits, subjects, the seven task tables, subject-level splits and exclusions.")
    p.add_argument("--scans", required=True, help="scans.tsv from the cohort stage")
    p.add_argument("--record", required=True, help="record.tsv from the cohort stage (every clinical visit)")
    p.add_argument("--cohort-excluded", required=True, help="excluded.tsv from the cohort stage")
    p.add_argument("--qc", default=None, help="optional QC table (participant_id, session_id, qc_pass, qc_reason)")
    p.add_argument("--out", nargs="+", required=True, metavar="NAME=PATH",
                   help="where each table goes: visits, subjects, splits, excluded, task_<task>")

    p = add("fold", _cmd_fold, "Write one leave-one-cohort-out fold's visits, splits and task tables.")
    p.add_argument("--heldout", required=True, help="the cohort held out (every subject of it is test)")
    p.add_argument("--input", nargs="+", required=True, metavar="NAME=PATH",
                   help="the pooled manifest's tables: visits, splits, task_<task>")
    p.add_argument("--out", nargs="+", required=True, metavar="NAME=PATH", help="the fold's, by the same names")

    p = add("pretrain-set", _cmd_pretrain_set, "Write pretrain.tsv: the scans pretraining may use.")
    p.add_argument("--visits", required=True, help="visits.tsv from the manifest (with each scan's split)")
    p.add_argument("--out", required=True)

    p = add("label-fraction", _cmd_label_fraction,
            "Write the nested, stratified label-fraction subsets of one seed of a task's training (and validation) "
            "split.")
    p.add_argument("--task-table", required=True, help="results/manifest/tasks/<task>.tsv")
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--cell", nargs=2, action="append", required=True, metavar=("FRACTION", "OUT"),
                   help="one label fraction and the table to write; repeat for each fraction")

    p = add("mlflow-store", _cmd_mlflow_store, "Create the MLflow SQLite store and its experiments (once per study).")
    p.add_argument("--db", required=True, help="SQLite file, e.g. results/mlflow/mlflow.db")

    p = add("pretrain", _cmd_pretrain, "Self-supervised pretraining of one method (torchrun-aware).")
    p.add_argument("--pretrain", required=True, help="pretrain.tsv (participant_id, session_id)")
    p.add_argument("--visits", required=True, help="visits.tsv (array paths and times)")
    p.add_argument("--splits", required=True, help="splits.tsv, to refuse test subjects")
    p.add_argument("--encoder", required=True, help="output: encoder.pt (for fine-tuning)")
    p.add_argument("--metrics", required=True, help="output: metrics.json (loss curves, settings)")
    p.add_argument("--checkpoint", required=True,
                   help="resumable checkpoint while training (removed once the run is complete)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--device-memory-gb", type=float, default=0.0,
                   help="memory one process may use on its device; 0: the device's (pre-flight check)")
    p.add_argument("--mem-mb", type=float, default=0.0,
                   help="the job's memory allowance in MB (the rule's resources.mem_mb), a limit of the pre-flight "
                        "check on a CPU beside the host's RAM and the cgroup's; 0: none")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loader worker processes of the job (split across its processes) that read the next "
                        "batches from disk while a step runs (0: the main process reads each batch when it is due)")

    p = add("import-external", _cmd_import_external,
            "Turn a 3D-Neuro-SimCLR checkpoint (model_state_dict, MONAI ResNet) into an encoder.pt.")
    p.add_argument("--checkpoint", required=True, help="the released .tar / .pt file")
    p.add_argument("--out", required=True, help="encoder.pt to write")

    p = add("finetune", _cmd_finetune,
            "Fine-tune and evaluate one task x init x seed at each of its label fractions (all modes).")
    p.add_argument("--task", required=True)
    p.add_argument("--init", required=True, help="scratch or a pretraining method / external")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--cell", nargs=4, action="append", required=True,
                   metavar=("FRACTION", "FRACTION_TABLE", "METRICS", "PREDICTIONS"),
                   help="one label fraction: its subset table (from label-fraction) and the metrics.json and "
                        "predictions.tsv to write; repeat for each fraction")
    p.add_argument("--task-table", required=True, help="results/manifest/tasks/<task>.tsv")
    p.add_argument("--visits", required=True, help="visits.tsv (array paths)")
    p.add_argument("--encoder", default=None, help="encoder.pt of a pretrained init (none for scratch)")
    p.add_argument("--pretrain-seed", type=int, default=None,
                   help="the seed of the pretraining run that made --encoder (recorded in metrics.json)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0,
                   help="data-loader worker processes that read the next batches from disk while a step runs "
                        "(0: the main process reads each batch when it is due)")

    p = add("export-digests", _cmd_export_digests,
            "Write the image digest (sha256 of the uncompressed NIfTI) of every scan of the study.")
    p.add_argument("--scans", required=True, help="results/cohort/scans.tsv")
    p.add_argument("--out", required=True, help="TSV to write (participant_id, session_id, sha256)")

    p = add("export-encoder", _cmd_export_encoder,
            "Export one pretraining run's encoder: safetensors weights, description, training ids, model card.")
    p.add_argument("--encoder", required=True, help="the run's encoder.pt")
    p.add_argument("--metrics", required=True, help="the run's metrics.json (its settings and provenance)")
    p.add_argument("--pretrain", required=True, help="pretrain.tsv: the scans it was pretrained on")
    p.add_argument("--digests", required=True, help="image digests (export-digests)")
    p.add_argument("--visits", required=True, help="visits.tsv (the model grid, from an array)")
    p.add_argument("--template", required=True, help="the template T1w the study registered to")
    p.add_argument("--template-mask", required=True, help="its brain mask")
    p.add_argument("--out-dir", required=True, help="export directory to write (replaced atomically)")

    p = add("export-finetuned", _cmd_export_finetuned,
            "Export the full-mode model of one fine-tuning cell, retrained and checked against the study's logits.")
    p.add_argument("--task", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--file", nargs="+", required=True, metavar="NAME=PATH",
                   help="task, fraction, visits, metrics, predictions, digests, table, template, template_mask; "
                        "for a pretrained init also encoder, pretrain, pretrain_metrics")
    p.add_argument("--threads", type=int, default=1, help="as the fine-tuning job (its logits are reproduced)")
    p.add_argument("--out-dir", required=True, help="export directory to write (replaced atomically)")

    p = add("predict", _cmd_predict,
            "Score new scans with an exported classifier: ingest, leak check, preprocess, QC, predictions.tsv.")
    p.add_argument("--model", required=True, help="export directory of a fine-tuned classifier")
    p.add_argument("--bids", default=None, help="BIDS tree of the new scans (participants.tsv, sessions.tsv, T1w)")
    p.add_argument("--name", default="new", help="cohort name in the participant ids (sub-<name><label>)")
    p.add_argument("--template", default=None, help="the study's template T1w (checked against the export)")
    p.add_argument("--template-mask", default=None, help="its brain mask")
    p.add_argument("--out-dir", default="predict", help="where scans.tsv, preproc/ and predictions.tsv go")
    p.add_argument("--step", choices=("all", "prepare", "apply"), default="all",
                   help="prepare: ingest, leak check, preprocessing and QC (ANTs); apply: the model (torch)")
    p.add_argument("--prepared", default=None, help="scans.tsv of the prepare step (default: OUT_DIR/scans.tsv)")
    p.add_argument("--out", default=None, help="predictions.tsv to write (default: OUT_DIR/predictions.tsv)")
    p.add_argument("--allow-trained", action="store_true",
                   help="score participants the model was trained or pretrained on (refused by default)")
    p.add_argument("--threads", type=int, default=1)

    tracking_help = "MLflow tracking: a server URI (http://host:port) or the SQLite store's path"
    p = add("track-finetune", _cmd_track_finetune,
            "Log every fine-tuning job as a tagged MLflow run (once per job result).")
    p.add_argument("--tracking", required=True, help=tracking_help)
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every fine-tuning job")
    p.add_argument("--out", required=True, help="TSV of job, run id and metrics file")

    p = add("track-pretrain", _cmd_track_pretrain,
            "Log every pretraining job as a tagged MLflow run (once per job result).")
    p.add_argument("--tracking", required=True, help=tracking_help)
    p.add_argument("--metrics", nargs="*", required=True, help="metrics.json of every pretraining job")
    p.add_argument("--out", required=True, help="TSV of job, run id and metrics file")

    p = add("aggregate", _cmd_aggregate, "Collect fine-tuning results into table.csv, summary.csv and figures.")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every fine-tuning job")
    p.add_argument("--predictions", nargs="+", required=True,
                   help="predictions.tsv of every fine-tuning job, in the order of --metrics")
    p.add_argument("--subjects", default=None,
                   help="the manifest's subjects.tsv: with it, table.csv also has rows per test cohort")
    p.add_argument("--table", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--summary-md", required=True)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--ground-truth", default=None,
                   help="ground_truth.tsv (simulated cohorts): cited by the convergence flags, shown in summary.md")

    p = add("ground-truth", _cmd_ground_truth,
            "What each task's split supports on simulated cohorts: a reader of the true volumes.")
    p.add_argument("--tasks", nargs="+", required=True, help="task tables of the manifest (results/manifest/tasks)")
    p.add_argument("--cohort", nargs=2, action="append", required=True, metavar=("NAME", "BIDS"),
                   help="a simulated cohort and its BIDS tree (the ground truth under derivatives/simulation)")
    p.add_argument("--out", required=True, help="ground_truth.tsv")

    p = add("order-probe", _cmd_order_probe,
            "Score one pretraining run's order probe on the test subjects, beside its untrained encoder and voxels.")
    p.add_argument("--encoder", required=True, help="the run's encoder.pt")
    p.add_argument("--pretrain-metrics", required=True, help="the run's metrics.json (its settings and seed)")
    p.add_argument("--pretrain", required=True, help="pretrain.tsv: the probe is fitted on these subjects' pairs")
    p.add_argument("--visits", required=True, help="visits.tsv (array paths)")
    p.add_argument("--splits", required=True, help="splits.tsv: its test subjects are scored")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="order_probe.json to write")

    p = add("order-probe-report", _cmd_order_probe_report,
            "Collect every run's order probe into one table and its markdown report.")
    p.add_argument("--probes", nargs="+", required=True, help="order_probe.json of every pretraining run")
    p.add_argument("--tsv", required=True)
    p.add_argument("--md", required=True)

    p = add("pretrain-curves", _cmd_pretrain_curves, "Draw every pretraining run's loss curve, a method per panel.")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every pretraining run")
    p.add_argument("--out", required=True, help="PNG to write")

    p = add("provenance", _cmd_provenance,
            "Write results/provenance.json: the code and library versions every stage's results were made with.")
    p.add_argument("--stage", nargs="+", action="append", default=[], metavar=("NAME", "FILE"),
                   help="a stage's name and its result files (JSON with a provenance key); repeatable")
    p.add_argument("--qc", default=None, help="results/preproc/qc.tsv: its scans' qc.json as stage preprocess")
    p.add_argument("--out", required=True)

    p = add("qc-mosaic", _cmd_qc_mosaic, "Draw one picture with a slice of every preprocessed scan, failures marked.")
    p.add_argument("--qc", required=True, help="results/preproc/qc.tsv")
    p.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        from sslad.stage_settings import check

        check(args.command, args.settings, getattr(args, "init", "") or "")
        args.func(args)
    except (ValueError, OSError, ArithmeticError) as exc:  # ArithmeticError: a training run diverged
        print(f"sslad {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(f"sslad {args.command}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
