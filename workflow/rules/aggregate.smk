# The study's results: one table row per fine-tuning job and mode (controls included), summary with
# paired comparisons against scratch and the controls beside the primary comparison, curves per
# task; all of them in `snakemake --report`.


rule aggregate:
    input:
        metrics=finetune_metrics(),
        predictions=finetune_predictions(),
        # each test subject's cohort, for the rows per test cohort
        subjects="results/manifest/subjects.tsv",
        # a finished table means every job is in MLflow too
        tracked=[rules.track_pretrain.output, rules.track_finetune.output],
        # simulated cohorts: what a reader of the true volumes makes of each split (the pooled one: none
        # in a leave-one-cohort-out study)
        ground_truth=["results/ground_truth.tsv"] if simulated_cohorts() and not LOCO else [],
    output:
        table=report("results/table.csv", caption="../report/table.rst", category="Results"),
        summary=report("results/summary.csv", caption="../report/summary.rst", category="Results"),
        summary_md=report("results/summary.md", caption="../report/summary_md.rst", category="Results"),
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/curves.rst",
            category="Label-fraction curves",
        ),
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    localrule: True
    conda:
        "../../envs/learning.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # the bootstrap is aggregation's: changing n_bootstrap reruns this job only
        settings=json.dumps(
            {"n_bootstrap": config["finetune"]["n_bootstrap"], "primary": config["study"]["primary"]}, sort_keys=True
        ),
        truth=lambda wildcards, input: " ".join(f"--ground-truth {shlex.quote(p)}" for p in input.ground_truth),
    shell:
        "sslad aggregate --settings {params.settings:q} --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --subjects {input.subjects:q} {params.truth} --table {output.table:q}"
        " --summary {output.summary:q} --summary-md {output.summary_md:q} --figures-dir {output.figures:q}"
        " > {log:q} 2>&1"


rule ground_truth:
    """Simulated cohorts only: what a reader of the simulation's true volumes makes of each task's split
    (sslad.ground_truth), the reference the convergence flags cite beside the schedule baseline."""
    input:
        tasks=expand("results/manifest/tasks/{task}.tsv", task=config["study"]["tasks"]),
        bids=expand("results/cohort/{cohort}/bids", cohort=simulated_cohorts()),
    output:
        "results/ground_truth.tsv",
    log:
        "results/logs/ground_truth.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cohorts=lambda wildcards, input: " ".join(
            f"--cohort {shlex.quote(name)} {shlex.quote(bids)}" for name, bids in zip(simulated_cohorts(), input.bids)
        ),
    shell:
        "sslad ground-truth --tasks {input.tasks:q} {params.cohorts} --out {output:q} > {log:q} 2>&1"


rule provenance:
    """Which code and libraries made every result: the distinct versions per stage, read from each
    scan's qc.json and each job's metrics.json (a study whose jobs ran on two commits says so)."""
    input:
        pretrain=pretrain_metrics(),
        finetune=finetune_metrics(),
        qc="results/preproc/qc.tsv",
    output:
        "results/provenance.json",
    log:
        "results/logs/provenance.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=json.dumps({"config_sha256": config_digest(config)}),
        stages=lambda wildcards, input: " ".join(
            "--stage " + " ".join(shlex.quote(str(p)) for p in [name, *files])
            for name, files in (("pretrain", input.pretrain), ("finetune", input.finetune))
            if files
        ),
    shell:
        "sslad provenance --settings {params.settings:q} {params.stages} --qc {input.qc:q} --out {output:q} > {log:q} 2>&1"


rule aggregate_all:
    """The table, summary and figures (what `snakemake` builds), and the provenance of every result:
    `snakemake aggregate_all`."""
    input:
        rules.aggregate.output,
        rules.provenance.output,
