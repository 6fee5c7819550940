"""summary.md: the study's report, the primary comparison first, written from the comparisons' tables."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sslad.comparison import CONTROL_COLUMNS, MIN_RESAMPLABLE, TOO_FEW, at_setting
from sslad.result_table import ALL, sorted_rows
from sslad.schedule import SCHEDULE


def mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _p(p: float) -> str:
    return "" if pd.isna(p) else f"{p:.3g}"


def ci_text(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"[{low:+.3f}, {high:+.3f}]"


def _pct(level: float) -> str:
    return f"{100 * level:.4g}%"


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def setting_text(primary: dict[str, Any]) -> str:
    mode = "full fine-tuning" if primary["mode"] == "full" else f"{primary['mode']} mode"
    return f"{mode}, {primary['inputs']} inputs, label fraction {float(primary['fraction']):g}"


def _primary_section(prim: pd.DataFrame, primary: dict[str, Any], table: pd.DataFrame, n_boot: int,
                     level: float) -> list[str]:
    init, reference = primary["init"], primary["reference"]
    lines = ["## Primary comparison (pre-specified)", "",
             f"Pre-specified comparison: test AUC of **{init}** vs **{reference}**, {setting_text(primary)}.", ""]
    missing = [name for name in (init, reference) if at_setting(table, primary, name).empty]
    if missing:
        return lines + [f"**Not made: no results of {' and '.join(missing)} at this setting**, so this study "
                        f"makes no primary claim.", ""]
    if prim.empty:
        return lines + [f"**Not made: no task has results of both {init} and {reference} with a common seed at "
                        f"this setting**, so this study makes no primary claim.", ""]
    need = primary["min_test_subjects"]
    claimable = prim["auc_diff_p_holm"].notna()
    m, k, j = int(claimable.sum()), int(prim["favours"].sum()), int(prim["favours_reference"].sum())
    few = (f"{len(prim) - m} of {len(prim)} tasks have fewer than {need} positive or negative test subjects: too "
           f"few for a claim, so they show their unadjusted interval and do not count.")
    if m:
        lines += [f"**The primary comparison favours {init} on {k} of {m} tasks** (Holm-adjusted; simultaneous "
                  f"{_pct(level)} intervals above 0), and {reference} on {j} of {m}."
                  + (f" {few}" if m < len(prim) else ""), ""]
    else:
        lines += [f"**No primary claim: every task compared has fewer than {need} positive or negative test "
                  f"subjects** (`study.primary.min_test_subjects`); the intervals below are unadjusted and "
                  f"describe this cohort's test split only.", ""]
    runs = int(prim["n_pretrain_seeds"].max()) > 1  # several pretraining runs: their spread apart
    head = ["task", f"ΔAUC {init} − {reference}", f"{_pct(level)} CI (subjects)", f"simultaneous {_pct(level)} CI",
            "df", "p", "Holm p", "seed sd", *(["pretraining sd"] if runs else []),
            "pretraining runs × seeds" if runs else "seeds", "test subjects +/−", f"AUC {init}", f"AUC {reference}",
            "favours"]
    rows = []
    for r in prim.itertuples(index=False):
        rows.append([r.task, f"{r.auc_diff:+.3f}", ci_text(r.auc_diff_low, r.auc_diff_high),
                     ci_text(r.auc_diff_adj_low, r.auc_diff_adj_high), _df(r.auc_diff_df, r.auc_diff_adj_df),
                     _p(r.auc_diff_p),
                     "" if pd.isna(r.auc_diff_p_holm) else f"{r.auc_diff_p_holm:.3g}",
                     "" if pd.isna(r.auc_diff_seed_sd) else f"{r.auc_diff_seed_sd:.3f}",
                     *([_sd(r.auc_diff_pretrain_sd)] if runs else []),
                     f"{max(r.n_pretrain_seeds, 1)} × {r.n_seeds}" if runs else str(r.n_seeds),
                     f"{r.n_test_subjects_pos}/{r.n_test_subjects_neg}", f"{r.auc_init:.3f}",
                     f"{r.auc_reference:.3f}", init if r.favours else reference if r.favours_reference
                     else "–" if pd.notna(r.auc_diff_p_holm) else "too few subjects"])
    lines += md_table(head, rows)
    not_compared = sorted(set(table["task"]) - set(prim["task"]))
    if not_compared:
        lines += ["", f"Not in the comparison (no results of both at this setting with a common seed): "
                      f"{', '.join(not_compared)}."]
    adj = 1 - (1 - level) / max(m, 1)
    crossed = (" Each pretraining run of an init is fine-tuned with every seed: runs and seeds are crossed random "
               "factors, and the seeds' part is the mean squares of the runs × seeds table. Seed sd: over seeds of "
               "the difference averaged over runs; pretraining sd: over runs of the difference averaged over "
               "seeds.") if runs else ""
    lines += ["", f"ΔAUC: mean over seeds of the per-seed AUC difference on the same test samples. Intervals: t "
                  f"intervals whose variance adds the test subjects' part (the covariance of the per-seed "
                  f"differences under a paired bootstrap, {n_boot} resamples, that draws test subjects with all "
                  f"their samples, stratified: only negative, only positive, both) and the seeds' part (the "
                  f"spread of the per-seed differences), on the Satterthwaite degrees of freedom (df) of the two: "
                  f"the subjects' part known to min(+, −) − 1, the seeds' to about seeds − 1 (so, where the seeds' "
                  f"part dominates, about 1 with 2 seeds).{crossed} Simultaneous: "
                  f"Bonferroni over the {m} tasks that can carry a claim (each at {_pct(adj)}); where a factor of the "
                  f"seeds' part (seeds, pretraining runs) has 2 levels and its spread falls below the test "
                  f"subjects' noise it contains (the part the cells do not share), their df count that noise "
                  f"instead (in parentheses). p two-sided; Holm over the same {m} tasks. A task favours an init "
                  f"when its simultaneous interval excludes 0 and its Holm p is below {1 - level:.2g}. Test subjects "
                  f"+/−: with at least one positive / negative test sample (a claim needs {need} of each, an "
                  f"interval {MIN_RESAMPLABLE})."]
    # fewer than 3 seeds: measured by benchmarks/calibration.py (docs/results.md)
    few_seeds = {1: "**One fine-tuning seed**: the intervals carry the test subjects' variance only, not the seeds'.",
                 2: "**Two fine-tuning seeds**: the seeds' part is known to about one degree of freedom: p-values "
                    "can be conservative (type-I error down to 2.4% with pretraining runs crossed, "
                    "benchmarks/calibration.py), and the simultaneous intervals, on the fewer degrees of freedom "
                    "that hold their level, seldom exclude 0."}.get(int(prim["n_seeds"].max()))
    if few_seeds:
        lines += ["", f"{few_seeds} Run 3 seeds or more (`study.seeds`) before reading a claim."]
    return lines + [""]


def _df(df: float, simultaneous: float) -> str:
    """The intervals' degrees of freedom; the simultaneous interval's in parentheses where it has fewer."""
    if pd.isna(df):
        return ""
    return f"{df:.1f}" if pd.isna(simultaneous) or simultaneous >= df else f"{df:.1f} ({simultaneous:.1f})"


def _sd(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.3f}"


def _diff(value: float, low: float, high: float) -> str:
    return "" if pd.isna(value) else f"{value:+.3f} {ci_text(low, high)}"


def _controls_section(controls: pd.DataFrame, prim: pd.DataFrame, primary: dict[str, Any], level: float) -> list[str]:
    if controls.empty:
        return []
    init, reference, inputs = primary["init"], primary["reference"], primary["inputs"]
    setting = setting_text(primary).replace(f", {inputs} inputs", "")
    lines = ["## Controls of the primary comparison", "",
             f"Where the difference comes from: {init} and {reference} fine-tuned again ({setting}) on reduced "
             f"inputs. **index**: the index scan alone, no history; **time_shuffled**: the history with its times "
             f"permuted among its scans (in training and test). A gain of {init} that stays with the index scan "
             f"alone is not carried by the history; one that stays with shuffled times is not carried by the times. "
             f"\"{inputs} − control\": an init's own AUC change when its inputs are reduced (near 0: it does not "
             f"use what was removed). Exploratory: {_pct(level)} intervals unadjusted.", ""]
    head = ["task", "inputs", f"AUC {init}", f"AUC {reference}", f"ΔAUC {init} − {reference} [{_pct(level)} CI]",
            f"{init}: {inputs} − control", f"{reference}: {inputs} − control", "seeds"]
    prim = prim.set_index("task")
    rows = []
    for task, g in controls.groupby("task", sort=True):
        if task in prim.index:
            r = prim.loc[task]
            rows.append([task, f"{inputs} (primary)", f"{r.auc_init:.3f}", f"{r.auc_reference:.3f}",
                         _diff(r.auc_diff, r.auc_diff_low, r.auc_diff_high), "", "", str(r.n_seeds)])
        for r in g.itertuples(index=False):
            rows.append([task, r.inputs, f"{r.auc_init:.3f}", f"{r.auc_reference:.3f}",
                         _diff(r.auc_diff, r.auc_diff_low, r.auc_diff_high),
                         _diff(r.init_change, r.init_change_low, r.init_change_high),
                         _diff(r.reference_change, r.reference_change_low, r.reference_change_high), str(r.n_seeds)])
    return lines + md_table(head, rows) + [""]


def _skipped_section(skipped: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    if skipped.empty:
        return []
    lines = ["## Tasks not evaluated", ""]
    for task, g in skipped.groupby("task", sort=True):
        reasons = list(dict.fromkeys(g["reason"]))
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else "")
        total = len(g) + table.loc[table["task"] == task, "source"].nunique()
        lines.append(f"- {task}: {shown} ({len(g)} of {total} jobs)")
    return lines + [""]


def _exploratory_section(summary_df: pd.DataFrame, reference: str, n_boot: int, level: float) -> list[str]:
    lines = ["## Exploratory: every init, mode and fraction", "",
             f"Not adjusted for choosing among inits, modes or fractions: a good-looking row here is a hypothesis, "
             f"not a finding. Holm p adjusts over every task × init compared with {reference} at the same mode, "
             f"inputs and fraction that has at least the claim's number of test subjects of each class; the others "
             f"have no adjusted p and claim nothing (summary.csv: `claim`, `holm_family`; the primary "
             f"comparison's rows there carry the primary section's Holm p and verdict).", ""]
    if summary_df.empty:
        return lines + ["No evaluated jobs.", ""]
    show_inputs = summary_df["inputs"].nunique() > 1
    runs = int(summary_df["n_pretrain_seeds"].max()) > 1
    head = ["task", "init", "mode", *(["inputs"] if show_inputs else []), "fraction",
            "pretraining runs × seeds" if runs else "seeds", "AUC mean ± sd", *(["AUC pretraining sd"] if runs else []),
            "BA mean ± sd", f"ΔAUC vs {reference} [{_pct(level)} CI]", "p", "Holm p", "claim"]
    rows = []
    for r in summary_df.itertuples(index=False):
        diff = "" if pd.isna(r.auc_diff) else f"{r.auc_diff:+.3f} {ci_text(r.auc_diff_low, r.auc_diff_high)}"
        cells = f"{max(r.n_pretrain_seeds, 1)} × {r.n_seeds}" if runs else str(r.n_seeds)
        rows.append([r.task, r.init, r.mode, *([r.inputs] if show_inputs else []), f"{r.fraction:g}", cells,
                     mean_sd(r.auc_mean, r.auc_sd), *([_sd(r.auc_pretrain_sd)] if runs else []),
                     mean_sd(r.balanced_accuracy_mean, r.balanced_accuracy_sd), diff,
                     _p(r.auc_diff_p), "" if pd.isna(r.auc_diff_p_holm) else f"{r.auc_diff_p_holm:.3g}",
                     r.claim])
    over = ("seeds (label-fraction subsets) and pretraining runs; AUC pretraining sd: over the runs of their "
            "mean over seeds") if runs else "seeds (label-fraction subsets)"
    return lines + md_table(head, rows) + [
        "", f"Mean ± sd over {over}. ΔAUC: t interval from the test subjects' part (paired bootstrap, "
            f"{n_boot} resamples) and the seeds' spread, same seeds for both inits; p two-sided; n/a: fewer than "
            f"{MIN_RESAMPLABLE} positive or negative test subjects.", ""]


def _schedule_section(baseline: dict[str, pd.DataFrame], primary: dict[str, Any], n_boot: int,
                      level: float) -> list[str]:
    """Each image init of the primary comparison against the schedule-only baseline (same setting, test
    samples and seeds), judged as the primary comparison is: what the images add beyond the schedule."""
    if not baseline:
        return []
    lines = ["## Against the schedule-only baseline", "",
             f"`{SCHEDULE}`: a logistic regression on what a model could read without the image (number of "
             f"input scans, their span, the index visit's month, age at it, sex, cohort), fitted on the same "
             f"training samples. A gain that this baseline also has is not a gain of the images.", ""]
    need = primary["min_test_subjects"]
    for init, rows in baseline.items():
        if rows.empty:
            lines += [f"- {init}: no results of both {init} and {SCHEDULE} at this setting.", ""]
            continue
        m = int(rows["auc_diff_p_holm"].notna().sum())
        k = int(rows["favours"].sum())
        if m:
            verdict = (f"**{init} beats the schedule-only baseline on {k} of {m} tasks**"
                       + ("" if k == m else f"; on the other {m - k} it does not beat what the schedule alone gives")
                       + f" (Holm over those {m} tasks; simultaneous {_pct(level)} intervals above 0).")
        else:
            verdict = (f"**{init} vs {SCHEDULE}: no claim**, every task has fewer than {need} positive or "
                       f"negative test subjects.")
        lines += [verdict, ""]
        head = ["task", f"AUC {init}", f"AUC {SCHEDULE}", f"ΔAUC [{_pct(level)} CI]", "Holm p", "verdict"]
        body = []
        for r in rows.itertuples(index=False):
            verdict = (TOO_FEW if pd.isna(r.auc_diff_p_holm) else f"{init} beats it" if r.favours
                       else f"{SCHEDULE} beats {init}" if r.favours_reference else f"{init} does not beat it")
            body.append([r.task, f"{r.auc_init:.3f}", f"{r.auc_reference:.3f}",
                         _diff(r.auc_diff, r.auc_diff_low, r.auc_diff_high),
                         "" if pd.isna(r.auc_diff_p_holm) else f"{r.auc_diff_p_holm:.3g}", verdict])
        lines += md_table(head, body) + [""]
    return lines


def summary_markdown(summary_df: pd.DataFrame, prim: pd.DataFrame, primary: dict[str, Any], table: pd.DataFrame,
                     skipped: pd.DataFrame, n_boot: int, level: float = 0.95,
                     controls: pd.DataFrame | None = None, baseline: dict[str, pd.DataFrame] | None = None,
                     convergence_lines: list[str] | None = None) -> str:
    """The report: the pre-specified primary comparison first, the schedule-only baseline and the
    controls beside it, then the tasks not evaluated, the exploratory table of everything and the
    training convergence of every cell (sslad.convergence)."""
    controls = pd.DataFrame(columns=CONTROL_COLUMNS) if controls is None else controls
    lines = ["# Fine-tuning results", "", *_primary_section(prim, primary, table, n_boot, level),
             *_schedule_section(baseline or {}, primary, n_boot, level),
             *_controls_section(controls, prim, primary, level), *_skipped_section(skipped, table),
             *_exploratory_section(summary_df, primary["reference"], n_boot, level), *(convergence_lines or [])]
    return "\n".join(lines).rstrip("\n") + "\n"


def by_cohort_section(table: pd.DataFrame, missing: pd.DataFrame, primary: dict[str, Any]) -> list[str]:
    """summary.md's breakdown of the primary setting by test cohort: mean AUC over seeds of each task x
    init on each cohort's part of the test split, and the parts that could not be scored."""
    rows = table[(table["test_cohort"] != ALL) & (table["mode"] == primary["mode"])
                 & (table["inputs"] == primary["inputs"]) & ((table["fraction"] - primary["fraction"]).abs() < 1e-9)]
    if rows.empty and missing.empty:
        return []
    lines = ["## By test cohort", "",
             f"The same models and thresholds ({setting_text(primary)}), scored on each cohort's part of the test "
             "split: test AUC, mean ± sd over seeds (test subjects). Exploratory.", ""]
    cohorts = sorted(rows["test_cohort"].unique())
    body = []
    for (task, init), g in sorted_rows(rows, ["init"]).groupby(["task", "init"], sort=False):
        cells = []
        for cohort in cohorts:
            c = g[g["test_cohort"] == cohort]
            cells.append(f"{mean_sd(c['auc'].mean(), c['auc'].std())} ({int(c['n_test_subjects'].max())})" if len(c)
                         else "n/a")
        body.append([task, init, *cells])
    if body:
        lines += md_table(["task", "init", *cohorts], body) + [""]
    for (task, cohort), g in missing.groupby(["task", "test_cohort"], sort=True):
        lines.append(f"- {task} on {cohort}: not scored ({g['reason'].iloc[0]}; {len(g)} job rows)")
    return lines + ([""] if not missing.empty else [])


def demoted(markdown: str) -> list[str]:
    """A report's body one heading level down, without its title (a section of a larger report)."""
    return [("#" + line if line.startswith("#") else line) for line in markdown.splitlines()[1:]]
