"""Write one study's section of docs/results.md from the run's own outputs.

    python docs/results_page.py --results results --name demo --title "The demo (command 1)" \
        --command "snakemake --cores 2 --use-conda results/table.csv" --wall-min 9.8

The section (between ``<!-- results:NAME -->`` markers, replaced in place or added after the page's
introduction) holds the date and commit of the results (results/provenance.json), the job count and
job time (results/benchmarks/), the primary comparison (results/summary.csv), the cells that may be
undertrained (the fine-tuning jobs' curves, as summary.md flags them), what each task's split
supports on simulated cohorts (results/ground_truth.tsv, beside every init's test AUC at the primary
setting), each pretraining run's loss (results/pretrain/) and the order probe on unseen subjects
(results/order_probe.tsv). Numbers are never typed by hand: a rerun of the study and of this script
replaces them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

from sslad import convergence, ground_truth
from sslad.results import read_job
from sslad.schedule import SCHEDULE

PAGE = Path(__file__).resolve().parent / "results.md"


def _f(x: float, sign: bool = False) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}" if sign else f"{x:.3f}"


def commit_of(results: Path) -> str:
    """The commit(s) every job ran on, from results/provenance.json ("+dirty" when tracked files differed)."""
    codes = json.loads((results / "provenance.json").read_text())["codes"]  # commit[:12](+dirty):source digest
    return ", ".join(sorted({c.split(":")[0] for c in codes})) or "unknown"


def run_facts(results: Path) -> tuple[str, float]:
    """(jobs, job seconds): the jobs of every Snakemake invocation that finished ("N of N steps (100%)
    done" in its log; a study made in several invocations sums them), else the number of benchmark
    files; the seconds of every job's benchmark file (rules without one add none)."""
    files = list((results / "benchmarks").rglob("*.tsv"))
    seconds = float(sum(pd.read_csv(f, sep="\t")["s"].sum() for f in files))
    logs = sorted((results.parent / ".snakemake" / "log").glob("*.snakemake.log"))
    done = [int(steps[-1]) for log in logs if (steps := re.findall(r"(\d+) of \d+ steps \(100%\) done",
                                                                     log.read_text()))]
    if not done:
        return f"{len(files)} jobs with a benchmark file", seconds
    return (f"{sum(done)} jobs" + (f" in {len(done)} invocations" if len(done) > 1 else "")), seconds


def primary_table(results: Path) -> list[str]:
    summary = pd.read_csv(results / "summary.csv")
    prim = summary[summary["claim"].fillna("").str.startswith("primary:")]
    if prim.empty:
        return ["No primary comparison in summary.csv."]
    lines = ["| task | init | ΔAUC vs reference [95% CI] | Holm p | seed sd | pretraining sd | test subjects +/− | AUC "
             "| claim |", "|---|---|---|---|---|---|---|---|---|"]
    for r in prim.itertuples(index=False):
        lines.append(f"| {r.task} | {r.init} | {_f(r.auc_diff, True)} [{_f(r.auc_diff_low, True)}, "
                     f"{_f(r.auc_diff_high, True)}] | {_f(r.auc_diff_p_holm)} | {_f(r.auc_diff_seed_sd)} | "
                     f"{_f(r.auc_diff_pretrain_sd)} | {r.n_test_subjects_pos:.0f}/{r.n_test_subjects_neg:.0f} | "
                     f"{_f(r.auc_mean)} | {r.claim.removeprefix('primary: ')} |")
    return lines


def undertrained(results: Path) -> list[str]:
    jobs = [read_job(p)[0] for p in sorted((results / "finetune").rglob("metrics.json"))]
    training = pd.DataFrame([r for job in jobs for r in convergence.training_rows(job)],
                            columns=convergence.TRAINING_COLUMNS)
    truth = results / "ground_truth.tsv"
    flagged = convergence.flags(training, SCHEDULE,
                                ground_truth.val_auc(pd.read_csv(truth, sep="\t")) if truth.exists() else None)
    cells = len(training[training["epochs"] > 0].drop_duplicates(convergence.CELL))
    if flagged.empty:
        return [f"No trained cell of {cells} is flagged \"may be undertrained\"."]
    per_init = flagged.groupby("init")["task"].agg(lambda t: ", ".join(sorted(set(t))))
    return [f"{len(flagged)} of {cells} trained cells are flagged \"may be undertrained\"; tasks per init: "
            + "; ".join(f"{init}: {tasks}" for init, tasks in per_init.items()) + "."]


def split_support(results: Path) -> list[str]:
    """The true-volume reader per task (simulated cohorts), beside each init's mean test AUC at the
    primary comparison's mode, inputs and fraction."""
    path = results / "ground_truth.tsv"
    if not path.exists():
        return []
    truth = pd.read_csv(path, sep="\t")
    summary = pd.read_csv(results / "summary.csv")
    prim = summary[summary["claim"].fillna("").str.startswith("primary:")]
    if not prim.empty:
        setting = prim.iloc[0][["mode", "inputs", "fraction"]]
        summary = summary[(summary[["mode", "inputs", "fraction"]] == setting).all(axis=1)]
    summary = summary[summary["heldout"].isna()]  # the pooled split, the reader's (none in a study of folds)
    if summary.empty:
        return []
    inits = sorted(summary["init"].unique())
    auc = summary.set_index(["task", "init"])["auc_mean"]
    lines = ["| task | true volumes: validation / test | " + " | ".join(inits) + " |",
             "|---|---|" + "---|" * len(inits)]
    for r in truth.itertuples(index=False):
        lines.append(f"| {r.task} | {_f(r.val_auc)} / {_f(r.test_auc)} | "
                     + " | ".join(_f(auc.get((r.task, i), math.nan)) for i in inits) + " |")
    return lines


def pretraining(results: Path) -> list[str]:
    rows = []
    for path in sorted((results / "pretrain").glob("*/seed-*/metrics.json")):
        losses = [h["loss"] for h in json.loads(path.read_text())["history"]]
        rows.append(f"{path.parts[-3]} (seed {path.parts[-2].removeprefix('seed-')}) "
                    f"{losses[0]:.2f} → {losses[-1]:.2f}")
    return ["Pretraining loss, first → last epoch: " + "; ".join(rows) + "."] if rows else []


def order_probe(results: Path) -> list[str]:
    path = results / "order_probe.tsv"
    if not path.exists():
        return []
    t = pd.read_csv(path, sep="\t")
    lines = ["| method | run | subjects / pairs | encoder | untrained | voxels | encoder − voxels [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in t.itertuples(index=False):
        lines.append(f"| {r.method} | {r.pretrain_seed} | {r.n_subjects} / {r.n_pairs} | {_f(r.encoder)} | "
                     f"{_f(r.untrained)} | {_f(r.voxels)} | {_f(r.encoder_minus_voxels, True)} "
                     f"[{_f(r.encoder_minus_voxels_low, True)}, {_f(r.encoder_minus_voxels_high, True)}] |")
    return lines


def section(results: Path, name: str, title: str, command: str, wall_min: float | None) -> str:
    table = results / "table.csv"
    date = datetime.datetime.fromtimestamp(table.stat().st_mtime, datetime.UTC).date().isoformat()
    jobs, seconds = run_facts(results)
    wall = f", {wall_min:.1f} min wall clock" if wall_min is not None else ""
    lines = [f"<!-- results:{name} -->", f"## {title} ({date}, commit {commit_of(results)})", "",
             f"`{command}`: {jobs}{wall}, {seconds / 60:.1f} min of job time (rules with a benchmark file).", "",
             "**Primary comparison** (results/summary.csv):", "", *primary_table(results), "",
             *undertrained(results), ""]
    support = split_support(results)
    if support:
        lines += ["**What the split supports** (results/ground_truth.tsv: a reader of the true volumes, fitted on "
                  "each task's training samples, its validation and test AUC; then each init's test AUC at the "
                  "primary setting, the schedule baseline's included):", "", *support, ""]
    lines += pretraining(results)
    probe = order_probe(results)
    if probe:
        lines += ["", "**Order probe on unseen test subjects** (results/order_probe.tsv):", "", *probe]
    return "\n".join([*lines, f"<!-- /results:{name} -->"])


def write(page: Path, name: str, text: str) -> None:
    """Replace the page's section ``name`` with ``text``, or add it before the first section (a heading
    or another study's generated section)."""
    old = page.read_text()
    block = re.compile(rf"<!-- results:{re.escape(name)} -->.*?<!-- /results:{re.escape(name)} -->", re.S)
    if block.search(old):
        new = block.sub(lambda _: text, old)
    else:  # before the first heading or generated section, whichever comes first
        starts = [i for i in (old.find("\n## "), old.find("\n<!-- results:")) if i >= 0]
        new = (f"{old[:min(starts)]}\n{text}\n\n{old[min(starts) + 1:]}" if starts
               else f"{old.rstrip()}\n\n{text}\n")
    page.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="a finished study's results/ directory")
    p.add_argument("--name", required=True, help="the section's id (demo, validation, ...)")
    p.add_argument("--title", required=True)
    p.add_argument("--command", required=True, help="the command that made the results")
    p.add_argument("--wall-min", type=float, default=None, help="its wall clock, measured by whoever ran it")
    p.add_argument("--page", default=str(PAGE))
    a = p.parse_args(argv)
    write(Path(a.page), a.name, section(Path(a.results), a.name, a.title, a.command, a.wall_min))
    return 0


if __name__ == "__main__":
    sys.exit(main())
