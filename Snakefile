# sslad: longitudinal T1 MRI -> self-supervised pretraining -> Alzheimer's disease prediction.
# Stages (one .smk each under workflow/rules/): simulate_cohort -> cohort -> template ->
# preprocess (per participant) -> qc_table -> manifest (labels, splits, task tables) -> label_fraction ->
# pretrain (per method) -> finetune (per task x init x fraction x seed) -> track_finetune -> aggregate.
from snakemake.utils import min_version

min_version("9.19")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        "results/table.csv",
        "results/summary.csv",
        "results/preproc/qc_mosaic.png",
