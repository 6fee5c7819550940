"""Command line: one subcommand per pipeline stage, as the Snakemake rules call them.

Each stage takes its file paths as flags and its settings as one JSON object (``--settings``), the
same block of ``config.yaml`` that the rule passes through ``params``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable


def _settings(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--settings is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def _cmd_simulate(a: argparse.Namespace) -> None:
    from sslad.simulate import simulate_cohort

    subjects = simulate_cohort(a.settings, a.out, threads=a.threads)
    print(f"simulated {len(subjects)} subjects, {sum(len(s.months) for s in subjects)} scans in {a.out}",
          file=sys.stderr)


def _cmd_cohort(a: argparse.Namespace) -> None:
    from sslad.cohort import run

    s = a.settings
    run(a.bids, s["diagnosis_aliases"], s["name"], s["strict"], a.scans, a.excluded)


def _cmd_manifest(a: argparse.Namespace) -> None:
    from sslad.manifest import run

    s = a.settings
    run(a.scans, a.cohort_excluded, a.qc, a.out_dir, s, s["tasks"], s["label_fractions"], s["seeds"])


def _cmd_template(a: argparse.Namespace) -> None:
    from sslad.template import write_template

    write_template(a.out_t1w, a.out_mask, a.settings.get("template", ""), a.settings.get("template_mask", ""))


def _cmd_preprocess(a: argparse.Namespace) -> None:
    from sslad.preprocess import run

    record = run(a.t1w, a.participant, a.session, a.template, a.template_mask, a.out_dir, a.settings, a.space,
                 a.threads)
    verdict = "passed QC" if record["pass"] else f"FAILED: {record['reason']}"
    print(f"{a.participant} {a.session}: {verdict}; {record.get('seconds', {})}", file=sys.stderr)


def _cmd_qc_table(a: argparse.Namespace) -> None:
    from sslad.preprocess import qc_table

    qc_table(a.scans, a.preproc_dir, a.space, a.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--settings", type=_settings, default={},
                       help="JSON object with this stage's settings (the matching block of config.yaml)")
        p.set_defaults(func=func)
        return p

    p = add("simulate", _cmd_simulate, "Simulate a longitudinal BIDS cohort from the MNI152 template.")
    p.add_argument("--out", required=True, help="BIDS directory to write (replaced atomically)")
    p.add_argument("--threads", type=int, default=1, help="worker processes")

    p = add("cohort", _cmd_cohort, "Ingest a Clinica-style BIDS tree into scans.tsv and excluded.tsv.")
    p.add_argument("--bids", required=True, help="BIDS directory")
    p.add_argument("--scans", required=True, help="output: one row per usable scan")
    p.add_argument("--excluded", required=True, help="output: scans left out, with the reason")

    p = add("template", _cmd_template, "Write the registration template and its brain mask (nilearn's MNI152 by default).")
    p.add_argument("--out-t1w", required=True)
    p.add_argument("--out-mask", required=True)

    p = add("preprocess", _cmd_preprocess, "Preprocess one T1w scan: N4, registration, skull strip, normalisation, QC.")
    p.add_argument("--t1w", required=True, help="raw T1w NIfTI")
    p.add_argument("--participant", required=True, help="participant_id (sub-...)")
    p.add_argument("--session", required=True, help="session_id (ses-...)")
    p.add_argument("--template", required=True, help="template T1w (from the template stage)")
    p.add_argument("--template-mask", required=True, help="template brain mask")
    p.add_argument("--space", required=True, help="space label for output names, e.g. MNI152NLin2009aSym")
    p.add_argument("--out-dir", required=True, help="derivatives root (results/preproc)")
    p.add_argument("--threads", type=int, default=1, help="ITK threads")

    p = add("qc-table", _cmd_qc_table, "Collect per-scan qc.json files into one QC table.")
    p.add_argument("--scans", required=True)
    p.add_argument("--preproc-dir", required=True)
    p.add_argument("--space", required=True)
    p.add_argument("--out", required=True)

    p = add("manifest", _cmd_manifest, "Build visits, splits, task tables, label fractions and pretrain.tsv.")
    p.add_argument("--scans", required=True, help="scans.tsv from the cohort stage")
    p.add_argument("--cohort-excluded", required=True, help="excluded.tsv from the cohort stage")
    p.add_argument("--qc", default=None, help="optional QC table (participant_id, session_id, qc_pass, qc_reason)")
    p.add_argument("--out-dir", required=True, help="manifest directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        args.func(args)
    except (ValueError, OSError) as exc:
        print(f"sslad {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(f"sslad {args.command}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
