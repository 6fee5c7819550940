# Shared helpers: config validation and the settings each rule receives through `params`.
import json
import os
import shlex
import sys

import pandas as pd

import jsonschema
import yaml

sys.path.insert(0, os.path.abspath(workflow.basedir))  # the workflow's own sslad (stdlib-only parts here)
from sslad.cohort import clinical_digest, convert_single_cohort, resolve_cohorts
from sslad.provenance import config_digest
from sslad.labels import TASKS
from sslad.registry import METHODS, complete_schema, inits, pretrain_run_settings

# Resources of a job are no config value: they are the rules' defaults below, overridden by a profile
# (profiles/*/config.yaml: set-resources, set-threads) or on the command line (--set-resources).
RESOURCE_KEYS = ("gpu", "threads", "loader_workers", "mem_mb", "runtime")


def coerce_scalars(value, schema):
    """Snakemake reads nested `--config` values as strings ('1.5'); turn them back into the
    numbers and booleans the schema asks for, so that the schema judges the value itself."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in value:
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            value[key] = coerce_scalars(value[key], sub)
        return value
    if isinstance(value, list):
        return [coerce_scalars(v, schema.get("items", {})) for v in value]
    wants_scalar = schema.get("type") in ("number", "integer", "boolean") or any(
        not isinstance(v, str) for v in schema.get("enum", [])
    )
    if isinstance(value, str) and wants_scalar:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def validate_config(cfg, schema_path):
    """Stop before any job runs if config.yaml breaks the schema, naming the offending key."""
    with open(schema_path) as fh:
        schema = complete_schema(yaml.safe_load(fh))
    for block in ("pretrain", "finetune"):
        moved = [k for k in RESOURCE_KEYS if k in cfg.get(block, {})]
        if moved:
            raise ValueError(
                f"invalid configuration: {block}.{', '.join(moved)} are resources, which moved out of the config: "
                f"set them in a profile (set-resources: {block}: ..., set-threads) or with "
                f"--set-resources {block}:{moved[0]}=..."
            )
    warning = convert_single_cohort(cfg)
    if warning:
        print(f"sslad: {warning}", file=sys.stderr)
    train = cfg.get("pretrain", {}).get("train", {})
    if "seed" in train:  # before pretrain.seeds: one run per method
        seed = train.pop("seed")
        if "seeds" not in cfg["pretrain"]:
            cfg["pretrain"]["seeds"] = [seed]
        print(
            f"sslad: pretrain.train.seed moved to pretrain.seeds (a list, one pretraining run each): "
            f"read as pretrain.seeds: {cfg['pretrain']['seeds']}",
            file=sys.stderr,
        )
    coerce_scalars(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  config key {key}: {err.message}")
        raise ValueError("invalid configuration (config.yaml / --config):\n" + "\n".join(lines))
    simulate = jsonschema.Draft202012Validator(schema["properties"]["simulate"])
    for i, cohort in enumerate(resolve_cohorts(cfg)):
        for err in simulate.iter_errors(cohort["simulate"]):
            key = ".".join(str(p) for p in err.absolute_path)
            raise ValueError(f"invalid configuration: config key cohorts.{i}.simulate.{key}: {err.message}")


def settings(*blocks):
    """The config blocks a rule uses, as one sorted JSON string. Passed as a `params` value, so
    editing any of them (and nothing else) reruns the rule."""
    merged = {}
    for block in blocks:
        merged.update(config[block])
    return json.dumps(merged, sort_keys=True)


# leave_one_cohort_out: the fold tables, pretraining and fine-tuning of each held-out cohort under
# heldout-<cohort>/ (results/manifest/, results/pretrain/, results/finetune/, results/controls/, logs)
LOCO = config["study"].get("evaluation") == "leave_one_cohort_out"
FOLD = "heldout-{heldout}/" if LOCO else ""
FOLD_ESCAPED = FOLD.replace("{", "{{").replace("}", "}}")  # in a pattern that expand() fills in part


def fold_of(wildcards):
    """A job's fold directory: heldout-<cohort>/ in a leave-one-cohort-out study, else nothing."""
    return f"heldout-{wildcards.heldout}/" if LOCO else ""


def folds():
    """expand() keywords of the folds: every downstream cohort held out in turn, or none."""
    return {"heldout": [name for name, c in COHORTS.items() if c["use"] != "pretrain"]} if LOCO else {}


def cohort_bids(wildcards):
    """A cohort's BIDS tree: the user's, or the simulated one when its bids_dir is empty."""
    return COHORTS[wildcards.cohort]["bids_dir"] or f"results/cohort/{wildcards.cohort}/bids"


