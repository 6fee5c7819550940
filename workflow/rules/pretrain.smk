# Self-supervised pretraining, one job per method; the MLflow store and the job that logs the
# pretraining runs to it (the training jobs never write to MLflow themselves, see sslad/tracking.py).


wildcard_constraints:
    method="|".join(METHODS),
    pseed="[0-9]+",


rule mlflow_store:
    output:
        MLFLOW_DB,
    log:
        "results/logs/mlflow_store.log",
    localrule: True
    conda:
        "../../envs/learning.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "sslad mlflow-store --db {output:q} > {log:q} 2>&1"


rule pretrain:
    input:
        pretrain=f"results/manifest/{FOLD}pretrain.tsv",
        visits="results/manifest/visits.tsv",
        splits=f"results/manifest/{FOLD}splits.tsv",
    output:
        encoder=f"{PRETRAIN_DIR}/encoder.pt",
        metrics=f"{PRETRAIN_DIR}/metrics.json",
    log:
        f"results/logs/pretrain/{FOLD}{{method}}_seed-{{pseed}}.log",
    benchmark:
        f"results/benchmarks/pretrain/{FOLD}{{method}}_seed-{{pseed}}.tsv"
    conda:
        "../../envs/learning.yaml"
    threads: 1
    resources:
        # defaults for the demo on a laptop; profiles set the real ones (profiles/slurm: one GPU or more;
        # across nodes: nodes x tasks_per_node processes launched by srun, with mpi="srun")
        gpu=0,
        nodes=1,
        tasks_per_node=1,
        # data-loader processes that read the next batches from disk during a step: the job's threads
        # but the training loop's (0 on the demo: its main process reads); no rerun trigger, the
        # batches are the same whatever their number
        loader_workers=lambda wildcards, threads: threads - 1,
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=120,
    params:
        settings=lambda wildcards: pretrain_settings(wildcards.method, wildcards.pseed),
        device_memory_gb=config["pretrain"]["device_memory_gb"],
        # a scratch file while training (a killed job resumes from it), removed once the run is complete
        checkpoint=lambda wildcards, output: os.path.join(os.path.dirname(output.encoder), "state", "last.pt"),
    shell:
        # One process per GPU: with several tasks (nodes x tasks_per_node), srun starts them across the
        # SLURM job's nodes (the job must run this command itself, not inside a one-task step: mpi="srun";
        # sslad.distributed takes ranks and rendezvous from SLURM); with several GPUs on one node,
        # torchrun; otherwise one plain process.
        "ranks=$(( {resources.nodes} * {resources.tasks_per_node} ));"
        ' if [ $ranks -gt 1 ] && {{ [ -z "${{SLURM_JOB_ID:-}}" ] || [ -n "${{SLURM_STEP_ID:-}}" ]; }}; then'
        " echo 'pretrain: {resources.nodes} node(s) x {resources.tasks_per_node} tasks need a SLURM job that runs"
        " this command itself (profiles/slurm, with resources mpi=srun)' > {log:q}; exit 1;"
        " elif [ $ranks -gt 1 ]; then"
        " launch='srun --nodes={resources.nodes} --ntasks-per-node={resources.tasks_per_node} --kill-on-bad-exit=1"
        " python -m sslad';"
        " elif [ {resources.gpu} -gt 1 ]; then"
        " launch='torchrun --standalone --nproc_per_node={resources.gpu} -m sslad';"
        " else launch=sslad; fi;"
        " $launch pretrain --settings {params.settings:q} --pretrain {input.pretrain:q} --visits {input.visits:q}"
        " --splits {input.splits:q} --encoder {output.encoder:q} --metrics {output.metrics:q}"
        " --checkpoint {params.checkpoint:q} --threads {threads} --device-memory-gb {params.device_memory_gb}"
        " --mem-mb {resources.mem_mb} --workers {resources.loader_workers}"
        " > {log:q} 2>&1"


# One process logs every pretraining job to MLflow after the jobs; results already logged are skipped.
rule track_pretrain:
    input:
        metrics=pretrain_metrics(),
        store=tracking_store(),
    output:
        "results/mlflow/pretrain_runs.tsv",
    log:
        "results/logs/track_pretrain.log",
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
        "sslad track-pretrain --tracking {params.tracking:q} --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"


rule import_external:
    input:
        config["pretrain"]["external"]["checkpoint"] or [],
    output:
        "results/pretrain/external/encoder.pt",
    log:
        "results/logs/pretrain/external.log",
    localrule: True
    conda:
        "../../envs/learning.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=external_settings(),
    shell:
        "sslad import-external --settings {params.settings:q} --checkpoint {input:q} --out {output:q} > {log:q} 2>&1"


# What each pretraining run learned about time, on the test subjects (never pretrained on): the order
# probe beside the untrained encoder and the raw voxels on the same pairs (sslad/order_probe.py).
rule order_probe:
    input:
        encoder=f"{PRETRAIN_DIR}/encoder.pt",
        metrics=f"{PRETRAIN_DIR}/metrics.json",
        pretrain=f"results/manifest/{FOLD}pretrain.tsv",
        visits="results/manifest/visits.tsv",
        splits=f"results/manifest/{FOLD}splits.tsv",
    output:
        f"{PRETRAIN_DIR}/order_probe.json",
    log:
        f"results/logs/order_probe/{FOLD}{{method}}_seed-{{pseed}}.log",
    conda:
        "../../envs/learning.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=30,
    shell:
        "sslad order-probe --encoder {input.encoder:q}"
        " --pretrain-metrics {input.metrics:q} --pretrain {input.pretrain:q} --visits {input.visits:q}"
        " --splits {input.splits:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule order_probe_report:
    input:
        pretrain_runs("order_probe.json"),
    output:
        tsv="results/order_probe.tsv",
        md=report("results/order_probe.md", caption="../report/order_probe.rst", category="Pretraining"),
    log:
        "results/logs/order_probe_report.log",
    localrule: True
    conda:
        "../../envs/learning.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "sslad order-probe-report --probes {input:q} --tsv {output.tsv:q} --md {output.md:q} > {log:q} 2>&1"


rule pretrain_curves:
    input:
        pretrain_metrics(),
    output:
        report("results/pretrain_curves.png", caption="../report/pretrain_curves.rst", category="Pretraining"),
    log:
        "results/logs/pretrain_curves.log",
    localrule: True
    conda:
        "../../envs/learning.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "sslad pretrain-curves --metrics {input:q} --out {output:q} > {log:q} 2>&1"


rule pretrain_all:
    """Every pretraining job of the study, its MLflow runs and the order probes: `snakemake pretrain_all`."""
    input:
        pretrain_runs("encoder.pt"),
        rules.track_pretrain.output,
        *([rules.order_probe_report.output, rules.pretrain_curves.output] if pretrained_methods() else []),
