# Fine-tuning over the grid task x init x label fraction x seed (every mode inside one job), and
# the job that logs them all to MLflow.


wildcard_constraints:
    task="[a-z_]+",
    init="|".join(inits()),
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
    benchmark:
        "results/benchmarks/finetune/{task}/{init}_frac-{fraction}_seed-{seed}.tsv"
    conda:
        "../../envs/learning.yaml"
    threads: 1
    resources:
        # defaults for the demo on a laptop; profiles set the real ones (profiles/slurm: one GPU)
        gpu=0,
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=60,
    params:
        settings=finetune_settings,
        encoder=lambda wildcards, input: f"--encoder {input.encoder}" if "encoder" in input.keys() else "",
    shell:
        "sslad finetune --settings {params.settings:q} --task {wildcards.task} --init {wildcards.init}"
        " --fraction {wildcards.fraction} --seed {wildcards.seed} --task-table {input.task:q}"
        " --fraction-table {input.fraction:q} --visits {input.visits:q} {params.encoder}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q} --threads {threads} > {log:q} 2>&1"


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
