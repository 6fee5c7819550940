# The longitudinal manifest (one job): labels of all seven tasks from the whole clinical record,
# subject-level splits stratified on what the tasks need, the pretraining set; then nested label
# fractions (one job per task and seed: its fractions are drawn nested).


rule manifest:
    input:
        scans="results/cohort/scans.tsv",
        record="results/cohort/record.tsv",
        excluded="results/cohort/excluded.tsv",
        qc="results/preproc/qc.tsv",
    output:
        **manifest_outputs(),
    log:
        "results/logs/manifest.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        # every label setting (the splits are stratified on the labels of every task) and what each
        # cohort is used for; not the splits pretraining draws on, which are pretrain_set's
        settings=json.dumps(
            {k: v for k, v in config["manifest"].items() if k != "pretrain_splits"}
            | {"cohort_use": {name: c["use"] for name, c in COHORTS.items()}},
            sort_keys=True,
        ),
        outputs=named_paths,
    shell:
        "sslad manifest --settings {params.settings:q} --scans {input.scans:q} --record {input.record:q}"
        " --cohort-excluded {input.excluded:q} --qc {input.qc:q} --out {params.outputs} > {log:q} 2>&1"


rule fold:
    """One leave-one-cohort-out fold's tables (sslad.manifest.fold_tables): the held-out cohort's
    subjects all test; the other cohorts' val split as pooled, all their other subjects train."""
    input:
        **{name: path for name, path in manifest_outputs().items() if name not in ("subjects", "excluded", "schedule")},
    output:
        **{
            name: path.replace("results/manifest/", "results/manifest/heldout-{heldout}/")
            for name, path in manifest_outputs().items()
            if name not in ("subjects", "excluded", "schedule")
        },
    log:
        "results/logs/fold/heldout-{heldout}.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        inputs=lambda wildcards, input: " ".join(shlex.quote(f"{name}={path}") for name, path in input.items()),
        outputs=named_paths,
    shell:
        "sslad fold --heldout {wildcards.heldout:q} --input {params.inputs} --out {params.outputs} > {log:q} 2>&1"


rule pretrain_set:
    input:
        f"results/manifest/{FOLD}visits.tsv",
    output:
        f"results/manifest/{FOLD}pretrain.tsv",
    log:
        f"results/logs/{FOLD}pretrain_set.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=json.dumps(
            {
                "pretrain_splits": config["manifest"]["pretrain_splits"],
                "exclude_cohorts": [name for name, c in COHORTS.items() if c["use"] == "downstream"],
            },
            sort_keys=True,
        ),
    shell:
        "sslad pretrain-set --settings {params.settings:q} --visits {input:q} --out {output:q} > {log:q} 2>&1"


rule label_fraction:
    input:
        f"results/manifest/{FOLD}tasks/{{task}}.tsv",
    output:
        fraction_tables(),
    log:
        f"results/logs/{FOLD}label_fraction/{{task}}_seed-{{seed}}.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=json.dumps({"subsample_validation": config["study"]["subsample_validation"]}),
        cells=lambda wildcards, output: cell_args(FRACTIONS, output),
    shell:
        "sslad label-fraction --settings {params.settings:q} --task-table {input:q} --task {wildcards.task:q}"
        " --seed {wildcards.seed:q} {params.cells} > {log:q} 2>&1"


rule manifest_all:
    """The manifest and every label-fraction subset of the study: `snakemake manifest_all`."""
    input:
        manifest_outputs().values(),
        expand(f"results/manifest/{FOLD}pretrain.tsv", **folds()),
        expand(
            f"results/manifest/{FOLD}fractions/{{task}}/seed-{{seed}}/frac-{{fraction}}.tsv",
            task=config["study"]["tasks"],
            seed=config["study"]["seeds"],
            fraction=FRACTIONS,
            **folds(),
        ),
