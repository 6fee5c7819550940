# The longitudinal manifest: labels from the whole record, subject-level splits, task tables,
# nested label fractions and the pretraining set.
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
        settings=settings("manifest", "study"),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/core.yaml"
    shell:
        "sslad manifest --settings {params.settings:q} --scans {input.scans:q}"
        " --cohort-excluded {input.excluded:q} --qc {input.qc:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
