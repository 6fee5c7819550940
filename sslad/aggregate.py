"""The ``sslad aggregate`` job: every fine-tuning job's results to table.csv, summary.csv, summary.md and
the figures (each written by its own module: table, comparison, summary_report, figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from sslad import convergence, ground_truth
from sslad.comparison import (
    SUMMARY_COLUMNS,
    control_comparisons,
    primary_comparison,
    summarise,
    with_primary,
)
from sslad.figures import init_colours, plot_task
from sslad.io import atomic_path, read_tsv
from sslad.result_table import (
    ALL,
    COHORT_SKIPPED_COLUMNS,
    Predictions,
    build_table,
    cohort_rows,
    sorted_rows,
    write_csv,
)
from sslad.results import read_job
from sslad.schedule import SCHEDULE
from sslad.stage_settings import check
from sslad.summary_report import by_cohort_section, demoted, summary_markdown

# the intervals' coverage and the bootstrap's seed: fixed, so that the same results give the same table
LEVEL, SEED = 0.95, 0


def check_settings(settings: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(n_bootstrap, primary) of the aggregate settings, checked against the config schema (the key
    named on an error) and for a comparison of an init with itself."""
    check("aggregate", settings)
    primary = settings["primary"]
    if primary["init"] == primary["reference"]:
        raise ValueError(f"aggregate settings: 'primary.init' and 'primary.reference' are both {primary['init']!r}")
    return settings["n_bootstrap"], primary


def run(metrics_paths: list[str], table_csv: str, summary_csv: str, summary_md: str, figures_dir: str,
        settings: dict[str, Any], predictions_paths: list[str] | None = None,
        subjects_tsv: str | None = None, ground_truth_tsv: str | None = None) -> None:
    """Read every job's metrics.json and predictions.tsv (``predictions_paths``, one per metrics file
    in the same order; default: next to it), write the table, summary, markdown and one figure per
    evaluated task (``{figures_dir}/{task}.png``; ``{task}_heldout-{cohort}.png`` per held-out cohort).

    ``settings``: n_bootstrap and primary (init, reference, mode, inputs, fraction, min_test_subjects),
    the pre-specified comparison that summary.md leads with.
    ``subjects_tsv``: the manifest's subjects.tsv; with it, rows per test cohort (:func:`cohort_rows`).
    ``ground_truth_tsv``: the true-volume reader's table (sslad.ground_truth, simulated cohorts); with it,
    the convergence flags cite it and summary.md shows it.
    Jobs of a leave-one-cohort-out study are summarised per held-out cohort, each its own section.
    """
    n_boot, primary = check_settings(settings)
    seed, level = SEED, LEVEL
    if predictions_paths is not None and len(predictions_paths) != len(metrics_paths):
        raise ValueError(f"{len(predictions_paths)} predictions files for {len(metrics_paths)} metrics files")
    preds = Predictions(dict(zip(metrics_paths, predictions_paths or [])))
    table, skipped = build_table(metrics_paths, n_boot, level, preds)
    missing = pd.DataFrame(columns=COHORT_SKIPPED_COLUMNS)
    if subjects_tsv:
        subjects = pd.read_csv(subjects_tsv, sep="\t", dtype=str)
        per_cohort, missing = cohort_rows(table, preds, dict(zip(subjects["participant_id"], subjects["cohort"])),
                                          n_boot, level)
        if not per_cohort.empty:  # each job's rows together, its whole test split first
            table = pd.concat([table, per_cohort], ignore_index=True).assign(_part=lambda d: d["test_cohort"] != ALL)
            table = sorted_rows(table, ["heldout", "init", "mode", "inputs", "fraction", "pretrain_seed", "seed",
                                        "_part", "test_cohort"]).drop(columns="_part")
    write_csv(table.drop(columns="source"), table_csv)
    folds = sorted(set(table["heldout"]) | set(skipped["heldout"])) or [""]
    summaries, sections = [], []
    training = pd.DataFrame([r for path in metrics_paths for r in convergence.training_rows(read_job(path)[0])],
                            columns=convergence.TRAINING_COLUMNS).astype({"heldout": str})
    truth = read_tsv(ground_truth_tsv) if ground_truth_tsv else pd.DataFrame(columns=ground_truth.COLUMNS)
    colours = init_colours(sorted(table["init"].unique()))
    Path(figures_dir).mkdir(parents=True, exist_ok=True)
    for fold in folds:
        whole = table[(table["heldout"] == fold) & (table["test_cohort"] == ALL)]
        summary = summarise(whole, n_boot, seed, primary["reference"], level, preds,
                            min_subjects=primary["min_test_subjects"])
        prim = primary_comparison(whole, primary, n_boot, seed, level, preds)
        summary = with_primary(summary, prim, primary)
        summaries.append(summary.assign(heldout=fold)[["heldout", *SUMMARY_COLUMNS]])
        baseline = {name: primary_comparison(whole, {**primary, "init": name, "reference": SCHEDULE}, n_boot, seed,
                                             level, preds)
                    for name in dict.fromkeys((primary["init"], primary["reference"])) if name != SCHEDULE}
        controls = control_comparisons(whole, primary, n_boot, seed, level, preds)
        fold_training = training[training["heldout"] == fold]
        converged = convergence.section(convergence.flags(fold_training, SCHEDULE, ground_truth.val_auc(truth)),
                                        fold_training, primary)
        if not fold:  # the reader is fitted on the pooled split only
            converged += ground_truth.section(truth)
        text = summary_markdown(summary, prim, primary, whole, skipped[skipped["heldout"] == fold], n_boot, level,
                                controls, baseline, converged)
        lines = text.rstrip("\n").splitlines() + [""] + by_cohort_section(table[table["heldout"] == fold],
                                                                          missing[missing["heldout"] == fold], primary)
        sections.append((fold, lines))
        for task in sorted(whole["task"].unique()):
            name = f"{task}_heldout-{fold}" if fold else task
            plot_task(whole, task, Path(figures_dir) / f"{name}.png", colours)
    write_csv(pd.concat(summaries, ignore_index=True), summary_csv)
    if folds == [""]:
        md = sections[0][1]
    else:
        md = ["# Fine-tuning results: leave one cohort out", "",
              "Each section: models pretrained and fine-tuned on the other cohorts only, tested on every "
              "subject of the held-out cohort.", ""]
        for fold, lines in sections:
            body = demoted("\n".join(lines))
            while body and not body[0].strip():
                body.pop(0)
            md += [f"## Held-out cohort {fold}", "", *body, ""]
    with atomic_path(summary_md) as tmp:
        tmp.write_text("\n".join(md).rstrip("\n") + "\n")
