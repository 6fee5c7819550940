# The longitudinal manifest: subject-level splits and the pretraining set (one job), the task
# tables with labels from the whole record (one job per task), nested label fractions (one job each).
import json
import os


rule manifest:
    input:
        scans="results/cohort/scans.tsv",
        excluded="results/cohort/excluded.tsv",
        qc="results/preproc/qc.tsv",
    output:
        manifest_outputs(),
    log:
        "results/logs/manifest.log",
    params:
        settings=json.dumps(
            {k: v for k, v in config["manifest"].items() if k not in TASK_SETTINGS}, sort_keys=True
        ),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/core.yaml"
    shell:
        "sslad manifest --settings {params.settings:q} --scans {input.scans:q}"
        " --cohort-excluded {input.excluded:q} --qc {input.qc:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule task_table:
    input:
        scans="results/cohort/scans.tsv",
        visits="results/manifest/visits.tsv",
        splits="results/manifest/splits.tsv",
    output:
        "results/manifest/tasks/{task}.tsv",
    log:
        "results/logs/task_table/{task}.log",
    params:
        settings=json.dumps({k: config["manifest"][k] for k in TASK_SETTINGS}, sort_keys=True),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/core.yaml"
    shell:
        "sslad task-table --settings {params.settings:q} --scans {input.scans:q} --visits {input.visits:q}"
        " --splits {input.splits:q} --task {wildcards.task} --out {output:q} > {log:q} 2>&1"


rule label_fraction:
    input:
        "results/manifest/tasks/{task}.tsv",
    output:
        "results/manifest/fractions/{task}/seed-{seed}/frac-{fraction}.tsv",
    log:
        "results/logs/label_fraction/{task}_seed-{seed}_frac-{fraction}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/core.yaml"
    shell:
        "sslad label-fraction --task-table {input:q} --task {wildcards.task} --fraction {wildcards.fraction}"
        " --seed {wildcards.seed} --out {output:q} > {log:q} 2>&1"
