"""From per-job fine-tuning results to the study's table, summary and figures.

Why a paired bootstrap: every init is tested on the same test samples with the same label-fraction
subset (seed), so the AUC difference to scratch is judged on the same resampled test samples for
both models; the test-sample noise they share cancels, which an unpaired comparison of two
intervals would not see. Every output is sorted and formatted stably, so identical inputs give
byte-identical tables.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sslad.io import atomic_path
from sslad.metrics import METRICS, auc_from_counts, stratified_counts

MODES = ("full", "probe")
# metric keys of a metrics.json row; each must be a finite number in [0, 1]
UNIT_KEYS = tuple(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")) + ("val_auc",)
COUNT_KEYS = ("best_epoch", "n_train", "n_val", "n_test", "n_test_pos")
JOB_KEYS = ("task", "init", "fraction", "seed", "inputs", "rows")
TABLE_COLUMNS = ["task", "init", "mode", "inputs", "fraction", "seed", *UNIT_KEYS, "threshold", *COUNT_KEYS]
GROUP = ["task", "init", "mode", "inputs", "fraction"]
SUMMARY_COLUMNS = [*GROUP, "n_seeds", "auc_mean", "auc_sd", "balanced_accuracy_mean", "balanced_accuracy_sd",
                   "n_paired", "auc_diff", "auc_diff_low", "auc_diff_high", "auc_diff_p"]
# fixed colours, so that a method looks the same in every figure and every run
COLOURS = {"scratch": "black", "simclr": "tab:blue", "top": "tab:orange", "tcl": "tab:green", "tmp": "tab:purple",
           "topc": "tab:red", "external": "tab:brown"}
SPARE_COLOURS = ["tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_job(path: str | Path, required: tuple[str, ...] = ()) -> tuple[dict[str, Any], bytes]:
    """A fine-tuning job's metrics.json, parsed and checked, and its bytes (for callers that
    fingerprint it); ValueError naming the file and key if malformed. ``required``: keys a caller
    needs beyond the table's."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        job = json.loads(raw)
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or UTF-8
        raise ValueError(f"{path}: cannot read metrics ({exc})") from exc
    if not isinstance(job, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in (*JOB_KEYS, *required):
        if key not in job:
            raise ValueError(f"{path}: missing key '{key}'")
    for key in ("task", "init", "inputs"):
        if not isinstance(job[key], str) or not job[key]:
            raise ValueError(f"{path}: '{key}' must be a non-empty string, got {job[key]!r}")
    if not _is_number(job["fraction"]) or not 0 < job["fraction"] <= 1:
        raise ValueError(f"{path}: 'fraction' must be in (0, 1], got {job['fraction']!r}")
    if not isinstance(job["seed"], int) or isinstance(job["seed"], bool):
        raise ValueError(f"{path}: 'seed' must be an integer, got {job['seed']!r}")
    if not isinstance(job["rows"], list) or not job["rows"]:
        raise ValueError(f"{path}: 'rows' must be a non-empty list")
    for i, row in enumerate(job["rows"]):
        where = f"{path}: rows[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object")
        for key in ("mode", *UNIT_KEYS, "threshold", *COUNT_KEYS):
            if key not in row:
                raise ValueError(f"{where}: missing key '{key}'")
        if row["mode"] not in MODES:
            raise ValueError(f"{where}: 'mode' must be one of {MODES}, got {row['mode']!r}")
        for key in UNIT_KEYS:
            if not _is_number(row[key]) or not 0 <= row[key] <= 1:
                raise ValueError(f"{where}: '{key}' must be a number in [0, 1], got {row[key]!r}")
        if not _is_number(row["threshold"]):
            raise ValueError(f"{where}: 'threshold' must be a finite number, got {row['threshold']!r}")
        for key in COUNT_KEYS:
            if not isinstance(row[key], int) or isinstance(row[key], bool) or row[key] < 0:
                raise ValueError(f"{where}: '{key}' must be a non-negative integer, got {row[key]!r}")
    return job, raw


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """One table row per mode of a job's metrics.json; ValueError naming the file and key if malformed."""
    job, _ = read_job(path)
    return [{"task": job["task"], "init": job["init"], "inputs": job["inputs"], "fraction": float(job["fraction"]),
             "seed": job["seed"], **{k: row[k] for k in ("mode", *UNIT_KEYS, "threshold", *COUNT_KEYS)},
             "source": str(path)} for row in job["rows"]]


