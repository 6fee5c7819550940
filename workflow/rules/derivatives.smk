# results/preproc/ as a BIDS-Derivatives dataset (so that pybids and other BIDS tools can read the
# preprocessed scans), and the preprocessing stage's target.


# The small preprocessing-stage jobs (preprocess.smk) run where Snakemake runs, not as cluster jobs.
localrules:
    template,
    qc_table,
    qc_mosaic,


rule preproc_dataset_description:
    output:
        "results/preproc/dataset_description.json",
    log:
        "results/logs/preproc_dataset_description.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        settings=json.dumps(
            {
                "space": template_space(),
                "registration": config["preprocess"]["registration"],
                "voxel_mm": config["preprocess"]["voxel_mm"],
            },
            sort_keys=True,
        ),
    shell:
        "sslad dataset-description --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule preprocess_all:
    """Every scan preprocessed, its QC table and mosaic, as a BIDS-Derivatives dataset:
    `snakemake preprocess_all`."""
    input:
        all_preprocessed,
        "results/preproc/qc.tsv",
        "results/preproc/qc_mosaic.png",
        rules.preproc_dataset_description.output,
