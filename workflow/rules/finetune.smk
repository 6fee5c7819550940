# Fine-tuning over the grid task x init x label fraction x seed: one job per task x init x seed
# runs its label fractions (and every mode) one after the other. Starting Python and torch costs a
# demo cell more CPU than its training; a new seed adds jobs, a new fraction reruns the seed's job.


wildcard_constraints:
    task="[a-z_]+",
    init="scratch|simclr|top|tcl|tmp|topc|external",
    fraction="[0-9.e-]+",
    seed="[0-9]+",


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        metrics=finetune_cells("metrics.json"),
        predictions=finetune_cells("predictions.tsv"),
    log:
        "results/logs/finetune/{task}/{init}_seed-{seed}.log",
    params:
        settings=finetune_settings,
        encoder=lambda wildcards, input: f"--encoder {input.encoder}" if "encoder" in input.keys() else "",
        cells=lambda wildcards, input, output: cell_args(
            FRACTIONS, input.fractions, output.metrics, output.predictions
        ),
    threads: config["finetune"]["threads"]
    resources:
        gpu=config["finetune"]["gpu"],
        mem_mb=config["finetune"]["mem_mb"],
        runtime=config["finetune"]["runtime"] * len(config["study"]["label_fractions"]),
    conda:
        "../../envs/learning.yaml"
    shell:
        "sslad finetune --settings {params.settings:q} --task {wildcards.task} --init {wildcards.init}"
        " --seed {wildcards.seed} {params.cells} --task-table {input.task:q} --visits {input.visits:q}"
        " {params.encoder} --threads {threads} > {log:q} 2>&1"


# One process logs every job's result to MLflow after the jobs (see sslad/tracking.py for why);
# results already in the store are skipped, so a rerun adds runs only for the jobs that changed.
rule track_finetune:
    input:
        metrics=finetune_metrics(),
        store=ancient(MLFLOW_DB),
    output:
        "results/mlflow/finetune_runs.tsv",
    log:
        "results/logs/track_finetune.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    shell:
        "sslad track-finetune --db {input.store:q} --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"
