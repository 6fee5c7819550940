# Fine-tuning over the grid task x init x label fraction x seed (every mode inside one job).


wildcard_constraints:
    task="[a-z_]+",
    init="scratch|simclr|top|tcl|tmp|topc|external",
    fraction="[0-9.e-]+",
    seed="[0-9]+",


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        metrics="results/finetune/{task}/{init}/frac-{fraction}/seed-{seed}/metrics.json",
        predictions="results/finetune/{task}/{init}/frac-{fraction}/seed-{seed}/predictions.tsv",
    log:
        "results/logs/finetune/{task}/{init}_frac-{fraction}_seed-{seed}.log",
    params:
        settings=finetune_settings,
        encoder=lambda wildcards, input: f"--encoder {input.encoder}" if "encoder" in input.keys() else "",
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    threads: config["finetune"]["threads"]
    resources:
        gpu=config["finetune"]["gpu"],
        mem_mb=config["finetune"]["mem_mb"],
        runtime=config["finetune"]["runtime"],
    conda:
        "../../envs/learning.yaml"
    shell:
        "sslad finetune --settings {params.settings:q} --task {wildcards.task} --init {wildcards.init}"
        " --fraction {wildcards.fraction} --seed {wildcards.seed} --task-table {input.task:q}"
        " --fraction-table {input.fraction:q} --visits {input.visits:q} {params.encoder} --out-dir {params.out_dir:q}"
        " --threads {threads} > {log:q} 2>&1"


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
