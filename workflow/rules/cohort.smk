# Raw data: the simulated cohort (default) and the ingestion of any Clinica-style BIDS tree into the
# clinical record (every visit with a diagnosis) and the scans (visits with a T1w image).


rule simulate_cohort:
    output:
        directory("results/cohort/bids"),
    log:
        "results/logs/simulate_cohort.log",
    benchmark:
        "results/benchmarks/simulate_cohort.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=settings("simulate"),
    shell:
        "sslad simulate --settings {params.settings:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


checkpoint cohort:
    input:
        bids_dir(),
    output:
        scans="results/cohort/scans.tsv",
        record="results/cohort/record.tsv",
        excluded="results/cohort/excluded.tsv",
    log:
        "results/logs/cohort.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=settings("cohort"),
    shell:
        "sslad cohort --settings {params.settings:q} --bids {input:q}"
        " --scans {output.scans:q} --record {output.record:q} --excluded {output.excluded:q} > {log:q} 2>&1"
