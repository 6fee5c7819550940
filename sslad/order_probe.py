"""The order probe on subjects no encoder saw: one job after each pretraining run, and their report.

The pretraining job's own diagnostic scores the few subjects it holds out of its loss (6 on the demo):
too few for an interval. Here the same probe (:mod:`sslad.diagnostics`: a linear classifier on the
difference of two visits' frozen features says which came first) is fitted on the pretraining
subjects' pairs and scored on every test-split subject with visits at two or more times, subjects
that pretraining never reads (``pretrain.tsv`` holds no test subject). Three readers on the same
pairs: the pretrained encoder, the same encoder untrained (its initial weights, rebuilt from the
run's seed as pretraining built them) and the raw voxels. It is a diagnostic: nothing is chosen from
it, so scoring test subjects leaks nothing into a result.

Intervals (:func:`sslad.diagnostics.summarise`): a t interval over subjects for each accuracy, and the
same over the per-pair differences of two readers on the same pairs (paired). They are given only
from :data:`MIN_SUBJECTS` subjects, the smallest size at which ``benchmarks/calibration.py`` measured
their coverage (docs/results.md); below it, points only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sslad.diagnostics import encode, pair_hits, pooled_voxels, probe_subjects, summarise
from sslad.io import atomic_path, read_tsv, write_json, write_tsv
from sslad.networks import build_encoder, load_encoder
from sslad.pretrain_data import ScanSet, load_pretrain_scans, load_scans, timed_subjects
from sslad.volumes import read_visits

# The fewest scored subjects with an interval: the smallest size calibrated (coverage 0.93 for the
# accuracy, 0.94 for a paired difference at 6 subjects; docs/results.md).
MIN_SUBJECTS = 6
READERS = ("encoder", "untrained", "voxels")
DIFFERENCES = (("encoder", "voxels"), ("encoder", "untrained"))
COLUMNS = ["method", "pretrain_seed", "n_subjects", "n_pairs", "n_fit_subjects",
           *(f"{r}{s}" for r in READERS for s in ("", "_low", "_high")),
           *(f"{a}_minus_{b}{s}" for a, b in DIFFERENCES for s in ("", "_low", "_high"))]


def unseen_scans(visits_tsv: str, splits_tsv: str, pretrain_tsv: str) -> ScanSet:
    """The imaged scans of the test split's subjects (never in ``pretrain.tsv``: refused if one is)."""
    visits = read_visits(visits_tsv)
    split = read_tsv(splits_tsv).set_index("participant_id")["split"]
    test = set(split.index[split == "test"])
    leaked = sorted(test & set(read_tsv(pretrain_tsv)["participant_id"]))
    if leaked:
        raise ValueError(f"{pretrain_tsv}: test participants must never be pretrained on: {', '.join(leaked[:5])}")
    imaged = visits[visits["participant_id"].isin(test) & visits["array"].fillna("").astype(str).ne("")]
    return load_scans(list(zip(imaged["participant_id"], imaged["session_id"])), visits, visits_tsv)


def _reader_hits(features: np.ndarray, months: np.ndarray, n_fit: int, fit: list[np.ndarray],
                 scored: list[np.ndarray]) -> list[np.ndarray] | None:
    """Per scored subject, the hits of a probe fitted on the ``fit`` subjects (rows of the first ``n_fit``
    feature rows), the scored subjects' rows following them."""
    return pair_hits(features, months, fit, [rows + n_fit for rows in scored])


