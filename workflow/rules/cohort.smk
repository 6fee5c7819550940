# Raw data: each cohort (simulated, or a Clinica-style BIDS tree) ingested on its own into its
# clinical record (every visit with a diagnosis) and its scans (visits with a T1w image), with pooled
# participant ids; then the cohorts pooled, with a report per cohort and of labels found in several.


wildcard_constraints:
    cohort="[A-Za-z0-9]+",
    heldout="[A-Za-z0-9]+",


rule simulate_cohort:
    output:
        directory("results/cohort/{cohort}/bids"),
    log:
        "results/logs/simulate_cohort/{cohort}.log",
    benchmark:
        "results/benchmarks/simulate_cohort/{cohort}.tsv"
    conda:
        "../../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=lambda wildcards: json.dumps(COHORTS[wildcards.cohort]["simulate"], sort_keys=True),
    shell:
        "sslad simulate --settings {params.settings:q} --cohort {wildcards.cohort:q} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule ingest_cohort:
    input:
        cohort_bids,
    output:
        scans="results/cohort/{cohort}/scans.tsv",
        record="results/cohort/{cohort}/record.tsv",
        excluded="results/cohort/{cohort}/excluded.tsv",
    log:
        "results/logs/ingest_cohort/{cohort}.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=lambda wildcards: json.dumps(
            {k: COHORTS[wildcards.cohort][k] for k in ("name", "strict", "diagnosis_aliases")}, sort_keys=True
        ),
        clinical=clinical_tables,  # not in the command: its change is the rerun trigger
    shell:
        "sslad cohort --settings {params.settings:q} --bids {input:q}"
        " --scans {output.scans:q} --record {output.record:q} --excluded {output.excluded:q} > {log:q} 2>&1"


checkpoint cohort:
    input:
        expand("results/cohort/{cohort}/{table}.tsv", cohort=COHORTS, table=("scans", "record", "excluded")),
    output:
        scans="results/cohort/scans.tsv",
        record="results/cohort/record.tsv",
        excluded="results/cohort/excluded.tsv",
        cohorts="results/cohort/cohorts.tsv",
        overlap="results/cohort/overlap.tsv",
    log:
        "results/logs/cohort.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=json.dumps({"uses": {name: c["use"] for name, c in COHORTS.items()}}, sort_keys=True),
        cohorts=" ".join(
            f"--cohort {name} results/cohort/{name}/scans.tsv results/cohort/{name}/record.tsv"
            f" results/cohort/{name}/excluded.tsv"
            for name in COHORTS
        ),
        outputs=named_paths,
    shell:
        "sslad cohort-pool --settings {params.settings:q} {params.cohorts} --out {params.outputs} > {log:q} 2>&1"
