# T1 preprocessing with ANTs, one job per participant (its scans one by one), and the QC table
# that gates the manifest.
from pathlib import Path


wildcard_constraints:
    participant="sub-[A-Za-z0-9]+",
    session="ses-[A-Za-z0-9]+",


rule template:
    output:
        t1w=f"results/template/tpl-{template_space()}_T1w.nii.gz",
        mask=f"results/template/tpl-{template_space()}_desc-brain_mask.nii.gz",
    log:
        "results/logs/template.log",
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=json.dumps(
            {k: config["preprocess"][k] for k in ("template", "template_mask")},
            sort_keys=True,
        ),
    shell:
        "sslad template --settings {params.settings:q} --out-t1w {output.t1w:q}"
        " --out-mask {output.mask:q} > {log:q} 2>&1"


rule preprocess:
    """Every scan of one participant, one after the other in one process (as fMRIPrep runs per
    participant): importing ANTs costs ~2.7 s of CPU per process (measured), more than a demo scan's
    whole chain; one job per scan would add ~7 min of CPU to the demo's 166 scans. The scans run in a
    worker process that the job outlives: a scan that kills it (memory, a crash) or outlasts the job's
    runtime gets a failure record in qc.tsv, and the study goes on without it.

    The one output that is a directory: a participant's sessions are known only once the cohort
    checkpoint has run, and Snakemake cannot declare a varying set of files per job. Inside it,
    every file has the BIDS-derivatives name of sslad.preprocess.Outputs (the one place that names
    them), and each scan's qc.json lists the paths it wrote, which the QC table passes on."""
    input:
        t1w=subject_t1w,
        template=rules.template.output.t1w,
        mask=rules.template.output.mask,
    output:
        directory("results/preproc/{participant}"),
    log:
        "results/logs/preprocess/{participant}.log",
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        # measured peak: 1.1 GB at 1 mm (scans run one at a time); more on each retry
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, input, attempt: 20 * len(input.t1w) * attempt,
    params:
        # the QC thresholds are qc_table's: editing them reruns no registration
        settings=json.dumps({k: v for k, v in config["preprocess"].items() if k != "qc"}, sort_keys=True),
        space=template_space(),
        sessions=subject_sessions,  # a new or removed visit reruns this participant only
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    shell:
        "sslad preprocess --settings {params.settings:q} --participant {wildcards.participant:q}"
        " --sessions {params.sessions:q} --t1w {input.t1w:q}"
        " --template {input.template:q} --template-mask {input.mask:q} --space {params.space:q}"
        " --out-dir {params.out_dir:q} --threads {threads} --runtime-min {resources.runtime} > {log:q} 2>&1"


rule qc_table:
    input:
        scans="results/cohort/scans.tsv",
        preprocessed=all_preprocessed,
    output:
        "results/preproc/qc.tsv",
    log:
        "results/logs/qc_table.log",
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        qc=json.dumps(config["preprocess"]["qc"], sort_keys=True),
        space=template_space(),
        preproc_dir=lambda wildcards, output: Path(output[0]).parent,
    shell:
        "sslad qc-table --settings {params.qc:q} --scans {input.scans:q} --preproc-dir {params.preproc_dir:q}"
        " --space {params.space:q} --out {output:q} > {log:q} 2>&1"


rule qc_mosaic:
    input:
        "results/preproc/qc.tsv",
    output:
        report("results/preproc/qc_mosaic.png", caption="../report/qc_mosaic.rst", category="Quality control"),
    log:
        "results/logs/qc_mosaic.log",
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "sslad qc-mosaic --qc {input:q} --out {output:q} > {log:q} 2>&1"