def simulated_cohorts():
    """The cohorts the study simulates (no bids_dir) and fine-tunes on: those whose task samples have a
    ground truth."""
    return [name for name, c in COHORTS.items() if not c["bids_dir"] and c["use"] != "pretrain"]


def clinical_tables(wildcards):
    """The digest of a user BIDS tree's clinical tables and image list (sslad.cohort.clinical_digest):
    a `params` value, so a diagnosis corrected in place reruns ingestion and what depends on labels. A
    simulated tree has none: its settings decide its content."""
    bids = COHORTS[wildcards.cohort]["bids_dir"]
    return clinical_digest(bids) if bids else ""


def template_space():
    """Space label of output names: follows the template that is really used."""
    pre = config["preprocess"]
    return pre["template_space"] if pre["template"] else "MNI152NLin2009aSym"


def cohort_scans():
    """{participant: [(session, raw path), ...]} from the cohort checkpoint's scans.tsv, read once
    per run (input functions run once per participant, thousands of times in a large study)."""
    path = checkpoints.cohort.get().output.scans
    key = (path, os.path.getmtime(path))
    if _SCANS_CACHE.get("key") != key:
        scans = pd.read_csv(path, sep="\t", dtype=str, usecols=["participant_id", "session_id", "path"])
        subjects = {}
        for sub, ses, raw in sorted(zip(scans["participant_id"], scans["session_id"], scans["path"])):
            subjects.setdefault(sub, []).append((ses, raw))
        _SCANS_CACHE.update(key=key, subjects=subjects)
    return _SCANS_CACHE["subjects"]


_SCANS_CACHE = {}


def subject_t1w(wildcards):
    return [raw for _, raw in cohort_scans()[wildcards.participant]]


def subject_sessions(wildcards):
    """The participant's session labels, a list: `{params.sessions:q}` quotes each one."""
    return [ses for ses, _ in cohort_scans()[wildcards.participant]]


def all_preprocessed(wildcards):
    return [f"results/preproc/{sub}" for sub in cohort_scans()]


def fraction_name(fraction):
    return f"{fraction:g}"


def grid_inits():
    """The inits fine-tuned: the study's, and always the schedule-only baseline (the reference every
    image model is read against; it reads no image, so it costs seconds)."""
    return list(dict.fromkeys([*config["study"]["inits"], "schedule"]))


def study_methods():
    """The pretraining methods the study fine-tunes from (its inits that are methods)."""
    return [m for m in config["study"]["inits"] if m in METHODS]


def pretrained_methods():
    """Every method the study pretrains: those it fine-tunes and those it only probes (study.probe_only)."""
    return list(dict.fromkeys([*study_methods(), *config["study"].get("probe_only", [])]))


ALL_TASKS = list(TASKS)  # every task the package defines (sslad/labels.py)


def manifest_outputs():
    """The manifest job's outputs by name (sslad.manifest.output_name): the study-wide tables and all
    seven task tables (the splits are stratified on every task's labels, whichever tasks the study
    fine-tunes)."""
    tables = {name: f"results/manifest/{name}.tsv" for name in ("visits", "subjects", "splits", "excluded", "schedule")}
    return tables | {f"task_{task}": f"results/manifest/tasks/{task}.tsv" for task in ALL_TASKS}


def named_paths(wildcards, output):
    """NAME=PATH for every named output, for a command that writes several files."""
    return " ".join(shlex.quote(f"{name}={path}") for name, path in output.items())


def pretrain_settings(method, seed):
    """One pretraining run's settings (sslad.registry.pretrain_run_settings) as sorted JSON."""
    return json.dumps(pretrain_run_settings(config, method, seed), sort_keys=True)


def finetune_block(init):
    """The fine-tuning block minus n_bootstrap (aggregation's: the intervals come from the
    predictions); the encoder block only for scratch (pretrained inits carry their architecture in
    encoder.pt, an input)."""
    ft = {k: v for k, v in config["finetune"].items() if k != "n_bootstrap"}
    if init == "schedule":  # no image, no training: only what its rows are labelled with
        return {k: ft[k] for k in ("modes", "inputs")}
    if init == "scratch":
        ft["model"] = config["model"]
    return ft


def finetune_settings(wildcards):
    """A fine-tuning job's settings: its init's block and its fold (the held-out cohort, or "")."""
    ft = finetune_block(wildcards.init)
    ft["heldout"] = wildcards.heldout if LOCO else ""
    return json.dumps(ft, sort_keys=True)


