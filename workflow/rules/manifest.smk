# The longitudinal manifest: labels from the whole record, subject-level splits, task tables,
# nested label fractions and the pretraining set.
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
        settings=json.dumps(dict(config["manifest"], tasks=config["study"]["tasks"]), sort_keys=True),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/core.yaml"
    shell:
        "sslad manifest --settings {params.settings:q} --scans {input.scans:q}"
        " --cohort-excluded {input.excluded:q} --qc {input.qc:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


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
