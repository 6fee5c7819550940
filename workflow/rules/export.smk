# The study's models as products (sslad/export.py, docs/export.md): every pretraining run's encoder
# and the fine-tuned model of each export.tasks x export.inits cell, at export.fraction and
# export.seed, under results/export/; `snakemake export_all`, a target apart from `all`. Scoring new
# scans with one of them: `snakemake predict` (config predict).


rule export_digests:
    input:
        "results/cohort/scans.tsv",
    output:
        "results/export/image_digests.tsv",
    log:
        "results/logs/export/image_digests.log",
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    shell:
        "sslad export-digests --scans {input:q} --out {output:q} > {log:q} 2>&1"


rule export_encoder:
    input:
        encoder=f"{PRETRAIN_DIR}/encoder.pt",
        metrics=f"{PRETRAIN_DIR}/metrics.json",
        pretrain=f"results/manifest/{FOLD}pretrain.tsv",
        digests=rules.export_digests.output,
        visits="results/manifest/visits.tsv",
        template=rules.template.output.t1w,
        mask=rules.template.output.mask,
    output:
        directory(f"{EXPORT}encoders/{{method}}/seed-{{pseed}}"),
    log:
        f"results/logs/export/{FOLD}encoders/{{method}}_seed-{{pseed}}.log",
    conda:
        "../../envs/learning.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=export_settings,
    shell:
        "sslad export-encoder --settings {params.settings:q} --encoder {input.encoder:q} --metrics {input.metrics:q}"
        " --pretrain {input.pretrain:q} --digests {input.digests:q} --visits {input.visits:q}"
        " --template {input.template:q} --template-mask {input.mask:q} --out-dir {output:q} > {log:q} 2>&1"


# The cell's fine-tuning again (the study's jobs keep no weights), checked against its predictions.tsv.
rule export_finetuned:
    input:
        unpack(export_cell_files),
    output:
        directory(f"{EXPORT}finetuned/{{task}}/{{init}}"),
    log:
        f"results/logs/export/{FOLD}finetuned/{{task}}_{{init}}.log",
    conda:
        "../../envs/learning.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=60,
    params:
        settings=export_settings,
        files=lambda wildcards, input: " ".join(shlex.quote(f"{name}={path}") for name, path in input.items()),
    shell:
        "sslad export-finetuned --settings {params.settings:q} --task {wildcards.task:q} --init {wildcards.init:q}"
        " --file {params.files} --threads {threads} --out-dir {output:q} > {log:q} 2>&1"


rule export_all:
    """Every export of the study: `snakemake export_all`."""
    input:
        expand(
            f"{EXPORT}encoders/{{method}}/seed-{{pseed}}",
            method=pretrained_methods(),
            pseed=config["pretrain"]["seeds"],
            **folds(),
        ),
        expand(f"{EXPORT}finetuned/{{task}}/{{init}}", task=EXPORT_TASKS, init=EXPORT_INITS, **folds()),


rule predict_prepare:
    input:
        bids=predict_bids,
        model=predict_model,
        template=rules.template.output.t1w,
        mask=rules.template.output.mask,
    output:
        scans="results/predict/scans.tsv",
        preproc=directory("results/predict/preproc"),
    log:
        "results/logs/predict/prepare.log",
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        settings=json.dumps(
            {k: config["predict"][k] for k in ("allow_trained_participants",)}
            | {"diagnosis_aliases": config["diagnosis_aliases"]},
            sort_keys=True,
        ),
        name=config["predict"]["name"],
        out_dir=lambda wildcards, output: os.path.dirname(output.scans),
    shell:
        "sslad predict --step prepare --settings {params.settings:q} --model {input.model:q} --bids {input.bids:q}"
        " --name {params.name:q} --template {input.template:q} --template-mask {input.mask:q}"
        " --out-dir {params.out_dir:q} --threads {threads} > {log:q} 2>&1"


rule predict:
    """Score the scans of config predict.bids_dir: `snakemake predict` (results/predict/predictions.tsv)."""
    input:
        scans=rules.predict_prepare.output.scans,
        preproc=rules.predict_prepare.output.preproc,
        model=predict_model,
    output:
        "results/predict/predictions.tsv",
    log:
        "results/logs/predict/apply.log",
    conda:
        "../../envs/learning.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=30,
    params:
        settings=json.dumps({"allow_trained_participants": config["predict"]["allow_trained_participants"]}),
    shell:
        "sslad predict --step apply --settings {params.settings:q} --model {input.model:q}"
        " --prepared {input.scans:q} --out {output:q} --threads {threads} > {log:q} 2>&1"