def _sorted(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort with scratch first and the other inits alphabetically, so outputs do not depend on input order."""
    rank = (df["init"] != "scratch").astype(int)
    return (df.assign(_rank=rank).sort_values(["task", "_rank", *keys], kind="mergesort")
            .drop(columns="_rank").reset_index(drop=True))


def build_table(metrics_paths: list[str]) -> pd.DataFrame:
    """All jobs' rows, sorted; a ``source`` column keeps each row's metrics.json path."""
    rows = [r for p in metrics_paths for r in load_metrics(p)]
    if not rows:
        raise ValueError("no fine-tuning results to aggregate")
    df = pd.DataFrame(rows)
    key = ["task", "init", "mode", "inputs", "fraction", "seed"]
    dup = df[df.duplicated(key, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        same = dup[(dup[key] == first[key]).all(axis=1)]["source"].tolist()
        raise ValueError(f"the same job and mode appear more than once: {dict(first[key])} in {same}")
    return _sorted(df, ["init", "mode", "inputs", "fraction", "seed"])[TABLE_COLUMNS + ["source"]]


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Comma-separated, atomically, floats as %.6g, so reruns are byte-identical."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6g")


class _Predictions:
    """Test predictions of each job, read once (predictions.tsv next to metrics.json)."""

    def __init__(self) -> None:
        self._cache: dict[str, pd.DataFrame] = {}

    def get(self, source: str, mode: str) -> pd.DataFrame:
        path = Path(source).with_name("predictions.tsv")
        if str(path) not in self._cache:
            try:
                df = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "index_session": str, "mode": str})
            except OSError as exc:
                raise ValueError(f"{path}: cannot read predictions ({exc})") from exc
            missing = {"participant_id", "index_session", "mode", "label", "score"} - set(df.columns)
            if missing:
                raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
            if not df["label"].isin([0, 1]).all() or df["score"].isna().any():
                raise ValueError(f"{path}: 'label' must be 0/1 and 'score' present in every row")
            self._cache[str(path)] = df
        df = self._cache[str(path)]
        out = df[df["mode"] == mode].sort_values(["participant_id", "index_session"], kind="mergesort")
        if out.empty:
            raise ValueError(f"{path}: no predictions for mode '{mode}'")
        if out.duplicated(["participant_id", "index_session"]).any():
            raise ValueError(f"{path}: a test sample appears twice for mode '{mode}'")
        return out.reset_index(drop=True)


def paired_auc_diff(pairs: list[tuple[pd.DataFrame, pd.DataFrame]], n_boot: int, seed: int,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Bootstrap interval and two-sided p-value of the mean (over seeds) AUC difference a - b.

    ``pairs`` holds one (a, b) pair of prediction tables per seed, rows aligned on the same test
    samples. Each resample draws test samples within each label and applies the same draw to a and
    b. The draws are keyed by the test samples themselves, so seeds that share a test set (the
    usual case: the split does not depend on the seed) share their draws too, which is what
    resampling the test samples means for an average over seeds.
    """
    diffs = np.zeros(n_boot)
    for a, b in pairs:
        y = a["label"].to_numpy().astype(bool)
        ids = "\n".join(a["participant_id"] + "/" + a["index_session"])
        rng = np.random.default_rng([seed, zlib.crc32(ids.encode())])
        pos, neg, c_pos, c_neg = stratified_counts(y, n_boot, rng)
        sa, sb = a["score"].to_numpy(float), b["score"].to_numpy(float)
        diffs += (auc_from_counts(sa[pos], sa[neg], c_pos, c_neg) - auc_from_counts(sb[pos], sb[neg], c_pos, c_neg))
    diffs /= len(pairs)
    low, high = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return float(low), float(high), p


def summarise(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per task x init x mode x inputs x fraction: mean and sd (ddof=1) over seeds, and for
    each init other than scratch the paired comparison with scratch on the seeds both have."""
    preds = _Predictions()
    rows = []
    by_job = {k: g.set_index("seed") for k, g in table.groupby(GROUP, sort=False)}
    for key, g in by_job.items():
        row: dict[str, Any] = dict(zip(GROUP, key))
        row["n_seeds"] = len(g)
        for m in ("auc", "balanced_accuracy"):
            row[f"{m}_mean"] = float(g[m].mean())
            row[f"{m}_sd"] = float(g[m].std(ddof=1)) if len(g) > 1 else math.nan
        row.update(n_paired=math.nan, auc_diff=math.nan, auc_diff_low=math.nan, auc_diff_high=math.nan,
                   auc_diff_p=math.nan)
        task, init, mode, inputs, fraction = key
        ref = by_job.get((task, "scratch", mode, inputs, fraction))
        seeds = sorted(set(g.index) & set(ref.index)) if ref is not None and init != "scratch" else []
        if seeds:
            pairs = []
            for s in seeds:
                a = preds.get(g.at[s, "source"], mode)
                b = preds.get(ref.at[s, "source"], mode)
                if not (a[["participant_id", "index_session", "label"]]
                        .equals(b[["participant_id", "index_session", "label"]])):
                    raise ValueError(f"test samples or labels differ between {g.at[s, 'source']} and "
                                     f"{ref.at[s, 'source']} (mode {mode}); they cannot be compared")
                pairs.append((a, b))
            low, high, p = paired_auc_diff(pairs, n_boot, seed)
            row.update(n_paired=len(seeds), auc_diff=float(np.mean([g.at[s, "auc"] - ref.at[s, "auc"] for s in seeds])),
                       auc_diff_low=low, auc_diff_high=high, auc_diff_p=p)
        rows.append(row)
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"n_paired": "Int64"})
    return _sorted(df, ["init", "mode", "inputs", "fraction"])


def ssl_wins(summary_df: pd.DataFrame) -> tuple[int, int, float]:
    """(wins, tasks, lowest fraction): at the lowest label fraction with full fine-tuning, on how many
    tasks the best self-supervised init has a higher mean AUC than scratch.

    A task counts only if it has scratch and at least one other init there; with several ``inputs``
    settings each (task, inputs) pair counts as one task.
    """
    full = summary_df[summary_df["mode"] == "full"]
    if full.empty:
        return 0, 0, math.nan
    lowest = float(full["fraction"].min())
    at = full[np.isclose(full["fraction"], lowest)]
    wins = tasks = 0
    for _, g in at.groupby(["task", "inputs"], sort=True):
        scratch, ssl = g[g["init"] == "scratch"], g[g["init"] != "scratch"]
        if scratch.empty or ssl.empty:
            continue
        tasks += 1
        wins += int(ssl["auc_mean"].max() > scratch["auc_mean"].iloc[0])
    return wins, tasks, lowest


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def summary_markdown(summary_df: pd.DataFrame, n_boot: int) -> str:
    """A short markdown report: the headline, then one table line per summary row."""
    wins, tasks, lowest = ssl_wins(summary_df)
    if tasks:
        headline = (f"At the lowest label fraction ({lowest:g}), the best SSL init beats scratch (higher mean AUC, "
                    f"full fine-tuning) on {wins} of {tasks} tasks.")
    else:
        headline = "No task has both scratch and a self-supervised init with full fine-tuning to compare."
    show_inputs = summary_df["inputs"].nunique() > 1
    head = ["task", "init", "mode", *(["inputs"] if show_inputs else []), "fraction", "seeds", "AUC mean ± sd",
            "BA mean ± sd", "ΔAUC vs scratch [95% CI]", "p"]
    lines = ["# Fine-tuning results", "", headline, "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    for r in summary_df.itertuples(index=False):
        if pd.isna(r.auc_diff):
            diff = p = ""
        else:
            diff = f"{r.auc_diff:+.3f} [{r.auc_diff_low:+.3f}, {r.auc_diff_high:+.3f}]"
            p = f"< {1 / n_boot:.2g}" if r.auc_diff_p == 0 else f"{r.auc_diff_p:.3g}"
        cells = [r.task, r.init, r.mode, *([r.inputs] if show_inputs else []), f"{r.fraction:g}", str(r.n_seeds),
                 _pm(r.auc_mean, r.auc_sd), _pm(r.balanced_accuracy_mean, r.balanced_accuracy_sd), diff, p]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Mean ± sd over seeds (label-fraction subsets). ΔAUC: paired bootstrap over test samples "
                  f"({n_boot} resamples, stratified by label), same seeds for both inits; p two-sided."]
    return "\n".join(lines) + "\n"


def _colours(inits: list[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * (1 + len(inits)))
    return {i: COLOURS[i] if i in COLOURS else next(spare) for i in sorted(inits)}


def plot_task(table: pd.DataFrame, task: str, out_png: str | Path, colours: dict[str, str]) -> None:
    """AUC and balanced accuracy against label fraction, one line per init and mode.

    The x axis is logarithmic: label fractions are usually spaced by factors (0.1, 0.2, 0.5, 1), and
    a log axis keeps their true ratios while giving each the same room (a categorical axis would
    hide uneven spacing). Lines of different inits are nudged sideways so error bars do not overlap.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = table[table["task"] == task]
    fractions = sorted(df["fraction"].unique())
    inits = list(dict.fromkeys(_sorted(df[["task", "init"]].drop_duplicates(), ["init"])["init"]))
    show_inputs = df["inputs"].nunique() > 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, metric, name in zip(axes, ("auc", "balanced_accuracy"), ("test AUC", "test balanced accuracy")):
        bottom = 0.4
        for k, init in enumerate(inits):
            nudge = math.exp(0.04 * (k - (len(inits) - 1) / 2))
            for (inputs, mode), g in df[df["init"] == init].groupby(["inputs", "mode"], sort=True):
                stats = g.groupby("fraction")[metric].agg(["mean", "std"]).sort_index()
                bottom = min(bottom, float((stats["mean"] - stats["std"].fillna(0)).min()))
                label = f"{init} ({mode})" + (f" [{inputs}]" if show_inputs else "")
                ax.errorbar(stats.index.to_numpy() * nudge, stats["mean"], yerr=stats["std"].fillna(0).to_numpy(),
                            color=colours[init], linestyle="-" if mode == "full" else "--", marker="o",
                            markersize=4, capsize=2, linewidth=1.2, label=label)
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction (log scale)")
        ax.set_ylabel(name)
        ax.set_ylim(max(0.0, bottom - 0.03), 1.02)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                   title="mean ± sd over seeds", title_fontsize=7)
    fig.suptitle(task)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None})
    plt.close(fig)


def run(metrics_paths: list[str], table_csv: str, summary_csv: str, summary_md: str, figures_dir: str,
        n_boot: int = 1000, seed: int = 0) -> None:
    """Read every job's metrics.json (and predictions.tsv), write the table, summary, markdown and
    one figure per task (``{figures_dir}/{task}.png``)."""
    table = build_table(metrics_paths)
    summary = summarise(table, n_boot, seed)
    write_csv(table.drop(columns="source"), table_csv)
    write_csv(summary, summary_csv)
    with atomic_path(summary_md) as tmp:
        tmp.write_text(summary_markdown(summary, n_boot))
    colours = _colours(sorted(table["init"].unique()))
    Path(figures_dir).mkdir(parents=True, exist_ok=True)
    for task in sorted(table["task"].unique()):
        plot_task(table, task, Path(figures_dir) / f"{task}.png", colours)