def probe(encoder: torch.nn.Module, untrained: torch.nn.Module, fit: ScanSet, unseen: ScanSet,
          n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every reader's accuracy on the unseen subjects' pairs and the paired differences, with intervals
    from :data:`MIN_SUBJECTS` scored subjects."""
    fit_rows, fit_local, n_fit_subjects = probe_subjects(fit, [])
    scored = [unseen.subjects[s] for s in timed_subjects(unseen)]
    months = np.concatenate([fit.months[fit_rows], unseen.months])
    n_fit = len(fit_rows)
    cpu = torch.device("cpu")

    def features(read) -> np.ndarray:
        return np.concatenate([read(fit.volumes, fit_rows), read(unseen.volumes, np.arange(len(unseen.keys)))])

    readers = {
        "encoder": features(lambda v, r: encode(encoder, v, cpu, r).numpy().astype(np.float64)),
        "untrained": features(lambda v, r: encode(untrained, v, cpu, r).numpy().astype(np.float64)),
        "voxels": features(pooled_voxels),
    }
    hits = {name: _reader_hits(f, months, n_fit, fit_local, scored) for name, f in readers.items()}
    n_subjects = sum(1 for rows in scored if len(rows))
    out: dict[str, Any] = {"n_subjects": n_subjects, "n_fit_subjects": n_fit_subjects,
                           "n_pairs": summarise(hits["voxels"])[1]}
    with_interval = n_subjects >= MIN_SUBJECTS
    for name, h in hits.items():
        acc, _, interval = summarise(h, n_boot, seed)
        out[name] = acc
        out[f"{name}_low"], out[f"{name}_high"] = interval if with_interval and interval else (math.nan, math.nan)
    for a, b in DIFFERENCES:
        if hits[a] is None or hits[b] is None:
            continue
        diff, _, interval = summarise([x - y for x, y in zip(hits[a], hits[b])], n_boot, seed, bounds=(-1.0, 1.0))
        key = f"{a}_minus_{b}"
        out[key] = diff
        out[f"{key}_low"], out[f"{key}_high"] = interval if with_interval and interval else (math.nan, math.nan)
    return out


def run(encoder_pt: str, pretrain_metrics: str, pretrain_tsv: str, visits_tsv: str, splits_tsv: str,
        out_json: str, threads: int = 1, n_boot: int = 1000) -> dict[str, Any]:
    """The ``sslad order-probe`` job of one pretraining run. Its bootstrap size is its own (the size
    its coverage was measured with), not finetune.n_bootstrap: more resamples for the fine-tuning
    intervals must rerun aggregation only."""
    torch.set_num_threads(max(1, threads))
    settings = json.loads(Path(pretrain_metrics).read_text())["settings"]
    run_seed = int(settings["train"]["seed"])
    encoder, _, arch, _ = load_encoder(encoder_pt)
    torch.manual_seed(run_seed)  # as pretraining did before building its encoder: its initial weights
    untrained = build_encoder(arch)
    result = {"method": settings["method"], "pretrain_seed": run_seed, "encoder_path": encoder_pt,
              **probe(encoder, untrained, load_pretrain_scans(pretrain_tsv, visits_tsv, splits_tsv),
                      unseen_scans(visits_tsv, splits_tsv, pretrain_tsv), n_boot, run_seed)}
    write_json(result, Path(out_json))
    return result


def _fmt(r: dict[str, Any], key: str, signed: bool = False) -> str:
    value = r.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    low, high = r.get(f"{key}_low"), r.get(f"{key}_high")
    return f.format(value) + ("" if low is None or pd.isna(low) else f" [{f.format(low)}, {f.format(high)}]")


def report(paths: list[str], out_tsv: str, out_md: str) -> pd.DataFrame:
    """One row per pretraining run (``order_probe.tsv``) and the markdown that reads them: each method
    against the raw voxels and its untrained encoder on the same pairs, per run and over runs."""
    rows = [json.loads(Path(p).read_text()) for p in paths]
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "pretrain_seed"], ignore_index=True)
    write_tsv(table, out_tsv)
    lines = ["# Order probe on subjects outside pretraining", "",
             "Which of two visits came first, read by a linear probe from frozen features (chance 0.5), fitted "
             "on the pretraining subjects' pairs and scored on every test-split subject with visits at two or more "
             "times. Readers on the same pairs: the pretrained encoder, the same encoder untrained (its initial "
             "weights) and the raw voxels (what the scans carry for a linear reader). 95% t intervals over "
             f"subjects, paired for differences, from {MIN_SUBJECTS} subjects (calibrated sizes); nothing is "
             "chosen from this table.", ""]
    head = ["method", "pretraining seed", "subjects (pairs)", "encoder", "untrained", "voxels", "encoder − voxels",
            "encoder − untrained"]
    body = [[r.method, str(r.pretrain_seed), f"{r.n_subjects} ({r.n_pairs})", _fmt(r._asdict(), "encoder"),
             _fmt(r._asdict(), "untrained"), _fmt(r._asdict(), "voxels"),
             _fmt(r._asdict(), "encoder_minus_voxels", True), _fmt(r._asdict(), "encoder_minus_untrained", True)]
            for r in table.itertuples(index=False)]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
              *("| " + " | ".join(b) + " |" for b in body), ""]
    if table["method"].duplicated().any():
        lines += ["Over pretraining runs (mean ± sd; runs whose interval of encoder − voxels lies above 0, "
                  "below 0):", ""]
        for method, g in table.groupby("method", sort=True):
            d = g["encoder_minus_voxels"].astype(float)
            sd = f" ± {g['encoder'].std(ddof=1):.3f}" if len(g) > 1 else ""
            lines.append(f"- {method}: accuracy {g['encoder'].mean():.3f}{sd} over {len(g)} runs; encoder − voxels "
                         f"{d.mean():+.3f}; above 0 in {int((g['encoder_minus_voxels_low'] > 0).sum())}, below 0 in "
                         f"{int((g['encoder_minus_voxels_high'] < 0).sum())} of {len(g)}")
        lines.append("")
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines))
    return table
