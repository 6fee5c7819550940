# sslad: longitudinal T1 MRI -> self-supervised pretraining -> Alzheimer's disease prediction.
# Stages (one .smk each under workflow/rules/): simulate_cohort -> cohort -> template ->
# preprocess (per participant) -> qc_table -> manifest (labels, splits, task tables) -> label_fraction ->
# pretrain (per method) -> finetune (per task x init x fraction x seed) -> track_pretrain,
# track_finetune (MLflow) -> aggregate.
from snakemake.utils import min_version

min_version("9.19")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/derivatives.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/export.smk"


# Targets per stage, to run or rerun one by name (`snakemake pretrain_all`): cohort_all, preprocess_all,
# manifest_all, pretrain_all, finetune_all, aggregate_all; `all` is every one of them.


rule cohort_all:
    """The cohort: scans, clinical record and exclusions: `snakemake cohort_all`."""
    input:
        rules.cohort.output,


rule all:
    default_target: True
    input:
        rules.aggregate_all.input,
        rules.preprocess_all.input,
        rules.pretrain_all.input,
