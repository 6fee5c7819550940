# Self-supervised pretraining, one job per method, and the MLflow store every training job logs to.


wildcard_constraints:
    method="simclr|top|tcl|tmp|topc",


rule mlflow_store:
    output:
        MLFLOW_DB,
    log:
        "results/logs/mlflow_store.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/learning.yaml"
    shell:
        "sslad mlflow-store --db {output:q} > {log:q} 2>&1"


rule pretrain:
    input:
        pretrain="results/manifest/pretrain.tsv",
        visits="results/manifest/visits.tsv",
        splits="results/manifest/splits.tsv",
        # logging appends to the store: its time stamp must not rerun anything
        store=ancient(MLFLOW_DB),
    output:
        encoder="results/pretrain/{method}/encoder.pt",
        metrics="results/pretrain/{method}/metrics.json",
    log:
        "results/logs/pretrain/{method}.log",
    params:
        settings=lambda wildcards: pretrain_settings(wildcards.method),
        out_dir=lambda wildcards, output: os.path.dirname(output.encoder),
    threads: config["pretrain"]["threads"]
    resources:
        gpu=config["pretrain"]["gpu"],
        mem_mb=config["pretrain"]["mem_mb"],
        runtime=config["pretrain"]["runtime"],
    conda:
        "../../envs/learning.yaml"
    shell:
        # one process per GPU under torchrun when the job has several, a plain process otherwise
        "if [ {resources.gpu} -gt 1 ]; then"
        " launch='torchrun --standalone --nproc_per_node={resources.gpu} -m sslad';"
        " else launch=sslad; fi;"
        " $launch pretrain --settings {params.settings:q} --pretrain {input.pretrain:q} --visits {input.visits:q}"
        " --splits {input.splits:q} --out-dir {params.out_dir:q} --tracking {input.store:q}"
        " --threads {threads} > {log:q} 2>&1"


rule import_external:
    input:
        config["pretrain"]["external"]["checkpoint"] or [],
    output:
        "results/pretrain/external/encoder.pt",
    log:
        "results/logs/pretrain/external.log",
    params:
        settings=json.dumps(
            {"model": config["model"], "stem_stride": config["pretrain"]["external"]["stem_stride"]}, sort_keys=True
        ),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    shell:
        "sslad import-external --settings {params.settings:q} --checkpoint {input:q} --out {output:q} > {log:q} 2>&1"