def control_settings(wildcards):
    """A control job's settings: the fine-tuning block with the control's inputs and the primary
    comparison's mode only; no other study key, so editing study.controls reruns no other job."""
    ft = finetune_block(wildcards.init)
    ft.update(inputs=wildcards.control, modes=[config["study"]["primary"]["mode"]])
    ft["heldout"] = wildcards.heldout if LOCO else ""
    return json.dumps(ft, sort_keys=True)


def fraction_tables():
    """The label-fraction subsets of one task and seed, one per study fraction."""
    return expand(
        f"results/manifest/{FOLD_ESCAPED}fractions/{{{{task}}}}/seed-{{{{seed}}}}/frac-{{fraction}}.tsv",
        fraction=FRACTIONS,
    )


# A pretrained init's fine-tuning cells sit under the pretraining run they start from: one per
# pretrain.seeds entry, crossed with study.seeds.
PRETRAIN_RUN = "pretrain-seed-{pseed}/"
PRETRAIN_RUN_ESCAPED = PRETRAIN_RUN.replace("{", "{{").replace("}", "}}")


def pretrained(init):
    """Whether an init starts from one of the study's own pretraining runs (one per pretrain.seeds)."""
    return init in METHODS


def finetune_cells(name, run=""):
    """One file of each label fraction of a fine-tuning job (task x init [x pretraining run] x seed)."""
    return expand(
        f"results/finetune/{FOLD_ESCAPED}{{{{task}}}}/{{{{init}}}}/{run}frac-{{fraction}}/seed-{{{{seed}}}}/{{name}}",
        fraction=FRACTIONS,
        name=name,
    )


def pretrain_seed_arg(wildcards):
    """--pretrain-seed for a job of a pretrained init (recorded in its metrics.json), else nothing."""
    return f"--pretrain-seed {int(wildcards.pseed)}" if "pseed" in wildcards.keys() else ""


def cell_args(fractions, *files):
    """`--cell FRACTION FILE...` per fraction: a job's files by fraction, passed by path."""
    return " ".join(
        "--cell " + " ".join([fraction, *(shlex.quote(str(f)) for f in cell)])
        for fraction, *cell in zip(fractions, *files)
    )


def finetune_inputs(wildcards):
    fold = fold_of(wildcards)
    files = {
        "task": f"results/manifest/{fold}tasks/{wildcards.task}.tsv",
        "fractions": expand(
            fraction_tables(), task=wildcards.task, seed=wildcards.seed, heldout=wildcards.get("heldout")
        ),
        "visits": "results/manifest/visits.tsv",
    }
    if wildcards.init == "external":  # imported once, pretrained on none of the study's cohorts
        files["encoder"] = "results/pretrain/external/encoder.pt"
    elif pretrained(wildcards.init):
        files["encoder"] = f"results/pretrain/{fold}{wildcards.init}/seed-{wildcards.pseed}/encoder.pt"
    return files


def control_inputs(wildcards):
    """A control job's files: those of the task x init x seed job, with the primary fraction's subset only."""
    files = finetune_inputs(wildcards)
    w = wildcards
    files["fractions"] = f"results/manifest/{fold_of(w)}fractions/{w.task}/seed-{w.seed}/frac-{w.fraction}.tsv"
    return files


def runs_of(init):
    """expand() keywords of an init's pretraining runs: every pretrain.seeds entry, or none."""
    return {"pseed": config["pretrain"]["seeds"]} if pretrained(init) else {}


def finetune_outputs(name):
    """One output (metrics.json or predictions.tsv) of every fine-tuning job of the study."""
    study = config["study"]
    return [
        path
        for init in grid_inits()
        for path in expand(
            f"results/finetune/{FOLD}{{task}}/{init}/{PRETRAIN_RUN if pretrained(init) else ''}"
            f"frac-{{fraction}}/seed-{{seed}}/{name}",
            task=study["tasks"],
            fraction=FRACTIONS,
            seed=study["seeds"],
            **runs_of(init),
            **folds(),
        )
    ]


def control_cell(run=""):
    return f"results/controls/{FOLD}{{task}}/{{init}}/{run}{{control}}/frac-{{fraction}}/seed-{{seed}}/{{name}}"


def control_outputs(name):
    """One output of every control job: study.primary's init and reference at its mode and label
    fraction, every seed (and pretraining run), each input of study.controls, for the control tasks
    the study runs."""
    study = config["study"]
    primary, controls = study["primary"], study["controls"]
    return [
        path
        for init in dict.fromkeys([primary["init"], primary["reference"]])
        for path in expand(
            control_cell(PRETRAIN_RUN if pretrained(init) else "").replace("{init}", init),
            task=[t for t in study["tasks"] if t in controls["tasks"]],
            control=controls["inputs"],
            fraction=fraction_name(primary["fraction"]),
            seed=study["seeds"],
            name=name,
            **runs_of(init),
            **folds(),
        )
    ]


