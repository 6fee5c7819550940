# The longitudinal manifest (one job): labels of all seven tasks from the whole clinical record,
# subject-level splits stratified on what the tasks need, the pretraining set; then nested label
# fractions (one job per task and seed: its fractions are drawn nested).
import json
import os


rule manifest:
    input:
        scans="results/cohort/scans.tsv",
        record="results/cohort/record.tsv",
        excluded="results/cohort/excluded.tsv",
        qc="results/preproc/qc.tsv",
    output:
        manifest_outputs(),
    log:
        "results/logs/manifest.log",
    params:
        # every label setting: the splits are stratified on the labels of every task
        settings=settings("manifest"),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/core.yaml"
    shell:
        "sslad manifest --settings {params.settings:q} --scans {input.scans:q} --record {input.record:q}"
        " --cohort-excluded {input.excluded:q} --qc {input.qc:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule label_fraction:
    input:
        "results/manifest/tasks/{task}.tsv",
    output:
        fraction_tables(),
    log:
        "results/logs/label_fraction/{task}_seed-{seed}.log",
    params:
        settings=json.dumps({"subsample_validation": config["study"]["subsample_validation"]}),
        cells=lambda wildcards, output: cell_args(FRACTIONS, output),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/core.yaml"
    shell:
        "sslad label-fraction --settings {params.settings:q} --task-table {input:q} --task {wildcards.task}"
        " --seed {wildcards.seed} {params.cells} > {log:q} 2>&1"
