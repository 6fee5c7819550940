# Fine-tuning over the grid task x init x label fraction x seed: one job per task x init x seed
# runs its label fractions (and every mode) one after the other. Starting Python and torch costs a
# demo cell more CPU than its training; a new seed adds jobs, a new fraction reruns the seed's job.
# MLflow logging is one later job.


wildcard_constraints:
    task="[a-z_]+",
    init="|".join(inits()),
    fraction="[0-9.e-]+",
    seed="[0-9]+",
    control="index|time_shuffled",
    pseed="[0-9]+",


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        metrics=finetune_cells("metrics.json"),
        predictions=finetune_cells("predictions.tsv"),
    log:
        f"results/logs/finetune/{FOLD}{{task}}/{{init}}_seed-{{seed}}.log",
    benchmark:
        f"results/benchmarks/finetune/{FOLD}{{task}}/{{init}}_seed-{{seed}}.tsv"
    conda:
        "../../envs/learning.yaml"
    threads: 1
    resources:
        # defaults for the demo on a laptop; profiles set the real ones (profiles/slurm: one GPU)
        gpu=0,
        # data-loader processes that read the next batches from disk during a step: the job's threads
        # but the training loop's (0 on the demo: its main process reads); no rerun trigger, the
        # batches are the same whatever their number
        loader_workers=lambda wildcards, threads: threads - 1,
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=60,
    params:
        settings=finetune_settings,
        encoder=lambda wildcards, input: f"--encoder {shlex.quote(input.encoder)}" if "encoder" in input.keys() else "",
        pretrain_seed=pretrain_seed_arg,
        cells=lambda wildcards, input, output: cell_args(FRACTIONS, input.fractions, output.metrics, output.predictions),
    shell:
        "sslad finetune --settings {params.settings:q} --task {wildcards.task:q} --init {wildcards.init:q}"
        " --seed {wildcards.seed:q} {params.pretrain_seed} {params.cells} --task-table {input.task:q}"
        " --visits {input.visits:q} {params.encoder} --threads {threads} --workers {resources.loader_workers}"
        " > {log:q} 2>&1"


# The same job for an init pretrained by the study: one per pretraining run (pretrain.seeds), its
# cells under results/finetune/.../<init>/pretrain-seed-<n>/.
use rule finetune as finetune_pretrained with:
    output:
        metrics=finetune_cells("metrics.json", PRETRAIN_RUN_ESCAPED),
        predictions=finetune_cells("predictions.tsv", PRETRAIN_RUN_ESCAPED),
    log:
        f"results/logs/finetune/{FOLD}{{task}}/{{init}}_pretrain-seed-{{pseed}}_seed-{{seed}}.log",
    benchmark:
        f"results/benchmarks/finetune/{FOLD}{{task}}/{{init}}_pretrain-seed-{{pseed}}_seed-{{seed}}.tsv"


# The controls of the primary comparison (study.controls): one job per task x init x control inputs
# x seed, the primary's mode and label fraction only. Outputs of their own (results/controls/), so
# that editing the controls reruns these jobs and aggregation, never a job of the grid above.
rule finetune_control:
    input:
        unpack(control_inputs),
    output:
        metrics=control_cell().replace("{name}", "metrics.json"),
        predictions=control_cell().replace("{name}", "predictions.tsv"),
    log:
        f"results/logs/finetune_control/{FOLD}{{task}}/{{init}}_{{control}}_frac-{{fraction}}_seed-{{seed}}.log",
    benchmark:
        f"results/benchmarks/finetune_control/{FOLD}{{task}}/{{init}}_{{control}}_frac-{{fraction}}_seed-{{seed}}.tsv"
    conda:
        "../../envs/learning.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=60,
    params:
        settings=control_settings,
        encoder=lambda wildcards, input: f"--encoder {shlex.quote(input.encoder)}" if "encoder" in input.keys() else "",
        pretrain_seed=pretrain_seed_arg,
        cells=lambda wildcards, input, output: cell_args(
            [wildcards.fraction], [input.fractions], [output.metrics], [output.predictions]
        ),
    shell:
        "sslad finetune --settings {params.settings:q} --task {wildcards.task:q} --init {wildcards.init:q}"
        " --seed {wildcards.seed:q} {params.pretrain_seed} {params.cells} --task-table {input.task:q}"
        " --visits {input.visits:q} {params.encoder} --threads {threads} > {log:q} 2>&1"


use rule finetune_control as finetune_control_pretrained with:
    output:
        metrics=control_cell(PRETRAIN_RUN).replace("{name}", "metrics.json"),
        predictions=control_cell(PRETRAIN_RUN).replace("{name}", "predictions.tsv"),
    log:
        f"results/logs/finetune_control/{FOLD}{{task}}/{{init}}_pretrain-seed-{{pseed}}_{{control}}_frac-{{fraction}}_seed-{{seed}}.log",
    benchmark:
        f"results/benchmarks/finetune_control/{FOLD}{{task}}/{{init}}_pretrain-seed-{{pseed}}_{{control}}_frac-{{fraction}}_seed-{{seed}}.tsv"


# One process logs every job's result to MLflow after the jobs (see sslad/tracking.py for why);
# results already in the store are skipped, so a rerun adds runs only for the jobs that changed.
rule track_finetune:
    input:
        metrics=finetune_metrics(),
        store=tracking_store(),
    output:
        "results/mlflow/finetune_runs.tsv",
    log:
        "results/logs/track_finetune.log",
    localrule: True
    conda:
        "../../envs/learning.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        uri=config["tracking"]["uri"],  # a rerun trigger: another server gets every run
        tracking=tracking_target,
    shell:
        "sslad track-finetune --tracking {params.tracking:q} --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"


rule finetune_all:
    """Every fine-tuning job of the study, and its MLflow runs: `snakemake finetune_all`."""
    input:
        finetune_metrics(),
        rules.track_finetune.output,