def finetune_metrics():
    """metrics.json of every fine-tuning job, the controls' last."""
    return finetune_outputs("metrics.json") + control_outputs("metrics.json")


def finetune_predictions():
    """predictions.tsv of every fine-tuning job, in the order of finetune_metrics()."""
    return finetune_outputs("predictions.tsv") + control_outputs("predictions.tsv")


PRETRAIN_DIR = f"results/pretrain/{FOLD}{{method}}/seed-{{pseed}}"


def pretrain_runs(name):
    """One file of every pretraining run of the study: each pretrained method x pretrain.seeds (x fold)."""
    return expand(f"{PRETRAIN_DIR}/{name}", method=pretrained_methods(), pseed=config["pretrain"]["seeds"], **folds())


def pretrain_metrics():
    return pretrain_runs("metrics.json")


MLFLOW_DB = "results/mlflow/mlflow.db"


def tracking_target(wildcards, input):
    """Where the tracking jobs log: config tracking.uri (an MLflow server), else the SQLite store
    (their input)."""
    return config["tracking"]["uri"] or input.store


def tracking_store():
    """The SQLite store as an input of the tracking jobs (none with a server). ancient(): logging
    appends to it, and its time stamp must not rerun anything."""
    return [] if config["tracking"]["uri"] else ancient(MLFLOW_DB)


def check_study(cfg):
    """Cross-key checks the schema cannot express."""
    study = cfg["study"]
    if "external" in study["inits"] and not cfg["pretrain"]["external"]["checkpoint"]:
        raise ValueError(
            "invalid configuration: study.inits lists 'external' but pretrain.external.checkpoint is empty"
        )
    primary = study["primary"]
    for key in ("init", "reference"):
        if primary[key] not in [*study["inits"], "schedule"]:
            raise ValueError(
                f"invalid configuration: study.primary.{key} is {primary[key]!r}, not one of study.inits "
                f"{study['inits']} or schedule"
            )
    if primary["mode"] not in cfg["finetune"]["modes"]:
        raise ValueError(f"invalid configuration: study.primary.mode {primary['mode']!r} is not in finetune.modes")
    if primary["inputs"] != cfg["finetune"]["inputs"]:
        raise ValueError(
            f"invalid configuration: study.primary.inputs {primary['inputs']!r} is not finetune.inputs "
            f"{cfg['finetune']['inputs']!r}"
        )
    if cfg["finetune"]["inputs"] in study["controls"]["inputs"]:
        raise ValueError(
            f"invalid configuration: study.controls.inputs lists {cfg['finetune']['inputs']!r}, the inputs of "
            f"every job (finetune.inputs): a control must change them"
        )
    if not any(abs(primary["fraction"] - f) < 1e-9 for f in study["label_fractions"]):
        raise ValueError(
            f"invalid configuration: study.primary.fraction {primary['fraction']} is not in study.label_fractions"
        )


validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
check_study(config)
COHORTS = {c["name"]: c for c in resolve_cohorts(config)}  # after validation: defaults filled in
if LOCO and len(folds()["heldout"]) < 2:
    raise ValueError(
        "invalid configuration: study.evaluation leave_one_cohort_out needs at least two cohorts with use both or "
        f"downstream, got {folds()['heldout']}"
    )
FRACTIONS = [fraction_name(f) for f in config["study"]["label_fractions"]]  # after validation: numbers


def sslad_shell_prefix(root):
    """Shell lines run before every job's command: the `sslad` command is `python -m sslad` with
    the workflow's own source tree first on PYTHONPATH. Jobs thus run this checkout's code in a
    conda env (which holds third-party packages only, and from which Snakemake strips an inherited
    PYTHONPATH), in a venv with or without the package installed, and on a cluster node (whose job
    re-reads this file). A prefix, unlike text in each rule, is no rerun trigger: moving the
    checkout reruns nothing."""
    quoted = shlex.quote(os.path.abspath(root)).replace("{", "{{").replace("}", "}}")
    return (
        "set -euo pipefail; "
        f"export PYTHONPATH={quoted}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
        'sslad() {{ python -m sslad "$@"; }}; '
    )


shell.prefix(sslad_shell_prefix(workflow.basedir))


