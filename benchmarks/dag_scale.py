"""How long Snakemake takes to build the DAG of a paper-scale study (dry run), without any data.

Lays out a stand-in cohort of N scans (empty files, up-to-date cohort tables, so that the cohort
checkpoint is already resolved as it is on a real study's second run) and times
`snakemake -n` for the whole workflow (the paper-scale grid: 7 tasks, 6 inits, 5 fractions,
5 seeds) with the given profile.

    python benchmarks/dag_scale.py --scans 10000 --profile local
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10000)
    parser.add_argument("--visits", type=int, default=4, help="scans per subject")
    parser.add_argument("--profile", default="local", choices=["local", "slurm"],
                        help="slurm: with its job groups (a dry run can hang upstream, see README)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sslad-dag-"))
    for item in ("Snakefile", "config.yaml", "workflow", "envs", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / item)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["cohorts"] = [{"name": "paper", "bids_dir": str(work / "bids")}]
    cfg["study"].update(label_fractions=[0.01, 0.1, 0.2, 0.5, 1.0], seeds=[0, 1, 2, 3, 4])
    cfg["preprocess"]["voxel_mm"] = 1.0
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = []
    for i in range(a.scans):
        sub, ses = f"sub-P{i // a.visits:05d}", f"ses-M{12 * (i % a.visits):03d}"
        path = work / "bids" / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        rows.append({"participant_id": sub.replace("sub-", "sub-paper"), "bids_participant_id": sub,
                     "session_id": ses, "path": str(path), "sex": "F", "age": 70,
                     "days_from_baseline": 365 * (i % a.visits), "diagnosis": "CN", "diagnosis_raw": "CN",
                     "cohort": "paper"})
    tables = {"scans": pd.DataFrame(rows), "record": pd.DataFrame(rows).assign(has_image=True),
              "excluded": pd.DataFrame(columns=["participant_id", "session_id", "stage", "file", "reason"])}
    for folder in ("results/cohort/paper", "results/cohort"):  # the cohort's, then the pooled ones
        (work / folder).mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            table.to_csv(work / folder / f"{name}.tsv", sep="\t", index=False)
    for name in ("cohorts", "overlap"):
        (work / "results/cohort" / f"{name}.tsv").write_text("cohort\n")
    print("| scans | profile | dry run | jobs | seconds |\n|---|---|---|---|---|")
    for quiet in ("all", "rules"):  # DAG and summary only; then with the per-rule job counts
        cmd = [sys.executable, "-m", "snakemake", "--profile", f"profiles/{a.profile}", "-n", "--quiet", quiet,
               "--jobs", "100"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            print(f"| {a.scans} | {a.profile} | `-n --quiet {quiet}` | | > {a.timeout:.0f} (stopped) |", flush=True)
            continue
        seconds = time.perf_counter() - start
        if proc.returncode:
            sys.exit(proc.stdout + proc.stderr)
        total = next((line.split()[1] for line in proc.stdout.splitlines() if line.startswith("total")), "")
        print(f"| {a.scans} | {a.profile} | `-n --quiet {quiet}` | {total} | {seconds:.1f} |", flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