def external_settings():
    """The import's settings; for an sslad export (a directory with description.json, sslad/export.py)
    also this study's preprocessing and space, which the export's inputs must match."""
    external = config["pretrain"]["external"]
    out = {"model": config["model"], "stem_stride": external["stem_stride"]}
    if os.path.isfile(os.path.join(external["checkpoint"], "description.json")):
        out.update(preprocess=config["preprocess"], space=template_space())
    return json.dumps(out, sort_keys=True)


# Exports and predictions (workflow/rules/export.smk, sslad/export.py)
def export_pick(key, pool, name):
    """export.<key> (a study value, checked to be one) or, when null, the first of ``pool``."""
    value = config["export"][key]
    if value is None:
        return pool[0]
    if value not in pool:
        raise ValueError(f"invalid configuration: export.{key} {value} is not one of {name} {pool}")
    return value


def export_list(key, pool, name):
    """export.<key> (a subset of ``pool``), or all of ``pool`` when empty."""
    chosen = config["export"][key] or pool
    extra = [v for v in chosen if v not in pool]
    if extra:
        raise ValueError(f"invalid configuration: export.{key} lists {extra}, not in {name} {pool}")
    return chosen


EXPORT_SEED = export_pick("seed", config["study"]["seeds"], "study.seeds")
EXPORT_PRETRAIN_SEED = export_pick("pretrain_seed", config["pretrain"]["seeds"], "pretrain.seeds")
EXPORT_FRACTION = export_pick("fraction", config["study"]["label_fractions"], "study.label_fractions")
EXPORT_TASKS = export_list("tasks", config["study"]["tasks"], "study.tasks")
EXPORT_INITS = export_list("inits", [i for i in config["study"]["inits"] if i != "schedule"], "study.inits")
EXPORT = f"results/export/{FOLD}"


def export_settings(wildcards):
    """What an export records and checks (preprocessing, grid, sequence), and for a fine-tuned model
    the fine-tuning job's own settings, so that its rerun is the job's."""
    out = {
        "preprocess": config["preprocess"],
        "space": template_space(),
        "max_inputs": config["manifest"]["max_inputs"],
        "horizon_months": config["manifest"]["horizon_months"],
        "export": config["export"],
    }
    if "init" in wildcards.keys():
        out["finetune"] = json.loads(finetune_settings(wildcards))
    return json.dumps(out, sort_keys=True)


def export_cell_files(wildcards):
    """The study's files behind one fine-tuned export: its cell's tables, results and encoder."""
    fold, task, init = fold_of(wildcards), wildcards.task, wildcards.init
    frac, seed = fraction_name(EXPORT_FRACTION), EXPORT_SEED
    run = f"pretrain-seed-{EXPORT_PRETRAIN_SEED}/" if pretrained(init) else ""
    cell = f"results/finetune/{fold}{task}/{init}/{run}frac-{frac}/seed-{seed}"
    files = {
        "task": f"results/manifest/{fold}tasks/{task}.tsv",
        "fraction": f"results/manifest/{fold}fractions/{task}/seed-{seed}/frac-{frac}.tsv",
        "visits": "results/manifest/visits.tsv",
        "metrics": f"{cell}/metrics.json",
        "predictions": f"{cell}/predictions.tsv",
        "digests": "results/export/image_digests.tsv",
        "table": "results/table.csv",
        "template": rules.template.output.t1w,
        "template_mask": rules.template.output.mask,
    }
    if init == "external":
        files["encoder"] = "results/pretrain/external/encoder.pt"
    elif pretrained(init):
        run_dir = f"results/pretrain/{fold}{init}/seed-{EXPORT_PRETRAIN_SEED}"
        files.update(
            encoder=f"{run_dir}/encoder.pt",
            pretrain_metrics=f"{run_dir}/metrics.json",
            pretrain=f"results/manifest/{fold}pretrain.tsv",
        )
    return files


def predict_model(wildcards):
    """The export predict uses: config predict.model, else study.primary.init's of the first task."""
    if config["predict"]["model"]:
        return config["predict"]["model"]
    if LOCO:
        raise ValueError(
            "invalid configuration: predict.model is empty in a leave-one-cohort-out study: name the "
            "fold's export (results/export/heldout-<cohort>/finetuned/<task>/<init>)"
        )
    return f"results/export/finetuned/{config['study']['tasks'][0]}/{config['study']['primary']['init']}"


def predict_bids(wildcards):
    if not config["predict"]["bids_dir"]:
        raise ValueError("invalid configuration: predict.bids_dir is empty: set it to the BIDS tree of the new scans")
    return config["predict"]["bids_dir"]
